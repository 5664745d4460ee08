package gateway

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/compat"
	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
)

// session is one SMTP session of smtpd and its milter sessions. All of its
// state is owned by one goroutine, which takes the session's reports and
// requests from its queue in the order smtpd sent them; sessions run side
// by side and answer in whatever order their milters allow.
type session struct {
	g      *Gateway
	id     string
	log    *zap.Logger
	q      *queue
	layout compat.Layout
	macros *milter.Macros

	milters []*slot // in configured order
	opened  bool
	failed  bool // a panic was recovered: milters dropped, default action applies

	client      protocol.Endpoint
	rdns        string
	fcrdns      string
	lastCommand string  // the last SMTP command line the client sent (protocol-client)
	sticky      *answer // a connection-scoped answer: every later request gets it

	// The transaction in progress.
	msg         *message
	passthrough bool   // no milter wants the message: echo data lines at once, keep none
	echoEarly   bool   // no milter can change the message: echo data lines at once, keep them for the milters
	commit      answer // the answer for commit, decided at end of data
	discard     bool
	answered    bool // the request being handled has been answered

	out         []byte       // lines for smtpd not yet handed to the writer
	size        int          // bytes of the message's data lines, for the observer
	chunk       []byte       // reused body chunk buffer
	lastActive  atomic.Int64 // when smtpd last sent something for the session (unix ns)
	queued      bool         // owned by the gateway's reader: lines queued, session not yet woken
	unwoken     int          // owned by the gateway's reader: lines it wrote back and queued without a wake
	readerToken string       // owned by the gateway's reader: the token of the last data line
	// readerEcho: the gateway's reader writes this message's data lines
	// back itself as they come, and queues them only to be kept for the
	// milters (see Gateway.echoLine). Set at DATA when no milter can
	// change the message, cleared when the message is dropped.
	readerEcho atomic.Bool
	echoed     bool // the item being handled was written back by the reader

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

// errInterrupted is the error of a milter call cut short, or never made,
// because the session is gone: no fault of the milter's.
var errInterrupted = errors.New("session gone; milter call interrupted")

// interrupt marks the session as gone and closes the socket of a milter
// call in flight, so that the session's goroutine, which may be waiting
// on a milter that never answers or sends PROGRESS for ever, gets on at
// once to the link-disconnect or shutdown queued for it. Milters it is not
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
	v, err := f()
	s.callMu.Lock()
	s.inCall = nil
	s.callMu.Unlock()
	if err != nil && s.gone.Load() {
		err = fmt.Errorf("%w: %w", errInterrupted, err)
	}
	return v, err
}

func (g *Gateway) newSession(id string) *session {
	s := &session{
		g:      g,
		id:     id,
		log:    g.log.With(zap.String("session", id)),
		q:      newQueue(),
		layout: compat.For(compat.Newest),
		macros: milter.NewMacros(),
		commit: proceed,
	}
	g.wg.Add(1)
	go s.run()
	return s
}

func (s *session) run() {
	defer s.g.wg.Done()
	defer s.g.sessionGone(s.id)
	batch := make([]item, 0, blockItems)
	for {
		batch = s.q.popAll(batch)
		for i := range batch {
			l := batch[i].lineFor(s.id)
			s.echoed = batch[i].echoed
			batch[i] = item{}
			if s.handle(&l) {
				s.flush()
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
	}
}

const flushSize = 32 << 10

// dataLineOut queues a data line for smtpd.
func dataLineOut[L string | []byte](s *session, token string, line L) {
	s.out = growBuf(s.out, len(line)+len(s.id)+len(token)+len("filter-dataline|||\n"))
	s.out = protocol.AppendDataLine(s.out, s.layout, s.id, token, line)
}

// flush hands the queued lines to the writer, which owns them from then on.
func (s *session) flush() {
	if len(s.out) > 0 {
		s.g.out.send(s.out) // the writer recycles the buffer (putBuf)
		s.out = nil
	}
}

// handle processes one event and reports whether the session is over. A
// panic anywhere below is contained here: the session answers with the
// default action and every other session goes on.
func (s *session) handle(l *protocol.Line) (done bool) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("internal error; session gets the default action",
				zap.Any("panic", r), zap.Stack("stack"))
			done = s.recoverFrom(l)
		}
	}()
	switch l.Kind {
	case protocol.KindRequest:
		s.request(l.Request)
	case protocol.KindReport:
		return s.report(l.Report)
	default: // shutdown
		s.closeMilters()
		s.dropMessage()
		return true
	}
	return false
}

