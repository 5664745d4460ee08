//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// The postmaster's tools against real milters: `filter-milter check`
// negotiates with opendkim, with the python3-milter scripted milter (over
// TCP and a unix socket, configured by a TOML file), and fails clearly on
// a closed port and on an SMTP server; `filter-milter test` runs messages
// through opendkim (the signature it shows verifies) and through the
// scripted milter (its 554 at end of message, its 550 at RCPT, its added
// header). No smtpd is involved in `test`.

const toolTimeout = 60 * time.Second

func wantContains(t *testing.T, r harness.ToolResult, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(r.Stdout, w) {
			t.Errorf("%s: output lacks %q\nstdout:\n%s\nstderr:\n%s", r.Summary(), w, r.Stdout, r.Stderr)
		}
	}
}

func wantExit(t *testing.T, r harness.ToolResult, code int) {
	t.Helper()
	if r.ExitCode != code {
		t.Errorf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.Summary(), r.ExitCode, code, r.Stdout, r.Stderr)
	}
}

func TestCheckCommand(t *testing.T) {
	env := harness.NewEnv(t)
	dkim := harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{Mode: harness.DKIMSign})
	tcp := harness.StartPyMilter(t, env, "scripted-tcp", harness.ScriptedMilter(t), "inet")
	unix := harness.StartPyMilter(t, env, "scripted-unix", harness.ScriptedMilter(t), "unix")
	closed := fmt.Sprintf("inet:127.0.0.1:%d", harness.FreePort(t)) // nothing listens there

	t.Run("opendkim", func(t *testing.T) {
		r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "check", "-milter", dkim.Spec)
		t.Logf("output:\n%s", r.Stdout)
		wantExit(t, r, 0)
		wantContains(t, r, "milter "+dkim.Spec+"\n", "version:        v6 (offered v6)", "actions:        ADDHDRS",
			"HDR_LEADSPC", "negotiated in ", "from smtpd: j {daemon_name}", "OK: 1 milter endpoint(s) negotiated")
		// opendkim asks to skip HELO, DATA and UNKNOWN and answers every
		// other stage (bookworm's 2.11.0~beta2).
		wantContains(t, r, "stages skipped: helo data unknown", "no reply to:    none")
	})

	t.Run("scripted-milter-config-file", func(t *testing.T) {
		conf := env.WriteFile("check.toml", []byte(fmt.Sprintf(`# two scripted milters
connect_timeout = "5s"

[[milter]]
name = "scripted-tcp"
socket = %q

[[milter]]
name = "scripted-unix"
socket = %q
default_action = "accept"
`, tcp.SpecHostPort(), unix.Spec)), 0o644)
		r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "check", "-config", conf)
		t.Logf("output:\n%s", r.Stdout)
		wantExit(t, r, 0)
		wantContains(t, r, "milter scripted-tcp\n", "milter scripted-unix\n", "default action accept; timeouts connect 5s",
			"ok:             "+tcp.SpecHostPort()+" negotiated", "ok:             "+unix.Spec+" negotiated",
			"OK: 2 milter endpoint(s) negotiated")
		if n := strings.Count(r.Stdout, "version:        v6 (offered v6)"); n != 2 {
			t.Errorf("%d milters negotiated v6, want 2", n)
		}
		// python3-milter (libmilter) asks for every action it may use
		// and to skip UNKNOWN; it sets SKIP.
		if n := strings.Count(r.Stdout, "actions:        ADDHDRS"); n != 2 {
			t.Errorf("%d milters asked for ADDHDRS, want 2", n)
		}
		wantContains(t, r, "protocol flags: NOUNKNOWN SKIP")
	})

	t.Run("closed-port", func(t *testing.T) {
		r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "check", "-milter", closed)
		t.Logf("output:\n%s", r.Stdout)
		wantExit(t, r, 1)
		wantContains(t, r, "FAILED:         connection refused: "+closed, "connection refused",
			"hint:           nothing listens there", "FAIL: 1 of 1 milter endpoint(s) cannot be used")
	})

	t.Run("one-of-two-down", func(t *testing.T) {
		r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "check", "-milter", dkim.Spec, "-milter", closed)
		wantExit(t, r, 1)
		wantContains(t, r, "ok:             inet:127.0.0.1:", "FAILED:         connection refused", "FAIL: 1 of 2")
	})

	t.Run("smtp-server", func(t *testing.T) {
		// A real OpenSMTPD where a milter should be: its banner is not a
		// milter packet.
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: harness.SMTPD68.Binary})
		spec := fmt.Sprintf("inet:127.0.0.1:%d", s.Port("milter"))
		r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "check", "-connect-timeout", "10s", "-milter", spec)
		t.Logf("output:\n%s", r.Stdout)
		wantExit(t, r, 1)
		wantContains(t, r, "FAILED:         wrong protocol: "+spec, `the peer does not speak milter: it answered "220 mx.test.example ESMTP OpenSMTPD"`)
	})
}

