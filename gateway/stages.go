package gateway

import (
	"errors"
	"strings"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
)

// The SMTP stages, each turned into one milter command for every milter
// of the session (each); the table (table.go) sends their answers.

func (s *session) connect(r protocol.Request) answer {
	client := s.clientEndpoint(r)
	if a, ok := s.openMilters(clientOf(client)); !ok {
		return a
	}
	host, family, port, addr := s.connectInfo(client)
	return s.each(milter.StageConnect, true, func(m *milter.Session) (milter.Verdict, error) {
		return m.Connect(host, family, port, addr)
	})
}

func (s *session) helo(r protocol.Request) answer {
	s.heloName = r.Param
	stage := milter.StageHelo
	if r.Phase == protocol.PhaseEhlo {
		stage = milter.StageEhlo
	}
	return s.each(stage, true, func(m *milter.Session) (milter.Verdict, error) { return m.Helo(r.Param) })
}

func (s *session) mail(r protocol.Request) answer {
	s.resetTransaction()
	s.macros.Set(milter.MacroMailAddr, r.Param)
	s.macros.Set(milter.MacroMailHost, domainOf(r.Param))
	params := s.esmtpParams("MAIL")
	return s.each(milter.StageMail, false, func(m *milter.Session) (milter.Verdict, error) { return m.Mail(r.Param, params) })
}

func (s *session) rcpt(r protocol.Request) answer {
	if s.discard {
		return proceed
	}
	s.macros.Set(milter.MacroRcptAddr, r.Param)
	s.macros.Set(milter.MacroRcptHost, domainOf(r.Param))
	params := s.esmtpParams("RCPT")
	return s.each(milter.StageRcpt, false, func(m *milter.Session) (milter.Verdict, error) { return m.Rcpt(r.Param, params) })
}

// data opens the message and chooses how its lines go (chooseMode). A
// message discarded before DATA is not shown to the milters.
func (s *session) data(protocol.Request) answer {
	s.dropMessage()
	s.msg = newMessageIn(newLineStore(s.cfg.BufferLimit, s.g.budget, s.cfg.TempDir))
	s.commit = proceed
	s.size = 0
	if s.discard {
		s.mode = s.chooseMode(true)
		return proceed
	}
	a := s.each(milter.StageData, false, func(m *milter.Session) (milter.Verdict, error) { return m.Data() })
	s.mode = s.chooseMode(false)
	return a
}

// each sends one SMTP stage to every milter still in the session, in
// order, and stops at the first that refuses: a refusal by one milter
// overrides the others, and later milters do not see that command
// (Postfix's rule). A refusal at connect or HELO covers the connection.
func (s *session) each(stage milter.Stage, connScope bool, c call) answer {
	for _, sl := range s.milters {
		if !sl.active() {
			continue
		}
		v, err := s.do(sl, stage, connScope, c, true)
		if err != nil {
			if a, stop := s.milterFailed(sl, err); stop {
				return a
			}
			continue
		}
		if sl.role == evaluating {
			s.evaluated(sl, stage, connScope, v)
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
			s.log.Info("milter discards the message", zap.String("milter", sl.name()), zap.String("stage", string(stage)))
			s.discard = true
			return proceed
		}
	}
	return proceed
}

