//go:build integration

// Package integration runs filter-milter between real peers: OpenSMTPD
// starts it as a proc-exec filter, and it talks to opendkim and to a
// python3-milter script. The tests need root and the Debian packages that
// .ci/install-deps installs (`make deps`); a missing piece fails the test
// with a message that says how to install it.
//
// Every test runs once per smtpd version (subtests smtpd-6.8 and smtpd-7.4;
// FILTER_MILTER_SMTPDS=smtpd-6.8 restricts them). FILTER_MILTER_KEEP=1
// keeps each test's directory (configs, logs, sent and delivered files);
// a failed test's directory is always kept. FILTER_MILTER_LOG_LEVEL sets
// filter-milter's -log-level (default debug; empty: no such flag).
package integration

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

func TestMain(m *testing.M) {
	code := m.Run()
	harness.RemoveBuild()
	os.Exit(code)
}

// forEachSMTPD runs f as one subtest per smtpd version.
func forEachSMTPD(t *testing.T, f func(t *testing.T, v harness.SMTPDVersion)) {
	t.Helper()
	vs := harness.SMTPDVersions()
	if len(vs) == 0 {
		var known []string
		for _, v := range harness.KnownSMTPDVersions() {
			known = append(known, v.Name)
		}
		t.Fatalf("%s=%q selects no smtpd version (known: %s)", harness.SMTPDVersionsEnv,
			os.Getenv(harness.SMTPDVersionsEnv), strings.Join(known, ", "))
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			v.Require(t)
			f(t, v)
		})
	}
}

// logLevelEnv sets filter-milter's -log-level in the tests (default
// debug); set it to the empty string to pass no -log-level flag at all.
const logLevelEnv = "FILTER_MILTER_LOG_LEVEL"

// filterArgs are the filter-milter arguments for one milter.
func filterArgs(spec string) []string {
	level, ok := os.LookupEnv(logLevelEnv)
	if !ok {
		level = "debug"
	}
	args := []string{"-milter", spec}
	if level != "" {
		args = append(args, "-log-level", level)
	}
	return args
}

// sentMessage is a message sent by sendAll, with swaks' result and the
// delivery it made.
type sentMessage struct {
	harness.Message
	Result   harness.SwaksResult
	Delivery harness.Delivery
}

// sendAll sends each message from alice@test.example to its own recipient,
// bob+<name>@test.example, through the named listener, then waits for the
// deliveries and pairs them with the messages by recipient. A message that
// does not get 250 at the end of DATA is an error (the test goes on with
// the others) and is left out of the result.
func sendAll(t *testing.T, s *harness.SMTPD, listener string, msgs []harness.Message) []sentMessage {
	t.Helper()
	var out []sentMessage
	byRcpt := map[string]int{}
	for _, m := range msgs {
		m.From = "alice@test.example"
		rcpt := "bob+" + m.Name + "@test.example"
		m.To = []string{rcpt}
		r := s.Send(t, listener, m)
		if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
			t.Errorf("%s via %s: %s, want 250 at the end of DATA; swaks said:\n%s", m.Name, listener, r.Summary(), r.Output)
			continue
		}
		byRcpt[rcpt] = len(out)
		out = append(out, sentMessage{Message: m, Result: r})
	}
	if len(out) == 0 {
		t.FailNow()
	}
	for _, d := range s.WaitDeliveries(t, len(out), 20*time.Second) {
		i, ok := byRcpt[d.Rcpt]
		if !ok {
			t.Fatalf("delivery %s for an unexpected recipient %q", d.Path, d.Rcpt)
		}
		out[i].Delivery = d
	}
	return out
}
