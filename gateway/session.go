package gateway

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/compat"
	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
)

// session is one SMTP session of smtpd and its milter sessions. All of its
// state but in is owned by one goroutine, which takes the session's
// reports and requests from its queue in the order smtpd sent them;
// sessions run side by side and answer in whatever order their milters
// allow.
//
// This file is the session's loop: take lines, dispatch them through the
// table (table.go), contain a panic, write the answers. The SMTP stages
// are in stages.go, the reports in reports.go, the message in data.go.
type session struct {
	g      *Gateway
	cfg    *Config // the configuration when the session started (Gateway.Reload)
	id     string
	log    *zap.Logger
	q      *queue
	in     inbound // owned by the gateway's reader
	layout compat.Layout
	macros *milter.Macros
	end    endReason // why the session ends; running until then

	// trace is the session's trace, nil when it is not traced (trace.go);
	// set by the reader, read by both goroutines.
	trace atomic.Pointer[tracer]

	milters []*slot // in configured order
	opened  bool

	client      protocol.Endpoint
	rdns        string
	fcrdns      string
	lastCommand string  // the last SMTP command line the client sent (protocol-client)
	heloName    string  // the HELO or EHLO name, for the message line
	sticky      *answer // a connection-scoped answer: every later request gets it

	// The transaction in progress.
	msg      *message
	mode     messageMode // how msg's lines go (chooseMode)
	commit   answer      // the answer for commit, decided at end of data
	discard  bool
	answered bool // the request being handled has been answered
	rcpts    int  // the recipients of the transaction answered proceed, for the message line

	out        []byte       // lines for smtpd not yet handed to the writer
	size       int          // bytes of the message's data lines, for the observer
	chunk      []byte       // reused body chunk buffer (dropped with a message that went to disk)
	lastActive atomic.Int64 // when smtpd and the session last exchanged a line (unix ns)
	// busy: the session is handling lines smtpd sent, so smtpd may be
	// waiting for its answer however long the milters take (up to
	// -eom-timeout at end of message, longer than smtpd's session
	// timeout): the reaper leaves it alone (Gateway.reap).
	busy atomic.Bool

	// gone: smtpd is done with the session (link-disconnect, reaping,
	// shutdown past its timeout); set from other goroutines by interrupt.
	// No milter call starts after it. What the session still answers is
	// harmless: smtpd drops a filter's lines for a session it has ended
	// (lka_filter.c, lka_filter_process_response: "session can
	// legitimately disappear").
	gone atomic.Bool
	// callMu guards inCall, the milter session a call is waiting on, so
	// that interrupt can close its socket.
	callMu sync.Mutex
	inCall *milter.Session
}

func (g *Gateway) newSession(id string, now int64) *session {
	s := &session{
		g:      g,
		cfg:    g.cfg.Load(),
		id:     id,
		log:    g.log.With(zap.String("session", id)),
		q:      newQueue(),
		layout: compat.For(compat.Newest),
		macros: milter.NewMacros(),
		commit: proceed,
	}
	s.lastActive.Store(now)
	s.traceFromStart()
	g.wg.Add(1)
	go s.run()
	return s
}

// run handles the session's lines until it ends: at link-disconnect, or
// when its queue is closed (reaped, smtpd gone, shutdown).
func (s *session) run() {
	defer s.g.wg.Done()
	defer s.g.sessionGone(s)
	defer s.finish()
	batch := make([]item, 0, blockItems)
	for {
		batch, s.end = s.q.popAll(batch)
		if s.end != running {
			return
		}
		s.busy.Store(true)
		for i := range batch {
			l := batch[i].lineFor(s.id)
			batch[i] = item{}
			s.handle(&l)
			if s.end != running {
				return
			}
			if len(s.out) >= flushSize {
				s.flush()
			}
		}
		// Echoed data lines go out in batches: when nothing more is
		// queued for the session, or enough has gathered.
		if len(s.out) > 0 && s.q.empty() {
			s.flush()
		}
		// The session's idle time starts from its own last answer, not
		// from smtpd's last line before a long milter call.
		s.lastActive.Store(time.Now().UnixNano())
		s.busy.Store(false)
	}
}

// finish ends the milter sessions (QUIT), frees the message and writes
// what is left.
func (s *session) finish() {
	s.log.Debug("session ends", zap.Stringer("reason", s.end))
	s.closeMilters()
	s.dropMessage()
	s.flush()
	putBuf(s.out)
	s.out = nil
}

const flushSize = 32 << 10

// dataLineOut queues a data line for smtpd.
func dataLineOut[L string | []byte](s *session, token string, line L) {
	s.out = growBuf(s.out, len(line)+len(s.id)+len(token)+len("filter-dataline|||\n"))
	start := len(s.out)
	s.out = protocol.AppendDataLine(s.out, s.layout, s.id, token, line)
	if t := s.trace.Load(); t != nil {
		t.dataLine("filter line out", s.out[start:len(s.out)-1], len(line))
	}
}

