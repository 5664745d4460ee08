package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
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
// command exits 2, with one line saying what is wrong on stderr (and the
// usage after it for a usage error), and nothing on stdout, where the
// result goes; -h prints the usage on stdout and exits 0.
func TestTestCommandUsage(t *testing.T) {
	noRcpt := writeMessage(t, "Subject: no recipients\n\nx\n")
	msg := writeMessage(t, testMessage)
	usage := func(text string) error {
		if !strings.HasPrefix(text, testUsageHead) {
			return fmt.Errorf("does not start with the usage")
		}
		// The shared flags, then the test command's own, as PrintDefaults
		// writes them (in name order).
		for _, f := range []string{"\n  -auth string\n", "\n  -client-ip string\n", "\n  -config string\n", "\n  -from string\n",
			"\n  -helo string\n", "\n  -json\n", "\n  -milter value\n", "\n  -o string\n", "\n  -rcpt value\n",
			"\n  -command-timeout time\n"} {
			if !strings.Contains(text, f) {
				return fmt.Errorf("lacks the flag %q", strings.TrimSpace(f))
			}
		}
		return nil
	}
	errorThenUsage := func(want string) func(string) error {
		return func(stderr string) error {
			first, rest, _ := strings.Cut(stderr, "\n")
			if first != want {
				return fmt.Errorf("first line %q, want %q", first, want)
			}
			return usage(rest)
		}
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
		args           []string
		code           int
		stdout, stderr func(string) error
	}{
		{[]string{"test", "-milter", "inet:1"}, exitUsage, nil, errorThenUsage("filter-milter: test: want one MESSAGE.eml, got 0")},
		{[]string{"test", "-milter", "inet:1", msg, msg}, exitUsage, nil, errorThenUsage("filter-milter: test: want one MESSAGE.eml, got 2")},
		{[]string{"test", "-h"}, exitOK, usage, line("")},
		{[]string{"test", "-help", msg}, exitOK, usage, line("")},
		{[]string{"help", "test"}, exitOK, usage, line("")},
		{[]string{"test", "-bogus", msg}, exitUsage, nil, errorThenUsage("filter-milter: flag provided but not defined: -bogus")},
		{[]string{"test", "-milter", "inet:1", noRcpt}, exitUsage, nil,
			line("filter-milter: no recipient: give --rcpt ADDRESS (the message has no To: or Cc: address)\n")},
		{[]string{"test", "-milter", "inet:1", "--rcpt", "a@b", "--client-ip", "nonsense", noRcpt}, exitUsage, nil,
			line("filter-milter: --client-ip \"nonsense\": ParseAddr(\"nonsense\"): unable to parse IP\n")},
		{[]string{"test", "-milter", "inet:1", "--rcpt", "a b@c", noRcpt}, exitUsage, nil,
			line("filter-milter: address \"a b@c\": give it bare, without <>, spaces or '|'\n")},
		{[]string{"test", "-milter", "inet:1", "--rcpt", "a@b", "/nonexistent.eml"}, exitUsage, nil,
			line("filter-milter: open /nonexistent.eml: no such file or directory\n")},
		{[]string{"test", "--rcpt", "a@b", msg}, exitUsage, nil,
			line("filter-milter: no milter configured: give at least one -milter SPEC, or -config FILE\n")},
		{[]string{"test", "-milter", "tcp:1", msg}, exitUsage, nil, func(stderr string) error {
			if !strings.HasPrefix(stderr, "filter-milter: -milter: ") || strings.Count(stderr, "\n") != 1 {
				return fmt.Errorf("want one line \"filter-milter: -milter: ...\"")
			}
			return nil
		}},
	} {
		code, out, errOut := runCmd(t, c.args...)
		if code != c.code {
			t.Errorf("%q: exit %d, want %d", c.args, code, c.code)
		}
		if c.stdout == nil && out != "" {
			t.Errorf("%q: stdout %q, want nothing: it carries the result", c.args, out)
		}
		if c.stdout != nil {
			if err := c.stdout(out); err != nil {
				t.Errorf("%q: stdout %v:\n%s", c.args, err, out)
			}
		}
		if err := c.stderr(errOut); err != nil {
			t.Errorf("%q: stderr %v:\n%s", c.args, err, errOut)
		}
	}
}

