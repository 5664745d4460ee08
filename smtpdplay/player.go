// Package smtpdplay plays smtpd's side of OpenSMTPD's filter protocol
// (smtpd-filters(7)) against a filter's stdin and stdout, so that the
// gateway's tests and benchmarks, the `filter-milter test` command and the
// load generator drive a filter the one way smtpd does.
//
// A Player writes the handshake (config lines up to config|ready), reads
// the filter's register lines up to register|ready, then sends reports
// and filter requests for sessions it opens. One reader goroutine reads
// everything the filter writes and hands each line to its session. It
// checks every line as smtpd would before acting on it (lka_filter.c,
// lka_filter_process_response): a line that is not filter-result or
// filter-dataline, one for a session that is not open, an answer for a
// token that was not asked or was answered already, a data line after the
// message's final "." — each is an error the player keeps and returns from
// Err and Close. It never drops a line silently: smtpd dies on most such
// lines, so a filter that writes one is broken, and a test must say so.
//
// Every request carries a fresh random token, so that an answer can be
// matched to the one request it answers. (smtpd's token names a filter in
// the chain rather than a request, so it repeats; a fresh one per request
// is stricter and catches a second answer to one request.) The data lines
// of one message share one token, as smtpd's do.
//
// Two ways to use a session:
//
//   - line by line, for tests and the test command: Report, Request,
//     SendData, then Expect ("these lines, then nothing before them"),
//     Next or Ask. Close reports every line that came and was never read.
//   - a step at a time, for benchmarks and the load generator: Steps
//     encodes a run of reports ending in one request or one message once;
//     Session.Play patches in the session id and a fresh token, writes it
//     and waits for its answer. The returned data lines of a played
//     message are counted and hashed, not stored, so the player costs
//     little per line.
package smtpdplay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filter-milter/filter-milter/compat"
	"github.com/filter-milter/filter-milter/protocol"
)

// Config says which smtpd the player plays. The zero value plays smtpd
// 6.8.0p2 (protocol 0.6, Debian 11 and 12), whose transcripts are in
// testdata/transcripts.
type Config struct {
	// Protocol is the version written in every report and request, and
	// the layout of the answers expected back (compat.For). Zero: 0.6.
	Protocol compat.Version
	// SmtpdVersion is config|smtpd-version's value. Zero: 6.6.4 for
	// protocol 0.4 and 0.5, 6.8.0p2 for 0.6, 7.4.0 for 0.7 and later.
	SmtpdVersion string
	// AnnounceProtocol sends config|protocol|VERSION, as smtpd 7.6 and
	// later do; older ones say the version only in each line.
	AnnounceProtocol bool
	// SessionTimeout is config|smtp-session-timeout, in seconds. Zero: 300,
	// smtpd's default.
	SessionTimeout int
	// Admd is config|admd, the server's authserv-id. Zero:
	// mx.test.example.
	Admd string
	// HashDataLines hashes the data lines of a played message as they
	// come back (FNV-1a), so that Play finds a line changed to another of
	// the same length; without it Play compares their number and bytes,
	// which costs a benchmark less.
	HashDataLines bool
	// Wait bounds each wait for the filter: the handshake, each answer,
	// the end of output at Close. It fails a hung filter with a clear
	// error; no outcome is decided by it. Zero: 10 seconds.
	Wait time.Duration
}

func (c *Config) fill() {
	if c.Protocol == (compat.Version{}) {
		c.Protocol = compat.Version{Major: 0, Minor: 6}
	}
	if c.SmtpdVersion == "" {
		switch {
		case c.Protocol.Less(compat.Version{Major: 0, Minor: 6}):
			c.SmtpdVersion = "6.6.4"
		case c.Protocol.Less(compat.Version{Major: 0, Minor: 7}):
			c.SmtpdVersion = "6.8.0p2"
		default:
			c.SmtpdVersion = "7.4.0"
		}
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 300
	}
	if c.Admd == "" {
		c.Admd = "mx.test.example"
	}
	if c.Wait == 0 {
		c.Wait = 10 * time.Second
	}
}

