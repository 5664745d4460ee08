package smtpdplay

import (
	"fmt"
	"time"

	"github.com/filter-milter/filter-milter/protocol"
)

// appendReport appends "report|VERSION|TIME|smtp-in|EVENT|SESSION[|FIELDS...]\n".
// smtpd writes the separator after the session id only when fields
// follow (lka_report.c): link-disconnect has none.
func (p *Player) appendReport(b []byte, ts, event string, sid Token, fields ...string) []byte {
	b = append(b, "report|"...)
	b = append(b, p.version...)
	b = append(b, '|')
	b = append(b, ts...)
	b = append(b, "|smtp-in|"...)
	b = append(b, event...)
	b = append(b, '|')
	b = append(b, sid[:]...)
	for _, f := range fields {
		b = append(b, '|')
		b = append(b, f...)
	}
	return append(b, '\n')
}

// appendRequest appends "filter|VERSION|TIME|smtp-in|PHASE|SESSION|TOKEN|PARAM\n":
// SESSION|TOKEN in every version (only the answers swapped them, before
// 0.5), and the separator before PARAM even when it is empty.
func appendRequest[P string | []byte](p *Player, b []byte, ts, phase string, sid, tok Token, param P) []byte {
	b = append(b, "filter|"...)
	b = append(b, p.version...)
	b = append(b, '|')
	b = append(b, ts...)
	b = append(b, "|smtp-in|"...)
	b = append(b, phase...)
	b = append(b, '|')
	b = append(b, sid[:]...)
	b = append(b, '|')
	b = append(b, tok[:]...)
	b = append(b, '|')
	b = append(b, param...)
	return append(b, '\n')
}

func (p *Player) appendRequest(b []byte, ts, phase string, sid, tok Token, param string) []byte {
	return appendRequest(p, b, ts, phase, sid, tok, param)
}

// maxWrite bounds one Write of a step: a message goes out in pieces of
// about 64 KB, cut between lines, so that other sessions' lines come
// between them as they do on smtpd's pipe (smtpd's lookup process writes
// each session's lines as they come, through one buffered imsg channel).
const maxWrite = 64 << 10

// stepAwait is what a step waits for once written.
type stepAwait uint8

const (
	awaitNothing stepAwait = iota // reports only, or a phase the filter did not register
	awaitResult                   // the filter-result of its request
	awaitMessage                  // the data lines back, up to "."
)

// Step is a run of reports ending in at most one request or one message,
// encoded once: Session.Play patches in the session id and a fresh token
// and writes it. A Step is for one goroutine at a time (Play patches it
// in place); Clone makes one for another.
type Step struct {
	buf    []byte
	writes []int // end of each Write in buf, at line ends
	sids   []int // offsets of the session id in buf
	toks   []int // offsets of the token in buf
	sid    Token // the session id patched in last
	await  stepAwait
	what   string    // the request's phase, for errors
	sent   echoCount // awaitMessage: the data lines sent before ".", to check what comes back
}

// Size is the number of bytes Play writes for the step.
func (st *Step) Size() int { return len(st.buf) }

// Clone returns a copy of st for another goroutine.
func (st *Step) Clone() *Step {
	c := *st
	c.buf = append([]byte(nil), st.buf...)
	return &c
}

// Steps builds Steps for a player: Report adds to the step being built;
// Request, Message and Flush end it.
type Steps struct {
	p   *Player
	ts  string
	cur *Step
}

// NewSteps returns a builder of steps for p's protocol version and for
// what the filter registered: reports of events it did not subscribe to
// and requests of phases it did not register are left out, as smtpd
// leaves them out. The timestamp in every line is the builder's creation
// time.
func (p *Player) NewSteps() *Steps {
	now := time.Now()
	return &Steps{p: p, ts: fmt.Sprintf("%d.%06d", now.Unix(), now.Nanosecond()/1000), cur: &Step{}}
}

// sidMark and tokMark hold the places of the session id and the token
// until Play patches them.
var sidMark, tokMark Token

// Report adds a report to the step being built.
func (b *Steps) Report(event string, fields ...string) {
	if !b.p.reg.Report(event) {
		return
	}
	st := b.cur
	start := len(st.buf)
	st.buf = b.p.appendReport(st.buf, b.ts, event, sidMark, fields...)
	st.sids = append(st.sids, start+len("report|"+b.p.version+"|"+b.ts+"|smtp-in|"+event+"|"))
	b.cut(start)
}