// TestHelpGoesToStdout: help, -h and -help print the usage on stdout and
// exit 0, for the filter and each command; a usage error prints the error
// and the usage on stderr and exits 2, leaving stdout to the protocol.
func TestHelpGoesToStdout(t *testing.T) {
	const filterHead = "usage:\n  filter-milter [-config FILE] [flags]"
	for _, c := range []struct {
		args []string
		head string
		flag string // one of the flags listed
	}{
		{[]string{"help"}, filterHead, "\n  -version\n"},
		{[]string{"-h"}, filterHead, "\n  -version\n"},
		{[]string{"-help"}, filterHead, "\n  -metrics-listen string\n"},
		{[]string{"--help"}, filterHead, "\n  -connect-timeout time\n"},
		{[]string{"-milter", "inet:1", "-h"}, filterHead, "\n  -milter value\n"},
		{[]string{"check", "-h"}, checkUsage, "\n  -milter value\n"},
		{[]string{"help", "check"}, checkUsage, "\n  -milter value\n"},
		{[]string{"test", "-h"}, testUsage, "\n  -rcpt value\n"},
	} {
		code, out, errOut := runCmd(t, c.args...)
		if code != exitOK || errOut != "" || !strings.HasPrefix(out, c.head) || !strings.Contains(out, c.flag) {
			t.Errorf("%q: exit %d, stderr %q, stdout:\n%s\nwant exit 0, nothing on stderr, stdout starting %q and listing %q",
				c.args, code, errOut, out, c.head, c.flag)
		}
	}
	code, out, _ := runCmd(t, "help")
	for _, want := range []string{"\n  filter-milter check [-config FILE] [flags]", "\n  filter-milter test [-config FILE] [flags]", "\n  filter-milter -version"} {
		if !strings.Contains(out, want) {
			t.Errorf("help: exit %d, stdout lacks %q:\n%s", code, want, out)
		}
	}
	code, out, errOut := runCmd(t, "-bogus")
	if code != exitUsage || out != "" || !strings.HasPrefix(errOut, "filter-milter: flag provided but not defined: -bogus\nusage:\n  filter-milter [-config FILE]") {
		t.Errorf("-bogus: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestErrorsInOneStyle runs every error path of the three commands that
// ends before a session: each exits 2, prints nothing on stdout, and its
// first line on stderr is "filter-milter: " and what is wrong, naming the
// spec, flag or key.
func TestErrorsInOneStyle(t *testing.T) {
	msg := writeMessage(t, testMessage)
	badFile := writeFile(t, "bad.toml", "default_action = \"drop\"\n")
	for _, c := range []struct {
		args []string
		want string // in the first line
	}{
		{[]string{"-bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"-command-timeout", "soon"}, `invalid value "soon" for flag -command-timeout`},
		{[]string{"-milter", "inet:1", "stray"}, `unexpected arguments ["stray"]`},
		{[]string{}, "no milter configured"},
		{[]string{"-milter", "{ inet:1, default_action=drop }"}, `-milter: milter "{ inet:1, default_action=drop }": default_action=drop`},
		{[]string{"-milter", "inet:1{comand_timeout=1}"}, `comand_timeout=1: unknown setting`},
		{[]string{"-milter", "inet:1", "-default-action", "drop"}, "default action"},
		{[]string{"-config", badFile}, badFile + ":1: key default_action"},
		{[]string{"-config", "/nonexistent.toml"}, "/nonexistent.toml"},
		{[]string{"check", "-bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"check", "stray"}, `check: unexpected arguments ["stray"]`},
		{[]string{"check"}, "no milter configured"},
		{[]string{"check", "-config", badFile}, badFile + ":1: key default_action"},
		{[]string{"check", "-milter", "tcp:1"}, `-milter: milter "tcp:1"`},
		{[]string{"test", "-bogus", msg}, "flag provided but not defined: -bogus"},
		{[]string{"test", "-config", badFile, msg}, badFile + ":1: key default_action"},
		{[]string{"test", "-milter", "inet:1", "-eom-timeout", "0", msg}, `invalid value "0" for flag -eom-timeout`},
		{[]string{"help", "bogus"}, "help bogus: want help, help check or help test"},
	} {
		code, out, errOut := runCmd(t, c.args...)
		first, _, _ := strings.Cut(errOut, "\n")
		if code != exitUsage || out != "" || !strings.HasPrefix(first, "filter-milter: ") || !strings.Contains(first, c.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr:\n%s\nwant exit 2, nothing on stdout, a first line \"filter-milter: ...%s...\"",
				c.args, code, out, errOut, c.want)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"-version"}, {"version"}, {"-milter", "inet:1", "-version"}} {
		code, out, errOut := runCmd(t, args...)
		if code != exitOK || errOut != "" || !strings.HasPrefix(out, "filter-milter ") || strings.Count(out, "\n") != 1 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 0 and one line \"filter-milter VERSION ...\"", args, code, out, errOut)
		}
	}
	bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/filter-milter/filter-milter", Version: "v1.2.3"}}
	for _, c := range []struct {
		settings []debug.BuildSetting
		want     string
	}{
		{nil, "filter-milter v1.2.3"},
		{[]debug.BuildSetting{{Key: "vcs.revision", Value: "0123abc"}, {Key: "vcs.modified", Value: "false"}}, "filter-milter v1.2.3 (0123abc)"},
		{[]debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0123abc"}, {Key: "vcs.modified", Value: "true"}},
			"filter-milter v1.2.3 (0123abc, modified)"},
	} {
		bi.Settings = c.settings
		if got := versionLine(bi, true); got != c.want {
			t.Errorf("versionLine(%v) = %q, want %q", c.settings, got, c.want)
		}
	}
	if got := versionLine(nil, false); got != "filter-milter (unknown)" {
		t.Errorf("without build information: %q", got)
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
