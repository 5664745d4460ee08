//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// reloadConfig is the filter's configuration file naming one milter.
func reloadConfig(spec string) []byte {
	return []byte(fmt.Sprintf("log_level = \"debug\"\nmilters = [\"%s\"]\n", spec))
}

// TestReload runs smtpd with filter-milter configured by a file naming
// milter A (which adds "X-Milter: A"), and reloads it with SIGHUP:
//
//   - while a message is in the middle of DATA, the file now naming
//     milter B: that message completes on A (its milter session began
//     with the SMTP session), the next one goes through B;
//   - with a broken file: one error line in smtpd's log naming the file,
//     the line and the key; the mail still goes through B; smtpd alive,
//     the filter the same process.
func TestReload(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		a, b := harness.StartNameMilter(t, env, "A"), harness.StartNameMilter(t, env, "B")
		cfg := env.WriteFile("reload.toml", reloadConfig(a.SpecHostPort()), 0o644)
		bin := harness.BuildFilterMilter(t)
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "milter", Filter: []string{"-config", cfg}},
		}})
		pid := filterPID(t, s, bin)
		waitLog(t, s, "registered with smtpd", 1)
		hup := func() {
			t.Helper()
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
				t.Fatalf("kill -HUP %d: %v", pid, err)
			}
		}
		delivered := func(what, want, not string) {
			t.Helper()
			d := s.WaitDeliveries(t, 1, 20*time.Second)[0]
			if !bytes.Contains(d.Data, []byte("\nX-Milter: "+want+"\n")) || bytes.Contains(d.Data, []byte("X-Milter: "+not)) {
				t.Errorf("%s: want it delivered with X-Milter: %s alone:\n%s", what, want, d.Data)
			}
		}
		sendOneThrough := func(what, to, want, not string) {
			t.Helper()
			r := s.Swaks(t, "milter", "--from", "alice@test.example", "--to", to)
			if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
				t.Fatalf("%s: not accepted: %s\n%s", what, r.Summary(), r.Output)
			}
			delivered(what, want, not)
		}

		// (a) A message held in the middle of DATA across a reload.
		sc := harness.DialSMTP(t, s.Port("milter"))
		for _, c := range []struct {
			cmd  string
			code int
		}{{"EHLO client.test.example", 250}, {"MAIL FROM:<alice@test.example>", 250}, {"RCPT TO:<held@test.example>", 250}, {"DATA", 354}} {
			if r := sc.Command(c.cmd); r.Code() != c.code {
				t.Fatalf("%s: %s, want %d\n%s", c.cmd, r, c.code, sc.Transcript.String())
			}
		}
		if err := sc.WriteRaw([]byte("From: Alice <alice@test.example>\r\nTo: <held@test.example>\r\nSubject: held across a reload\r\n")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfg, reloadConfig(b.SpecHostPort()), 0o644); err != nil {
			t.Fatal(err)
		}
		hup()
		waitLog(t, s, "configuration reloaded", 1)
		line := lastLogLine(s, "configuration reloaded")
		for _, want := range []string{`"milters_added": ["` + b.SpecHostPort() + `"]`, `"milters_removed": ["` + a.SpecHostPort() + `"]`} {
			if !strings.Contains(line, want) {
				t.Errorf("the reload line lacks %s: %s", want, line)
			}
		}
		if err := sc.WriteRaw([]byte("\r\nbody of the held message\r\n.\r\n")); err != nil {
			t.Fatal(err)
		}
		if r := sc.ReadReply(); r.Code() != 250 {
			t.Fatalf("end of DATA of the held message: %s, want 250\n%s", r, sc.Transcript.String())
		}
		sc.Command("QUIT")
		delivered("the message in DATA during the reload", "A", "B")
		sendOneThrough("the message after the reload", "next@test.example", "B", "A")

		// (b) A broken file: the running configuration stays.
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf("milters = [\"%s\"]\ncommand_timeout = \"soon\"\n", a.SpecHostPort())), 0o644); err != nil {
			t.Fatal(err)
		}
		hup()
		waitLog(t, s, "configuration reload failed", 1)
		line = lastLogLine(s, "configuration reload failed")
		if want := cfg + ":2: key command_timeout"; !strings.Contains(line, want) {
			t.Errorf("the error line does not name %q: %s", want, line)
		}
		sendOneThrough("a message after the failed reload", "after@test.example", "B", "A")
		if n := strings.Count(s.Proc.Log(), "configuration reload failed"); n != 1 {
			t.Errorf("%d error lines for one failed reload, want 1", n)
		}
		s.Healthy(t)
		if now := filterPID(t, s, bin); now != pid {
			t.Errorf("the filter is pid %d, not %d: it was restarted", now, pid)
		}
		t.Logf("%s: reloaded mid-DATA (A then B), a broken file kept B; smtpd alive, filter pid %d", v.Name, pid)
	})
}

// lastLogLine is the last line of smtpd's log that holds text.
func lastLogLine(s *harness.SMTPD, text string) string {
	lines := strings.Split(s.Proc.Log(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], text) {
			return lines[i]
		}
	}
	return ""
}
