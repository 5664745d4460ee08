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
}

// Gateway serves one smtpd: it reads smtpd's lines, runs a session per
// SMTP session and writes the answers.
type Gateway struct {
	cfg Config
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

	unknownOnce sync.Map // phases and events logged once

	// Owned by Run's goroutine: sessions with lines queued but not yet
	// woken (see wakingReader).
	toWake []*session
	echo   []byte       // data lines written back by the reader, not yet sent (echoLine)
	now    atomic.Int64 // when stdin was last read (unix ns): the sessions' activity clock
}

// New prepares a gateway.
func New(cfg Config) *Gateway {
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
	g := &Gateway{cfg: cfg, log: cfg.Log, sessions: make(map[string]*session), idleTimeout: 300 * time.Second,
		budget: &budget{max: cfg.MemoryBudget}}
	g.now.Store(time.Now().UnixNano())
	return g
}

// Subscriptions are the reports and filter phases the gateway registers:
// only what feeds milter macros and session life. Every registered phase
// costs a round trip through smtpd's lookup process for every session.
var (
	reportEvents = []string{"link-connect", "link-greeting", "link-tls", "link-auth", "link-disconnect",
		"tx-begin", "tx-reset", "tx-rollback", "protocol-client"}
	filterPhases = []string{"connect", "helo", "ehlo", "mail-from", "rcpt-to", "data", "data-line", "commit"}
)

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
	rd := protocol.NewReader(&wakingReader{r: in, g: g}, 0)
	if err := g.handshake(rd); err != nil {
		return g.stop(err)
	}
	stopReaper := g.startReaper()
	defer stopReaper()
	var (
		arena  protocol.Arena
		cutter protocol.DataLineCutter
		dl     protocol.DataLine
	)
	for {
		raw, err := rd.ReadLine()
		if err != nil {
			if errors.Is(err, protocol.ErrLineTooLong) {
				g.log.Error("ignoring a line over the length limit", zap.Error(err))
				continue
			}
			if errors.Is(err, io.EOF) || errors.Is(err, os.ErrClosed) {
				err = nil // smtpd is gone, or SIGTERM closed stdin
			}
			return g.stop(err)
		}
		if g.out.failed() || g.stopping.Load() {
			return g.stop(nil)
		}
		// Data lines are most lines: they are cut in place, and their
		// text lives only until the session has echoed or buffered it, so
		// it shares the arena's blocks. Other lines feed macros and state
		// a session keeps, so each gets its own copy and pins nothing else.
		if cutter.Cut(raw, &dl) {
			g.dispatchDataLine(&dl, &arena)
			continue
		}
		var l protocol.Line
		if err := protocol.ParseLine(string(raw), &l); err != nil {
			g.log.Error("ignoring malformed line from smtpd", zap.Error(err))
			continue
		}
		switch l.Kind {
		case protocol.KindReport:
			g.dispatch(l.Report.Session, &l, l.Report.Event == "link-disconnect")
		case protocol.KindRequest:
			g.dispatch(l.Request.Session, &l, false)
		case protocol.KindConfig:
			// Configuration after the handshake carries nothing we use.
		}
	}
}

// wakingReader is the gateway's stdin. Lines are queued to sessions
// without waking them; just before each read of stdin, which may block,
// every session that got lines since the last read is woken once. Under
// load a read brings many lines for a session, and the session handles
// them in one go (and writes its answers in one batch) instead of being
// woken for each. It also keeps the gateway's clock: the time of the
// last read, which is when smtpd last sent anything.
type wakingReader struct {
	r io.Reader
	g *Gateway
}

func (w *wakingReader) Read(p []byte) (int, error) {
	w.g.flushEcho()
	w.g.wakeQueued()
	n, err := w.r.Read(p)
	w.g.now.Store(time.Now().UnixNano())
	return n, err
}

// wakeQueued wakes the sessions that got lines since it last ran. Only
// Run's goroutine calls it.
func (g *Gateway) wakeQueued() {
	for i, s := range g.toWake {
		s.queued, s.unwoken = false, 0
		s.q.wake()
		g.toWake[i] = nil
	}
	g.toWake = g.toWake[:0]
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
			g.register()
			g.log.Info("registered with smtpd", zap.String("smtpd_version", g.smtpdVersion),
				zap.Int("milters", len(g.cfg.Milters)))
			return nil
		}
	}
}

func (g *Gateway) register() {
	var b []byte
	for _, ev := range reportEvents {
		b = protocol.AppendRegister(b, "report", "smtp-in", ev)
	}
	for _, ph := range filterPhases {
		b = protocol.AppendRegister(b, "filter", "smtp-in", ph)
	}
	g.out.send(protocol.AppendRegisterReady(b))
}

// dispatch queues a line for its session, starting the session on its
// first line. Only Run's goroutine calls it; the session is woken at the
// next read of stdin (wakeQueued). The last line, link-disconnect, also
// interrupts a milter call the session may be stuck in, so that it
// handles the line at once rather than when the milter answers.
func (g *Gateway) dispatch(id string, l *protocol.Line, last bool) {
	s := g.sessionFor(id, last)
	lc := *l
	g.queue(s, item{line: &lc})
	if last {
		s.interrupt()
	}
}

