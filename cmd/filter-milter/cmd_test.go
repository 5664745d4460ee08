package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	djmilter "github.com/d--j/go-milter"

	"github.com/filter-milter/filter-milter/dryrun"
	"github.com/filter-milter/filter-milter/milter/miltertest"
)

// These tests run the commands in process against go-milter's server side
// (milter/miltertest); integration/tools_test.go runs the built binary
// against opendkim and python3-milter.

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "inet:" + addr
}

func TestCheckCommand(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{}, djmilter.WithProtocols(djmilter.OptNoHelo|djmilter.OptNoBodyReply|djmilter.OptHeaderLeadingSpace),
		djmilter.WithActions(djmilter.OptAddHeader|djmilter.OptChangeHeader))
	code, out, errOut := runCmd(t, "check", "-milter", srv.Spec)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"milter " + srv.Spec, "version:        v6 (offered v6)", "actions:        ADDHDRS CHGHDRS (0x011)",
		"protocol flags: NOHELO NR_BODY HDR_LEADSPC", "stages skipped: helo", "no reply to:    body",
		"connect  from smtpd: j {daemon_name}", "OK: 1 milter endpoint(s) negotiated",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}

	dead := closedPort(t)
	code, out, _ = runCmd(t, "check", "-milter", srv.Spec, "-milter", dead)
	if code != exitFailure {
		t.Errorf("exit %d with a dead milter, want %d", code, exitFailure)
	}
	for _, want := range []string{"FAILED:         connection refused: " + dead, "FAIL: 1 of 2 milter endpoint(s) cannot be used"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}

	// A pool with one dead endpoint, from a configuration file.
	cfg := filepath.Join(t.TempDir(), "fm.toml")
	if err := os.WriteFile(cfg, []byte("[[milter]]\nname = \"pool\"\nsockets = [\""+srv.Spec+"\", \""+dead+"\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runCmd(t, "check", "-config", cfg)
	if code != exitFailure || !strings.Contains(out, "milter pool of 2 endpoints pool") || !strings.Contains(out, "FAIL: 1 of 2") {
		t.Errorf("pool: exit %d:\n%s", code, out)
	}

	if code, _, _ := runCmd(t, "check"); code != exitUsage {
		t.Errorf("check without milters: exit %d, want %d", code, exitUsage)
	}
}

const testMessage = "From: Alice <alice@test.example>\r\nTo: Bob <bob@test.example>, carol@test.example\r\n" +
	"Subject: hi\r\n\r\nbody\r\n.dot line\r\n"

func writeMessage(t *testing.T, text string) string {
	t.Helper()
	return writeFile(t, "msg.eml", text)
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTestCommandAddsHeader(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{
		EOM: func(m djmilter.Modifier) (*djmilter.Response, error) {
			_ = m.InsertHeader(0, "X-Top", "first")
			_ = m.AddHeader("X-Bottom", "last")
			return djmilter.RespAccept, nil
		},
	})
	msg := writeMessage(t, testMessage)
	outFile := filepath.Join(t.TempDir(), "out.eml")
	code, out, errOut := runCmd(t, "test", "-milter", srv.Spec, msg, "-o", outFile)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"MAIL FROM:<alice@test.example>", "RCPT TO:<bob@test.example>, <carol@test.example>",
		"end of DATA                              proceed", "header       continue", "eom          accept",
		"insert header   at 0: X-Top: first", "add header      X-Bottom: last", "verdict: ACCEPT",
		"@@ -1,6 +1,8 @@\n+X-Top: first\n From: Alice <alice@test.example>\n To: Bob <bob@test.example>, carol@test.example\n" +
			" Subject: hi\n+X-Bottom: last\n \n body\n .dot line\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("test output lacks %q:\n%s", want, out)
		}
	}
	seen := srv.Seen()
	if len(seen) != 1 || len(seen[0].Rcpts) != 2 || string(seen[0].Body) != "body\r\n.dot line\r\n" {
		t.Errorf("the milter saw %+v", seen)
	}
	got, err := os.ReadFile(outFile)
	if want := "X-Top: first\nFrom: Alice <alice@test.example>\nTo: Bob <bob@test.example>, carol@test.example\nSubject: hi\nX-Bottom: last\n\nbody\n.dot line\n"; err != nil || string(got) != want {
		t.Errorf("-o wrote %q (%v), want %q", got, err, want)
	}
}

