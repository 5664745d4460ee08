package gateway

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	djmilter "github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/filter-milter/filter-milter/compat"
	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
	"github.com/filter-milter/filter-milter/smtpdplay"
)

// pipe runs a gateway on in-memory pipes, with smtpdplay playing smtpd.
// send and expect speak for one session, the pipe's: send writes reports
// and requests, expect checks the gateway's next lines for it, which
// result and dataline describe. Tests of several sessions use the player.
type pipe struct {
	t     *testing.T
	g     *Gateway
	in    *io.PipeWriter // the gateway's stdin
	out   *os.File       // the gateway's stdout, read by the player
	done  chan error     // Run's return
	watch *sessionWatch

	play     *smtpdplay.Player
	finished bool
	s        *smtpdplay.Session
	tok      smtpdplay.Token // the last request's: result answers it
	data     smtpdplay.Token // the current message's data lines
}

func startGateway(t *testing.T, action Action, specs ...string) *pipe {
	t.Helper()
	opts := milter.DefaultOptions
	opts.ConnectTimeout, opts.CommandTimeout, opts.ContentTimeout = 2*time.Second, 2*time.Second, 2*time.Second
	return startGatewayWith(t, action, opts, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), specs...)
}

// startGatewayWith starts the gateway; handshake starts smtpd's side, so
// that a test may change p.g.cfg before the first line.
func startGatewayWith(t *testing.T, action Action, opts milter.Options, log *zap.Logger, specs ...string) *pipe {
	t.Helper()
	var clients []*milter.Pool
	for _, s := range specs {
		c, err := milter.ParseConfig(s, opts)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, milter.NewPool(c, log))
	}
	watch := &sessionWatch{Observer: NopObserver{}, closed: make(chan struct{}, 1)}
	g := New(Config{Milters: clients, DefaultAction: action, Log: log, Observer: watch})
	inR, inW := io.Pipe()
	// A kernel pipe, as smtpd's socketpair is buffered: smtpd never waits
	// to write a line until the filter's answers have been read, and the
	// gateway may write back while it reads.
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &pipe{t: t, g: g, in: inW, out: outR, done: make(chan error, 1), watch: watch}
	go func() { p.done <- g.Run(inR, outW); _ = outW.Close() }()
	t.Cleanup(func() {
		if p.play == nil {
			_ = inW.Close()
			go func() { _, _ = io.Copy(io.Discard, outR) }()
		} else {
			p.finish()
		}
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("gateway did not stop after stdin closed")
		}
		_ = outR.Close()
	})
	return p
}

// handshake plays smtpd 6.8's handshake (protocol 0.6) and opens the
// pipe's session.
func (p *pipe) handshake() { p.t.Helper(); p.handshakeWith(smtpdplay.Config{}) }

func (p *pipe) handshakeWith(cfg smtpdplay.Config) {
	p.t.Helper()
	var err error
	if p.play, err = smtpdplay.Start(p.in, p.out, cfg); err != nil {
		p.t.Fatal(err)
	}
	p.s = p.play.NewSession()
}

// finish closes the gateway's stdin, reads its stdout to the end and
// fails the test on any line smtpd would not take or nobody expected:
// "these lines, then nothing".
func (p *pipe) finish() {
	p.t.Helper()
	if p.finished {
		return
	}
	p.finished = true
	if err := p.play.Close(); err != nil {
		p.t.Errorf("the gateway's output: %v", err)
	}
}

// observe makes o hear what the gateway does; call it before handshake.
func (p *pipe) observe(o Observer) { p.watch.Observer = o }

// sessionWatch passes every event on, and signals each closed session so
// that waitSessions waits for the event rather than polling.
type sessionWatch struct {
	Observer
	closed chan struct{}
}

func (w *sessionWatch) SessionClosed(id string) {
	w.Observer.SessionClosed(id)
	select {
	case w.closed <- struct{}{}:
	default:
	}
}

// waitSessions waits until n sessions are live. The gateway counts a
// session gone before it tells the observer.
func (p *pipe) waitSessions(n int) {
	p.t.Helper()
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	for p.g.Sessions() != n {
		select {
		case <-p.watch.closed:
		case <-deadline.C:
			p.t.Fatalf("%d sessions still live, want %d", p.g.Sessions(), n)
		}
	}
}