// Registration is what the filter registered during the handshake, in
// the order it did.
type Registration struct {
	Filters []string // phases: connect, ehlo, data-line, ...
	Reports []string // events: link-connect, tx-begin, ... or "*"
}

// Filter reports whether the filter asked for requests of phase. smtpd
// puts a filter in a phase's chain only if it registered the phase
// (lka_filter.c), and asks nothing of it otherwise.
func (r Registration) Filter(phase string) bool {
	for _, f := range r.Filters {
		if f == phase {
			return true
		}
	}
	return false
}

// Report reports whether the filter subscribed to event, by name or with
// "*". smtpd sends a filter only the reports it subscribed to.
func (r Registration) Report(event string) bool {
	for _, e := range r.Reports {
		if e == event || e == "*" {
			return true
		}
	}
	return false
}

// Token is a request's token, or a session id: 16 lowercase hex digits,
// as smtpd writes both ("%016"PRIx64 in lka_filter.c and lka_report.c).
type Token [16]byte

// String returns the 16 hex digits.
func (t Token) String() string { return string(t[:]) }

const hexDigits = "0123456789abcdef"

func randomToken() Token {
	var t Token
	v := rand.Uint64()
	for i := range t {
		t[15-i] = hexDigits[v>>(4*i)&0xf]
	}
	return t
}

// Player is smtpd's side of one filter's pipes.
type Player struct {
	cfg     Config
	layout  compat.Layout
	version string // cfg.Protocol as written in each line
	reg     Registration

	wmu sync.Mutex // one Write at a time, so lines of sessions never mix
	in  io.Writer

	mu       sync.RWMutex
	sessions map[Token]*Session
	ended    atomic.Uint64 // sessions ended so far: the reader's cache is stale once it moves

	// The reader's own: the session of the last line, most often that of
	// the next (a message's data lines come back in a run).
	last      *Session
	lastEnded uint64

	errMu   sync.Mutex
	errs    []error
	dropped int           // errors past maxErrors, counted only
	failed  chan struct{} // closed at the first error, to wake waiters

	registered chan error    // the handshake's outcome
	readDone   chan struct{} // closed when the filter's output ended
}

// maxErrors bounds the errors kept: a filter gone wrong may write
// thousands of bad lines, and the first few say what is wrong.
const maxErrors = 20

// Start writes the handshake to in (the filter's stdin), reads the
// filter's registrations from out (its stdout) and returns a player whose
// reader goroutine has taken over out. It fails if the filter writes
// anything but register lines before register|ready, or nothing within
// cfg.Wait.
func Start(in io.Writer, out io.Reader, cfg Config) (*Player, error) {
	cfg.fill()
	p := &Player{
		cfg: cfg, layout: compat.For(cfg.Protocol), version: cfg.Protocol.String(), in: in,
		sessions: map[Token]*Session{}, failed: make(chan struct{}),
		registered: make(chan error, 1), readDone: make(chan struct{}),
	}
	// The config lines in smtpd's order (lka_proc.c, lka_proc_config).
	hs := "config|smtpd-version|" + cfg.SmtpdVersion + "\n"
	if cfg.AnnounceProtocol {
		hs += "config|protocol|" + p.version + "\n"
	}
	hs += "config|smtp-session-timeout|" + strconv.Itoa(cfg.SessionTimeout) + "\n" +
		"config|subsystem|smtp-in\n" + "config|admd|" + cfg.Admd + "\n" + "config|ready\n"
	go p.read(bufio.NewReaderSize(out, 64<<10))
	if err := p.write([]byte(hs)); err != nil {
		return nil, fmt.Errorf("smtpdplay: handshake: %w", err)
	}
	t := time.NewTimer(cfg.Wait)
	defer t.Stop()
	select {
	case err := <-p.registered:
		if err != nil {
			return nil, err
		}
	case <-t.C:
		return nil, fmt.Errorf("smtpdplay: handshake: no register|ready from the filter within %v", cfg.Wait)
	}
	return p, nil
}

