package gateway

import (
	"errors"
	"io"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/protocol"
)

// reader is Run's goroutine, the only reader of smtpd's lines: it queues
// each line to its session and wakes the sessions. Everything in it is
// its own.
//
// Lines are queued without waking their session; just before each read of
// stdin, which may block, every session that got lines since the last read
// is woken once (the protocol.Reader's OnRead hook). Under load a read
// brings many lines for a session, and the session handles them in one go
// (and writes its answers in one batch) instead of being woken for each.
type reader struct {
	g      *Gateway
	lines  *protocol.Reader
	arena  protocol.Arena
	cutter protocol.DataLineCutter
	dl     protocol.DataLine
	toWake []*session // sessions with lines queued and not yet woken
	// now is when stdin was last read (unix ns): smtpd sent something
	// then. It is the sessions' activity clock, which the reaper reads.
	now int64
}

// inbound is the part of a session that its reader owns.
type inbound struct {
	queued bool   // lines queued since the session was last woken
	token  string // the token of the last data line: one copy per message
}

func (g *Gateway) newReader(in io.Reader) *reader {
	r := &reader{g: g, lines: protocol.NewReader(in, 0), now: time.Now().UnixNano()}
	r.lines.OnRead(r.wakeQueued, func() { r.now = time.Now().UnixNano() })
	return r
}

// run reads and queues smtpd's lines until stdin ends or the gateway
// stops, and says why it stopped. A malformed line is logged and skipped.
func (r *reader) run() (endReason, error) {
	g := r.g
	defer r.wakeQueued() // what was queued since the last read is handled before the sessions end
	for {
		raw, err := r.lines.ReadLine()
		if err != nil {
			if errors.Is(err, protocol.ErrLineTooLong) {
				g.log.Error("ignoring a line over the length limit", zap.Error(err))
				continue
			}
			if errors.Is(err, io.EOF) || errors.Is(err, os.ErrClosed) {
				return endSmtpdGone, nil // smtpd is gone, or SIGTERM closed stdin
			}
			return endSmtpdGone, err
		}
		if g.out.failed() {
			return endSmtpdGone, nil
		}
		if g.stopping.Load() {
			return endShutdown, nil
		}
		// Data lines are most lines: they are cut in place, and their
		// text lives only until the session has echoed or buffered it, so
		// it shares the arena's blocks. Other lines feed macros and state
		// a session keeps, so each gets its own copy and pins nothing else.
		if r.cutter.Cut(raw, &r.dl) {
			r.dataLine(raw, &r.dl)
			continue
		}
		var l protocol.Line
		if err := protocol.ParseLine(string(raw), &l); err != nil {
			g.log.Error("ignoring malformed line from smtpd", zap.Error(err))
			continue
		}
		switch l.Kind {
		case protocol.KindReport:
			r.dispatch(l.Report.Session, raw, &l, l.Report.Event == protocol.EventLinkDisconnect)
		case protocol.KindRequest:
			r.dispatch(l.Request.Session, raw, &l, false)
		case protocol.KindConfig:
			// Configuration after the handshake carries nothing we use.
		}
	}
}

// dispatch queues a line for its session, starting the session on its
// first line, and traces it (raw, as smtpd sent it) when the session is
// traced: its link-connect says whether its client is one to trace. The
// last line, link-disconnect, also interrupts a milter call the session
// may be stuck in, so that it handles the line at once rather than when
// the milter answers.
func (r *reader) dispatch(id string, raw []byte, l *protocol.Line, last bool) {
	s := r.g.sessionFor(id, last, r.now)
	if l.Kind == protocol.KindReport && l.Report.Event == protocol.EventLinkConnect {
		s.traceClient(l.Report)
	}
	if t := s.trace.Load(); t != nil {
		t.lineIn(raw)
	}
	lc := *l
	r.queue(s, item{line: &lc})
	if last {
		s.interrupt()
	}
}

// dataLine is dispatch for a data line cut in place: the session is looked
// up without a copy of its id, and the token, the same on every line of a
// message, is copied once per message. raw is the whole line, for the
// trace.
func (r *reader) dataLine(raw []byte, d *protocol.DataLine) {
	g := r.g
	g.mu.Lock()
	s := g.sessions[string(d.Session)]
	g.mu.Unlock()
	if s == nil {
		s = g.sessionFor(string(d.Session), false, r.now)
	}
	if string(d.Token) != s.in.token {
		s.in.token = string(d.Token)
	}
	if t := s.trace.Load(); t != nil {
		t.dataLine("filter line in", raw, len(d.Param))
	}
	r.queue(s, item{version: d.Version, token: s.in.token, param: r.arena.String(d.Param)})
}

// queue hands an item to its session, to be woken before the next read.
func (r *reader) queue(s *session, it item) {
	s.lastActive.Store(r.now)
	s.q.add(it)
	if !s.in.queued {
		s.in.queued = true
		r.toWake = append(r.toWake, s)
	}
}

// wakeQueued wakes the sessions that got lines since it last ran.
func (r *reader) wakeQueued() {
	for i, s := range r.toWake {
		s.in.queued = false
		s.q.wake()
		r.toWake[i] = nil
	}
	r.toWake = r.toWake[:0]
}