// smtpdLine is a line smtpd writes for the pipe's session: a report or a
// filter request.
type smtpdLine struct {
	report bool
	name   string // event or phase
	fields []string
}

func rep(event string, fields ...string) smtpdLine {
	return smtpdLine{report: true, name: event, fields: fields}
}

func req(phase, param string) smtpdLine { return smtpdLine{name: phase, fields: []string{param}} }

// filterLine is a line the gateway writes for the pipe's session: the
// answer to the last request, or a data line of the current message.
type filterLine struct {
	data bool
	text string
}

func result(decision string) filterLine { return filterLine{text: decision} }

func dataline(l string) filterLine { return filterLine{data: true, text: l} }

// send writes the lines for the pipe's session, a fresh token for each
// request. The data lines of a message share one token, started by its
// data request (or by a data line that comes first); consecutive data
// lines go in one write, as smtpd writes them under load.
func (p *pipe) send(ls ...smtpdLine) {
	p.t.Helper()
	for i := 0; i < len(ls); i++ {
		l := ls[i]
		var err error
		switch {
		case l.report:
			err = p.s.Report(l.name, l.fields...)
		case l.name == "data-line":
			var lines []string
			for ; i < len(ls) && !ls[i].report && ls[i].name == "data-line"; i++ {
				lines = append(lines, ls[i].fields[0])
			}
			i--
			if p.data == (smtpdplay.Token{}) {
				p.data = p.s.StartData()
			}
			err = p.s.SendData(p.data, lines...)
		default:
			p.tok, err = p.s.Request(l.name, l.fields[0])
			if l.name == "data" {
				p.data = p.s.StartData()
			}
		}
		if err != nil {
			p.t.Fatal(err)
		}
	}
}

// expect checks that the gateway's next lines for the pipe's session are
// exactly want.
func (p *pipe) expect(want ...filterLine) {
	p.t.Helper()
	lines := make([]string, len(want))
	for i, w := range want {
		if w.data {
			lines[i] = p.s.WantData(p.data, w.text)
		} else {
			lines[i] = p.s.WantResult(p.tok, w.text)
		}
	}
	if err := p.s.Expect(lines...); err != nil {
		p.t.Fatal(err)
	}
}

// next returns the gateway's next line for the pipe's session.
func (p *pipe) next() smtpdplay.Answer {
	p.t.Helper()
	a, err := p.s.Next()
	if err != nil {
		p.t.Fatal(err)
	}
	return a
}

// openSession plays smtpd from connect to the data phase.
func (p *pipe) openSession(rcpts ...string) {
	p.t.Helper()
	p.send(rep("link-connect", "localhost", "pass", "127.0.0.1:47092", "127.0.0.1:2525"), req("connect", "localhost|127.0.0.1"))
	p.expect(result("proceed"))
	p.send(rep("link-greeting", "mx.test.example"), rep("protocol-client", "ehlo client.example"), req("ehlo", "client.example"))
	p.expect(result("proceed"))
	p.send(rep("protocol-client", "MAIL FROM:<a@test.example> SIZE=100"), req("mail-from", "a@test.example"))
	p.expect(result("proceed"))
	p.send(rep("tx-begin", "2a4946c4"))
	for _, r := range rcpts {
		p.send(rep("protocol-client", "RCPT TO:<"+r+">"), req("rcpt-to", r))
		p.expect(result("proceed"))
	}
}

var tricky = []string{
	"Received: from client.example (localhost [127.0.0.1])",
	"\tby vm (OpenSMTPD) with ESMTP id 2a4946c4;",
	"\tTue, 24 Nov 2026 07:22:03 +0000 (UTC)",
	"From: a@test.example",
	"To: b@test.example",
	"Subject: test|pipe",
	"X-Folded: one",
	"  two\t",
	"X-No-Space:value",
	"",
	"..leading dot",
	"...two dots",
	"..",
	"a|b|c",
	"",
	"   spaces   ",
	"8bit \xc3\xa9\xff\x80",
	strings.Repeat("L", 3000),
	"last line\r",
}

func (p *pipe) sendMessage(lines []string) {
	p.t.Helper()
	p.send(req("data", ""))
	p.expect(result("proceed"))
	batch := make([]smtpdLine, 0, len(lines)+1)
	for _, l := range lines {
		batch = append(batch, req("data-line", l))
	}
	p.send(append(batch, req("data-line", "."))...)
}