// dispatchDataLine is dispatch for a data line cut in place: the session is
// looked up without a copy of its id, and the token, the same on every
// line of a message, is copied once per message.
func (g *Gateway) dispatchDataLine(d *protocol.DataLine, arena *protocol.Arena) {
	g.mu.Lock()
	s := g.sessions[string(d.Session)]
	g.mu.Unlock()
	if s == nil {
		s = g.sessionFor(string(d.Session), false)
	}
	if string(d.Token) != s.readerToken {
		s.readerToken = string(d.Token)
	}
	g.queue(s, item{version: d.Version, token: s.readerToken, param: arena.String(d.Param)})
}

// sessionFor returns the session with id, started if new; last removes it
// from the table (its goroutine ends after the line).
func (g *Gateway) sessionFor(id string, last bool) *session {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.sessions[id]
	if s == nil {
		s = g.newSession(id)
		g.sessions[id] = s
		g.live.Add(1)
		g.cfg.Observer.SessionOpened(id)
	}
	if last {
		delete(g.sessions, id)
	}
	return s
}

// queue hands an item to its session.
func (g *Gateway) queue(s *session, it item) {
	s.lastActive.Store(g.now.Load())
	if s.readerEcho.Load() {
		if it.line == nil && it.param != "." {
			g.echoLine(s, &it)
			return
		}
		// The session may write "." (or anything else) as soon as the
		// item is queued: what the reader wrote back goes first.
		g.flushEcho()
	}
	s.q.add(it)
	g.wakeLater(s)
}

// echoLine writes a data line back for a session whose message no milter
// can change (readerEcho) and queues it, marked as written, for the
// session to keep for the milters. smtpd relays a message one line at a
// time, so a read of stdin often brings one line: writing it back here,
// as the floor filter does, saves the session's goroutine a wake-up (and
// the process a context switch) per line. The session is woken once a
// block of such lines has gathered, so that its message buffer, which
// spills to disk, holds them rather than its inbox; otherwise at ".".
func (g *Gateway) echoLine(s *session, it *item) {
	g.echo = growBuf(g.echo, len(it.param)+len(s.id)+len(it.token)+len("filter-dataline|||\n"))
	g.echo = protocol.AppendDataLine(g.echo, compat.For(it.version), s.id, it.token, it.param)
	if len(g.echo) >= flushSize {
		g.flushEcho()
	}
	it.echoed = true
	s.q.add(*it)
	if s.unwoken++; s.unwoken >= blockItems {
		g.wakeLater(s)
	}
}

// flushEcho writes what echoLine gathered. Only Run's goroutine calls it.
func (g *Gateway) flushEcho() {
	if len(g.echo) > 0 {
		g.out.send(g.echo)
		g.echo = nil
	}
}

// wakeLater has s woken before the next read of stdin.
func (g *Gateway) wakeLater(s *session) {
	if !s.queued {
		s.queued = true
		g.toWake = append(g.toWake, s)
	}
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
		if now.Sub(time.Unix(0, s.lastActive.Load())) > g.idleTimeout {
			s.log.Warn("freeing a session smtpd has been silent about for longer than its session timeout",
				zap.Duration("smtp_session_timeout", g.idleTimeout))
			s.q.push(shutdown)
			s.interrupt()
			delete(g.sessions, id)
		}
	}
}

func (g *Gateway) sessionGone(id string) {
	g.live.Add(-1)
	g.cfg.Observer.SessionClosed(id)
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
	return g.stop(nil)
}

// stop ends every session, waits for them (at most ShutdownTimeout: a
// session may be waiting on a slow milter) and flushes the answers. It
// runs once; later calls return the first result.
func (g *Gateway) stop(err error) error {
	g.stopOnce.Do(func() { g.stopErr = g.stopSessions(err) })
	return g.stopErr
}

func (g *Gateway) stopSessions(err error) error {
	g.mu.Lock()
	out := g.out
	var ending []*session
	for id, s := range g.sessions {
		s.q.push(shutdown)
		ending = append(ending, s)
		delete(g.sessions, id)
	}
	g.mu.Unlock()
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(g.cfg.ShutdownTimeout):
		// Sessions that smtpd ended before (link-disconnect, reaping)
		// were interrupted then; these are the ones still in a milter
		// call. Their milter sockets are closed now, not left open.
		g.log.Warn("sessions still busy at shutdown; interrupting them", zap.Int("sessions", g.Sessions()),
			zap.Duration("shutdown_timeout", g.cfg.ShutdownTimeout))
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

func (g *Gateway) unknownPhase(phase string) {
	if _, seen := g.unknownOnce.LoadOrStore(phase, true); !seen {
		g.log.Warn("unexpected filter phase; answering proceed", zap.String("phase", phase))
	}
}
