//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestOpsHealthzPool runs smtpd with filter-milter in front of a pool of
// two scripted milters, written in Postfix's main.cf notation, and
// watches /healthz and filter_milter_endpoint_up while the endpoints die
// and one comes back. The pool learns an endpoint's state from sessions,
// so each step sends mail and then polls the answer:
//   - both up: /healthz 200 ok, both gauges 1;
//   - one killed: mail still goes through (the pool fails over), /healthz
//     still 200, that endpoint's gauge 0;
//   - both killed: /healthz 503 naming the milter;
//   - one brought back on its port: /healthz 200 again once a session has
//     found it, its gauge 1.
func TestOpsHealthzPool(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		script := harness.ScriptedMilter(t)
		m1 := harness.StartPyMilter(t, env, "scripted-1", script, "inet")
		m2 := harness.StartPyMilter(t, env, "scripted-2", script, "inet")
		ep1, ep2 := harness.OnPort(m1.Port), harness.OnPort(m2.Port)
		spec := fmt.Sprintf("{ %s, %s, connect_timeout=5, command_timeout=10 }", ep1, ep2)
		metricsPort := harness.FreePort(t)
		metricsAddr := fmt.Sprintf("127.0.0.1:%d", metricsPort)
		args := append(filterArgs(spec), "-metrics-listen", metricsAddr)
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "milter", Filter: args},
		}})
		harness.WaitTCP(t, s.Proc, metricsPort, 10*time.Second)
		healthz, metrics := "http://"+metricsAddr+"/healthz", "http://"+metricsAddr+"/metrics"

		n := 0
		send := func() harness.SwaksResult {
			n++
			msg := scriptedMessage(fmt.Sprintf("ops-%d", n))
			return s.Send(t, "milter", msg)
		}
		wantHealth := func(step string, code int, body string) {
			t.Helper()
			if got, gotBody := harness.Healthz(t, healthz); got != code || gotBody != body {
				t.Errorf("%s: /healthz %d %q, want %d %q", step, got, gotBody, code, body)
			}
		}
		wantUp := func(step, ep string, want float64) {
			t.Helper()
			if got := harness.EndpointUp(t, metrics, spec, ep); got != want {
				t.Errorf("%s: filter_milter_endpoint_up{endpoint=%q} = %v, want %v", step, ep, got, want)
			}
		}

		// Both up: two sessions, one on each endpoint.
		for i := 0; i < 2; i++ {
			if r := send(); !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
				t.Fatalf("both up: end of DATA %q; swaks said:\n%s", r.EndOfDataReply(), r.Output)
			}
		}
		wantHealth("both up", 200, "ok\n")
		wantUp("both up", ep1, 1)
		wantUp("both up", ep2, 1)

		// One killed: sessions fail over to the other, until one has found
		// the dead endpoint.
		m1.Proc.Stop()
		harness.Until(t, 30*time.Second, "the pool marks the killed endpoint down", func() (bool, string) {
			if r := send(); !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
				t.Fatalf("one killed: end of DATA %q, want 250 (failover); swaks said:\n%s", r.EndOfDataReply(), r.Output)
			}
			up := harness.EndpointUp(t, metrics, spec, ep1)
			return up == 0, fmt.Sprintf("gauge %v", up)
		})
		wantHealth("one killed", 200, "ok\n")
		wantUp("one killed", ep2, 1)

		// Both killed: the next session finds no endpoint.
		m2.Proc.Stop()
		want503 := "milter " + spec + ": no endpoint up\n"
		harness.Until(t, 30*time.Second, "/healthz 503 with both endpoints killed", func() (bool, string) {
			send()
			code, body := harness.Healthz(t, healthz)
			return code == 503 && body == want503, fmt.Sprintf("%d %q", code, body)
		})
		wantUp("both killed", ep1, 0)
		wantUp("both killed", ep2, 0)

		// One back on its port: the pool tries its endpoints again with the
		// next session (every endpoint being down, it tries them all).
		harness.RestartPyMilter(t, env, m1, "scripted-1-again", script)
		harness.Until(t, 30*time.Second, "/healthz 200 once the endpoint is back", func() (bool, string) {
			send()
			code, body := harness.Healthz(t, healthz)
			return code == 200 && body == "ok\n", fmt.Sprintf("%d %q", code, body)
		})
		wantUp("one back", ep1, 1)
		wantUp("one back", ep2, 0)
		if r := send(); !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
			t.Errorf("one back: end of DATA %q, want 250; swaks said:\n%s", r.EndOfDataReply(), r.Output)
		}
	})
}

// TestOpsPostfixNotationAndSeconds runs the filter through smtpd with a
// milter written as Postfix's main.cf writes it, and every duration flag
// in plain seconds: smtpd must start and the message go through the
// milter (its header added), where before the braces and "30" were
// refused and the filter exit took smtpd down.
func TestOpsPostfixNotationAndSeconds(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		m := harness.StartPyMilter(t, env, "scripted", harness.ScriptedMilter(t), "inet")
		spec := fmt.Sprintf("{ %s, default_action=tempfail, command_timeout=10, content_timeout=20 }", m.SpecHostPort())
		args := append(filterArgs(spec), "-connect-timeout", "30", "-command-timeout", "30", "-content-timeout", "300",
			"-eom-timeout", "600", "-shutdown-timeout", "5")
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "milter", Filter: args},
		}})
		r := s.Send(t, "milter", scriptedMessage("postfix-notation"))
		if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
			t.Fatalf("end of DATA %q, want 250; swaks said:\n%s", r.EndOfDataReply(), r.Output)
		}
		if r := s.Send(t, "milter", scriptedMessage("postfix-reject", "X-Test-Verdict: reject")); !strings.HasPrefix(r.EndOfDataReply(), "554 ") {
			t.Errorf("the milter's reject: end of DATA %q, want 554; swaks said:\n%s", r.EndOfDataReply(), r.Output)
		}
	})
}

// TestOpsVersionAndHelp runs the built binary: -version and help print
// one line and the usage on stdout and exit 0; a usage error is one line
// "filter-milter: ..." on stderr and exit 2.
func TestOpsVersionAndHelp(t *testing.T) {
	env := harness.NewEnv(t)
	r := harness.RunFilterMilter(t, env.Dir, toolTimeout, "-version")
	if r.ExitCode != 0 || !strings.HasPrefix(r.Stdout, "filter-milter ") || strings.Count(r.Stdout, "\n") != 1 || r.Stderr != "" {
		t.Errorf("-version: exit %d, stdout %q, stderr %q", r.ExitCode, r.Stdout, r.Stderr)
	}
	for _, args := range [][]string{{"-h"}, {"help"}, {"check", "-h"}, {"test", "-help"}} {
		r := harness.RunFilterMilter(t, env.Dir, toolTimeout, args...)
		if r.ExitCode != 0 || !strings.HasPrefix(r.Stdout, "usage:") || r.Stderr != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, r.ExitCode, r.Stdout, r.Stderr)
		}
	}
	r = harness.RunFilterMilter(t, env.Dir, toolTimeout, "-milter", "{ inet:1, default_action=drop }")
	if first, _, _ := strings.Cut(r.Stderr, "\n"); r.ExitCode != 2 || r.Stdout != "" ||
		first != `filter-milter: -milter: milter "{ inet:1, default_action=drop }": default_action=drop: want tempfail, accept or reject` {
		t.Errorf("bad -milter: exit %d, stdout %q, stderr %q", r.ExitCode, r.Stdout, r.Stderr)
	}
}