func TestPassthroughIsByteExact(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{})
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshake()
	p.openSession("b@test.example")
	p.sendMessage(tricky)
	for _, l := range tricky {
		p.expect(dataline(l))
	}
	p.expect(dataline("."))
	p.send(rep("protocol-client", "."), req("commit", ""))
	p.expect(result("proceed"))
	p.send(rep("tx-commit", "2a4946c4", "2471"), rep("tx-reset", "2a4946c4"), rep("link-disconnect"))

	seen := srv.Seen()[0]
	wantHeaders := [][2]string{
		{"Received", "from client.example (localhost [127.0.0.1])\n\tby vm (OpenSMTPD) with ESMTP id 2a4946c4;\n\tTue, 24 Nov 2026 07:22:03 +0000 (UTC)"},
		{"From", "a@test.example"}, {"To", "b@test.example"}, {"Subject", "test|pipe"},
		{"X-Folded", "one\n  two\t"}, {"X-No-Space", "value"},
	}
	if fmt.Sprint(seen.Headers) != fmt.Sprint(wantHeaders) {
		t.Errorf("milter saw headers\n%q\nwant\n%q", seen.Headers, wantHeaders)
	}
	wantBody := ".leading dot\r\n..two dots\r\n.\r\na|b|c\r\n\r\n   spaces   \r\n8bit \xc3\xa9\xff\x80\r\n" +
		strings.Repeat("L", 3000) + "\r\nlast line\r\r\n"
	if string(seen.Body) != wantBody {
		t.Errorf("milter saw body\n%q\nwant\n%q", seen.Body, wantBody)
	}
	if seen.From != "a@test.example" || seen.FromArgs != "SIZE=100" || seen.Host != "localhost" || seen.Port != 47092 {
		t.Errorf("envelope seen: %+v", seen)
	}
	if seen.Macros["i"] != "2a4946c4" || seen.Macros["j"] != "mx.test.example" || seen.Macros["client_addr"] != "127.0.0.1" {
		t.Errorf("macros seen at end of message: %v", seen.Macros)
	}
	p.waitSessions(0)
}

func TestHeaderChangesAreApplied(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{
		EOM: func(m djmilter.Modifier) (*djmilter.Response, error) {
			_ = m.InsertHeader(0, "DKIM-Signature", "v=1; a=rsa-sha256;\n\tb=abc")
			_ = m.AddHeader("X-Added", "yes")
			_ = m.ChangeHeader(1, "Subject", "changed")
			_ = m.ChangeHeader(1, "X-Folded", "") // delete
			return djmilter.RespAccept, nil
		},
	})
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshake()
	p.openSession("b@test.example")
	p.sendMessage(tricky)
	want := []string{
		"DKIM-Signature: v=1; a=rsa-sha256;", "\tb=abc",
		tricky[0], tricky[1], tricky[2], tricky[3], tricky[4],
		"Subject: changed",
		"X-No-Space:value",
		"X-Added: yes",
	}
	want = append(want, tricky[9:]...)
	for _, l := range want {
		p.expect(dataline(l))
	}
	p.expect(dataline("."))
	p.send(req("commit", ""))
	p.expect(result("proceed"))
}

func TestReplacedBodyIsStuffed(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{
		EOM: func(m djmilter.Modifier) (*djmilter.Response, error) {
			_ = m.ReplaceBodyRawChunk([]byte("new body\r\n.dot\r\n"))
			_ = m.ReplaceBodyRawChunk([]byte(".\r\nend\r\n"))
			return djmilter.RespContinue, nil
		},
	})
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshake()
	p.openSession("b@test.example")
	p.sendMessage([]string{"Subject: x", "", "old"})
	p.expect(dataline("Subject: x"), dataline(""), dataline("new body"), dataline("..dot"), dataline(".."), dataline("end"), dataline("."))
	p.send(req("commit", ""))
	p.expect(result("proceed"))
}

