package gateway

import (
	"strings"
	"sync"
	"testing"

	djmilter "github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
)

// Milters per client (clients, skip_clients, skip_authenticated) and
// evaluation mode, through the pipe.

// evaluations records the observer's Evaluated calls.
type evaluations struct {
	NopObserver
	mu  sync.Mutex
	got []string // "milter verdict"
}

func (e *evaluations) Evaluated(_, name, verdict string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, name+" "+verdict)
}

func (e *evaluations) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.got...)
}

// startLogged starts the gateway with the info log kept for the test.
func startLogged(t *testing.T, action Action, specs ...string) (*pipe, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core()))
	opts := milter.DefaultOptions
	opts.ConnectTimeout, opts.CommandTimeout, opts.ContentTimeout = 2e9, 2e9, 2e9
	return startGatewayWith(t, action, opts, log, specs...), logs
}

// deliver plays one message through the pipe's session and expects it
// back unchanged and accepted.
func (p *pipe) deliver(lines []string) {
	p.t.Helper()
	p.sendMessage(lines)
	for _, l := range lines {
		p.expect(dataline(l))
	}
	p.expect(dataline("."))
	p.send(req("commit", ""))
	p.expect(result("proceed"))
}

// A milter whose clients do not hold the client, or whose skip_clients
// does, gets no connection at all: the milter never sees one.
func TestMilterNotForClientGetsNoConnection(t *testing.T) {
	elsewhere := miltertest.Start(t, miltertest.Script{})
	skipping := miltertest.Start(t, miltertest.Script{})
	here := miltertest.Start(t, miltertest.Script{})
	unscoped := miltertest.Start(t, miltertest.Script{})
	p := startGateway(t, Tempfail,
		elsewhere.Spec+"{clients=192.0.2.0/24|2001:db8::/32|local}",
		skipping.Spec+"{skip_clients=10.0.0.0/8|127.0.0.0/8}",
		here.Spec+"{clients=192.0.2.0/24|127.0.0.1, skip_clients=127.0.0.2}",
		unscoped.Spec)
	p.handshake()
	p.openSession("b@test.example")
	p.deliver([]string{"Subject: x", "", "body"})
	p.send(rep("link-disconnect"))
	p.waitSessions(0)
	if n := len(elsewhere.Seen()); n != 0 {
		t.Errorf("milter for 192.0.2.0/24 saw %d connections from 127.0.0.1, want none", n)
	}
	if n := len(skipping.Seen()); n != 0 {
		t.Errorf("milter skipping 127.0.0.0/8 saw %d connections from 127.0.0.1, want none", n)
	}
	for name, srv := range map[string]*miltertest.Server{"for 127.0.0.1": here, "unscoped": unscoped} {
		if got := srv.Seen(); len(got) != 1 || string(got[0].Body) != "body\r\n" {
			t.Errorf("milter %s saw %+v, want the message", name, got)
		}
	}
}

// A client of smtpd's unix socket is in no network: "local" names it.
func TestLocalClientMatchesOnlyLocal(t *testing.T) {
	networks := miltertest.Start(t, miltertest.Script{})
	local := miltertest.Start(t, miltertest.Script{})
	p := startGateway(t, Tempfail, networks.Spec+"{clients=0.0.0.0/0|::/0}", local.Spec+"{clients=local}")
	p.handshake()
	p.send(rep("link-connect", "localhost", "pass", "unix:/var/run/smtpd.sock", "unix:/var/run/smtpd.sock"), req("connect", "localhost|local"))
	p.expect(result("proceed"))
	p.send(req("helo", "localhost"))
	p.expect(result("proceed"))
	p.send(rep("link-disconnect")) // after the answer: link-disconnect interrupts a call in flight
	p.waitSessions(0)
	if n := len(networks.Seen()); n != 0 {
		t.Errorf("milter for every network saw %d local connections, want none", n)
	}
	if got := local.Seen(); len(got) != 1 || got[0].Helo != "localhost" {
		t.Errorf("milter for local clients saw %+v", got)
	}
}

