package smtpdplay

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/filter-milter/filter-milter/protocol"
)

// Answer is one line the filter wrote for a session.
type Answer struct {
	Token Token
	// DataLine is true for filter-dataline, false for filter-result.
	DataLine bool
	// Decision is a filter-result's decision.
	Decision protocol.Decision
	// Param is a filter-result's parameter (a reply, a rewrite), or a
	// filter-dataline's line, still dot-stuffed.
	Param string
	// Line is the whole line as written, without '\n'.
	Line string
}

// tokenKind is what a session asked under a token, and so what it takes
// back for it.
type tokenKind uint8

const (
	askedRequest  tokenKind = iota + 1 // one filter-result, kept as an Answer
	askedData                          // filter-dataline lines up to ".", each kept
	playedRequest                      // one filter-result, for Play
	playedData                         // filter-dataline lines up to ".", counted and hashed for Play
)

// asked is a token's state: what was asked under it, and how many
// answers are still due. A fresh token is asked once; a replayed
// transcript reuses smtpd's tokens, one per phase and session, so one
// token may be asked again before its first answer came.
type asked struct {
	kind tokenKind
	due  int // requests not yet answered, or messages whose "." has not come back
}

// received is an answer in a session's queue. A played message's data
// lines are not queued: its final "." is, with what echoed counts.
type received struct {
	Answer
	kind tokenKind
	echo echoCount // playedData
}

// echoCount is what came back of a played message before its ".": the
// lines, their bytes, and with Config.HashDataLines their FNV-1a (each
// line followed by '\n'). Counting is what a benchmark can afford per
// line; the hash also catches a line changed to one of the same length.
type echoCount struct {
	lines, bytes int
	hash         uint64
}

// FNV-1a, 64 bits (hash/fnv), inlined so that counting a played
// message's lines allocates nothing.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvAdd(h uint64, b []byte) uint64 {
	for _, c := range b {
		h = (h ^ uint64(c)) * fnvPrime
	}
	return (h ^ '\n') * fnvPrime
}

// Session is one SMTP session as smtpd reports and filters it. Its
// methods are for one goroutine at a time; the player's reader fills its
// queue.
type Session struct {
	p       *Player
	id      Token
	timer   *time.Timer
	written time.Time // when Play last finished writing

	mu     sync.Mutex // guards what the reader shares with the session's goroutine
	tokens map[Token]asked
	queue  []received
	head   int
	signal chan struct{}
	// abandoned: smtpd is done with the session while answers were due;
	// they are checked and dropped, as smtpd drops them.
	abandoned bool

	// The reader's own, touched by no other goroutine: the token of the
	// played message whose lines are coming back, and their count so far.
	// Its lines are counted without the lock.
	echoTok Token
	echo    echoCount
}

// NewSession opens a session with a fresh random id. Until End, the
// filter's answers for it are read into its queue.
func (p *Player) NewSession() *Session {
	s := p.newSession()
	p.open(s)
	return s
}

func (p *Player) newSession() *Session {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &Session{p: p, timer: t, tokens: map[Token]asked{}, signal: make(chan struct{}, 1)}
}

func (p *Player) open(s *Session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		s.id = randomToken()
		if p.sessions[s.id] == nil {
			p.sessions[s.id] = s
			return
		}
	}
}

// ID returns the session id, 16 hex digits.
func (s *Session) ID() string { return s.id.String() }

// End closes the session: from now on an answer for it is an error. It
// returns an error naming the lines that came for it and were never read.
func (s *Session) End() error {
	s.p.mu.Lock()
	delete(s.p.sessions, s.id)
	s.p.ended.Add(1)
	s.p.mu.Unlock()
	return s.checkUnread()
}

// Abandon plays smtpd giving up on the session while answers are due:
// link-disconnect, its own session timeout, or shutdown. Whether the
// filter still answers then is a race smtpd does not care about: it
// drops an answer for a session it no longer has (lka_filter.c). So from
// now on the answers due are checked and dropped, as are the lines
// already queued; a line for a token not asked is still an error.
func (s *Session) Abandon() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.abandoned = true
	clear(s.queue)
	s.queue, s.head = s.queue[:0], 0
}

// Renew ends the session (End) and opens a fresh one in its place, with a
// new id, keeping its buffers: a driver that plays many sessions in turn
// allocates nothing per session.
func (s *Session) Renew() error {
	err := s.End()
	s.mu.Lock()
	clear(s.tokens)
	s.queue, s.head, s.abandoned = s.queue[:0], 0, false
	s.mu.Unlock()
	s.p.open(s)
	return err
}

// checkUnread fails the player for the lines the session never read.
func (s *Session) checkUnread() error {
	s.mu.Lock()
	unread := s.queue[s.head:]
	var lines []string
	for i, r := range unread {
		if i == 5 {
			lines = append(lines, fmt.Sprintf("... (%d in all)", len(unread)))
			break
		}
		lines = append(lines, r.describe())
	}
	s.mu.Unlock()
	if len(lines) == 0 {
		return nil
	}
	err := fmt.Errorf("session %s: the filter wrote lines that were never read: %s", s.id, strings.Join(lines, ", "))
	s.p.fail("%v", err)
	return err
}