func TestRejections(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{
		Rcpt: func(rcpt string) (*djmilter.Response, error) {
			if strings.HasPrefix(rcpt, "rcpt-reject@") {
				return djmilter.RejectWithCodeAndReason(550, "5.7.1 recipient rejected")
			}
			return djmilter.RespContinue, nil
		},
		EOM: func(djmilter.Modifier) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(554, "5.7.1 message rejected\nsecond line")
		},
	})
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshake()
	p.openSession("b@test.example")
	p.send(req("rcpt-to", "rcpt-reject@test.example"))
	p.expect(result("reject|550 5.7.1 recipient rejected"))
	p.sendMessage([]string{"Subject: x", "", "body"})
	// A refused message still goes back whole: smtpd needs the "." to
	// reach commit, where the refusal rolls it back.
	p.expect(dataline("Subject: x"), dataline(""), dataline("body"), dataline("."))
	p.send(req("commit", ""))
	p.expect(result("reject|554 5.7.1 message rejected second line"))
}

func TestUnreachableMilterGetsTheDefaultAction(t *testing.T) {
	for _, c := range []struct {
		action Action
		want   string
	}{
		{Tempfail, "reject|451 4.7.1 Service unavailable - try again later"},
		{Reject, "reject|550 5.7.1 Command rejected"},
		{Accept, "proceed"},
	} {
		t.Run(c.action.String(), func(t *testing.T) {
			p := startGateway(t, c.action, "inet:127.0.0.1:1") // nothing listens on port 1
			p.handshake()
			p.send(rep("link-connect", "localhost", "pass", "127.0.0.1:47092", "127.0.0.1:2525"), req("connect", "localhost|127.0.0.1"))
			p.expect(result(c.want))
			// The answer sticks for the session, as Postfix's default reply does.
			p.send(req("ehlo", "client.example"))
			p.expect(result(c.want))
		})
	}
}

func TestProtocol04AnswersTokenFirst(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{})
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshakeWith(smtpdplay.Config{Protocol: compat.Version{Major: 0, Minor: 4}})
	p.send(req("connect", "localhost|127.0.0.1"))
	if a := p.next(); a.Line != "filter-result|"+p.tok.String()+"|"+p.s.ID()+"|proceed" {
		t.Errorf("gateway answered %q, want filter-result|TOKEN|SESSION|proceed", a.Line)
	}
}

// Lines smtpd never sends are logged and skipped: nothing is written for
// them, and the session they name still gets exactly the answers to its
// valid requests, then nothing more.
func TestMalformedLinesAreSkipped(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{})
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshake()
	const notAsked = "0123456789abcdef" // a token the player never asked: an answer for it fails the test
	sid := p.s.ID()
	if err := p.play.WriteLines(
		"garbage",
		"",
		"report|0.6",
		"filter|x.y|1795504415.685300|smtp-in|connect|"+sid+"|"+notAsked+"|a|b",            // bad version
		"filter|0.6|1795504415.685300|smtp-in|connect|"+sid+"|not-hex|localhost|127.0.0.1", // bad token
		"filter|0.6|1795504415.685300|smtp-in|connect|"+sid,                                // no token, no parameter
		"filter|0.6||smtp-in|connect|"+sid+"|"+notAsked+"|localhost|127.0.0.1",             // no timestamp
	); err != nil {
		t.Fatal(err)
	}
	p.openSession("b@test.example")
	p.sendMessage([]string{"Subject: x", "", "body"})
	p.expect(dataline("Subject: x"), dataline(""), dataline("body"), dataline("."))
	p.send(req("commit", ""))
	p.expect(result("proceed"))
	p.finish()
	if got := srv.Seen(); len(got) != 1 || string(got[0].Body) != "body\r\n" {
		t.Errorf("milter saw %d messages, want the one valid message", len(got))
	}
}

func TestSessionsAnswerOutOfOrder(t *testing.T) {
	// The milter holds the first session's HELO until the second session
	// has been answered: one slow milter conversation must not hold up
	// another session.
	release, held := make(chan struct{}), make(chan struct{})
	var helos atomic.Int32
	slow := miltertest.Start(t, miltertest.Script{
		Helo: func() (*djmilter.Response, error) {
			if helos.Add(1) == 1 {
				close(held)
				<-release
			}
			return djmilter.RespContinue, nil
		},
	})
	p := startGateway(t, Tempfail, slow.Spec)
	p.handshake()
	s1, s2 := p.play.NewSession(), p.play.NewSession()
	c1, c2 := p.request(s1, "connect", "localhost|127.0.0.1"), p.request(s2, "connect", "localhost|127.0.0.1")
	p.expectOn(s1, s1.WantResult(c1, "proceed"))
	p.expectOn(s2, s2.WantResult(c2, "proceed"))
	h1 := p.request(s1, "helo", "slow.example")
	<-held // s1's HELO is at the milter, which holds it
	h2 := p.request(s2, "helo", "fast.example")
	p.expectOn(s2, s2.WantResult(h2, "proceed"))
	close(release)
	p.expectOn(s1, s1.WantResult(h1, "proceed"))
}