func (s *session) recoverFrom(l *protocol.Line) bool {
	s.failed = true
	s.closeMilters()
	failure := s.g.cfg.DefaultAction.failure()
	if failure.decision != protocol.Proceed {
		s.sticky = &failure
	}
	switch l.Kind {
	case protocol.KindRequest:
		e := l.Request
		if e.Phase == "data-line" {
			if e.Param != "." && s.msg != nil && !s.passthrough && !s.echoEarly {
				// Give back what was buffered; the rest is echoed as it comes.
				s.msg.emitOriginal(func(line []byte) { dataLineOut(s, e.Token, line) })
				s.flush()
				s.passthrough = true
				s.commit = failure
			}
			if e.Param == "." && s.msg != nil {
				// Nothing of the message was written back yet: it goes back
				// unchanged, and commit gets the default action.
				s.commit = failure
				s.finishData(e.Token, false)
			}
			return false
		}
		if !s.answered {
			s.send(e, failure)
		}
	case protocol.KindReport:
		return l.Report.Event == "link-disconnect"
	default: // shutdown
		return true
	}
	return false
}

func (s *session) request(r protocol.Request) {
	s.layout = compat.For(r.Version)
	s.answered = false
	switch r.Phase {
	case "data-line":
		s.dataLine(r)
		return
	case "commit":
		if s.msg != nil {
			// smtpd asks for commit only once the last filter gave back
			// "."; a message still open here was ended early by a filter
			// before this one in the chain, and smtpd has its lines.
			s.log.Warn("commit before the end of the message; the buffered lines are dropped")
			s.dropMessage()
		}
		a := s.commit
		if s.discard && s.g.cfg.Policy.Discard == "reject" {
			a = answer{protocol.Reject, replyDiscard}
		}
		s.logMessage(a)
		s.g.cfg.Observer.MessageDone(s.id, s.macros.Get(milter.MacroQueueID), string(a.decision), a.reply, s.size)
		s.send(r, a)
		return
	}
	if s.sticky != nil {
		s.send(r, *s.sticky)
		return
	}
	var a answer
	switch r.Phase {
	case "connect":
		a = s.connect(r)
	case "helo", "ehlo":
		a = s.each(r.Phase, true, func(m *milter.Session) (milter.Verdict, error) { return m.Helo(r.Param) })
	case "mail-from":
		a = s.mail(r)
	case "rcpt-to":
		a = s.rcpt(r)
	case "data":
		a = s.data()
	default:
		s.g.unknownPhase(r.Phase)
		a = proceed
	}
	s.send(r, a)
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
	var err error
	s.out, err = protocol.AppendResult(s.out, s.layout, r.Session, r.Token, a.decision, a.reply)
	if err != nil {
		// Only a reply that passed every check could get here; smtpd
		// would die on a bad line, so answer with the gateway's own.
		s.log.Error("cannot encode answer; using the default reply", zap.Error(err))
		s.out, _ = protocol.AppendResult(s.out, s.layout, r.Session, r.Token, protocol.Reject, replyTempfail)
	}
	s.answered = true
	s.flush()
}

// each sends one SMTP stage to every milter still in the session, in
// order, and stops at the first that refuses: a refusal by one milter
// overrides the others, and later milters do not see that command
// (Postfix's rule). A refusal at connect or HELO covers the connection.
func (s *session) each(stage string, connScope bool, c call) answer {
	for _, sl := range s.milters {
		if !sl.active() {
			continue
		}
		v, err := s.do(sl, stage, c, true)
		if err != nil {
			if a, stop := s.milterFailed(sl, err); stop {
				return a
			}
			continue
		}
		switch v.Kind {
		case milter.Reject, milter.Tempfail:
			a := s.refuse(sl, stage, v)
			if a.decision == protocol.Proceed {
				continue
			}
			if connScope || a.decision == protocol.Disconnect {
				s.sticky = &a
			}
			return a
		case milter.Discard:
			// The whole message is dropped, whatever stage said so; the
			// filter protocol has no silent drop, so commit refuses it.
			s.log.Info("milter discards the message", zap.String("milter", sl.name()), zap.String("stage", stage))
			s.discard = true
			return proceed
		}
	}
	return proceed
}