func (r *received) describe() string {
	if r.kind == playedData {
		return fmt.Sprintf("%d data lines and \".\" of token %s", r.echo.lines, r.Token)
	}
	return fmt.Sprintf("%q", quoteCut([]byte(r.Line)))
}

// receive takes one answer line from the player's reader: tokB is the
// token as written, payload what follows SESSION|TOKEN|, l the whole line,
// all in the reader's buffer: what is kept is copied.
func (s *Session) receive(dataline bool, tokB, payload, l []byte) {
	dot := len(payload) == 1 && payload[0] == '.'
	if dataline && !dot && string(tokB) == string(s.echoTok[:]) {
		s.count(payload) // most lines of a played message
		return
	}
	var tok Token
	if !isHex(tokB) {
		s.p.fail("session %s: a token that is not 16 hex digits: %q", s.id, quoteCut(l))
		return
	}
	copy(tok[:], tokB)
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.tokens[tok]
	kind := a.kind
	if !dataline {
		if kind != askedRequest && kind != playedRequest {
			s.p.fail("session %s: filter-result for token %s, %s: %q", s.id, tok, s.tokenState(kind), quoteCut(l))
			return
		}
		s.answered(tok, a)
		d, param, err := decision(payload)
		if err != nil {
			s.p.fail("session %s: %v: %q", s.id, err, quoteCut(l))
			return
		}
		r := received{Answer: Answer{Token: tok, Decision: d, Param: param}, kind: kind}
		if kind == askedRequest {
			r.Line = string(l)
		}
		s.push(r)
		return
	}
	switch kind {
	case playedData:
		if tok != s.echoTok {
			s.echoTok, s.echo = tok, echoCount{hash: fnvOffset}
		}
		if !dot {
			s.count(payload)
			return
		}
		s.answered(tok, a)
		s.push(received{Answer: Answer{Token: tok, DataLine: true, Param: "."}, kind: kind, echo: s.echo})
		s.echoTok, s.echo = Token{}, echoCount{}
	case askedData:
		if dot {
			s.answered(tok, a)
		}
		s.push(received{Answer: Answer{Token: tok, DataLine: true, Param: string(payload), Line: string(l)}, kind: kind})
	default:
		s.p.fail("session %s: filter-dataline for token %s, %s: %q", s.id, tok, s.tokenState(kind), quoteCut(l))
	}
}

// count counts one line of the played message coming back.
func (s *Session) count(payload []byte) {
	s.echo.lines++
	s.echo.bytes += len(payload)
	if s.p.cfg.HashDataLines {
		s.echo.hash = fnvAdd(s.echo.hash, payload)
	}
}

// answered counts one answer due under tok as come.
func (s *Session) answered(tok Token, a asked) {
	if a.due--; a.due > 0 {
		s.tokens[tok] = a
		return
	}
	delete(s.tokens, tok)
}

func (s *Session) tokenState(k tokenKind) string {
	switch k {
	case askedRequest, playedRequest:
		return "a request that is not data-line"
	case askedData, playedData:
		return "a data-line request"
	}
	return "which was not asked or was answered already"
}

func (s *Session) push(r received) {
	if s.abandoned {
		return
	}
	s.queue = append(s.queue, r)
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// next waits for the session's next answer.
func (s *Session) next() (received, error) {
	for {
		s.mu.Lock()
		if s.head < len(s.queue) {
			r := s.queue[s.head]
			s.queue[s.head] = received{}
			s.head++
			if s.head == len(s.queue) {
				s.queue, s.head = s.queue[:0], 0
			}
			s.mu.Unlock()
			return r, nil
		}
		s.mu.Unlock()
		select {
		case <-s.signal:
			continue
		default:
		}
		s.timer.Reset(s.p.cfg.Wait)
		select {
		case <-s.signal:
			s.timer.Stop()
		case <-s.p.failed:
			s.timer.Stop()
			if s.pending() {
				continue
			}
			return received{}, fmt.Errorf("session %s: waiting for the filter: %w", s.id, s.p.Err())
		case <-s.p.readDone:
			s.timer.Stop()
			if s.pending() {
				continue
			}
			return received{}, fmt.Errorf("session %s: the filter's output ended", s.id)
		case <-s.timer.C:
			return received{}, fmt.Errorf("session %s: no line from the filter within %v", s.id, s.p.cfg.Wait)
		}
	}
}

func (s *Session) pending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.head < len(s.queue)
}