// request sends a request for session s and returns its token.
func (p *pipe) request(s *smtpdplay.Session, phase, param string) smtpdplay.Token {
	p.t.Helper()
	tok, err := s.Request(phase, param)
	if err != nil {
		p.t.Fatal(err)
	}
	return tok
}

// expectOn checks that the gateway's next lines for s are exactly want.
func (p *pipe) expectOn(s *smtpdplay.Session, want ...string) {
	p.t.Helper()
	if err := s.Expect(want...); err != nil {
		p.t.Fatal(err)
	}
}

func TestStrayDataLineIsDropped(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{})
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshake()
	p.openSession("b@test.example")
	// A data line before DATA, and one after the message's ".": answering
	// either would be a filter-dataline outside the data phase, which
	// smtpd dies on.
	p.send(req("data-line", "stray before"))
	p.sendMessage([]string{"Subject: x", "", "b"})
	p.expect(dataline("Subject: x"), dataline(""), dataline("b"), dataline("."))
	p.send(req("data-line", "stray after"), req("commit", ""))
	p.expect(result("proceed"))
	p.finish() // and nothing else: no answer to either stray line
}

func TestIdleSessionIsFreed(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{})
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshakeWith(smtpdplay.Config{SmtpdVersion: "7.8.0", SessionTimeout: 1})
	p.openSession("b@test.example")
	if p.g.Sessions() != 1 {
		t.Fatalf("%d sessions, want 1", p.g.Sessions())
	}
	// smtpd never sends link-disconnect: the session goes after smtpd's
	// own session timeout.
	p.waitSessions(0)
}

func TestShutdownIsBounded(t *testing.T) {
	release, held := make(chan struct{}), make(chan struct{})
	defer close(release)
	srv := miltertest.Start(t, miltertest.Script{
		Helo: func() (*djmilter.Response, error) { close(held); <-release; return djmilter.RespContinue, nil },
	})
	p := startGateway(t, Tempfail, srv.Spec)
	p.g.cfg.Load().ShutdownTimeout = 200 * time.Millisecond
	p.handshake()
	p.send(req("connect", "localhost|127.0.0.1"))
	p.expect(result("proceed"))
	p.send(req("helo", "stuck.example")) // the milter never answers in time
	<-held
	p.s.Abandon() // smtpd is going: an answer to HELO would be dropped
	start := time.Now()
	_ = p.in.Close()
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		p.done <- nil // for the cleanup
	case <-time.After(1500 * time.Millisecond):
		t.Fatal("Run did not return within its shutdown bound")
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("Run returned after %v: it should wait for the session up to the bound", d)
	}
}

func TestPoolFailoverReplaysTheSession(t *testing.T) {
	a := miltertest.Start(t, miltertest.Script{})
	b := miltertest.Start(t, miltertest.Script{
		EOM: func(m djmilter.Modifier) (*djmilter.Response, error) {
			_ = m.AddHeader("X-Endpoint", "b")
			return djmilter.RespAccept, nil
		},
	})
	p := startGateway(t, Tempfail, a.Spec+","+b.Spec)
	p.handshake()
	p.openSession("b@test.example", "c@test.example")
	if len(a.Seen()) != 1 || len(b.Seen()) != 0 {
		t.Fatalf("the session should have started on the first endpoint: a=%d b=%d", len(a.Seen()), len(b.Seen()))
	}
	a.Stop() // the endpoint dies mid-transaction
	p.sendMessage([]string{"Subject: x", "", "body"})
	p.expect(dataline("Subject: x"), dataline("X-Endpoint: b"), dataline(""), dataline("body"), dataline("."))
	p.send(req("commit", ""))
	p.expect(result("proceed"))
	seen := b.Seen()
	if len(seen) != 1 || seen[0].Helo != "client.example" || seen[0].From != "a@test.example" ||
		strings.Join(seen[0].Rcpts, ",") != "b@test.example,c@test.example" || string(seen[0].Body) != "body\r\n" {
		t.Errorf("the second endpoint did not get the replayed session: %+v", seen)
	}
}

