package gateway

import (
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/milter"
)

// call is one milter command, kept so that it can be replayed.
type call func(*milter.Session) (milter.Verdict, error)

// slot is one configured milter in one SMTP session: its session on one
// endpoint of the pool, and what it was told since connect, so that the
// conversation can move to another endpoint when this one dies.
type slot struct {
	pool   *milter.Pool
	m      *milter.Session // nil once the milter is out of the session
	action Action          // this milter's default action
	conn   []call          // connect and HELO: replayed on failover
	tx     []call          // the transaction's MAIL, RCPTs and DATA, likewise
	tally  tally           // what it did for the message in progress (msglog.go)
}

func (sl *slot) active() bool { return sl.m != nil && !sl.m.Done() }

func (sl *slot) name() string { return sl.pool.Name() }

// do runs c on the slot's milter. When the endpoint fails and the pool has
// another, the conversation so far is replayed there and c is retried:
// replay is safe because only commands the milter answered with continue
// are kept, so the new endpoint is brought to the same state. Commands
// answered otherwise end the milter's say in the scope anyway. connScope:
// c is part of the connection (connect, HELO), not of the transaction.
func (s *session) do(sl *slot, stage string, connScope bool, c call, record bool) (milter.Verdict, error) {
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
			zap.String("milter", sl.name()), zap.String("endpoint", sl.m.Endpoint()), zap.String("stage", stage), zap.Error(err))
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