// refuse turns a milter's refusal into the answer for smtpd. A reply the
// filter protocol cannot carry gets the default action, as any other
// protocol error of a milter does.
func (s *session) refuse(sl *slot, stage string, v milter.Verdict) answer {
	a, long, err := refusal(v)
	if err != nil {
		s.log.Warn("invalid reply from milter; applying the default action", zap.String("milter", sl.name()),
			zap.String("stage", stage), zap.Stringer("verdict", v.Kind), zap.String("reply", logText(v.Reply)),
			zap.NamedError("reason", err), zap.Stringer("default_action", sl.action))
		return sl.action.failure()
	}
	if long != "" {
		s.replyCut(sl.name(), long)
	}
	s.log.Info("milter refused", zap.String("milter", sl.name()), zap.String("stage", stage), zap.String("reply", a.reply))
	return a
}

// replyCut logs a reply that was cut to fit smtpd (fitReply); milter is
// "" for a reply filter-milter made itself.
func (s *session) replyCut(milter, long string) {
	s.log.Warn("reply too long for smtpd; cut at a word boundary", zap.String("milter", milter),
		zap.Int("length", len(long)), zap.Int("limit", protocol.MaxParam), zap.String("reply", logText(long)))
}

// milterFailed takes a milter that failed out of the session and applies
// the default action: accept goes on without it; tempfail and reject answer
// this and every later request of the session, as Postfix's sticky default
// reply does.
func (s *session) milterFailed(sl *slot, err error) (answer, bool) {
	if errors.Is(err, errInterrupted) {
		// Not the milter's fault, and no one to answer: the session ends
		// with the line queued for it. The other milters get QUIT now.
		s.log.Debug("milter call interrupted: the session is gone", zap.String("milter", sl.name()), zap.Error(err))
		s.closeMilters()
		return proceed, true
	}
	if sl.m != nil {
		_ = sl.m.Close()
		sl.m = nil
	}
	a := sl.action.failure()
	s.log.Warn("milter failed; applying the default action", zap.String("milter", sl.name()),
		zap.Error(err), zap.Stringer("default_action", sl.action))
	if a.decision == protocol.Proceed {
		return a, false
	}
	s.sticky = &a
	return a, true
}

func (s *session) connect(r protocol.Request) answer {
	if a, ok := s.openMilters(); !ok {
		return a
	}
	host, family, port, addr := s.connectInfo(r)
	return s.each("connect", true, func(m *milter.Session) (milter.Verdict, error) {
		return m.Connect(host, family, port, addr)
	})
}

// openMilters opens a milter session to every configured milter, once.
func (s *session) openMilters() (answer, bool) {
	if s.opened {
		return proceed, true
	}
	s.opened = true
	s.milters = make([]*slot, len(s.g.cfg.Milters))
	for i, p := range s.g.cfg.Milters {
		sl := &slot{pool: p, action: s.g.cfg.DefaultAction}
		if p.Config.DefaultAction != "" {
			sl.action, _ = ParseAction(p.Config.DefaultAction)
		}
		s.milters[i] = sl
		if s.gone.Load() {
			continue // nothing to open for a session smtpd is done with
		}
		m, err := p.Open(s.macros)
		if err != nil {
			s.g.cfg.Observer.MilterError(s.id, p.Name(), "open", err)
			if a, stop := s.milterFailed(sl, err); stop {
				return a, false
			}
			continue
		}
		sl.m = m
	}
	return proceed, true
}

