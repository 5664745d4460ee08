//go:build integration

package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestPerClient runs three fault milters (mode ok: each adds
// "X-Fault-Milter: seen") through real smtpd for the test client,
// 127.0.0.1, each with a clients setting in -milter's braces:
//
//   - clients=192.0.2.0/24: not for this client;
//   - skip_clients=10.0.0.0/8|127.0.0.0/8: never for this client;
//   - clients=127.0.0.0/8: for this client.
//
// The message is delivered with one X-Fault-Milter field, and from the
// milters' side the first two were never connected to (no connect
// callback in their logs) while the third saw the connection and the
// message.
func TestPerClient(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		elsewhere := harness.StartFaultMilter(t, env, "elsewhere-milter", "ok")
		skipping := harness.StartFaultMilter(t, env, "skipping-milter", "ok")
		here := harness.StartFaultMilter(t, env, "here-milter", "ok")
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "perclient", Filter: multiArgs(
				elsewhere.SpecHostPort()+"{clients=192.0.2.0/24}",
				skipping.SpecHostPort()+"{skip_clients=10.0.0.0/8|127.0.0.0/8}",
				here.SpecHostPort()+"{clients=127.0.0.0/8}")},
		}})
		msg := multiMessage("perclient")
		d := multiSend(t, s, "perclient", msg)
		rest, added := harness.RemoveFields(harness.StripDelivered(d.Data), fieldFaultMilter)
		if len(added) != 1 {
			t.Errorf("delivered with %s, want the one of the milter for 127.0.0.0/8", faultFields(added))
		}
		if diff := harness.Diff(harness.Normalize(msg.Data), rest); diff != "" {
			t.Errorf("apart from the milter's field the message changed: %s", diff)
		}
		// The session is over for every milter once the one in it logged
		// its close: the others would have been connected at the same
		// CONNECT.
		here.WaitLines(t, 1, 10*time.Second, " close")
		if got := here.Connections(); len(got) != 1 || len(here.Lines(" eom msgid="+multiMessageID("perclient"))) != 1 {
			t.Errorf("the milter for 127.0.0.0/8 saw %d connections and not the message; its log:\n%s", len(got), harness.Tail(here.Log, 20))
		}
		for _, f := range []*harness.FaultMilter{elsewhere, skipping} {
			if got := f.Connections(); len(got) != 0 {
				t.Errorf("%s was connected to for 127.0.0.1:\n%s", f.Name, strings.Join(got, "\n"))
			}
		}
		t.Logf("connections: %s %d, %s %d, %s %d", elsewhere.Name, len(elsewhere.Connections()), skipping.Name,
			len(skipping.Connections()), here.Name, len(here.Connections()))
		s.Healthy(t)
	})
}

// TestPerClientSkipAuthenticated runs two fault milters (mode ok) behind
// smtpd with STARTTLS and AUTH: the first with skip_authenticated=true.
// A session that authenticates is given to the first milter up to AUTH
// (connect, EHLO), which then gets QUIT: it sees no MAIL and no message,
// and the message is delivered with the second milter's field only. A
// session without AUTH goes through both. It runs where
// StartSMTPDAuth can: every selected version but 6.8, whose STARTTLS
// fails with OpenSSL 3 (smtpd offers AUTH only after STARTTLS), so
// skip_authenticated is not tested through 6.8; when only 6.8 is
// selected, it runs on 7.4.
func TestPerClientSkipAuthenticated(t *testing.T) {
	var vs []harness.SMTPDVersion
	for _, v := range harness.SMTPDVersions() {
		if v.Name != harness.SMTPD68.Name {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		vs = []harness.SMTPDVersion{harness.SMTPD74}
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			v.Require(t)
			env := harness.NewEnv(t)
			skipping := harness.StartFaultMilter(t, env, "skip-auth-milter", "ok")
			staying := harness.StartFaultMilter(t, env, "staying-milter", "ok")
			s := harness.StartSMTPDAuth(t, env, v.Binary, multiArgs(skipping.SpecHostPort()+"{skip_authenticated=true}", staying.SpecHostPort()))
			for _, tc := range []struct {
				name   string
				auth   bool
				fields int // X-Fault-Milter fields delivered
			}{{"authenticated", true, 1}, {"unauthenticated", false, 2}} {
				t.Run(tc.name, func(t *testing.T) {
					m := multiMessage("skip-auth-" + tc.name)
					m.From = "sender-" + tc.name + "@test.example"
					r := s.SendAuth(t, m, tc.auth)
					t.Logf("%s: %s", m.Name, r.Summary())
					if tc.auth && !strings.HasPrefix(r.Reply("AUTH"), "235 ") {
						t.Fatalf("AUTH: %q, want 235; swaks:\n%s", r.Reply("AUTH"), r.Output)
					}
					expectEndOfData(t, r, "250 ")
					d := s.WaitDeliveries(t, 1, 20*time.Second)[0]
					rest, added := harness.RemoveFields(harness.StripDelivered(d.Data), fieldFaultMilter)
					if len(added) != tc.fields {
						t.Errorf("delivered with %s, want %d", faultFields(added), tc.fields)
					}
					if diff := harness.Diff(harness.Normalize(m.Data), rest); diff != "" {
						t.Errorf("apart from the milters' fields the message changed: %s", diff)
					}
					staying.WaitLines(t, 1, 10*time.Second, " mail ", m.From)
					mails := skipping.Lines(" mail ", m.From)
					if tc.auth && len(mails) != 0 {
						t.Errorf("the skip_authenticated milter saw MAIL of the authenticated session:\n%s", strings.Join(mails, "\n"))
					}
					if !tc.auth && len(mails) != 1 {
						t.Errorf("the skip_authenticated milter saw MAIL of the unauthenticated session %d times, want once", len(mails))
					}
				})
			}
			// The authenticated session's connection to the first milter
			// was closed at AUTH: both sessions' connections are closed,
			// and it saw one message only.
			skipping.WaitLines(t, 2, 10*time.Second, " close")
			if got := skipping.Connections(); len(got) != 2 {
				t.Errorf("the skip_authenticated milter saw %d connections, want one per session", len(got))
			}
			if n := len(s.FilterLines("milter leaves the session (skip_authenticated)")); n != 1 {
				t.Errorf("filter-milter logged %d departures after AUTH, want 1", n)
			}
			s.Healthy(t)
		})
	}
}
