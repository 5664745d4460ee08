package smtpdplay

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/compat"
	"github.com/filter-milter/filter-milter/protocol"
)

// echoFilter is the smallest filter: it registers a few phases and
// events, answers every request proceed and hands every data line back.
// answer, if set, replaces the lines it writes for a request.
type echoFilter struct {
	answer func(r protocol.Request, normal []string) []string
}

var (
	testPhases = []string{"connect", "ehlo", "mail-from", "rcpt-to", "data", "data-line", "commit"}
	testEvents = []string{"link-connect", "tx-begin", "link-disconnect"}
)

func (f echoFilter) run(in io.Reader, out io.WriteCloser) {
	defer out.Close()
	sc := bufio.NewScanner(in)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l protocol.Line
		if err := protocol.ParseLine(sc.Text(), &l); err != nil {
			continue
		}
		var lines []string
		switch {
		case l.Kind == protocol.KindConfig && l.Config.Key == "ready":
			for _, e := range testEvents {
				lines = append(lines, "register|report|smtp-in|"+e)
			}
			for _, p := range testPhases {
				lines = append(lines, "register|filter|smtp-in|"+p)
			}
			lines = append(lines, "register|ready")
		case l.Kind == protocol.KindRequest:
			r := l.Request
			ids := r.Session + "|" + r.Token
			if compat.For(r.Version).TokenFirst {
				ids = r.Token + "|" + r.Session
			}
			if r.Phase == "data-line" {
				lines = []string{"filter-dataline|" + ids + "|" + r.Param}
			} else {
				lines = []string{"filter-result|" + ids + "|proceed"}
			}
			if f.answer != nil {
				lines = f.answer(r, lines)
			}
		}
		for _, o := range lines {
			if _, err := io.WriteString(out, o+"\n"); err != nil {
				return
			}
		}
	}
}

