// Package gateway turns OpenSMTPD's filter protocol into milter sessions:
// one milter session per SMTP session, reports into macros, filter
// requests into milter commands, the data lines into headers, body and end
// of message, and the milters' verdicts and changes back into
// filter-result and filter-dataline lines.
package gateway

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/compat"
	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
)

// Config is what the gateway needs to run.
type Config struct {
	Milters       []*milter.Pool // in the order each message goes through them
	DefaultAction Action         // when a milter fails
	Policy        Policy         // what the filter protocol cannot carry; zero fields mean DefaultPolicy
	Hostname      string         // the j macro; default smtpd's admd/greeting name
	DaemonName    string         // the {daemon_name} macro; default the j macro
	Log           *zap.Logger
	// ShutdownTimeout bounds how long sessions in flight may take to
	// finish once smtpd has closed the pipe (or SIGTERM came).
	ShutdownTimeout time.Duration
	// Observer hears each milter answer, error and message; nil means none.
	Observer Observer
	// BufferLimit is how much of one message is kept in memory before the
	// rest goes to a temporary file in TempDir ("" means os.TempDir);
	// MemoryBudget bounds the memory of all messages together.
	BufferLimit  int
	MemoryBudget int64
	TempDir      string
	// Trace is what a session's trace shows, and for which clients
	// besides -log-level debug (trace.go).
	Trace Trace
}

// Gateway serves one smtpd: it reads smtpd's lines, runs a session per
// SMTP session and writes the answers.
type Gateway struct {
	// cfg is the configuration new sessions take (Reload replaces it); a
	// session keeps the one it started with to its end.
	cfg atomic.Pointer[Config]
	log *zap.Logger
	out *writer

	mu           sync.Mutex
	sessions     map[string]*session
	stopping     atomic.Bool // Shutdown was called
	stopOnce     sync.Once
	stopErr      error
	idleTimeout  time.Duration // smtpd's smtp-session-timeout
	budget       *budget       // memory of all buffered messages
	wg           sync.WaitGroup
	live         atomic.Int64 // sessions whose goroutine still runs
	smtpdVersion string
	admd         string
	protocolVer  compat.Version

	unknownOnce sync.Map // phases logged once
}

// New prepares a gateway.
func New(cfg Config) *Gateway {
	cfg = withDefaults(cfg)
	g := &Gateway{log: cfg.Log, sessions: make(map[string]*session), idleTimeout: 300 * time.Second,
		budget: newBudget(cfg.MemoryBudget)}
	g.cfg.Store(&cfg)
	return g
}

// Reload makes cfg the configuration of the SMTP sessions that start from
// now on. Sessions in flight finish on the configuration they started
// with, with its milter pools: a milter no longer configured loses its
// connections as its last session ends. The memory budget is the
// process's, and changes at once. cfg.Log is not used: the gateway keeps
// the logger it was made with.
func (g *Gateway) Reload(cfg Config) {
	cfg.Log = g.log
	cfg = withDefaults(cfg)
	g.budget.max.Store(cfg.MemoryBudget)
	g.cfg.Store(&cfg)
}

// withDefaults fills in what cfg leaves zero.
func withDefaults(cfg Config) Config {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Policy.Discard == "" {
		cfg.Policy.Discard = DefaultPolicy.Discard
	}
	if cfg.Policy.Quarantine == "" {
		cfg.Policy.Quarantine = DefaultPolicy.Quarantine
	}
	if cfg.Policy.Envelope == "" {
		cfg.Policy.Envelope = DefaultPolicy.Envelope
	}
	if cfg.BufferLimit <= 0 {
		cfg.BufferLimit = 1 << 20
	}
	if cfg.MemoryBudget <= 0 {
		cfg.MemoryBudget = 64 << 20
	}
	if cfg.Observer == nil {
		cfg.Observer = NopObserver{}
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 30 * time.Second
	}
	return cfg
}

// ErrStdout reports that smtpd's end of the pipe is gone for writing.
var ErrStdout = errors.New("cannot write to smtpd")

// Run serves smtpd until in ends. It returns nil when smtpd closed the
// pipe (smtpd is shutting down), or an error when answers can no longer be
// written. Run never returns because of bad input: a malformed line is
// logged and skipped.
func (g *Gateway) Run(in io.Reader, out io.Writer) error {
	g.mu.Lock()
	g.out = newWriter(out)
	g.mu.Unlock()
	r := g.newReader(in)
	if err := g.handshake(r.lines); err != nil {
		return g.stop(endSmtpdGone, err)
	}
	stopReaper := g.startReaper()
	defer stopReaper()
	return g.stop(r.run())
}