func TestTestCommandJSONReject(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{
		Rcpt: func(rcpt string) (*djmilter.Response, error) {
			if strings.Contains(rcpt, "nobody") {
				return djmilter.RejectWithCodeAndReason(550, "5.1.1 no such user")
			}
			return djmilter.RespContinue, nil
		},
		EOM: func(djmilter.Modifier) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(554, "5.7.1 spam")
		},
	})
	msg := writeMessage(t, testMessage)
	code, out, errOut := runCmd(t, "test", "--json", "--from", "x@y.example", "--rcpt", "nobody@test.example",
		"--rcpt", "bob@test.example", "--client-ip", "192.0.2.7", "--helo", "client.example", "--auth", "alice",
		"-milter", srv.Spec, msg)
	if code != exitFailure {
		t.Fatalf("exit %d, want %d\n%s%s", code, exitFailure, out, errOut)
	}
	var res dryrun.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if res.Verdict.Decision != "reject" || res.Verdict.Reply != "554 5.7.1 spam" || res.Verdict.Stage != "end of DATA" {
		t.Errorf("verdict %+v", res.Verdict)
	}
	if len(res.Commands) != 7 || res.Commands[3].Decision != "reject" || res.Commands[3].Reply != "550 5.1.1 no such user" ||
		res.Commands[4].Decision != "proceed" {
		t.Errorf("commands %+v", res.Commands)
	}
	if len(res.Milters) != 1 || res.Milters[0].Name != srv.Spec {
		t.Fatalf("milters %+v", res.Milters)
	}
	last := res.Milters[0].Replies[len(res.Milters[0].Replies)-1]
	if last.Stage != "eom" || last.Verdict != "reject" || last.Code != 554 {
		t.Errorf("last reply %+v", last)
	}
	if res.Envelope.ClientName != "" || res.Changed || res.Diff != "" {
		t.Errorf("result %+v", res)
	}
	seen := srv.Seen()[0]
	if seen.Addr != "192.0.2.7" || seen.Helo != "client.example" || seen.From != "x@y.example" || seen.Macros["auth_authen"] != "alice" {
		t.Errorf("the milter saw %+v", seen)
	}
}

func TestTestCommandMilterDown(t *testing.T) {
	dead := closedPort(t)
	msg := writeMessage(t, testMessage)
	code, out, _ := runCmd(t, "test", "-milter", dead, msg)
	if code != exitFailure || !strings.Contains(out, "verdict: TEMPFAIL 451 4.7.1") || !strings.Contains(out, "connection refused") {
		t.Errorf("exit %d:\n%s", code, out)
	}
	code, out, _ = runCmd(t, "test", "-milter", dead, "-default-action", "accept", msg)
	if code != 0 || !strings.Contains(out, "verdict: ACCEPT") || !strings.Contains(out, "the message is unchanged") {
		t.Errorf("default action accept: exit %d:\n%s", code, out)
	}
}

// testUsageHead is the test command's usage as filter-milter(8) and
// docs/postmaster.md describe it, written out here so that a change to
// the text is a change to this test.
const testUsageHead = `usage: filter-milter test [-config FILE] [flags] [--from ADDR] [--rcpt ADDR]... [--client-ip IP]
                          [--helo NAME] [--auth USER] [--json] [-o FILE] MESSAGE.eml

Runs MESSAGE.eml ("-": standard input) through the configured milters as smtpd would, without smtpd,
and prints each milter's answers, the changes they asked for, the verdict and a diff of the message.
Exit status: 0 accepted, 1 refused, 2 usage or configuration error.

flags:
`