func TestTestCommand(t *testing.T) {
	env := harness.NewEnv(t)
	dkim := harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{Mode: harness.DKIMSign})
	scripted := harness.StartPyMilter(t, env, "scripted-milter", harness.ScriptedMilter(t), "unix")

	t.Run("opendkim-signs-every-sample", func(t *testing.T) {
		for _, m := range harness.LoadMessages(t) {
			in := env.WriteFile("test-in/"+m.Name+".eml", m.Data, 0o644)
			out := env.Path("test-out", m.Name+".eml")
			env.Mkdir("test-out")
			r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "test", "-milter", dkim.Spec, "-o", out, in)
			wantExit(t, r, 0)
			wantContains(t, r, "verdict: ACCEPT", "insert header   at 0: DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=test.example; s=sel1;",
				"+++ "+in+" (as the milters left it)", "\n+DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=test.example; s=sel1;\n")
			signed := readFile(t, out)
			res, err := harness.VerifyDKIM(signed, dkim.Key.Records())
			if err != nil || len(res) != 1 || !res[0].Pass() {
				t.Errorf("%s: the message test wrote does not carry one good signature: %v %v\n%s", m.Name, res, err, signed)
			}
			rest, added := harness.RemoveFields(signed, "DKIM-Signature", "DKIM-Filter")
			if diff := harness.Diff(harness.Normalize(m.Data), rest); diff != "" || len(added) != 2 {
				t.Errorf("%s: apart from the 2 DKIM fields (got %d), the output differs from the input: %s", m.Name, len(added), diff)
			}
			if !t.Failed() {
				t.Logf("%s: %s; signature verifies, rest byte-identical", m.Name, r.Summary())
			}
		}
		// One full output for the log.
		r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "test", "-milter", dkim.Spec, env.Path("test-in", "01-plain.eml"))
		t.Logf("filter-milter test output for 01-plain:\n%s", r.Stdout)
	})

	t.Run("opendkim-json", func(t *testing.T) {
		in := env.WriteFile("test-in/json.eml", scriptedMessage("json").Data, 0o644)
		r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "test", "--json", "--from", "alice@test.example",
			"--rcpt", "bob@test.example", "-milter", dkim.Spec, in)
		wantExit(t, r, 0)
		var res struct {
			Verdict struct{ Decision, Reply, Stage string }
			Changed bool
			Diff    string
			Milters []struct {
				Name    string
				Replies []struct {
					Stage, Verdict string
					Count          int
				}
				Modifications []struct{ Kind, Name, Value string }
			}
		}
		if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, r.Stdout)
		}
		if res.Verdict.Decision != "accept" || !res.Changed || !strings.Contains(res.Diff, "+DKIM-Signature: v=1;") {
			t.Errorf("result %+v", res)
		}
		if len(res.Milters) != 1 || res.Milters[0].Name != dkim.Spec {
			t.Fatalf("milters %+v", res.Milters)
		}
		var sig bool
		for _, m := range res.Milters[0].Modifications {
			sig = sig || (m.Kind == "insheader" && m.Name == "DKIM-Signature" && strings.Contains(m.Value, "d=test.example"))
		}
		last := res.Milters[0].Replies[len(res.Milters[0].Replies)-1]
		if !sig || last.Stage != "eom" || last.Verdict != "accept" {
			t.Errorf("milter log %+v", res.Milters[0])
		}
	})

	t.Run("scripted-reject", func(t *testing.T) {
		in := env.WriteFile("test-in/reject.eml", scriptedMessage("verdict-reject", "X-Test-Verdict: reject").Data, 0o644)
		r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "test", "-milter", scripted.Spec, in)
		t.Logf("output:\n%s", r.Stdout)
		wantExit(t, r, 1)
		wantContains(t, r, `end of DATA                              reject "554 5.7.1 message rejected by scripted milter"`,
			`eom          reject`, `"554 5.7.1 message rejected by scripted milter"`,
			"verdict: REJECT 554 5.7.1 message rejected by scripted milter (at end of DATA)",
			"the message would not be queued")

		r = harness.RunFilterMilter(t, env.Dir, toolTimeout, "test", "--json", "-milter", scripted.Spec, in)
		wantExit(t, r, 1)
		var res struct {
			Verdict struct{ Decision, Reply, Stage string }
		}
		if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, r.Stdout)
		}
		if res.Verdict.Decision != "reject" || res.Verdict.Reply != "554 5.7.1 message rejected by scripted milter" {
			t.Errorf("JSON verdict %+v", res.Verdict)
		}
	})

	t.Run("scripted-rcpt-and-addheader", func(t *testing.T) {
		in := env.WriteFile("test-in/addheader.eml", scriptedMessage("addheader", "X-Test-Actions: addheader").Data, 0o644)
		r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "test", "--rcpt", "rcpt-reject@test.example", "--rcpt", "ok@test.example",
			"--client-ip", "192.0.2.25", "--helo", "client.test.example", "-milter", scripted.Spec, in)
		t.Logf("output:\n%s", r.Stdout)
		wantExit(t, r, 0)
		wantContains(t, r, `RCPT TO:<rcpt-reject@test.example>       reject "550 5.7.1 recipient rejected by scripted milter"`,
			"RCPT TO:<ok@test.example>                proceed", "add header      X-Scripted-Milter: seen",
			"verdict: ACCEPT", "\n+X-Scripted-Milter: seen\n")
		log := scripted.Proc.Log()
		if !strings.Contains(log, "'[192.0.2.25]'") && !strings.Contains(log, "192.0.2.25") {
			t.Errorf("the scripted milter did not see the client address 192.0.2.25:\n%s", harness.Tail(scripted.Proc.LogPath, 20))
		}
	})
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
