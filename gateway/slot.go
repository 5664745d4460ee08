package gateway

import (
	"errors"
	"fmt"
	"net/netip"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
)

// call is one milter command, kept so that it can be replayed.
type call func(*milter.Session) (milter.Verdict, error)

// slot is one configured milter in one SMTP session: its session on one
// endpoint of the pool, and what it was told since connect, so that the
// conversation can move to another endpoint when this one dies.
type slot struct {
	pool   *milter.Pool
	m      *milter.Session // nil once the milter is out of the session
	role   participation
	part   part        // whether the milter is in the session, and why not
	eval   *evaluation // what an evaluating milter would have done (evaluation.go)
	action Action      // this milter's default action
	conn   []call      // connect and HELO: replayed on failover
	tx     []call      // the transaction's MAIL, RCPTs and DATA, likewise
	tally  tally       // what it did for the message in progress (msglog.go)
}

// participation is the role of a milter in the sessions it takes part in
// (its evaluation setting).
type participation int

const (
	// enforcing: its verdicts answer smtpd, its changes are made, and its
	// failures get its default action.
	enforcing participation = iota
	// evaluating: it is told everything as an enforcing milter in its
	// place would be, and nothing of what it says is enforced or applied:
	// it is logged and counted (evaluation.go).
	evaluating
)

// part is whether a milter is in a session, and why not when it is out.
type part int

const (
	// partIn: the milter is in the session (its milter session open; one
	// that decided for the message or the connection is still in, and
	// answers its own later events).
	partIn part = iota
	// partNotForClient: its clients or skip_clients leave this client
	// out; decided at connect, before any connection is opened.
	partNotForClient
	// partAfterAuth: skip_authenticated, and the client authenticated;
	// its connection was closed then.
	partAfterAuth
	// partFailed: it failed (unreachable, timed out, broke the protocol).
	partFailed
	// partClosed: the session is over for it (ended, interrupted).
	partClosed
)

func (p part) String() string {
	switch p {
	case partIn:
		return "in"
	case partNotForClient:
		return "not for this client"
	case partAfterAuth:
		return "skipped after AUTH"
	case partFailed:
		return "failed"
	case partClosed:
		return "closed"
	}
	return fmt.Sprintf("part(%d)", int(p))
}

// active reports whether the milter takes the session's next command.
func (sl *slot) active() bool { return sl.part == partIn && sl.m != nil && !sl.m.Done() }

// leave takes the milter out of the session, closing its connection
// (QUIT) if it has one; the first reason sticks.
func (sl *slot) leave(why part) {
	if sl.m != nil {
		_ = sl.m.Close()
		sl.m = nil
	}
	if sl.part == partIn {
		sl.part = why
	}
}

// admit decides, at connect, whether a milter takes part in a session of
// the client: clients (when set) must hold it, skip_clients must not.
// This is the one place the clients settings are read.
func admit(sc milter.Scope, client clientID) part {
	if !sc.Clients.Empty() && !sc.Clients.Contains(client.addr, client.local) {
		return partNotForClient
	}
	if sc.SkipClients.Contains(client.addr, client.local) {
		return partNotForClient
	}
	return partIn
}

// clientID is the SMTP client as the clients settings match it: its
// address, or local for smtpd's unix socket (which matches no network).
// An address that does not parse is the zero Addr, which no network holds.
type clientID struct {
	addr  netip.Addr
	local bool
}

func clientOf(ep protocol.Endpoint) clientID {
	if ep.Family == "unix" {
		return clientID{local: true}
	}
	a, _ := netip.ParseAddr(ep.Addr)
	return clientID{addr: a.Unmap()}
}

func (sl *slot) name() string { return sl.pool.Name() }

// do runs c on the slot's milter. When the endpoint fails and the pool has
// another, the conversation so far is replayed there and c is retried:
// replay is safe because only commands the milter answered with continue
// are kept, so the new endpoint is brought to the same state. Commands
// answered otherwise end the milter's say in the scope anyway. connScope:
// c is part of the connection (connect, HELO), not of the transaction.
func (s *session) do(sl *slot, stage milter.Stage, connScope bool, c call, record bool) (milter.Verdict, error) {
	timed := c
	if record { // the message stage times each of its calls itself
		timed = func(m *milter.Session) (milter.Verdict, error) {
			return s.observe(sl, stage, func() (milter.Verdict, error) { return c(m) })
		}
	}
	m := sl.m
	v, err := s.calling(m, func() (milter.Verdict, error) { return timed(m) })
	for tries := 1; err != nil && !errors.Is(err, errInterrupted) && tries < sl.pool.Size(); tries++ {
		s.log.Warn("milter endpoint failed; moving the session to another endpoint",
			zap.String("milter", sl.name()), zap.String("endpoint", sl.m.Endpoint()), zap.String("stage", string(stage)), zap.Error(err))
		next, oerr := sl.pool.OpenOther(sl.m, s.macros)
		if oerr != nil {
			err = fmt.Errorf("%w; failover: %v", err, oerr)
			break
		}
		_ = sl.m.Close()
		sl.m = next
		if _, err = s.calling(next, func() (milter.Verdict, error) { return milter.Verdict{}, s.replay(sl) }); err != nil {
			continue
		}
		v, err = s.calling(next, func() (milter.Verdict, error) { return timed(next) })
	}
	if err == nil && record && v.Kind == milter.Continue {
		if connScope {
			sl.conn = append(sl.conn, c)
		} else {
			sl.tx = append(sl.tx, c)
		}
	}
	return v, err
}

func (s *session) replay(sl *slot) error {
	for _, c := range append(sl.conn[:len(sl.conn):len(sl.conn)], sl.tx...) {
		v, err := c(sl.m)
		if err != nil {
			return err
		}
		if v.Kind != milter.Continue {
			return fmt.Errorf("replay on %s: the milter answered %v where the first endpoint continued", sl.m.Endpoint(), v)
		}
	}
	return nil
}