func TestPerMilterDefaultAction(t *testing.T) {
	// The global default is tempfail; this milter's own setting accepts.
	p := startGateway(t, Tempfail, "inet:127.0.0.1:1{default_action=accept}")
	p.handshake()
	p.send(req("connect", "localhost|127.0.0.1"))
	p.expect(result("proceed"))
}

type recorder struct {
	NopObserver
	mu       sync.Mutex
	stages   []string
	done     []string
	buffered []string
}

func (r *recorder) MessageBuffered(_ string, bytes int64, spilled bool) {
	r.mu.Lock()
	r.buffered = append(r.buffered, fmt.Sprintf("%d spilled=%v", bytes, spilled))
	r.mu.Unlock()
}

func (r *recorder) MilterReply(_, _ string, stage milter.Stage, v milter.Verdict, _ time.Duration) {
	r.mu.Lock()
	r.stages = append(r.stages, string(stage)+"="+v.Kind.String())
	r.mu.Unlock()
}

func (r *recorder) MessageDone(_, queueID, decision, _ string, size int) {
	r.mu.Lock()
	r.done = append(r.done, fmt.Sprintf("%s %s %d", queueID, decision, size))
	r.mu.Unlock()
}

func TestObserverHearsEachStage(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{})
	p := startGateway(t, Tempfail, srv.Spec)
	rec := &recorder{}
	p.observe(rec)
	p.handshake()
	p.openSession("b@test.example")
	p.sendMessage([]string{"Subject: x", "", "body"})
	p.expect(dataline("Subject: x"), dataline(""), dataline("body"), dataline("."))
	p.send(req("commit", ""))
	p.expect(result("proceed"))
	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := "connect=continue ehlo=continue mail=continue rcpt=continue data=continue header=continue eoh=continue body=continue eom=accept"
	if got := strings.Join(rec.stages, " "); got != want {
		t.Errorf("stages\n got %s\nwant %s", got, want)
	}
	if len(rec.done) != 1 || rec.done[0] != "2a4946c4 proceed 20" {
		t.Errorf("message done: %q", rec.done)
	}
}

func TestLargeMessageThroughASmallBuffer(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{
		EOM: func(m djmilter.Modifier) (*djmilter.Response, error) {
			_ = m.AddHeader("X-Seen", "yes")
			return djmilter.RespAccept, nil
		},
	})
	p := startGateway(t, Tempfail, srv.Spec)
	p.g.cfg.Load().BufferLimit = 1024
	p.g.cfg.Load().TempDir = t.TempDir()
	rec := &recorder{}
	p.observe(rec)
	p.handshake()
	p.openSession("b@test.example")
	lines := []string{"Subject: big", ""}
	for i := 0; i < 5000; i++ {
		lines = append(lines, fmt.Sprintf("line %d %s", i, strings.Repeat("y", 100)))
	}
	p.sendMessage(lines)
	p.expect(dataline("Subject: big"), dataline("X-Seen: yes"))
	for _, l := range lines[1:] {
		p.expect(dataline(l))
	}
	p.expect(dataline("."))
	p.send(req("commit", ""))
	p.expect(result("proceed"))
	want := 0
	for _, l := range lines[2:] {
		want += len(l) + 2
	}
	if got := len(srv.Seen()[0].Body); got != want {
		t.Errorf("milter saw %d body bytes, want %d", got, want)
	}
	if used := p.g.budget.used.Load(); used != 0 {
		t.Errorf("%d bytes of the budget still taken after the message", used)
	}
	// The message went through the temporary file, not around it.
	p.send(rep("link-disconnect"))
	p.waitSessions(0)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.buffered) != 1 || !strings.HasSuffix(rec.buffered[0], "spilled=true") {
		t.Errorf("messages buffered: %q, want one, spilled", rec.buffered)
	}
}