func start(t *testing.T, f echoFilter, cfg Config) *Player {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	go f.run(inR, outW)
	p, err := Start(inW, outR, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestHandshakeRequestsAndData(t *testing.T) {
	p := start(t, echoFilter{}, Config{})
	reg := p.Registration()
	if strings.Join(reg.Filters, ",") != strings.Join(testPhases, ",") || strings.Join(reg.Reports, ",") != strings.Join(testEvents, ",") {
		t.Fatalf("registration %+v", reg)
	}
	s := p.NewSession()
	if len(s.ID()) != 16 || !isHex([]byte(s.ID())) {
		t.Fatalf("session id %q: want 16 hex digits", s.ID())
	}
	must(t, s.Report("link-connect", "localhost", "pass", "127.0.0.1:1", "127.0.0.1:25"))
	d, reply, err := s.Ask("connect", "localhost|127.0.0.1")
	if err != nil || d != protocol.Proceed || reply != "" {
		t.Fatalf("Ask = %q %q %v", d, reply, err)
	}
	// helo is not registered: smtpd would not ask, and neither does Ask.
	if _, err := s.Request("helo", "x"); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("Request(helo) = %v, want ErrNotRegistered", err)
	}
	tok1, err := s.Request("mail-from", "a@example")
	must(t, err)
	tok2, err := s.Request("rcpt-to", "b@example")
	must(t, err)
	if tok1 == tok2 {
		t.Fatal("two requests got one token")
	}
	must(t, s.Expect(s.WantResult(tok1, "proceed"), s.WantResult(tok2, "proceed")))
	tok := s.StartData()
	long := strings.Repeat("L", 100<<10) // longer than the reader's buffer
	must(t, s.SendData(tok, "Subject: x", "", "..dot", long, "."))
	must(t, s.Expect(s.WantData(tok, "Subject: x"), s.WantData(tok, "")))
	lines, err := s.ReadMessage(tok)
	must(t, err)
	if len(lines) != 2 || lines[0] != "..dot" || lines[1] != long {
		t.Fatalf("ReadMessage = %d lines", len(lines))
	}
	must(t, s.End())
	must(t, p.Close())
}

func TestExpectNamesTheWrongLine(t *testing.T) {
	p := start(t, echoFilter{}, Config{})
	s := p.NewSession()
	tok, err := s.Request("connect", "localhost|127.0.0.1")
	must(t, err)
	err = s.Expect(s.WantResult(tok, "reject|550 5.7.1 no"))
	if err == nil || !strings.Contains(err.Error(), "proceed") {
		t.Fatalf("Expect = %v, want an error quoting the proceed line", err)
	}
	must(t, p.Close())
}

// "These lines, then nothing": a line nobody read fails Close.
func TestUnreadLinesFailClose(t *testing.T) {
	p := start(t, echoFilter{}, Config{})
	s := p.NewSession()
	tok, err := s.Request("connect", "localhost|127.0.0.1")
	must(t, err)
	err = p.Close()
	if err == nil || !strings.Contains(err.Error(), "never read") || !strings.Contains(err.Error(), s.WantResult(tok, "proceed")) {
		t.Fatalf("Close = %v, want the unread answer named", err)
	}
}

// An answer read out of turn is an error, and so is the one it displaced.
func TestAskTakesOnlyItsOwnAnswer(t *testing.T) {
	p := start(t, echoFilter{}, Config{})
	s := p.NewSession()
	_, err := s.Request("connect", "localhost|127.0.0.1")
	must(t, err)
	if d, _, err := s.Ask("ehlo", "x"); err == nil {
		t.Fatalf("Ask took the connect answer as its own (%s)", d)
	}
	if err := p.Close(); err == nil || !strings.Contains(err.Error(), "never read") {
		t.Errorf("Close = %v: the ehlo answer came and was never read", err)
	}
}

func TestSecondAnswerIsAnError(t *testing.T) {
	p := start(t, echoFilter{answer: func(r protocol.Request, normal []string) []string {
		return append(normal, normal...)
	}}, Config{})
	s := p.NewSession()
	if _, _, err := s.Ask("connect", "localhost|127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	err := p.Close()
	if err == nil || !strings.Contains(err.Error(), "not asked or was answered already") {
		t.Fatalf("Close = %v, want the second answer reported", err)
	}
}

func TestBadLinesAreErrors(t *testing.T) {
	for _, c := range []struct {
		name, line, want string
	}{
		{"garbage", "garbage", "neither filter-result nor filter-dataline"},
		{"report", "report|0.6|1|smtp-in|link-connect|0123456789abcdef", "neither filter-result nor filter-dataline"},
		{"short ids", "filter-result|0123|4567|proceed", "without SESSION|TOKEN|"},
		{"unknown session", "filter-result|0123456789abcdef|0123456789abcdef|proceed", "not open"},
		{"unknown decision", "SELF|maybe", "unknown decision"},
		{"reject without reply", "SELF|reject|nope", "valid SMTP reply"},
		{"proceed with a parameter", "SELF|proceed|x", "with a parameter"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := start(t, echoFilter{answer: func(r protocol.Request, normal []string) []string {
				l := c.line
				if rest, ok := strings.CutPrefix(l, "SELF|"); ok {
					l = "filter-result|" + r.Session + "|" + r.Token + "|" + rest
				}
				return []string{l}
			}}, Config{})
			s := p.NewSession()
			_, err := s.Request("connect", "localhost|127.0.0.1")
			must(t, err)
			// The bad line wakes the waiter at once with the error.
			if _, err := s.Next(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Next = %v, want %q", err, c.want)
			}
			if err := p.Close(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Close = %v, want %q", err, c.want)
			}
		})
	}
}

func TestDataLineAfterDotIsAnError(t *testing.T) {
	p := start(t, echoFilter{answer: func(r protocol.Request, normal []string) []string {
		if r.Param == "." {
			return append(normal, "filter-dataline|"+r.Session+"|"+r.Token+"|late")
		}
		return normal
	}}, Config{})
	s := p.NewSession()
	tok := s.StartData()
	must(t, s.SendData(tok, "a", "."))
	if _, err := s.ReadMessage(tok); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err == nil || !strings.Contains(err.Error(), "late") {
		t.Fatalf("Close = %v, want the data line after \".\" reported", err)
	}
}

func TestProtocol04AnswersTokenFirst(t *testing.T) {
	p := start(t, echoFilter{}, Config{Protocol: compat.Version{Major: 0, Minor: 4}})
	s := p.NewSession()
	tok, err := s.Request("connect", "localhost|127.0.0.1")
	must(t, err)
	want := "filter-result|" + tok.String() + "|" + s.ID() + "|proceed"
	if s.WantResult(tok, "proceed") != want {
		t.Fatalf("WantResult = %q, want %q", s.WantResult(tok, "proceed"), want)
	}
	must(t, s.Expect(want))
	must(t, p.Close())
}

func playScript(p *Player, body [][]byte) []*Step {
	b := p.NewSteps()
	b.Report("link-connect", "localhost", "pass", "127.0.0.1:1", "127.0.0.1:25")
	steps := []*Step{b.Request("connect", "localhost|127.0.0.1")}
	b.Report("link-greeting", "mx.example") // not subscribed: left out
	steps = append(steps, b.Request("ehlo", "client.example"), b.Request("mail-from", "a@example"))
	b.Report("tx-begin", "2a4946c4")
	steps = append(steps, b.Request("rcpt-to", "b@example"), b.Request("data", ""), b.Message(body), b.Request("commit", ""))
	b.Report("link-disconnect")
	return append(steps, b.Flush())
}

func TestPlay(t *testing.T) {
	p := start(t, echoFilter{}, Config{})
	var body [][]byte
	for i := range 3000 { // several Writes of maxWrite
		body = append(body, fmt.Appendf(nil, "line %d %s", i, strings.Repeat("x", 60)))
	}
	steps := playScript(p, body)
	if n := len(steps[5].writes); n < 3 {
		t.Errorf("the message went out in %d writes, want it cut at about %d bytes", n, maxWrite)
	}
	s := p.NewSession()
	first := s.ID()
	for range 3 {
		for i, st := range steps {
			if err := s.Play(st); err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
		}
		must(t, s.Renew())
	}
	if s.ID() == first {
		t.Error("Renew kept the session id")
	}
	must(t, p.Close())
}

func TestPlayFindsAChangedMessage(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		edit func(line string) []string
	}{
		{"line dropped", Config{}, func(string) []string { return nil }},
		{"line longer", Config{}, func(l string) []string { return []string{l + "b"} }},
		{"same length, hashed", Config{HashDataLines: true}, func(l string) []string { return []string{strings.TrimSuffix(l, "b") + "B"} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := start(t, echoFilter{answer: func(r protocol.Request, normal []string) []string {
				if r.Param == "b" {
					return c.edit(normal[0])
				}
				return normal
			}}, c.cfg)
			steps := playScript(p, [][]byte{[]byte("a"), []byte("b")})
			s := p.NewSession()
			var err error
			for _, st := range steps {
				if err = s.Play(st); err != nil {
					break
				}
			}
			if err == nil || !strings.Contains(err.Error(), "changed the message") {
				t.Fatalf("Play = %v, want the changed line found", err)
			}
			must(t, p.Close())
		})
	}
}