// cut starts a new Write at start if the current one would pass maxWrite.
func (b *Steps) cut(start int) {
	st := b.cur
	last := 0
	if n := len(st.writes); n > 0 {
		last = st.writes[n-1]
	}
	if len(st.buf)-last > maxWrite && start > last {
		st.writes = append(st.writes, start)
	}
}

func (b *Steps) end() *Step {
	st := b.cur
	if n := len(st.writes); len(st.buf) > 0 && (n == 0 || st.writes[n-1] != len(st.buf)) {
		st.writes = append(st.writes, len(st.buf))
	}
	b.cur = &Step{}
	return st
}

// Request adds a request and ends the step: Play waits for its answer.
func (b *Steps) Request(phase, param string) *Step {
	if !b.p.reg.Filter(phase) {
		return b.end()
	}
	b.request(phase, []byte(param))
	st := b.end()
	st.await, st.what = awaitResult, phase
	return st
}

func (b *Steps) request(phase string, param []byte) {
	st := b.cur
	start := len(st.buf)
	st.buf = appendRequest(b.p, st.buf, b.ts, phase, sidMark, tokMark, param)
	at := start + len("filter|"+b.p.version+"|"+b.ts+"|smtp-in|"+phase+"|")
	st.sids = append(st.sids, at)
	st.toks = append(st.toks, at+len(sidMark)+1)
	b.cut(start)
}

// Message adds a message, one data-line request per line (as smtpd sends
// them, dot-stuffed) and the final ".", and ends the step: Play waits for
// the lines to come back, unchanged, up to ".".
func (b *Steps) Message(lines [][]byte) *Step {
	if !b.p.reg.Filter("data-line") {
		return b.end()
	}
	sent := echoCount{lines: len(lines), hash: fnvOffset}
	for _, l := range lines {
		b.request("data-line", l)
		sent.bytes += len(l)
		sent.hash = fnvAdd(sent.hash, l)
	}
	b.request("data-line", []byte("."))
	st := b.end()
	st.await, st.what, st.sent = awaitMessage, "data-line", sent
	return st
}

// Flush ends the step with the reports added so far: Play writes them and
// waits for nothing.
func (b *Steps) Flush() *Step { return b.end() }

// Play writes the step for this session with a fresh token and waits for
// its answer: proceed for a request, every data line back unchanged and
// then "." for a message. Anything else is an error naming the step.
func (s *Session) Play(st *Step) error {
	if st.sid != s.id {
		for _, off := range st.sids {
			copy(st.buf[off:], s.id[:])
		}
		st.sid = s.id
	}
	var tok Token
	switch st.await {
	case awaitResult:
		tok = s.newToken(playedRequest)
	case awaitMessage:
		tok = s.newToken(playedData)
	}
	for _, off := range st.toks {
		copy(st.buf[off:], tok[:])
	}
	from := 0
	for _, to := range st.writes {
		if err := s.p.write(st.buf[from:to]); err != nil {
			return err
		}
		from = to
	}
	s.written = time.Now()
	if st.await == awaitNothing {
		return nil
	}
	r, err := s.next()
	if err != nil {
		return fmt.Errorf("%s: %w", st.what, err)
	}
	switch {
	case r.Token != tok || r.kind != playedRequest && r.kind != playedData:
		return fmt.Errorf("session %s: %s: the filter wrote %s, not the answer to token %s", s.id, st.what, r.describe(), tok)
	case st.await == awaitResult && r.Decision != protocol.Proceed:
		return fmt.Errorf("session %s: %s: the filter answered %s %q", s.id, st.what, r.Decision, r.Param)
	case st.await == awaitMessage && !s.p.sameEcho(r.echo, st.sent):
		return fmt.Errorf("session %s: %d data lines of %d bytes came back (FNV-1a %x), want the %d of %d bytes sent (%x): the filter changed the message",
			s.id, r.echo.lines, r.echo.bytes, r.echo.hash, st.sent.lines, st.sent.bytes, st.sent.hash)
	}
	return nil
}

// Written is when the last step played finished writing: for a message,
// when its "." went out, from which a load generator times the commit.
func (s *Session) Written() time.Time { return s.written }

// sameEcho reports whether what came back is what was sent.
func (p *Player) sameEcho(got, sent echoCount) bool {
	return got.lines == sent.lines && got.bytes == sent.bytes && (!p.cfg.HashDataLines || got.hash == sent.hash)
}