// refuse turns a milter's refusal into the answer for smtpd. A reply the
// filter protocol cannot carry gets the default action, as any other
// protocol error of a milter does.
func (s *session) refuse(sl *slot, stage milter.Stage, v milter.Verdict) answer {
	a, long, err := refusal(v)
	if err != nil {
		s.log.Warn("invalid reply from milter; applying the default action", zap.String("milter", sl.name()),
			zap.String("stage", string(stage)), zap.Stringer("verdict", v.Kind), zap.String("reply", logText(v.Reply)),
			zap.NamedError("reason", err), zap.Stringer("default_action", sl.action))
		return sl.action.failure()
	}
	if long != "" {
		s.replyCut(sl.name(), long)
	}
	s.log.Info("milter refused", zap.String("milter", sl.name()), zap.String("stage", string(stage)), zap.String("reply", a.reply))
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
// reply does. An evaluating milter's failure changes no answer.
func (s *session) milterFailed(sl *slot, err error) (answer, bool) {
	if errors.Is(err, errInterrupted) {
		// Not the milter's fault, and no one to answer: the session ends
		// with the line queued for it. The other milters get QUIT now.
		s.log.Debug("milter call interrupted: the session is gone", zap.String("milter", sl.name()), zap.Error(err))
		s.closeMilters()
		return proceed, true
	}
	sl.leave(partFailed)
	if sl.role == evaluating {
		s.evaluationFailed(sl, err)
		return proceed, false
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

// openMilters opens a milter session to every configured milter that
// takes part in a session of client (admit), once. A milter left out for
// the client gets no connection at all.
func (s *session) openMilters(client clientID) (answer, bool) {
	if s.opened {
		return proceed, true
	}
	s.opened = true
	s.milters = make([]*slot, len(s.cfg.Milters))
	for i, p := range s.cfg.Milters {
		sl := &slot{pool: p, action: s.cfg.DefaultAction, part: admit(p.Config.Scope, client)}
		if p.Config.DefaultAction != "" {
			sl.action, _ = ParseAction(p.Config.DefaultAction)
		}
		if p.Config.Scope.Evaluation {
			sl.role = evaluating
		}
		s.milters[i] = sl
		if sl.part != partIn {
			s.log.Debug("milter not consulted for this client", zap.String("milter", sl.name()))
			continue
		}
		if s.gone.Load() {
			sl.part = partClosed
			continue // nothing to open for a session smtpd is done with
		}
		m, err := p.Open(s.macros)
		if err != nil {
			s.cfg.Observer.MilterError(s.id, p.Name(), milter.StageOpen, err)
			if a, stop := s.milterFailed(sl, err); stop {
				return a, false
			}
			continue
		}
		sl.m = m
	}
	return proceed, true
}

// clientEndpoint is the client of the session: from link-connect, which
// has the port, or else from the connect request, which has the address.
func (s *session) clientEndpoint(r protocol.Request) protocol.Endpoint {
	if s.client.Family != "" {
		return s.client
	}
	rdns, src, _ := strings.Cut(r.Param, "|")
	s.rdns = rdns
	switch {
	case src == "local":
		return protocol.Endpoint{Family: "unix", Addr: "local"}
	case strings.HasPrefix(src, "["):
		return protocol.Endpoint{Family: "inet6", Addr: strings.Trim(src, "[]")}
	}
	return protocol.Endpoint{Family: "inet", Addr: src}
}

// connectInfo is what SMFIC_CONNECT carries: the client's verified name or,
// as Postfix does, "[ip]"; its address family, port and address.
func (s *session) connectInfo(ep protocol.Endpoint) (string, milter.Family, uint16, string) {
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

// esmtpParams takes MAIL or RCPT parameters from the protocol-client
// report: the filter request carries the address only.
func (s *session) esmtpParams(verb string) []string {
	if len(s.lastCommand) < 4 || !strings.EqualFold(s.lastCommand[:4], verb) {
		return nil
	}
	return protocol.ESMTPParams(s.lastCommand)
}

// resetTransaction ends the transaction in progress, for the milters too
// (SMFIC_ABORT, only where a transaction is open).
func (s *session) resetTransaction() {
	for _, sl := range s.milters {
		sl.tx, sl.tally = nil, tally{}
		sl.eval = sl.eval.forNextTransaction()
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
	s.mode, s.discard, s.commit, s.rcpts = modeBuffer, false, proceed, 0
}

// closeMilters ends the session for every milter (QUIT). An evaluating
// milter that decided the connection is reported now if no message was.
func (s *session) closeMilters() {
	s.reportEvaluations("")
	for _, sl := range s.milters {
		sl.leave(partClosed)
	}
}

// authenticated takes the skip_authenticated milters out of the session
// at a successful AUTH: their connection is closed (QUIT), and they see
// none of the transactions that follow. AUTH is not allowed during a
// transaction (RFC 4954, section 4), so none is cut in the middle.
func (s *session) authenticated() {
	for _, sl := range s.milters {
		if sl.part == partIn && sl.pool.Config.Scope.SkipAuthenticated {
			sl.leave(partAfterAuth)
			s.log.Info("client authenticated; milter leaves the session (skip_authenticated)", zap.String("milter", sl.name()))
		}
	}
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return ""
}
