package milter

import (
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Pool is one milter role served by several endpoints. Sessions are spread
// over the endpoints in turn; an endpoint that cannot be reached is marked
// down and tried again after a backoff that doubles up to a minute.
type Pool struct {
	Config Config
	log    *zap.Logger
	mu     sync.Mutex
	eps    []*endpoint
	next   int
}

type endpoint struct {
	client    *Client
	downUntil time.Time
	backoff   time.Duration
}

const (
	minBackoff = time.Second
	maxBackoff = time.Minute
)

// NewPool prepares a pool; nothing is dialled until Open. log gets the
// pool's events (an endpoint marked down, up again) and its clients'
// (see NewClient); nil means no log.
func NewPool(c Config, log *zap.Logger) *Pool {
	if log == nil {
		log = zap.NewNop()
	}
	p := &Pool{Config: c, log: log}
	for _, spec := range c.Endpoints {
		p.eps = append(p.eps, &endpoint{client: NewClient(spec.String(), spec, c.Options, log)})
	}
	return p
}

// Name is the milter as configured.
func (p *Pool) Name() string { return p.Config.Name }

// Size is the number of endpoints.
func (p *Pool) Size() int { return len(p.eps) }

// Open opens a session on the next endpoint that is up, trying the others
// when it fails; when every endpoint is down it tries them all anyway
// rather than fail without trying. It returns the last error when none
// answers.
func (p *Pool) Open(macros *Macros) (*Session, error) {
	return p.open(macros, nil)
}

// OpenOther is Open for failover: it avoids the endpoint of the session
// that failed, and marks that endpoint down.
func (p *Pool) OpenOther(failed *Session, macros *Macros) (*Session, error) {
	if failed != nil {
		p.markDown(failed.c)
	}
	return p.open(macros, failed)
}

func (p *Pool) open(macros *Macros, avoid *Session) (*Session, error) {
	var last error = errors.New("no endpoint")
	for _, ep := range p.order(avoid) {
		s, err := ep.client.Open(macros)
		if err != nil {
			p.markDown(ep.client)
			last = err
			continue
		}
		p.markUp(ep)
		return s, nil
	}
	return nil, last
}

// order lists the endpoints to try: those up first, in round-robin order
// from the next one, then those down.
func (p *Pool) order(avoid *Session) []*endpoint {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	start := p.next
	p.next = (p.next + 1) % len(p.eps)
	var up, down []*endpoint
	for i := range p.eps {
		ep := p.eps[(start+i)%len(p.eps)]
		if avoid != nil && ep.client == avoid.c {
			continue
		}
		if now.Before(ep.downUntil) {
			down = append(down, ep)
		} else {
			up = append(up, ep)
		}
	}
	return append(up, down...)
}

func (p *Pool) markDown(c *Client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ep := range p.eps {
		if ep.client == c {
			if time.Now().Before(ep.downUntil) {
				// Already down: the other sessions that were in flight when
				// it failed do not lengthen its backoff.
				return
			}
			ep.backoff = min(max(ep.backoff*2, minBackoff), maxBackoff)
			ep.downUntil = time.Now().Add(ep.backoff)
			if len(p.eps) > 1 {
				p.log.Warn("milter endpoint marked down", zap.String("milter", p.Name()),
					zap.String("endpoint", c.Name), zap.Duration("retry_after", ep.backoff))
			}
		}
	}
}

func (p *Pool) markUp(ep *endpoint) {
	p.mu.Lock()
	was := !ep.downUntil.IsZero()
	ep.backoff, ep.downUntil = 0, time.Time{}
	p.mu.Unlock()
	if was && len(p.eps) > 1 {
		p.log.Info("milter endpoint up again", zap.String("milter", p.Name()), zap.String("endpoint", ep.client.Name))
	}
}

// EndpointState is what a pool knows of one of its endpoints.
type EndpointState struct {
	Name string // the endpoint in Postfix notation
	Up   bool
}

// Endpoints reports its endpoints in the configured order. An endpoint is
// up until a connection to it or a session on it fails, and down from
// then until a connection succeeds again. The pool learns only from
// sessions: it tries a down endpoint again when a session opens after the
// endpoint's backoff (or when every endpoint is down), so with no traffic
// the state stays as the last session found it.
func (p *Pool) Endpoints() []EndpointState {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]EndpointState, len(p.eps))
	for i, ep := range p.eps {
		out[i] = EndpointState{Name: ep.client.Name, Up: ep.downUntil.IsZero()}
	}
	return out
}

// Endpoint names the endpoint a session talks to.
func (s *Session) Endpoint() string { return s.c.Name }