// connectInfo is what SMFIC_CONNECT carries: the client's verified name or,
// as Postfix does, "[ip]"; its address family, port and address. The
// link-connect report has the port; the connect request only the address.
func (s *session) connectInfo(r protocol.Request) (string, milter.Family, uint16, string) {
	ep := s.client
	if ep.Family == "" {
		rdns, src, _ := strings.Cut(r.Param, "|")
		s.rdns = rdns
		switch {
		case src == "local":
			ep = protocol.Endpoint{Family: "unix", Addr: "local"}
		case strings.HasPrefix(src, "["):
			ep = protocol.Endpoint{Family: "inet6", Addr: strings.Trim(src, "[]")}
		default:
			ep = protocol.Endpoint{Family: "inet", Addr: src}
		}
	}
	host := "[" + ep.Addr + "]"
	if s.rdns != "" && s.rdns != "<unknown>" && s.fcrdns != "fail" {
		host = s.rdns
	}
	switch ep.Family {
	case "unix":
		if s.rdns != "" && s.rdns != "<unknown>" {
			host = s.rdns
		} else {
			host = "localhost"
		}
		return host, milter.FamilyUnix, 0, ep.Addr
	case "inet6":
		return host, milter.FamilyInet6, ep.Port, ep.Addr
	}
	return host, milter.FamilyInet, ep.Port, ep.Addr
}

func (s *session) mail(r protocol.Request) answer {
	s.resetTransaction()
	s.macros.Set(milter.MacroMailAddr, r.Param)
	s.macros.Set(milter.MacroMailHost, domainOf(r.Param))
	params := s.esmtpParams("MAIL")
	return s.each("mail", false, func(m *milter.Session) (milter.Verdict, error) { return m.Mail(r.Param, params) })
}

func (s *session) rcpt(r protocol.Request) answer {
	if s.discard {
		return proceed
	}
	s.macros.Set(milter.MacroRcptAddr, r.Param)
	s.macros.Set(milter.MacroRcptHost, domainOf(r.Param))
	params := s.esmtpParams("RCPT")
	return s.each("rcpt", false, func(m *milter.Session) (milter.Verdict, error) { return m.Rcpt(r.Param, params) })
}

// esmtpParams takes MAIL or RCPT parameters from the protocol-client
// report: the filter request carries the address only.
func (s *session) esmtpParams(verb string) []string {
	if len(s.lastCommand) < 4 || !strings.EqualFold(s.lastCommand[:4], verb) {
		return nil
	}
	return protocol.ESMTPParams(s.lastCommand)
}

func (s *session) data() answer {
	s.dropMessage()
	s.msg = newMessageIn(newLineStore(s.g.cfg.BufferLimit, s.g.budget, s.g.cfg.TempDir))
	s.commit = proceed
	s.size = 0
	s.echoEarly = false
	if s.discard {
		// Marking the message needs its lines; refusing it does not.
		s.passthrough = s.g.cfg.Policy.Discard == "reject"
		s.readerEcho.Store(s.passthrough)
		return proceed
	}
	a := s.each("data", false, func(m *milter.Session) (milter.Verdict, error) { return m.Data() })
	s.passthrough, s.echoEarly = true, s.g.cfg.Policy.Discard == "reject"
	for _, sl := range s.milters {
		if sl.m != nil && sl.m.WantsMessage() {
			s.passthrough = false
		}
		if sl.m != nil && !sl.m.Done() && sl.m.CanChange() {
			s.echoEarly = false
		}
	}
	s.readerEcho.Store(a.decision == protocol.Proceed && (s.passthrough || s.echoEarly))
	return a
}

// dataLine buffers the message until its final "." or, when no milter
// wants it, echoes each line at once.
func (s *session) dataLine(r protocol.Request) {
	if s.msg == nil {
		// Not in a message: smtpd kills itself on a filter-dataline
		// outside its data phase, so a stray line is only logged.
		s.log.Error("data line outside a message dropped", zap.Int("length", len(r.Param)))
		return
	}
	if r.Param == "." {
		// End of message goes to the milters even when none wanted
		// the text (passthrough): their verdict there decides.
		s.finishData(r.Token, !s.failed)
		return
	}
	s.size += len(r.Param) + 2 // as queued, with CRLF
	if s.passthrough || s.failed || s.echoEarly {
		if !s.echoed {
			dataLineOut(s, r.Token, r.Param)
		}
		if s.passthrough || s.failed {
			return
		}
	}
	s.msg.add(r.Param)
}