// skip_authenticated: after a successful AUTH the milter is out of the
// session, for every later transaction; a failed AUTH changes nothing.
func TestSkipAuthenticatedLeavesAtAuth(t *testing.T) {
	skipping := miltertest.Start(t, miltertest.Script{})
	staying := miltertest.Start(t, miltertest.Script{})
	p := startGateway(t, Tempfail, skipping.Spec+"{skip_authenticated=true}", staying.Spec)
	p.handshake()
	p.send(rep("link-connect", "localhost", "pass", "127.0.0.1:47092", "127.0.0.1:2525"), req("connect", "localhost|127.0.0.1"))
	p.expect(result("proceed"))
	p.send(req("ehlo", "client.example"))
	p.expect(result("proceed"))
	p.send(rep("protocol-client", "AUTH PLAIN ********"), rep("link-auth", "alice", "fail"))
	p.send(rep("protocol-client", "AUTH PLAIN ********"), rep("link-auth", "alice", "pass"))
	for range 2 {
		p.send(req("mail-from", "alice@test.example"))
		p.expect(result("proceed"))
		p.send(req("rcpt-to", "b@test.example"))
		p.expect(result("proceed"))
		p.deliver([]string{"Subject: x", "", "body"})
		p.send(rep("tx-reset", "2a4946c4"))
	}
	p.send(rep("link-disconnect"))
	p.waitSessions(0)
	if got := skipping.Seen(); len(got) != 1 || got[0].Helo != "client.example" || got[0].From != "" || got[0].EOM != 0 {
		t.Errorf("skip_authenticated milter saw %+v, want the connection and HELO only", got)
	}
	if got := staying.Seen(); len(got) != 1 || got[0].EOM != 2 || got[0].Macros["auth_authen"] != "alice" {
		t.Errorf("other milter saw %+v, want both messages and {auth_authen}", got)
	}
}

// An evaluating milter's refusals are not enforced: the message is
// delivered unchanged; what it would have done is logged once per
// message and counted.
func TestEvaluationRefusalIsNotEnforced(t *testing.T) {
	evaluating := miltertest.Start(t, miltertest.Script{
		Rcpt: func(string) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(550, "5.7.1 not this one")
		},
		EOM: func(djmilter.Modifier) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(554, "5.7.1 spam")
		},
	})
	enforcing := miltertest.Start(t, miltertest.Script{})
	name := evaluating.Spec + "{evaluation=true}" // the milter as configured
	p, logs := startLogged(t, Tempfail, name, enforcing.Spec)
	ev := &evaluations{}
	p.observe(ev)
	p.handshake()
	p.openSession("b@test.example", "c@test.example")
	p.deliver(tricky)
	p.send(rep("tx-reset", "2a4946c4"), rep("link-disconnect"))
	p.waitSessions(0)

	if got := enforcing.Seen(); len(got) != 1 || len(got[0].Rcpts) != 2 || got[0].EOM != 1 {
		t.Errorf("the milter after the evaluating one saw %+v, want both recipients and the message", got)
	}
	lines := logs.FilterMessage("evaluation: what the milter would have done").All()
	if len(lines) != 1 {
		t.Fatalf("%d evaluation lines, want 1: %v", len(lines), lines)
	}
	f := lines[0].ContextMap()
	if f["milter"] != name || f["verdict"] != "reject" || f["stage"] != "rcpt" || f["reply"] != "550 5.7.1 not this one" || f["queue_id"] != "2a4946c4" {
		t.Errorf("evaluation line %v", f)
	}
	if got := ev.list(); strings.Join(got, ",") != name+" reject" {
		t.Errorf("Evaluated %q, want one reject", got)
	}
}

// An evaluating milter's changes are not made: the message goes back byte
// for byte, and the milter after it sees it without them.
func TestEvaluationChangesAreNotMade(t *testing.T) {
	evaluating := miltertest.Start(t, miltertest.Script{
		EOM: func(m djmilter.Modifier) (*djmilter.Response, error) {
			_ = m.AddHeader("X-Evaluated", "yes")
			_ = m.ChangeHeader(1, "Subject", "changed")
			_ = m.ReplaceBodyRawChunk([]byte("new\r\n"))
			_ = m.ReplaceBodyRawChunk([]byte("body\r\n"))
			_ = m.Quarantine("suspect")
			return djmilter.RespAccept, nil
		},
	})
	after := miltertest.Start(t, miltertest.Script{})
	for _, specs := range [][]string{
		{evaluating.Spec + "{evaluation=true}", after.Spec},
		{evaluating.Spec + "{evaluation=true}"}, // alone: the lines go back as they come
	} {
		p, logs := startLogged(t, Tempfail, specs...)
		p.handshake()
		p.openSession("b@test.example")
		p.deliver(tricky)
		p.send(rep("link-disconnect"))
		p.waitSessions(0)
		f := logs.FilterMessage("evaluation: what the milter would have done").All()
		if len(f) != 1 {
			t.Fatalf("%d evaluation lines, want 1", len(f))
		}
		want := "[addheader X-Evaluated chgheader Subject replbody quarantine]"
		if m := f[0].ContextMap(); m["verdict"] != "quarantine" || strings.Join(strings.Fields(strings.Trim(toString(m["modifications"]), "[]")), " ") != strings.Trim(want, "[]") {
			t.Errorf("evaluation line %v, want verdict quarantine and modifications %s", m, want)
		}
	}
	got := after.Seen()
	if len(got) != 1 || len(got[0].Headers) != 6 || got[0].Headers[3] != [2]string{"Subject", "test|pipe"} || !strings.HasPrefix(string(got[0].Body), ".leading dot") {
		t.Errorf("the milter after the evaluating one saw %+v, want the message as it came", got)
	}
}

