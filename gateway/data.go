package gateway

import (
	"time"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
)

// The message, from DATA to commit: its lines kept or written back as
// they come (the mode), the milters' end of message, the policy for what
// the filter protocol cannot carry, and the answer to commit.

// messageMode is how a message's data lines go back to smtpd.
type messageMode int

const (
	// modeBuffer keeps every line and writes the message back at end of
	// data, as the milters left it.
	modeBuffer messageMode = iota
	// modeEchoAndKeep writes each line back at once and keeps it for the
	// milters, who cannot change the message.
	modeEchoAndKeep
	// modeEchoOnly writes each line back at once and keeps none: no milter
	// reads the text. End of message still goes to the milters.
	modeEchoOnly
	// modeFailed is modeEchoOnly after a panic: the milters are gone and
	// end of message is not sent to them.
	modeFailed
)

// chooseMode decides, at DATA, how the message's lines go. discarded says
// the message was discarded before DATA, so the milters were not asked.
func (s *session) chooseMode(discarded bool) messageMode {
	discardRejects := s.cfg.Policy.Discard == DiscardReject
	if discarded {
		if discardRejects {
			// Commit refuses it whatever it says: nothing needs its text.
			return modeEchoOnly
		}
		// It is delivered marked, and the mark goes into its header.
		return modeBuffer
	}
	wants, changes := false, false
	for _, sl := range s.milters {
		if sl.m != nil && sl.m.WantsMessage() {
			wants = true
		}
		// An evaluating milter's changes are not made: it cannot change
		// the message, and a message only it reads goes back as it came.
		if sl.role == enforcing && sl.m != nil && !sl.m.Done() && sl.m.CanChange() {
			changes = true
		}
	}
	switch {
	case !wants:
		// No milter reads the text: smtpd can have each line back at once.
		return modeEchoOnly
	case !changes && discardRejects:
		// The text goes back as it came whatever the milters say (a
		// refusal or a discard is answered at commit), so each line can
		// go at once; a discard with the junk policy would mark it.
		return modeEchoAndKeep
	}
	return modeBuffer
}

// dataLine keeps or writes back one line of the message, as its mode says;
// "." ends the message.
func (s *session) dataLine(r protocol.Request) {
	if s.msg == nil {
		// Not in a message: smtpd kills itself on a filter-dataline
		// outside its data phase, so a stray line is only logged.
		s.log.Error("data line outside a message dropped", zap.Int("length", len(r.Param)))
		return
	}
	if r.Param == "." {
		// End of message goes to the milters even when none wanted
		// the text (modeEchoOnly): their verdict there decides.
		s.finishData(r.Token, s.mode != modeFailed)
		return
	}
	s.size += len(r.Param) + 2 // as queued, with CRLF
	switch s.mode {
	case modeBuffer:
		s.msg.add(r.Param)
	case modeEchoAndKeep:
		dataLineOut(s, r.Token, r.Param)
		s.msg.add(r.Param)
	case modeEchoOnly, modeFailed:
		dataLineOut(s, r.Token, r.Param)
	}
}

// messageFailed is dataLine after a panic: the message goes back as it
// came, and the rest of its lines as they come; a buffered message gets
// the default action at commit.
func (s *session) messageFailed(token string, last bool, failure answer) {
	if s.msg == nil {
		return
	}
	if last {
		// Nothing of a buffered message was written back yet: it goes
		// back unchanged, and commit gets the default action.
		s.commit = failure
		s.finishData(token, false)
		return
	}
	if s.mode == modeBuffer {
		s.msg.emitOriginal(func(line []byte) { dataLineOut(s, token, line) })
		s.flush()
		s.commit = failure
	}
	s.mode = modeFailed
}