func TestEchoAndKeepWhenNoMilterCanChange(t *testing.T) {
	// A milter that may only accept or reject: the lines go back at once,
	// before the end of the message; only "." waits for its verdict.
	srv := miltertest.Start(t, miltertest.Script{
		EOM: func(djmilter.Modifier) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(554, "5.7.1 no")
		},
	}, djmilter.WithActions(0))
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshake()
	p.openSession("b@test.example")
	p.send(req("data", ""))
	p.expect(result("proceed"))
	p.send(req("data-line", "Subject: x"))
	p.expect(dataline("Subject: x"))
	p.send(req("data-line", ""), req("data-line", "body"), req("data-line", "."))
	p.expect(dataline(""), dataline("body"), dataline("."))
	p.send(req("commit", ""))
	p.expect(result("reject|554 5.7.1 no"))
	if got := string(srv.Seen()[0].Body); got != "body\r\n" {
		t.Errorf("milter saw body %q", got)
	}
}

type brokenWriter struct{}

func (brokenWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

// When smtpd's end of stdout is gone, Run stops with an error (the
// command exits non-zero with a log line) instead of serving blind.
func TestBrokenStdoutStopsRun(t *testing.T) {
	g := New(Config{Log: zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel))})
	inR, inW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- g.Run(inR, brokenWriter{}) }()
	_, _ = io.WriteString(inW, "config|smtpd-version|6.8.0p2\nconfig|ready\n")
	// Lines keep coming until Run stops, as smtpd's would; Run notices
	// the failed writes and stops. Each write waits for Run to read.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := io.WriteString(inW, "report|0.6|1795504415.685235|smtp-in|link-greeting|cda4ad7207385219|x\n"); err != nil {
				return
			}
		}
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrStdout) {
			t.Errorf("Run = %v, want ErrStdout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run went on with a broken stdout")
	}
	_ = inW.Close()
}

// A long message that no milter can change, sent as smtpd sends under load
// (many lines per read): the session writes the lines back as they come
// and keeps them for the milter (modeEchoAndKeep); every line comes back
// once, in order, before ".", and the milter sees the whole body.
func TestEchoAndKeepLongMessage(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{}, djmilter.WithActions(0))
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshake()
	p.openSession("b@test.example")
	p.send(req("data", ""))
	p.expect(result("proceed"))
	lines := []string{"Subject: long", ""}
	var body strings.Builder
	for i := 0; i < 5*blockItems+3; i++ {
		l := fmt.Sprintf("line %d", i)
		if i%50 == 0 {
			l = "." + l // dot-stuffed
		}
		lines = append(lines, l)
		body.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
	}
	var batch []smtpdLine
	for _, l := range lines {
		batch = append(batch, req("data-line", l))
	}
	batch = append(batch, req("data-line", "."))
	p.send(batch...)
	for _, l := range lines {
		p.expect(dataline(l))
	}
	p.expect(dataline("."))
	p.send(req("commit", ""))
	p.expect(result("proceed"))
	p.finish() // and nothing more: no line came back twice
	if got := string(srv.Seen()[0].Body); got != body.String() {
		t.Errorf("milter saw a body of %d bytes, want %d", len(got), body.Len())
	}
}

// A milter that asks for no header, no end of headers and no body still
// gets end of message, as from Postfix and Sendmail: its verdict there
// decides the message. The lines pass straight back as they come.
func TestEndOfMessageWithoutHeadersOrBody(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{
		EOM: func(djmilter.Modifier) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(550, "5.7.1 decided at end of message")
		},
	}, djmilter.WithActions(0), djmilter.WithProtocols(djmilter.OptNoHeaders|djmilter.OptNoEOH|djmilter.OptNoBody))
	p := startGateway(t, Tempfail, srv.Spec)
	p.handshake()
	p.openSession("b@test.example")
	p.send(req("data", ""))
	p.expect(result("proceed"))
	p.send(req("data-line", "Subject: x"), req("data-line", ""), req("data-line", "body"))
	p.expect(dataline("Subject: x"), dataline(""), dataline("body"))
	p.send(req("data-line", "."))
	p.expect(dataline("."))
	p.send(req("commit", ""))
	p.expect(result("reject|550 5.7.1 decided at end of message"))
	if seen := srv.Seen(); len(seen) != 1 || len(seen[0].Headers) != 0 || len(seen[0].Body) != 0 {
		t.Errorf("milter saw %+v, want no header and no body", seen)
	}
}