// finishData runs the message through the milters when filter is set,
// writes the lines back and then the final ".": smtpd sends commit only
// once the "." is back (and an early "." crashes smtpd 6.8).
func (s *session) finishData(token string, filter bool) {
	if filter {
		s.msg.parse()
		s.filterMessage()
		if s.discard && s.g.cfg.Policy.Discard == "junk" {
			s.markJunk()
		}
	}
	put := func(line []byte) {
		dataLineOut(s, token, line)
		if len(s.out) >= flushSize {
			s.flush()
		}
	}
	switch {
	case s.msg == nil || s.passthrough || s.echoEarly:
		// Already written back line by line.
	case filter && s.commit.decision == protocol.Proceed && (!s.discard || s.g.cfg.Policy.Discard == "junk"):
		s.msg.emit(put)
	default:
		// A refused message goes back as it came: commit rolls it back.
		s.msg.emitOriginal(put)
	}
	if s.msg != nil {
		if err := s.msg.err(); err != nil {
			// Part of the message was lost on disk: whatever the default
			// action says, it must not be delivered. The client retries.
			s.log.Error("message buffer failed; the message tempfails", zap.Error(err))
			s.commit = answer{protocol.Reject, replyTempfail}
		}
	}
	dataLineOut(s, token, ".")
	s.flush()
	s.dropMessage()
}

// dropMessage frees the message buffer and its temporary file.
func (s *session) dropMessage() {
	s.readerEcho.Store(false)
	if s.msg != nil {
		if s.msg.st.count() > 0 {
			s.g.cfg.Observer.MessageBuffered(s.id, s.msg.st.size(), s.msg.st.spilled())
		}
		s.msg.release()
		s.msg = nil
	}
}

// filterMessage gives the message to each milter in turn, Postfix-style:
// each sees the message with the changes of the milters before it applied,
// so a DKIM signer placed after a content filter signs the final text.
func (s *session) filterMessage() {
	for _, sl := range s.milters {
		if !sl.active() {
			continue
		}
		if s.discard || s.commit.decision != protocol.Proceed {
			return
		}
		var (
			mods []milter.Modification
			repl *bodyStore // where this milter's replacement body goes, spilling to disk as the message does
		)
		v, err := s.do(sl, "message", func(m *milter.Session) (milter.Verdict, error) {
			repl.release() // a failed endpoint's partial body, when the pool moves to another
			repl = s.msg.newReplacement()
			var v milter.Verdict
			var err error
			v, mods, err = s.messageTo(sl, m, repl)
			return v, err
		}, false)
		if err != nil {
			repl.release()
			if a, stop := s.milterFailed(sl, err); stop {
				s.commit = a
			}
			continue
		}
		for _, err := range s.msg.apply(mods, repl) {
			s.log.Warn("refused a header change from milter", zap.String("milter", sl.name()), zap.Error(err))
		}
		s.policyFor(sl, mods)
		switch v.Kind {
		case milter.Reject, milter.Tempfail:
			if a := s.refuse(sl, "end of message", v); a.decision != protocol.Proceed {
				s.commit = a
			}
		case milter.Discard:
			s.log.Info("milter discards the message", zap.String("milter", sl.name()))
			s.discard = true
		}
	}
}

