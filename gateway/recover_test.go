package gateway

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
	"github.com/filter-milter/filter-milter/protocol"
)

// panicAtHeader is an observer that panics when the header stage of a
// message is observed: an internal error in the middle of end of message.
type panicAtHeader struct{ NopObserver }

func (panicAtHeader) MilterReply(_, _, stage string, _ milter.Verdict, _ time.Duration) {
	if stage == "header" {
		panic("test: internal error at end of message")
	}
}

// A panic at end of message is contained in its session: the message goes
// back to smtpd as it came, followed by one ".", commit gets the default
// action, and so does every later request of the session (the milters are
// gone).
func TestPanicAtEndOfMessage(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{})
	c, err := milter.ParseConfig(srv.Spec, milter.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	g := New(Config{Milters: []*milter.Pool{milter.NewPool(c)}, DefaultAction: Tempfail, Log: zap.NewNop(), Observer: panicAtHeader{}})
	g.out = newWriter(&out)
	const sid, tok = "0123456789abcdef", "fedcba9876543210"
	s := &session{g: g, id: sid, log: g.log, q: newQueue(), macros: milter.NewMacros(), commit: proceed}
	defer s.finish()
	request := func(phase protocol.Phase, param string) string {
		t.Helper()
		var l protocol.Line
		if err := protocol.ParseLine("filter|0.7|1795504415.685300|smtp-in|"+string(phase)+"|"+sid+"|"+tok+"|"+param, &l); err != nil {
			t.Fatal(err)
		}
		out.Reset()
		s.handle(&l)
		s.flush()
		return out.String()
	}
	answer := func(a string) string { return "filter-result|" + sid + "|" + tok + "|" + a + "\n" }
	for _, st := range []struct {
		phase protocol.Phase
		param string
	}{{protocol.PhaseConnect, "localhost|127.0.0.1"}, {protocol.PhaseEhlo, "client.example"},
		{protocol.PhaseMailFrom, "a@test.example"}, {protocol.PhaseRcptTo, "b@test.example"}, {protocol.PhaseData, ""}} {
		if got := request(st.phase, st.param); got != answer("proceed") {
			t.Fatalf("%s: %q", st.phase, got)
		}
	}
	message := []string{"Subject: x", "", ".dot-stuffed", "body"}
	var want strings.Builder
	for _, l := range message {
		if got := request(protocol.PhaseDataLine, l); got != "" {
			t.Fatalf("data line %q answered before the end of the message: %q", l, got)
		}
		want.WriteString("filter-dataline|" + sid + "|" + tok + "|" + l + "\n")
	}
	want.WriteString("filter-dataline|" + sid + "|" + tok + "|.\n")
	if got := request(protocol.PhaseDataLine, "."); got != want.String() {
		t.Fatalf("after a panic at end of message the gateway wrote\n%s\nwant\n%s", got, want.String())
	}
	tempfail := answer("reject|" + replyTempfail)
	if got := request(protocol.PhaseCommit, ""); got != tempfail {
		t.Fatalf("commit after the panic: %q, want %q", got, tempfail)
	}
	if got := request(protocol.PhaseMailFrom, "c@test.example"); got != tempfail {
		t.Fatalf("next MAIL after the panic: %q, want %q", got, tempfail)
	}
}

// panicAtRelease is an observer that panics when a buffered message is
// released, after its "." has been written.
type panicAtRelease struct{ NopObserver }

func (panicAtRelease) MessageBuffered(string, int64, bool) { panic("test: internal error at release") }

// A panic once the message is back (its "." written) does not write the
// message, or its ".", a second time: smtpd takes one "." per message.
func TestPanicAfterEndOfMessage(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{})
	c, err := milter.ParseConfig(srv.Spec, milter.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	g := New(Config{Milters: []*milter.Pool{milter.NewPool(c)}, DefaultAction: Tempfail, Log: zap.NewNop(), Observer: panicAtRelease{}})
	g.out = newWriter(&out)
	const sid, tok = "0123456789abcdef", "fedcba9876543210"
	s := &session{g: g, id: sid, log: g.log, q: newQueue(), macros: milter.NewMacros(), commit: proceed}
	defer s.finish()
	for _, l := range []string{"connect|localhost|127.0.0.1", "ehlo|client.example", "mail-from|a@test.example",
		"rcpt-to|b@test.example", "data|", "data-line|Subject: x", "data-line|", "data-line|body", "data-line|."} {
		var pl protocol.Line
		if err := protocol.ParseLine("filter|0.7|1795504415.685300|smtp-in|"+l[:strings.IndexByte(l, '|')]+"|"+sid+"|"+tok+l[strings.IndexByte(l, '|'):], &pl); err != nil {
			t.Fatal(err)
		}
		s.handle(&pl)
	}
	s.flush()
	if n := strings.Count(out.String(), "filter-dataline|"+sid+"|"+tok+"|.\n"); n != 1 {
		t.Fatalf("%d \".\" lines written, want 1:\n%s", n, out.String())
	}
	if n := strings.Count(out.String(), "|Subject: x\n"); n != 1 {
		t.Fatalf("the message was written %d times, want once:\n%s", n, out.String())
	}
}
