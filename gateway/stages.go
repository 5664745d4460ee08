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
	if a, ok := s.openMilters(); !ok {
		return a
	}
	host, family, port, addr := s.connectInfo(r)
	return s.each("connect", true, func(m *milter.Session) (milter.Verdict, error) {
		return m.Connect(host, family, port, addr)
	})
}

func (s *session) helo(r protocol.Request) answer {
	s.heloName = r.Param
	return s.each(string(r.Phase), true, func(m *milter.Session) (milter.Verdict, error) { return m.Helo(r.Param) })
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
	a := s.each("data", false, func(m *milter.Session) (milter.Verdict, error) { return m.Data() })
	s.mode = s.chooseMode(false)
	return a
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
		v, err := s.do(sl, stage, connScope, c, true)
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

// openMilters opens a milter session to every configured milter, once.
func (s *session) openMilters() (answer, bool) {
	if s.opened {
		return proceed, true
	}
	s.opened = true
	s.milters = make([]*slot, len(s.cfg.Milters))
	for i, p := range s.cfg.Milters {
		sl := &slot{pool: p, action: s.cfg.DefaultAction}
		if p.Config.DefaultAction != "" {
			sl.action, _ = ParseAction(p.Config.DefaultAction)
		}
		s.milters[i] = sl
		if s.gone.Load() {
			continue // nothing to open for a session smtpd is done with
		}
		m, err := p.Open(s.macros)
		if err != nil {
			s.cfg.Observer.MilterError(s.id, p.Name(), "open", err)
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

func (s *session) closeMilters() {
	for _, sl := range s.milters {
		if sl.m != nil {
			_ = sl.m.Close()
			sl.m = nil
		}
	}
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return ""
}