// flush hands the queued lines to the writer, which has written or copied
// them when send returns, so the buffer stays the session's. It comes from
// the buffer pool and goes back when the session ends (finish): sessions
// are short, most one message long, and a fresh buffer grown for each cost
// more than the rest of an echo (see bufpool.go). One grown by a long
// burst goes back at once rather than be kept for the session's life.
func (s *session) flush() {
	if len(s.out) > 0 {
		s.g.out.send(s.out)
		s.out = s.out[:0]
		if cap(s.out) > 2*flushSize {
			putBuf(s.out)
			s.out = nil
		}
	}
}

// handle processes one line. A panic anywhere below is contained here:
// the session answers with the default action and every other session
// goes on.
func (s *session) handle(l *protocol.Line) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("internal error; session gets the default action",
				zap.Any("panic", r), zap.Stack("stack"))
			s.recoverFrom(l)
		}
	}()
	switch l.Kind {
	case protocol.KindRequest:
		s.request(l.Request)
	case protocol.KindReport:
		s.report(l.Report)
	}
}

// request dispatches a filter request through the table.
func (s *session) request(r protocol.Request) {
	s.layout = compat.For(r.Version)
	s.answered = false
	if h := phaseHandler[r.Phase]; h != nil {
		h(s, r)
		return
	}
	stage(func(s *session, r protocol.Request) answer {
		s.g.unknownPhase(r.Phase)
		return proceed
	})(s, r)
}

// report dispatches a report through the table.
func (s *session) report(r protocol.Report) {
	h := eventHandler[r.Event]
	if h == nil {
		return // not registered; smtpd sends only what was
	}
	ev, err := r.Decode()
	if err != nil {
		s.log.Warn("ignoring malformed report", zap.Error(err))
		return
	}
	h(s, ev)
}

// recoverFrom gives up the milters after a panic and applies the default
// action: to the request in hand and, unless it accepts, to every later
// one; a message in progress is written back as it came.
func (s *session) recoverFrom(l *protocol.Line) {
	s.closeMilters()
	failure := s.cfg.DefaultAction.failure()
	if failure.decision != protocol.Proceed {
		s.sticky = &failure
	}
	switch l.Kind {
	case protocol.KindRequest:
		e := l.Request
		if e.Phase == protocol.PhaseDataLine {
			s.messageFailed(e.Token, e.Param == ".", failure)
			return
		}
		if !s.answered {
			s.send(e, failure)
		}
	case protocol.KindReport:
		if l.Report.Event == protocol.EventLinkDisconnect {
			s.end = endDisconnect
		}
	}
}

// send answers a filter request.
// The answer goes out at once, after the lines queued before it.
func (s *session) send(r protocol.Request, a answer) {
	if len(a.reply) > protocol.MaxParam && protocol.ValidReply(a.reply) {
		// A reply of filter-milter's own: milters' are cut in refuse.
		s.replyCut("", a.reply)
		a.reply, _ = fitReply(a.reply)
	}
	s.out = growBuf(s.out, 64+len(r.Session)+len(r.Token)+len(a.reply))
	start := len(s.out)
	var err error
	s.out, err = protocol.AppendResult(s.out, s.layout, r.Session, r.Token, a.decision, a.reply)
	if err != nil {
		// Only a reply that passed every check could get here; smtpd
		// would die on a bad line, so answer with the gateway's own.
		s.log.Error("cannot encode answer; using the default reply", zap.Error(err))
		s.out, _ = protocol.AppendResult(s.out, s.layout, r.Session, r.Token, protocol.Reject, replyTempfail)
	}
	if t := s.trace.Load(); t != nil {
		t.lineOut(s.out[start : len(s.out)-1])
	}
	if r.Phase == protocol.PhaseRcptTo && a.decision == protocol.Proceed {
		s.rcpts++ // a recipient of the message line's count
	}
	s.answered = true
	s.flush()
}

// errInterrupted is the error of a milter call cut short, or never made,
// because the session is gone: no fault of the milter's.
var errInterrupted = errors.New("session gone; milter call interrupted")

// interrupt marks the session as gone and closes the socket of a milter
// call in flight, so that the session's goroutine, which may be waiting
// on a milter that never answers or sends PROGRESS for ever, gets on at
// once to the link-disconnect or the end queued for it. Milters it is not
// waiting on are left to that goroutine, which ends them with QUIT as
// libmilter expects. Safe from any goroutine.
func (s *session) interrupt() {
	s.callMu.Lock()
	defer s.callMu.Unlock()
	s.gone.Store(true)
	if s.inCall != nil {
		s.inCall.Interrupt()
	}
}

// calling runs f, a call on the milter session m, where interrupt can
// reach it.
func (s *session) calling(m *milter.Session, f func() (milter.Verdict, error)) (milter.Verdict, error) {
	s.callMu.Lock()
	if s.gone.Load() {
		s.callMu.Unlock()
		return milter.Verdict{}, errInterrupted
	}
	s.inCall = m
	s.callMu.Unlock()
	s.traceMilter(m)
	v, err := f()
	s.callMu.Lock()
	s.inCall = nil
	s.callMu.Unlock()
	if err != nil && s.gone.Load() {
		err = fmt.Errorf("%w: %w", errInterrupted, err)
	}
	return v, err
}