// policyFor applies the policy to what the filter protocol cannot carry:
// envelope changes (smtpd fixed the envelope at RCPT) and quarantine.
func (s *session) policyFor(sl *slot, mods []milter.Modification) {
	pol := s.g.cfg.Policy
	for _, mod := range mods {
		switch {
		case mod.Envelope():
			switch pol.Envelope {
			case "ignore":
				s.log.Warn("ignoring an envelope change the filter protocol cannot make",
					zap.String("milter", sl.name()), zap.Stringer("change", mod.Kind), zap.String("address", mod.Addr), zap.String("args", mod.Args))
			default:
				s.log.Warn("milter asked for an envelope change the filter protocol cannot make; refusing the message",
					zap.String("milter", sl.name()), zap.Stringer("change", mod.Kind), zap.String("address", mod.Addr), zap.String("policy", pol.Envelope))
				if s.commit.decision == protocol.Proceed {
					s.commit = answer{protocol.Reject, replyEnvelope}
					if pol.Envelope == "reject" {
						s.commit.reply = replyEnvelopeRej
					}
				}
			}
		case mod.Kind == milter.Quarantine:
			s.log.Warn("milter quarantines the message", zap.String("milter", sl.name()),
				zap.String("reason", mod.Reason), zap.String("policy", pol.Quarantine))
			switch pol.Quarantine {
			case "reject":
				s.commit = answer{protocol.Reject, replyQuarantine}
			case "tempfail":
				s.commit = answer{protocol.Reject, replyQuarantineTF}
			default:
				s.markJunk()
			}
		}
	}
}

// markJunk marks the message as smtpd's own junk decision does: an
// "X-Spam: yes" header on top.
func (s *session) markJunk() {
	if s.msg.hasField("X-Spam", "yes") {
		return
	}
	s.msg.apply([]milter.Modification{{Kind: milter.InsertHeader, Index: 0, Name: "X-Spam", Value: " yes"}}, nil)
}

// messageTo sends the message to one milter: headers, end of headers, body
// chunks (until the milter says SKIP), end of message.
//
// A replacement body is streamed into repl as the milter sends it, so that
// a milter cannot make the gateway hold a body of any size in memory.
func (s *session) messageTo(sl *slot, m *milter.Session, repl *bodyStore) (milter.Verdict, []milter.Modification, error) {
	// The header stage is timed and observed as a whole: one packet per
	// field, tens of thousands in a MB of short fields, and a clock read
	// and an observer call for each cost more than the packet.
	v, err := s.observe(sl, "header", func() (milter.Verdict, error) { return m.Headers(s.msg.headers()) })
	if err != nil || v.Final() {
		return v, nil, err
	}
	v, err = s.observe(sl, "eoh", m.EndOfHeaders)
	if err != nil || v.Final() {
		return v, nil, err
	}
	if s.chunk == nil {
		// Sized for this body; body() grows it to a full chunk at most.
		s.chunk = make([]byte, 0, min(milter.MaxChunk+1024, int(s.msg.st.size())+2*s.msg.st.count()+16))
	}
	s.msg.body(s.chunk, func(chunk []byte) bool {
		if m.SkipBody() {
			return false
		}
		v, err = s.observe(sl, "body", func() (milter.Verdict, error) { return m.Body(chunk) })
		return err == nil && !v.Final()
	})
	if err != nil || v.Final() {
		return v, nil, err
	}
	var mods []milter.Modification
	v, err = s.observe(sl, "eom", func() (milter.Verdict, error) {
		var err error
		v, mods, err = m.End(repl)
		return v, err
	})
	if err == nil && len(mods) > 0 {
		s.g.cfg.Observer.Modifications(s.id, sl.name(), mods)
	}
	return v, mods, err
}

// observe times one milter call and tells the observer.
func (s *session) observe(sl *slot, stage string, f func() (milter.Verdict, error)) (milter.Verdict, error) {
	start := time.Now()
	v, err := f()
	if err != nil && s.gone.Load() {
		return v, err // interrupted: not the milter's error
	}
	if err != nil {
		s.g.cfg.Observer.MilterError(s.id, sl.name(), stage, err)
	} else {
		s.g.cfg.Observer.MilterReply(s.id, sl.name(), stage, v, time.Since(start))
	}
	return v, err
}