func toString(v any) string {
	switch x := v.(type) {
	case []any:
		var s []string
		for _, e := range x {
			s = append(s, toString(e))
		}
		return "[" + strings.Join(s, " ") + "]"
	case []string:
		return "[" + strings.Join(x, " ") + "]"
	case string:
		return x
	}
	return ""
}

// An evaluating milter's failure changes no answer: no default action,
// nothing sticky. It is reported as an error.
func TestEvaluationFailureChangesNothing(t *testing.T) {
	enforcing := miltertest.Start(t, miltertest.Script{})
	p, logs := startLogged(t, Reject, "inet:127.0.0.1:1{evaluation=true}", enforcing.Spec) // nothing listens on port 1
	ev := &evaluations{}
	p.observe(ev)
	p.handshake()
	p.openSession("b@test.example")
	p.deliver([]string{"Subject: x", "", "body"})
	p.send(rep("link-disconnect"))
	p.waitSessions(0)
	if got := ev.list(); strings.Join(got, ",") != "inet:127.0.0.1:1{evaluation=true} error" {
		t.Errorf("Evaluated %q, want one error", got)
	}
	if n := logs.FilterMessage("milter failed; applying the default action").Len(); n != 0 {
		t.Errorf("the default action was applied for an evaluating milter")
	}
}

// An evaluating milter that refuses the connection at connect is told
// nothing more (it decided), the session goes on, and with no message
// its verdict is reported once as the session ends.
func TestEvaluationConnectRefusalReportedOnce(t *testing.T) {
	evaluating := miltertest.Start(t, miltertest.Script{
		Connect: func() (*djmilter.Response, error) { return djmilter.RejectWithCodeAndReason(554, "5.7.1 go away") },
	})
	name := evaluating.Spec + "{evaluation=true}"
	p, logs := startLogged(t, Tempfail, name)
	ev := &evaluations{}
	p.observe(ev)
	p.handshake()
	p.send(rep("link-connect", "localhost", "pass", "127.0.0.1:47092", "127.0.0.1:2525"), req("connect", "localhost|127.0.0.1"))
	p.expect(result("proceed"))
	p.send(req("helo", "client.example"))
	p.expect(result("proceed"))
	p.send(rep("link-disconnect"))
	p.waitSessions(0)
	if got := ev.list(); strings.Join(got, ",") != name+" reject" {
		t.Errorf("Evaluated %q, want one reject", got)
	}
	if got := evaluating.Seen(); len(got) != 1 || got[0].Helo != "" {
		t.Errorf("milter saw %+v, want the connection only", got)
	}
	f := logs.FilterMessage("evaluation: what the milter would have done").All()
	if len(f) != 1 || f[0].ContextMap()["stage"] != "connect" {
		t.Errorf("evaluation lines %v", f)
	}
}

// A message an enforcing milter refused before the evaluating one's turn
// was not evaluated: no line, no count; the refusal is enforced.
func TestEvaluationAfterARefusalReportsNothing(t *testing.T) {
	enforcing := miltertest.Start(t, miltertest.Script{
		EOM: func(djmilter.Modifier) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(554, "5.7.1 spam")
		},
	})
	evaluating := miltertest.Start(t, miltertest.Script{})
	p, logs := startLogged(t, Tempfail, enforcing.Spec, evaluating.Spec+"{evaluation=true}")
	ev := &evaluations{}
	p.observe(ev)
	p.handshake()
	p.openSession("b@test.example")
	p.sendMessage([]string{"Subject: x", "", "body"})
	p.expect(dataline("Subject: x"), dataline(""), dataline("body"), dataline("."))
	p.send(req("commit", ""))
	p.expect(result("reject|554 5.7.1 spam"))
	p.send(rep("link-disconnect"))
	p.waitSessions(0)
	if got := ev.list(); len(got) != 0 || logs.FilterMessage("evaluation: what the milter would have done").Len() != 0 {
		t.Errorf("Evaluated %q for a message the evaluating milter was not given", got)
	}
	if got := evaluating.Seen(); len(got) != 1 || got[0].EOM != 0 {
		t.Errorf("evaluating milter saw %+v, want no end of message", got)
	}
}
