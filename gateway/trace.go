package gateway

import (
	"net/netip"
	"strconv"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
)

// A session's trace: every filter line smtpd sent for it (as sent), every
// line the session wrote back (as written), and every milter packet both
// ways (milter.Session.Trace), each one debug line with the session's id.
// Message content (data lines, header values, body chunks, a replacement
// body) is shown as its size only unless Trace.Content says otherwise.
//
// A session is traced when the log shows debug lines, or when its client
// is one of Trace.Clients: then its trace lines are written whatever the
// log level (forced), still as debug lines, so that a postmaster can
// follow one sender in production without debug for everyone. The rest
// of such a session's log keeps the configured level.
//
// The decision is the reader's: at the session's first line (debug) or at
// its link-connect (Trace.Clients), before that line is traced. The
// session's goroutine reads it for the lines it writes and the milter
// calls it makes. An untraced session pays one atomic load per line.

// Trace is what the trace shows, and for whom besides -log-level debug.
type Trace struct {
	// Clients are the networks whose sessions are traced whatever the
	// log level.
	Clients []netip.Prefix
	// Content shows message content in the trace, not only its size.
	Content bool
}

// traces reports whether sessions of the client at addr are traced by
// Clients.
func (t Trace) traces(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range t.Clients {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// tracer is a traced session's trace log.
type tracer struct {
	log     *zap.Logger // the session's log; its debug lines forced through for Trace.Clients
	content bool
}

// traceFromStart traces s from its first line when the log shows debug
// lines. The reader's goroutine calls it, as the session starts.
func (s *session) traceFromStart() {
	if s.log.Core().Enabled(zapcore.DebugLevel) {
		s.trace.Store(&tracer{log: s.log, content: s.cfg.Trace.Content})
	}
}

// traceClient traces s from its link-connect on when its client is one of
// Trace.Clients. The reader's goroutine calls it, before it traces the
// line.
func (s *session) traceClient(r protocol.Report) {
	if len(s.cfg.Trace.Clients) == 0 || s.trace.Load() != nil {
		return
	}
	ev, err := r.Decode()
	if err != nil {
		return // the session logs it
	}
	lc, ok := ev.(protocol.LinkConnect)
	if !ok {
		return
	}
	ep, err := protocol.ParseEndpoint(lc.Src)
	if err != nil || ep.Family == "unix" {
		return
	}
	addr, err := netip.ParseAddr(ep.Addr)
	if err != nil || !s.cfg.Trace.traces(addr) {
		return
	}
	forced := s.log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return forcedCore{c} }))
	s.trace.Store(&tracer{log: forced, content: s.cfg.Trace.Content})
	forced.Debug("tracing the session: its client is in trace_clients", zap.String("client", ep.Addr))
}

// forcedCore writes every entry whatever its core's level: Check is where
// a core applies its level, and Write only encodes and writes.
type forcedCore struct{ zapcore.Core }

func (c forcedCore) Enabled(zapcore.Level) bool { return true }

func (c forcedCore) With(fields []zapcore.Field) zapcore.Core {
	return forcedCore{c.Core.With(fields)}
}

func (c forcedCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, c)
}

// lineIn traces a line smtpd sent.
func (t *tracer) lineIn(raw []byte) {
	t.log.Debug("filter line in", zap.String("line", escaped(raw)), zap.Int("size", len(raw)))
}

// lineOut traces a line written to smtpd, without its newline.
func (t *tracer) lineOut(line []byte) {
	t.log.Debug("filter line out", zap.String("line", escaped(line)), zap.Int("size", len(line)))
}

// dataLine traces a data line, in or out: line is the whole line, whose
// last param bytes are the message's text, elided unless asked for.
// The final "." is no content.
func (t *tracer) dataLine(msg string, line []byte, param int) {
	if t.content || (param == 1 && line[len(line)-1] == '.') {
		t.log.Debug(msg, zap.String("line", escaped(line)), zap.Int("size", len(line)))
		return
	}
	t.log.Debug(msg, zap.String("line", escaped(line[:len(line)-param])), zap.Int("size", len(line)), zap.Int("elided", param))
}

// escaped is b as a Go string literal without its quotes: every byte
// kept, those that are not printable UTF-8 as \x escapes, where the log's
// own escaping would replace them.
func escaped(b []byte) string {
	q := strconv.Quote(string(b))
	return q[1 : len(q)-1]
}

// traceMilter has m traced from now on, when s is. Every milter call goes
// through calling, which calls it; a milter session opened after the
// trace began (failover) is traced from its first call.
func (s *session) traceMilter(m *milter.Session) {
	if t := s.trace.Load(); t != nil && m != nil {
		m.Trace(t.log, t.content)
	}
}