func (s *session) report(r protocol.Report) (done bool) {
	ev, err := r.Decode()
	if err != nil {
		s.log.Warn("ignoring malformed report", zap.Error(err))
		return false
	}
	switch e := ev.(type) {
	case protocol.LinkConnect:
		s.linkConnect(e)
	case protocol.LinkGreeting:
		if s.g.cfg.Hostname == "" {
			s.macros.Set(milter.MacroMTAName, e.Hostname)
		}
	case protocol.LinkTLS:
		if version, cipher, bits, ok := protocol.SplitTLS(e.Info); ok {
			s.macros.Set(milter.MacroTLSVersion, version)
			s.macros.Set(milter.MacroCipher, cipher)
			s.macros.Set(milter.MacroCipherBits, bits)
		}
	case protocol.LinkAuth:
		if e.Result == "pass" {
			s.macros.Set(milter.MacroAuthAuthen, e.Username)
			s.macros.Set(milter.MacroAuthType, authMechanism(s.lastCommand))
		}
	case protocol.ProtocolClient:
		s.lastCommand = e.Command
	case protocol.TxBegin:
		s.macros.Set(milter.MacroQueueID, e.MsgID)
	case protocol.TxReset, protocol.TxRollback:
		s.resetTransaction()
	case protocol.LinkDisconnect:
		s.closeMilters()
		s.dropMessage()
		return true
	}
	return false
}

func (s *session) linkConnect(e protocol.LinkConnect) {
	s.rdns, s.fcrdns = e.RDNS, e.FCRDNS
	if ep, err := protocol.ParseEndpoint(e.Src); err == nil {
		s.client = ep
		if ep.Family != "unix" {
			s.macros.Set(milter.MacroClientAddr, ep.Addr)
			s.macros.Set(milter.MacroClientPort, strconv.Itoa(int(ep.Port)))
		}
	} else {
		s.log.Warn("cannot parse the client address of link-connect", zap.Error(err))
	}
	if ep, err := protocol.ParseEndpoint(e.Dest); err == nil && ep.Family != "unix" {
		s.macros.Set(milter.MacroDaemonAddr, ep.Addr)
		s.macros.Set(milter.MacroIfAddr, ep.Addr)
		s.macros.Set(milter.MacroDaemonPort, strconv.Itoa(int(ep.Port)))
	}
	name := "unknown"
	if e.RDNS != "<unknown>" && e.RDNS != "" {
		s.macros.Set(milter.MacroClientPTR, e.RDNS)
		if e.FCRDNS == "pass" {
			name = e.RDNS
		}
	}
	s.macros.Set(milter.MacroClientName, name)
	s.macros.Set(milter.MacroClientInfo, fmt.Sprintf("%s [%s]", name, s.client.Addr))
	j := s.g.cfg.Hostname
	if j == "" {
		j = s.g.admd
	}
	s.macros.Set(milter.MacroMTAName, j)
	daemon := s.g.cfg.DaemonName
	if daemon == "" {
		daemon = j
	}
	s.macros.Set(milter.MacroDaemonName, daemon)
	if s.g.smtpdVersion != "" {
		s.macros.Set(milter.MacroMTAVersion, "OpenSMTPD "+s.g.smtpdVersion)
	}
}

// resetTransaction ends the transaction in progress, for the milters too
// (SMFIC_ABORT, only where a transaction is open).
func (s *session) resetTransaction() {
	for _, sl := range s.milters {
		sl.tx = nil
		if sl.m == nil {
			continue
		}
		if err := sl.m.Abort(); err != nil {
			s.milterFailed(sl, err)
		}
	}
	for _, name := range []string{milter.MacroQueueID, milter.MacroMailAddr, milter.MacroMailHost, milter.MacroRcptAddr, milter.MacroRcptHost} {
		s.macros.Set(name, "")
	}
	s.dropMessage()
	s.passthrough, s.echoEarly, s.discard, s.commit = false, false, false, proceed
}

func (s *session) closeMilters() {
	for _, sl := range s.milters {
		if sl.m != nil {
			_ = sl.m.Close()
			sl.m = nil
		}
	}
}

// logMessage writes one line per message at commit.
func (s *session) logMessage(a answer) {
	verdict := string(a.decision)
	if s.discard {
		verdict = "discard"
	}
	s.log.Info("message", zap.String("queue_id", s.macros.Get(milter.MacroQueueID)),
		zap.String("verdict", verdict), zap.String("reply", a.reply))
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return ""
}

// authMechanism takes the mechanism from "AUTH PLAIN ********".
func authMechanism(cmd string) string {
	f := strings.Fields(cmd)
	if len(f) >= 2 && strings.EqualFold(f[0], "AUTH") {
		return strings.ToUpper(f[1])
	}
	return ""
}