func TestPlayFindsARefusal(t *testing.T) {
	p := start(t, echoFilter{answer: func(r protocol.Request, normal []string) []string {
		if r.Phase == "rcpt-to" {
			return []string{"filter-result|" + r.Session + "|" + r.Token + "|reject|550 5.7.1 no"}
		}
		return normal
	}}, Config{})
	steps := playScript(p, [][]byte{[]byte("a")})
	s := p.NewSession()
	var err error
	for _, st := range steps {
		if err = s.Play(st); err != nil {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "rcpt-to: the filter answered reject") {
		t.Fatalf("Play = %v, want the refusal", err)
	}
	must(t, p.Close())
}

func TestHandshakeRefusesOtherLines(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	go func() {
		_, _ = io.Copy(io.Discard, inR)
	}()
	go func() {
		_, _ = io.WriteString(outW, "register|filter|smtp-in|connect\nhello\n")
		_ = outW.Close()
	}()
	_, err := Start(inW, outR, Config{})
	if err == nil || !strings.Contains(err.Error(), `"hello"`) {
		t.Fatalf("Start = %v, want the stray line named", err)
	}
	_ = inW.Close()
}

// A transcript reuses smtpd's tokens: one per phase and session, and one
// for every data line of the session's messages.
func TestReplayReusedTokens(t *testing.T) {
	p := start(t, echoFilter{}, Config{})
	const sid, mail, data = "229dd54d9c889a05", "a534e0902cbb3160", "a534e093aaaaaaaa"
	req := func(phase, tok, param string) string {
		return "filter|0.6|1795504563.046567|smtp-in|" + phase + "|" + sid + "|" + tok + "|" + param
	}
	must(t, p.Replay("report|0.6|1795504563.037006|smtp-in|link-connect|"+sid+"|localhost|pass|127.0.0.1:1|127.0.0.1:25",
		req("mail-from", mail, "a@example"), req("mail-from", mail, "b@example"),
		req("data-line", data, "one"), req("data-line", data, "."),
		req("data-line", data, "two"), req("data-line", data, ".")))
	s := p.Session(sid)
	if s == nil {
		t.Fatal("Replay did not open the transcript's session")
	}
	var tm, td Token
	copy(tm[:], mail)
	copy(td[:], data)
	must(t, s.Expect(s.WantResult(tm, "proceed"), s.WantResult(tm, "proceed"),
		s.WantData(td, "one"), s.WantData(td, "."), s.WantData(td, "two"), s.WantData(td, ".")))
	must(t, p.Close())
}

// An abandoned session's due answers are dropped, as smtpd drops them.
func TestAbandonDropsDueAnswers(t *testing.T) {
	p := start(t, echoFilter{}, Config{})
	s := p.NewSession()
	_, err := s.Request("connect", "localhost|127.0.0.1")
	must(t, err)
	s.Abandon()
	must(t, p.Close())
}

// Sessions played at once from several goroutines each get their own
// answers: the reader hands each line to its session.
func TestConcurrentSessions(t *testing.T) {
	p := start(t, echoFilter{}, Config{HashDataLines: true})
	if !p.Registration().Filter("data-line") {
		t.Fatal("the echo filter registered no data-line")
	}
	var body [][]byte
	for i := range 500 {
		body = append(body, fmt.Appendf(nil, "line %d", i))
	}
	steps := playScript(p, body)
	errc := make(chan error, 8)
	for range 8 {
		mine := make([]*Step, len(steps))
		for i, st := range steps {
			mine[i] = st.Clone()
		}
		go func() {
			s := p.NewSession()
			for range 5 {
				for _, st := range mine {
					if err := s.Play(st); err != nil {
						errc <- err
						return
					}
				}
				if err := s.Renew(); err != nil {
					errc <- err
					return
				}
			}
			errc <- s.End()
		}()
	}
	for range 8 {
		must(t, <-errc)
	}
	must(t, p.Close())
}
