package harness

import (
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ClientHelo is the EHLO name swaks uses.
const ClientHelo = "client.test.example"

// SwaksResult is one swaks run.
type SwaksResult struct {
	Args     []string
	Output   string // swaks' full transcript (stdout and stderr)
	ExitCode int
	Duration time.Duration
}

// RunSwaks runs swaks against 127.0.0.1:port with the given extra
// arguments, adding --server, --port, --helo (unless given) and --timeout.
// It does not fail the test on a non-zero exit status: rejection tests
// expect one (swaks exits 23/24/25 on a refused MAIL/RCPT/DATA end, see
// swaks(1) "EXIT CODES").
func RunSwaks(tb TB, port int, args ...string) SwaksResult {
	tb.Helper()
	requireTools(tb, toolSwaks)
	full := []string{"--server", "127.0.0.1", "--port", strconv.Itoa(port), "--timeout", "30"}
	if !hasArg(args, "--helo", "--ehlo", "-h") {
		full = append(full, "--helo", ClientHelo)
	}
	full = append(full, args...)
	var out bytes.Buffer
	cmd := exec.Command("swaks", full...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	err := cmd.Run()
	r := SwaksResult{Args: full, Output: out.String(), ExitCode: exitCode(err), Duration: time.Since(start)}
	if r.ExitCode < 0 {
		tb.Fatalf("harness: cannot run swaks %s: %v\n%s", strings.Join(full, " "), err, r.Output)
	}
	if r.Duration > 4*time.Second {
		// The private resolv.conf should make smtpd's PTR lookup fail at
		// once; a session this slow points at a resolver stall.
		tb.Logf("harness: WARNING: swaks took %v (resolver stall?)", r.Duration.Round(time.Millisecond))
	}
	return r
}

func hasArg(args []string, names ...string) bool {
	for _, a := range args {
		for _, n := range names {
			if a == n || strings.HasPrefix(a, n+"=") {
				return true
			}
		}
	}
	return false
}

// Message is what SendMessage sends.
type Message struct {
	Name string   // for file names and logs
	From string   // envelope sender
	To   []string // envelope recipients
	// Data is the message as it should arrive: LF (or CRLF) line ends, no
	// dot-stuffing. See WireData.
	Data []byte
}

// WireData turns a message into what a client sends after DATA's 354,
// CRLF line ends and dot-stuffing included, ending with "\r\n." (swaks adds
// the last CRLF). A missing final line end is added.
//
// The harness does this itself and runs swaks with --no-data-fixup, because
// swaks' own data fix-up changes the message: it replaces %DATE%-style
// tokens and literal `\n`, and a file that ends with a newline gets one
// more empty line at its end, while one without a body gets two. Its
// dot-stuffing itself is right (`.x` goes out as `..x`, a lone `.` as
// `..`), and so is the harness's.
func WireData(msg []byte) []byte {
	lines := splitLines(Normalize(msg))
	var b bytes.Buffer
	for _, l := range lines {
		if strings.HasPrefix(l, ".") {
			b.WriteByte('.')
		}
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	b.WriteString(".")
	return b.Bytes()
}

// Normalize returns the message as smtpd stores it and the mda delivers
// it: LF line ends (a CRLF becomes LF), ending with a line end.
func Normalize(msg []byte) []byte {
	m := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	if len(m) > 0 && m[len(m)-1] != '\n' {
		m = append(m, '\n')
	}
	return m
}

// splitLines splits LF-terminated text into lines without their LF.
func splitLines(m []byte) []string {
	s := strings.TrimSuffix(string(m), "\n")
	if s == "" && len(m) == 0 {
		return nil
	}
	return strings.Split(s, "\n")
}

// SendMessage writes m's wire form to <dir>/sent/<file> and sends it with
// `swaks --no-data-fixup --data @file` to 127.0.0.1:port.
func SendMessage(tb TB, e *Env, port int, file string, m Message) SwaksResult {
	tb.Helper()
	if bytes.IndexByte(m.Data, 0) >= 0 {
		tb.Fatalf("harness: message %s has a NUL byte: smtpd truncates the line there", m.Name)
	}
	path := e.WriteFile("sent/"+file, WireData(m.Data), 0o644)
	args := []string{"--from", m.From, "--to", strings.Join(m.To, ","), "--no-data-fixup", "--data", "@" + path, "--suppress-data"}
	r := RunSwaks(tb, port, args...)
	return r
}

// Exchange is one client command and the server's reply to it, as swaks
// printed them.
type Exchange struct {
	Command string   // without swaks' " -> " marker
	Reply   []string // reply lines without "<-  "/"<** "; empty for data lines
}

// Exchanges parses swaks' transcript into commands and replies.
func (r SwaksResult) Exchanges() []Exchange {
	var ex []Exchange
	for _, l := range strings.Split(r.Output, "\n") {
		if c, ok := strings.CutPrefix(l, " -> "); ok {
			ex = append(ex, Exchange{Command: c})
			continue
		}
		rest, ok := strings.CutPrefix(l, "<-  ")
		if !ok {
			rest, ok = strings.CutPrefix(l, "<** ")
		}
		if ok && len(ex) > 0 {
			ex[len(ex)-1].Reply = append(ex[len(ex)-1].Reply, rest)
		}
	}
	return ex
}

// Reply returns the server's reply to the first client command that starts
// with cmd (case-insensitive), e.g. "RCPT TO:<x@y>" or "DATA". Multi-line
// replies are joined with "\n". It returns "" when the command does not
// appear.
func (r SwaksResult) Reply(cmd string) string {
	for _, e := range r.Exchanges() {
		if strings.HasPrefix(strings.ToUpper(e.Command), strings.ToUpper(cmd)) {
			return strings.Join(e.Reply, "\n")
		}
	}
	return ""
}

// EndOfDataReply is the server's reply to the final "." of DATA, or "" when
// DATA was not answered with 354.
func (r SwaksResult) EndOfDataReply() string {
	ex := r.Exchanges()
	for i, e := range ex {
		if strings.ToUpper(e.Command) != "DATA" {
			continue
		}
		if len(e.Reply) == 0 || !strings.HasPrefix(e.Reply[0], "354") {
			return ""
		}
		for _, d := range ex[i+1:] {
			if len(d.Reply) > 0 {
				return strings.Join(d.Reply, "\n")
			}
		}
	}
	return ""
}

// Summary is a one-line description for logs.
func (r SwaksResult) Summary() string {
	return fmt.Sprintf("swaks exit %d in %v, end of data: %q", r.ExitCode, r.Duration.Round(time.Millisecond), r.EndOfDataReply())
}
