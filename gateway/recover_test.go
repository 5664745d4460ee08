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

const testSID, testTok = "0123456789abcdef", "fedcba9876543210"

// directSession is a session with one milter that accepts everything,
// driven by the test itself rather than by its goroutine, writing into a
// buffer.
type directSession struct {
	t   *testing.T
	s   *session
	out bytes.Buffer
}

func newDirectSession(t *testing.T, obs Observer) *directSession {
	srv := miltertest.Start(t, miltertest.Script{})
	c, err := milter.ParseConfig(srv.Spec, milter.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	d := &directSession{t: t}
	g := New(Config{Milters: []*milter.Pool{milter.NewPool(c, nil)}, DefaultAction: Tempfail, Log: zap.NewNop(), Observer: obs})
	g.out = newWriter(&d.out)
	d.s = &session{g: g, cfg: g.cfg.Load(), id: testSID, log: g.log, q: newQueue(), macros: milter.NewMacros(), commit: proceed}
	t.Cleanup(d.s.finish)
	return d
}

// request has the session handle one filter request and returns what it
// wrote for it.
func (d *directSession) request(phase protocol.Phase, param string) string {
	d.t.Helper()
	var l protocol.Line
	if err := protocol.ParseLine("filter|0.7|1795504415.685300|smtp-in|"+string(phase)+"|"+testSID+"|"+testTok+"|"+param, &l); err != nil {
		d.t.Fatal(err)
	}
	d.out.Reset()
	d.s.handle(&l)
	d.s.flush()
	return d.out.String()
}

// toData plays a session up to an accepted DATA.
func (d *directSession) toData() {
	d.t.Helper()
	for _, st := range []struct {
		phase protocol.Phase
		param string
	}{{protocol.PhaseConnect, "localhost|127.0.0.1"}, {protocol.PhaseEhlo, "client.example"},
		{protocol.PhaseMailFrom, "a@test.example"}, {protocol.PhaseRcptTo, "b@test.example"}, {protocol.PhaseData, ""}} {
		if got := d.request(st.phase, st.param); got != testAnswer("proceed") {
			d.t.Fatalf("%s: %q", st.phase, got)
		}
	}
}

func testAnswer(a string) string { return "filter-result|" + testSID + "|" + testTok + "|" + a + "\n" }

func testDataLine(l string) string {
	return "filter-dataline|" + testSID + "|" + testTok + "|" + l + "\n"
}

// panicAtHeader is an observer that panics when the header stage of a
// message is observed: an internal error in the middle of end of message.
type panicAtHeader struct{ NopObserver }

func (panicAtHeader) MilterReply(_, _ string, stage milter.Stage, _ milter.Verdict, _ time.Duration) {
	if stage == "header" {
		panic("test: internal error at end of message")
	}
}

// A panic at end of message is contained in its session: the message goes
// back to smtpd as it came, followed by one ".", commit gets the default
// action, and so does every later request of the session (the milters are
// gone).
func TestPanicAtEndOfMessage(t *testing.T) {
	d := newDirectSession(t, panicAtHeader{})
	d.toData()
	var want strings.Builder
	for _, l := range []string{"Subject: x", "", ".dot-stuffed", "body"} {
		if got := d.request(protocol.PhaseDataLine, l); got != "" {
			t.Fatalf("data line %q answered before the end of the message: %q", l, got)
		}
		want.WriteString(testDataLine(l))
	}
	want.WriteString(testDataLine("."))
	if got := d.request(protocol.PhaseDataLine, "."); got != want.String() {
		t.Fatalf("after a panic at end of message the gateway wrote\n%s\nwant\n%s", got, want.String())
	}
	tempfail := testAnswer("reject|" + replyTempfail)
	if got := d.request(protocol.PhaseCommit, ""); got != tempfail {
		t.Fatalf("commit after the panic: %q, want %q", got, tempfail)
	}
	if got := d.request(protocol.PhaseMailFrom, "c@test.example"); got != tempfail {
		t.Fatalf("next MAIL after the panic: %q, want %q", got, tempfail)
	}
}

// panicAtRelease is an observer that panics when a buffered message is
// released, after its "." has been written.
type panicAtRelease struct{ NopObserver }

func (panicAtRelease) MessageBuffered(string, int64, bool) { panic("test: internal error at release") }

// A panic once the message is back (its "." written) is contained, and
// does not write the message, or its ".", a second time: smtpd takes one
// "." per message.
func TestPanicAfterEndOfMessage(t *testing.T) {
	d := newDirectSession(t, panicAtRelease{})
	d.toData()
	for _, l := range []string{"Subject: x", "", "body"} {
		d.request(protocol.PhaseDataLine, l)
	}
	want := testDataLine("Subject: x") + testDataLine("") + testDataLine("body") + testDataLine(".")
	if got := d.request(protocol.PhaseDataLine, "."); got != want {
		t.Fatalf("end of message with a panic at release wrote\n%s\nwant\n%s", got, want)
	}
}