// TestTestCommandUsage: a usage or configuration error of the test
// command exits 2, with its usage or one line
// saying what is wrong on stderr, and nothing on stdout, where the result
// goes; -h prints the usage on stderr and exits 0.
func TestTestCommandUsage(t *testing.T) {
	noRcpt := writeMessage(t, "Subject: no recipients\n\nx\n")
	msg := writeMessage(t, testMessage)
	usage := func(stderr string) error {
		if !strings.HasPrefix(stderr, testUsageHead) {
			return fmt.Errorf("does not start with the usage")
		}
		// The shared flags, then the test command's own, as PrintDefaults
		// writes them (in name order).
		for _, f := range []string{"\n  -auth string\n", "\n  -client-ip string\n", "\n  -config string\n", "\n  -from string\n",
			"\n  -helo string\n", "\n  -json\n", "\n  -milter value\n", "\n  -o string\n", "\n  -rcpt value\n"} {
			if !strings.Contains(stderr, f) {
				return fmt.Errorf("lacks the flag %q", strings.TrimSpace(f))
			}
		}
		return nil
	}
	line := func(want string) func(string) error {
		return func(stderr string) error {
			if stderr != want {
				return fmt.Errorf("want %q", want)
			}
			return nil
		}
	}
	for _, c := range []struct {
		args   []string
		code   int
		stderr func(string) error
	}{
		{[]string{"test", "-milter", "inet:1"}, exitUsage, usage},
		{[]string{"test", "-milter", "inet:1", msg, msg}, exitUsage, usage},
		{[]string{"test", "-h"}, exitOK, usage},
		{[]string{"test", "-bogus", msg}, exitUsage, func(stderr string) error {
			first, rest, _ := strings.Cut(stderr, "\n")
			if first != "flag provided but not defined: -bogus" {
				return fmt.Errorf("first line %q", first)
			}
			return usage(rest)
		}},
		{[]string{"test", "-milter", "inet:1", noRcpt}, exitUsage,
			line("filter-milter test: no recipient: give --rcpt ADDRESS (the message has no To: or Cc: address)\n")},
		{[]string{"test", "-milter", "inet:1", "--rcpt", "a@b", "--client-ip", "nonsense", noRcpt}, exitUsage,
			line("filter-milter test: --client-ip \"nonsense\": ParseAddr(\"nonsense\"): unable to parse IP\n")},
		{[]string{"test", "-milter", "inet:1", "--rcpt", "a b@c", noRcpt}, exitUsage,
			line("filter-milter test: address \"a b@c\": give it bare, without <>, spaces or '|'\n")},
		{[]string{"test", "-milter", "inet:1", "--rcpt", "a@b", "/nonexistent.eml"}, exitUsage,
			line("filter-milter test: open /nonexistent.eml: no such file or directory\n")},
		{[]string{"test", "--rcpt", "a@b", msg}, exitUsage,
			line("filter-milter test: no milter configured: give at least one -milter SPEC, or -config FILE\n")},
		{[]string{"test", "-milter", "tcp:1", msg}, exitUsage, func(stderr string) error {
			if !strings.HasPrefix(stderr, "filter-milter test: -milter: ") || strings.Count(stderr, "\n") != 1 {
				return fmt.Errorf("want one line \"filter-milter test: -milter: ...\"")
			}
			return nil
		}},
	} {
		code, out, errOut := runCmd(t, c.args...)
		if code != c.code {
			t.Errorf("%q: exit %d, want %d", c.args, code, c.code)
		}
		if out != "" {
			t.Errorf("%q: stdout %q, want nothing: it carries the result", c.args, out)
		}
		if err := c.stderr(errOut); err != nil {
			t.Errorf("%q: stderr %v:\n%s", c.args, err, errOut)
		}
	}
}

// TestHelpGoesToStdout: "filter-milter help" prints the usage of all
// three commands on stdout and exits 0; the usage errors of the filter
// print it on stderr and exit 2, leaving stdout to the protocol.
func TestHelpGoesToStdout(t *testing.T) {
	code, out, errOut := runCmd(t, "help")
	if code != exitOK || errOut != "" || !strings.HasPrefix(out, "usage:\n  filter-milter [-config FILE] [flags]") ||
		!strings.Contains(out, "\n  filter-milter check [-config FILE] [flags]") || !strings.Contains(out, "\n  filter-milter test [-config FILE] [flags]") {
		t.Errorf("help: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = runCmd(t, "-bogus")
	if code != exitUsage || out != "" || !strings.Contains(errOut, "flag provided but not defined: -bogus\nusage:\n  filter-milter [-config FILE]") {
		t.Errorf("-bogus: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestFilterRefusesBadConfig runs the filter command with a bad file: it
// must exit 2 with the file, line and key on stderr before reading stdin.
func TestFilterRefusesBadConfig(t *testing.T) {
	path := writeFile(t, "filter-milter.toml", "[[milter]]\nsocket = \"inet:1\"\nsokcet = \"inet:2\"\n")
	var stdout, stderr bytes.Buffer
	code := run([]string{"-config", path}, strings.NewReader(""), &stdout, &stderr)
	if code != exitUsage {
		t.Errorf("exit %d, want %d", code, exitUsage)
	}
	if want := path + ":3: unknown key milter.sokcet"; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q does not contain %q", stderr.String(), want)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout must carry protocol lines only, got %q", stdout.String())
	}
}