// finishData runs the message through the milters when filter is set,
// writes the lines back and then the final ".": smtpd sends commit only
// once the "." is back (and an early "." crashes smtpd 6.8).
func (s *session) finishData(token string, filter bool) {
	if filter {
		s.msg.parse()
		s.filterMessage()
		if s.discard && s.cfg.Policy.Discard == DiscardJunk {
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
	case s.mode != modeBuffer:
		// Already written back line by line.
	case filter && s.commit.decision == protocol.Proceed && (!s.discard || s.cfg.Policy.Discard == DiscardJunk):
		s.msg.emit(put)
	default:
		// A refused message goes back as it came: commit rolls it back.
		s.msg.emitOriginal(put)
	}
	if err := s.msg.err(); err != nil {
		// Part of the message was lost on disk: whatever the default
		// action says, it must not be delivered. The client retries.
		s.log.Error("message buffer failed; the message tempfails", zap.Error(err))
		s.commit = answer{protocol.Reject, replyTempfail}
	}
	dataLineOut(s, token, ".")
	s.flush()
	s.dropMessage()
}

// dropMessage frees the message buffer and its temporary file.
func (s *session) dropMessage() {
	m := s.msg
	if m == nil {
		return
	}
	// The message is gone before anything below runs: a panic here (in
	// the observer) must not find it and write it back a second time.
	s.msg = nil
	defer m.release()
	// A message that went to disk takes its session's body chunk (64 KiB)
	// and output batch with it: kept for the next message, 1,000 sessions
	// that each had such a message would hold 100 MB for nothing. A
	// session of messages that stay in memory keeps them: allocating a
	// chunk per 100 KB message cost 14 % of the pipe harness's CPU.
	if m.st.spilled() {
		s.chunk = nil
		if len(s.out) == 0 {
			putBuf(s.out)
			s.out = nil
		}
	}
	if m.st.count() > 0 {
		s.cfg.Observer.MessageBuffered(s.id, m.st.size(), m.st.spilled())
	}
}

// commitMessage answers commit with what end of data decided.
func (s *session) commitMessage(r protocol.Request) {
	if s.msg != nil {
		// smtpd asks for commit only once the last filter gave back
		// "."; a message still open here was ended early by a filter
		// before this one in the chain, and smtpd has its lines.
		s.log.Warn("commit before the end of the message; the buffered lines are dropped")
		s.dropMessage()
	}
	a := s.commit
	if s.discard && s.cfg.Policy.Discard == DiscardReject {
		a = answer{protocol.Reject, replyDiscard}
	}
	s.logMessage(a)
	s.cfg.Observer.MessageDone(s.id, s.macros.Get(milter.MacroQueueID), string(a.decision), a.reply, s.size)
	s.reportEvaluations(s.macros.Get(milter.MacroQueueID))
	s.send(r, a)
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
		v, err := s.do(sl, milter.StageMessage, false, func(m *milter.Session) (milter.Verdict, error) {
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
		if sl.role == evaluating {
			// Later milters see the message without its changes.
			repl.release()
			s.evaluatedMessage(sl, v, mods)
			continue
		}
		for _, err := range s.msg.apply(mods, repl) {
			s.log.Warn("refused a header change from milter", zap.String("milter", sl.name()), zap.Error(err))
		}
		s.policyFor(sl, mods)
		switch v.Kind {
		case milter.Reject, milter.Tempfail:
			if a := s.refuse(sl, milter.StageEOM, v); a.decision != protocol.Proceed {
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
	pol := s.cfg.Policy
	for _, mod := range mods {
		switch {
		case mod.Envelope():
			switch pol.Envelope {
			case EnvelopeIgnore:
				s.log.Warn("ignoring an envelope change the filter protocol cannot make",
					zap.String("milter", sl.name()), zap.Stringer("change", mod.Kind), zap.String("address", mod.Addr), zap.String("args", mod.Args))
			default:
				s.log.Warn("milter asked for an envelope change the filter protocol cannot make; refusing the message",
					zap.String("milter", sl.name()), zap.Stringer("change", mod.Kind), zap.String("address", mod.Addr), zap.String("policy", string(pol.Envelope)))
				if s.commit.decision == protocol.Proceed {
					s.commit = answer{protocol.Reject, replyEnvelope}
					if pol.Envelope == EnvelopeReject {
						s.commit.reply = replyEnvelopeRej
					}
				}
			}
		case mod.Kind == milter.Quarantine:
			s.log.Warn("milter quarantines the message", zap.String("milter", sl.name()),
				zap.String("reason", mod.Reason), zap.String("policy", string(pol.Quarantine)))
			switch pol.Quarantine {
			case QuarantineReject:
				s.commit = answer{protocol.Reject, replyQuarantine}
			case QuarantineTempfail:
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
	v, err := s.observe(sl, milter.StageHeader, func() (milter.Verdict, error) { return m.Headers(s.msg.headers()) })
	if err != nil || v.Final() {
		return v, nil, err
	}
	v, err = s.observe(sl, milter.StageEOH, m.EndOfHeaders)
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
		v, err = s.observe(sl, milter.StageBody, func() (milter.Verdict, error) { return m.Body(chunk) })
		return err == nil && !v.Final()
	})
	if err != nil || v.Final() {
		return v, nil, err
	}
	var mods []milter.Modification
	v, err = s.observe(sl, milter.StageEOM, func() (milter.Verdict, error) {
		var err error
		v, mods, err = m.End(repl)
		return v, err
	})
	if err == nil && len(mods) > 0 {
		s.cfg.Observer.Modifications(s.id, sl.name(), mods)
	}
	return v, mods, err
}

// observe times one milter call and tells the observer.
func (s *session) observe(sl *slot, stage milter.Stage, f func() (milter.Verdict, error)) (milter.Verdict, error) {
	start := time.Now()
	v, err := f()
	if err != nil && s.gone.Load() {
		return v, err // interrupted: not the milter's error
	}
	took := time.Since(start)
	sl.tally.record(v, err, took)
	if err != nil {
		s.cfg.Observer.MilterError(s.id, sl.name(), stage, err)
	} else {
		s.cfg.Observer.MilterReply(s.id, sl.name(), stage, v, took)
	}
	return v, err
}