// Registration returns what the filter registered.
func (p *Player) Registration() Registration { return p.reg }

// Protocol returns the protocol version the player writes.
func (p *Player) Protocol() compat.Version { return p.cfg.Protocol }

// WriteLines writes lines to the filter as they are, each followed by
// '\n', in one Write: lines no session of the player would write, such as
// malformed ones.
func (p *Player) WriteLines(lines ...string) error {
	var b []byte
	for _, l := range lines {
		b = append(append(b, l...), '\n')
	}
	return p.write(b)
}

func (p *Player) write(b []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_, err := p.in.Write(b)
	return err
}

// Err returns the errors found so far in the filter's output, joined, or
// nil.
func (p *Player) Err() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	errs := p.errs
	if p.dropped > 0 {
		errs = append(errs[:len(errs):len(errs)], fmt.Errorf("smtpdplay: and %d more errors", p.dropped))
	}
	return errors.Join(errs...)
}

func (p *Player) fail(format string, args ...any) {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	if len(p.errs) == 0 {
		close(p.failed)
	}
	if len(p.errs) >= maxErrors {
		p.dropped++
		return
	}
	p.errs = append(p.errs, fmt.Errorf("smtpdplay: "+format, args...))
}

// Close closes the filter's stdin if in is an io.Closer, as smtpd does
// when it shuts down, waits up to Config.Wait for the filter's output to
// end, and returns every error found: bad lines, and the lines of each
// session that came but were never read ("these lines, then nothing").
func (p *Player) Close() error {
	if c, ok := p.in.(io.Closer); ok {
		_ = c.Close()
	}
	t := time.NewTimer(p.cfg.Wait)
	defer t.Stop()
	select {
	case <-p.readDone:
	case <-t.C:
		p.fail("the filter's output did not end within %v of its input being closed", p.cfg.Wait)
	}
	p.mu.RLock()
	var open []*Session
	for _, s := range p.sessions {
		open = append(open, s)
	}
	p.mu.RUnlock()
	for _, s := range open {
		s.checkUnread()
	}
	return p.Err()
}

// read is the one reader of the filter's output: first the handshake,
// then every answer, handed to its session.
func (p *Player) read(rd *bufio.Reader) {
	defer close(p.readDone)
	var long []byte // a line longer than rd's buffer, gathered
	handshake := true
	for {
		l, err := rd.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, l...)
			continue
		}
		if err != nil {
			if len(l) > 0 || len(long) > 0 {
				p.fail("the filter's output ended inside a line: %q", quoteCut(append(long, l...)))
			}
			if handshake {
				p.registered <- fmt.Errorf("smtpdplay: handshake: the filter's output ended before register|ready (%v)", err)
			} else if !errors.Is(err, io.EOF) {
				p.fail("reading the filter's output: %v", err)
			}
			return
		}
		if long != nil {
			l = append(long, l...)
			long = nil
		}
		l = l[:len(l)-1]
		if handshake {
			done, err := p.register(l)
			if err != nil {
				p.registered <- err
				// Keep reading, so that the filter is not blocked on a
				// full pipe; what it writes now is an error.
				p.fail("%v", err)
				handshake = false
				continue
			}
			if done {
				handshake = false
				p.registered <- nil
			}
			continue
		}
		p.dispatch(l)
	}
}

// register takes one line of the filter's registration:
// register|filter|smtp-in|PHASE, register|report|smtp-in|EVENT or
// register|ready. smtpd dies on any other (lka_proc.c).
func (p *Player) register(l []byte) (done bool, err error) {
	if string(l) == "register|ready" {
		return true, nil
	}
	f := bytes.Split(l, []byte("|"))
	if len(f) != 4 || string(f[0]) != "register" || string(f[2]) != "smtp-in" || len(f[3]) == 0 {
		return false, fmt.Errorf("smtpdplay: handshake: the filter wrote %q, not register|filter|smtp-in|PHASE, register|report|smtp-in|EVENT or register|ready", quoteCut(l))
	}
	switch string(f[1]) {
	case "filter":
		p.reg.Filters = append(p.reg.Filters, string(f[3]))
	case "report":
		p.reg.Reports = append(p.reg.Reports, string(f[3]))
	default:
		return false, fmt.Errorf("smtpdplay: handshake: the filter registered %q: neither filter nor report", quoteCut(l))
	}
	return false, nil
}

