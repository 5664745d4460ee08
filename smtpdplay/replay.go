package smtpdplay

import (
	"errors"
	"fmt"

	"github.com/filter-milter/filter-milter/protocol"
)

// Replay writes reports and requests as smtpd wrote them (a captured
// transcript), in one Write. Their session ids are opened as sessions of
// the player (see Session) and their tokens taken as asked, so that the
// filter's answers are checked and queued as for the player's own
// requests. smtpd reuses one token for every request of a phase in a
// session, and for every data line of its messages (lka_filter.c): a
// token asked twice is due two answers. The player's Config.Protocol must
// be the transcript's, for the layout of the answers.
func (p *Player) Replay(lines ...string) error {
	var b []byte
	for _, line := range lines {
		var l protocol.Line
		if err := protocol.ParseLine(line, &l); err != nil {
			return err
		}
		switch l.Kind {
		case protocol.KindConfig:
			return fmt.Errorf("smtpdplay: Replay: %q: the handshake is the player's", line)
		case protocol.KindReport:
			if _, err := p.adopt(l.Report.Session); err != nil {
				return err
			}
		case protocol.KindRequest:
			r := l.Request
			s, err := p.adopt(r.Session)
			if err != nil {
				return err
			}
			var tok Token
			if len(r.Token) != len(tok) {
				return fmt.Errorf("smtpdplay: Replay: %q: the token is not 16 hex digits", line)
			}
			copy(tok[:], r.Token)
			s.ask(tok, r.Phase == "data-line", r.Param == ".")
		}
		b = append(append(b, line...), '\n')
	}
	return p.write(b)
}

// adopt returns the session with the given id, opening it if need be.
func (p *Player) adopt(id string) (*Session, error) {
	var sid Token
	if len(id) != len(sid) || !isHex([]byte(id)) {
		return nil, errors.New("smtpdplay: Replay: session id " + id + " is not 16 lowercase hex digits")
	}
	copy(sid[:], id)
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.sessions[sid]
	if s == nil {
		s = p.newSession()
		s.id = sid
		p.sessions[sid] = s
	}
	return s, nil
}

// ask takes tok as asked once more: one answer more is due for a request,
// one "." more for a message's data lines.
func (s *Session) ask(tok Token, data, dot bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.tokens[tok]
	switch {
	case data:
		a.kind = askedData
		if dot {
			a.due++
		}
	default:
		a.kind = askedRequest
		a.due++
	}
	s.tokens[tok] = a
}

// Session returns the open session with the given id, or nil: a session
// that Replay opened.
func (p *Player) Session(id string) *Session {
	var sid Token
	if len(id) != len(sid) {
		return nil
	}
	copy(sid[:], id)
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.sessions[sid]
}