// handshake reads smtpd's configuration and registers.
func (g *Gateway) handshake(rd *protocol.Reader) error {
	for {
		line, err := rd.ReadLine()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return err
		}
		ev, err := protocol.Parse(line)
		if err != nil {
			g.log.Error("ignoring malformed line from smtpd", zap.Error(err))
			continue
		}
		c, ok := ev.(protocol.Config)
		if !ok {
			return fmt.Errorf("smtpd sent %T before config|ready", ev)
		}
		switch c.Key {
		case "smtpd-version":
			g.smtpdVersion = c.Value
		case "admd":
			g.admd = c.Value
		case "smtp-session-timeout":
			if n, err := strconv.Atoi(c.Value); err == nil && n > 0 {
				g.idleTimeout = time.Duration(n) * time.Second
			}
		case "protocol":
			if v, err := compat.ParseVersion(c.Value); err == nil {
				g.protocolVer = v
				if !compat.Known(v) {
					g.log.Warn("unknown filter protocol version; using the newest layout known",
						zap.Stringer("version", v), zap.Stringer("newest", compat.Newest))
				}
			}
		case "ready":
			g.out.send(registration())
			g.log.Info("registered with smtpd", zap.String("smtpd_version", g.smtpdVersion),
				zap.Int("milters", len(g.cfg.Load().Milters)))
			return nil
		}
	}
}

// sessionFor returns the session with id, started if new (active now);
// last removes it from the table (its goroutine ends after the line).
func (g *Gateway) sessionFor(id string, last bool, now int64) *session {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.sessions[id]
	if s == nil {
		s = g.newSession(id, now)
		g.sessions[id] = s
		g.live.Add(1)
		s.cfg.Observer.SessionOpened(id)
	}
	if last {
		delete(g.sessions, id)
	}
	return s
}

// startReaper frees sessions smtpd has sent nothing for during its own
// smtp-session-timeout: smtpd ends an idle client then, so a session still
// here has lost its link-disconnect and would hold memory and milter
// connections for ever.
func (g *Gateway) startReaper() (stop func()) {
	done := make(chan struct{})
	every := max(g.idleTimeout/10, 10*time.Millisecond)
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				g.reap(now)
			}
		}
	}()
	return func() { close(done) }
}

func (g *Gateway) reap(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, s := range g.sessions {
		// A busy session is waiting on a milter for an answer smtpd is
		// waiting for: smtpd is silent because of us, not because the
		// session is over. Were smtpd to time the client out meanwhile,
		// it would say so with link-disconnect (smtp_session.c, smtp_free),
		// which interrupts the call; the milter's own timeouts bound it
		// otherwise.
		if s.busy.Load() {
			continue
		}
		if now.Sub(time.Unix(0, s.lastActive.Load())) > g.idleTimeout {
			s.log.Warn("freeing a session smtpd has been silent about for longer than its session timeout",
				zap.Duration("smtp_session_timeout", g.idleTimeout))
			s.q.close(endReaped)
			s.interrupt()
			delete(g.sessions, id)
		}
	}
}

func (g *Gateway) sessionGone(s *session) {
	g.live.Add(-1)
	s.cfg.Observer.SessionClosed(s.id)
}

// Sessions is the number of sessions still running, for tests and metrics.
func (g *Gateway) Sessions() int { return int(g.live.Load()) }

// Shutdown ends the gateway as smtpd closing the pipe does (for SIGTERM):
// every session is ended, given ShutdownTimeout to finish, and the
// answers flushed. A read of stdin that is blocked may not be
// interruptible (a blocking descriptor: a terminal, or a pipe the caller
// did not make non-blocking), so the caller exits rather than wait for Run.
func (g *Gateway) Shutdown() error {
	g.stopping.Store(true)
	return g.stop(endShutdown, nil)
}

// stop ends every session for reason, waits for them (at most
// ShutdownTimeout: a session may be waiting on a slow milter) and flushes
// the answers. It runs once; later calls return the first result.
func (g *Gateway) stop(reason endReason, err error) error {
	g.stopOnce.Do(func() { g.stopErr = g.stopSessions(reason, err) })
	return g.stopErr
}

func (g *Gateway) stopSessions(reason endReason, err error) error {
	g.mu.Lock()
	out := g.out
	var ending []*session
	for id, s := range g.sessions {
		s.q.close(reason)
		ending = append(ending, s)
		delete(g.sessions, id)
	}
	g.mu.Unlock()
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(g.cfg.Load().ShutdownTimeout):
		// Sessions that smtpd ended before (link-disconnect, reaping)
		// were interrupted then; these are the ones still in a milter
		// call. Their milter sockets are closed now, not left open.
		g.log.Warn("sessions still busy at shutdown; interrupting them", zap.Int("sessions", g.Sessions()),
			zap.Duration("shutdown_timeout", g.cfg.Load().ShutdownTimeout))
		for _, s := range ending {
			s.interrupt()
		}
	}
	var werr error
	if out != nil {
		werr = out.close()
	}
	if err != nil {
		return err
	}
	if werr != nil {
		return fmt.Errorf("%w: %v", ErrStdout, werr)
	}
	return nil
}

func (g *Gateway) unknownPhase(phase protocol.Phase) {
	if _, seen := g.unknownOnce.LoadOrStore(phase, true); !seen {
		g.log.Warn("unexpected filter phase; answering proceed", zap.String("phase", string(phase)))
	}
}