var (
	resultPrefix   = []byte("filter-result|")
	datalinePrefix = []byte("filter-dataline|")
)

// dispatch checks one answer line and hands it to its session.
func (p *Player) dispatch(l []byte) {
	var rest []byte
	dataline := false
	switch {
	case bytes.HasPrefix(l, datalinePrefix):
		rest, dataline = l[len(datalinePrefix):], true
	case bytes.HasPrefix(l, resultPrefix):
		rest = l[len(resultPrefix):]
	default:
		p.fail("the filter wrote a line that is neither filter-result nor filter-dataline: %q", quoteCut(l))
		return
	}
	if len(rest) < 34 || rest[16] != '|' || rest[33] != '|' {
		p.fail("the filter wrote a line without SESSION|TOKEN| (16 hex digits each): %q", quoteCut(l))
		return
	}
	sidB, tokB := rest[:16], rest[17:33]
	if p.layout.TokenFirst {
		sidB, tokB = tokB, sidB
	}
	ended := p.ended.Load()
	s := p.last
	if s == nil || ended != p.lastEnded || string(sidB) != string(s.id[:]) {
		if !isHex(sidB) {
			p.fail("the filter wrote a line without SESSION|TOKEN| (16 hex digits each): %q", quoteCut(l))
			return
		}
		var sid Token
		copy(sid[:], sidB)
		p.mu.RLock()
		s = p.sessions[sid]
		p.mu.RUnlock()
		if s == nil {
			p.fail("the filter answered session %s, which is not open: %q", sid, quoteCut(l))
			return
		}
		p.last, p.lastEnded = s, ended
	}
	s.receive(dataline, tokB, rest[34:], l)
}

func isHex(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return len(b) > 0
}

// quoteCut cuts a line for an error message: a data line can be 64 KB.
func quoteCut(l []byte) string {
	const max = 200
	if len(l) > max {
		return string(l[:max]) + "..."
	}
	return string(l)
}

// timestamp is smtpd's "seconds.microseconds" (smtpd writes
// "%lld.%06ld" of the event's time).
func timestamp() string {
	now := time.Now()
	return strconv.FormatInt(now.Unix(), 10) + "." + fmt.Sprintf("%06d", now.Nanosecond()/1000)
}

// decision parses a filter-result's DECISION[|PARAM] as smtpd does
// (lka_filter.c, lka_filter_process_response): a known decision, no
// parameter after proceed or junk, a valid SMTP reply after reject and
// disconnect, a non-empty one after rewrite.
func decision(payload []byte) (protocol.Decision, string, error) {
	d, param, hasParam := bytes.Cut(payload, []byte("|"))
	switch string(d) {
	case string(protocol.Proceed), string(protocol.Junk):
		if hasParam {
			return "", "", fmt.Errorf("%s with a parameter", d)
		}
		if string(d) == string(protocol.Proceed) {
			return protocol.Proceed, "", nil
		}
		return protocol.Junk, "", nil
	case string(protocol.Reject), string(protocol.Disconnect):
		if !protocol.ValidReply(string(param)) {
			return "", "", fmt.Errorf("%s without a valid SMTP reply", d)
		}
		if string(d) == string(protocol.Reject) {
			return protocol.Reject, string(param), nil
		}
		return protocol.Disconnect, string(param), nil
	case string(protocol.Rewrite):
		if len(param) == 0 {
			return "", "", errors.New("rewrite without a parameter")
		}
		return protocol.Rewrite, string(param), nil
	}
	return "", "", fmt.Errorf("unknown decision %q", quoteCut(d))
}