// Report writes "report|VERSION|TIME|smtp-in|EVENT|SESSION[|FIELDS...]",
// if the filter subscribed to event; smtpd sends no other (lka_report.c).
// Fields are written as given: their order for the protocol version
// (compat.Layout) is the caller's.
func (s *Session) Report(event string, fields ...string) error {
	if !s.p.reg.Report(event) {
		return nil
	}
	b := s.p.appendReport(nil, timestamp(), event, s.id, fields...)
	return s.p.write(b)
}

// ErrNotRegistered is Request's error for a phase the filter did not
// register: smtpd would not ask it (lka_filter.c).
var ErrNotRegistered = errors.New("smtpdplay: the filter did not register this phase")

// Request writes "filter|VERSION|TIME|smtp-in|PHASE|SESSION|TOKEN|PARAM"
// with a fresh token, and returns the token. The answer comes through
// Next, Expect or Ask.
func (s *Session) Request(phase, param string) (Token, error) {
	if !s.p.reg.Filter(phase) {
		return Token{}, fmt.Errorf("%w: %s", ErrNotRegistered, phase)
	}
	tok := s.newToken(askedRequest)
	return tok, s.p.write(s.p.appendRequest(nil, timestamp(), phase, s.id, tok, param))
}

// StartData returns a fresh token for the data lines of one message, as
// smtpd uses one token for all of them. The filter may answer them only
// with filter-dataline lines, up to one of just ".".
func (s *Session) StartData() Token { return s.newToken(askedData) }

// SendData writes one data-line request per line, under tok, in one
// Write: lines as smtpd sends them, dot-stuffed, the final "." a line like
// any other.
func (s *Session) SendData(tok Token, lines ...string) error {
	ts := timestamp()
	var b []byte
	for _, l := range lines {
		b = s.p.appendRequest(b, ts, "data-line", s.id, tok, l)
	}
	return s.p.write(b)
}

func (s *Session) newToken(k tokenKind) Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		t := randomToken()
		if s.tokens[t].kind == 0 {
			s.tokens[t] = asked{kind: k, due: 1}
			return t
		}
	}
}

// Next waits for the session's next line from the filter.
func (s *Session) Next() (Answer, error) {
	r, err := s.next()
	if err != nil {
		return Answer{}, err
	}
	if r.kind == playedRequest || r.kind == playedData {
		return Answer{}, fmt.Errorf("session %s: the answer to a played step came to Next: %s", s.id, r.describe())
	}
	return r.Answer, nil
}

// Expect checks that the session's next lines from the filter are
// exactly want, in order: nothing before them, nothing between.
func (s *Session) Expect(want ...string) error {
	for i, w := range want {
		a, err := s.Next()
		if err != nil {
			return fmt.Errorf("expecting line %d of %d, %q: %w", i+1, len(want), quoteCut([]byte(w)), err)
		}
		if a.Line != w {
			return fmt.Errorf("session %s: line %d of %d: the filter wrote\n  %q\nwant\n  %q", s.id, i+1, len(want), quoteCut([]byte(a.Line)), quoteCut([]byte(w)))
		}
	}
	return nil
}

// WantResult is the line that answers tok with decision ("proceed",
// "reject|550 5.7.1 no", ...), in the layout of the player's protocol.
func (s *Session) WantResult(tok Token, decision string) string {
	return "filter-result|" + s.ids(tok) + decision
}

// WantData is the line that hands back one data line under tok.
func (s *Session) WantData(tok Token, line string) string {
	return "filter-dataline|" + s.ids(tok) + line
}

func (s *Session) ids(tok Token) string {
	if s.p.layout.TokenFirst {
		return tok.String() + "|" + s.id.String() + "|"
	}
	return s.id.String() + "|" + tok.String() + "|"
}

// Ask sends a request and waits for its answer, which must be the
// session's next line. For a phase the filter did not register it sends
// nothing and returns proceed, as smtpd goes on without asking.
func (s *Session) Ask(phase, param string) (protocol.Decision, string, error) {
	tok, err := s.Request(phase, param)
	if errors.Is(err, ErrNotRegistered) {
		return protocol.Proceed, "", nil
	}
	if err != nil {
		return "", "", err
	}
	a, err := s.Next()
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", phase, err)
	}
	if a.DataLine || a.Token != tok {
		return "", "", fmt.Errorf("session %s: %s: the filter wrote %q, not the answer to token %s", s.id, phase, quoteCut([]byte(a.Line)), tok)
	}
	return a.Decision, a.Param, nil
}

// ReadMessage reads the data lines the filter hands back under tok up to
// the final ".", and returns them without it, still dot-stuffed. Any
// other line first is an error.
func (s *Session) ReadMessage(tok Token) ([]string, error) {
	var lines []string
	for {
		a, err := s.Next()
		if err != nil {
			return lines, fmt.Errorf("data lines: %w", err)
		}
		if !a.DataLine || a.Token != tok {
			return lines, fmt.Errorf("session %s: data lines: the filter wrote %q before the final \".\"", s.id, quoteCut([]byte(a.Line)))
		}
		if a.Param == "." {
			return lines, nil
		}
		lines = append(lines, a.Param)
	}
}
