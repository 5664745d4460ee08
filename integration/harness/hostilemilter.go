package harness

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A hostile milter: a milter written by hand on a TCP listener of
// 127.0.0.1 that speaks the wire protocol correctly until its script says
// otherwise. It negotiates what the script says (version 6), answers
// CONTINUE to every command that wants an answer, and at the commands the
// script names runs the script's function instead, which may write
// anything: an over-long reply, a flood of modifications, PROGRESS for
// ever, bytes out of turn. The framing (4-byte big-endian length, 1-byte
// code, payload) and the codes are libmilter's (include/libmilter/mfdef.h).

// Milter command codes (MTA to milter) and reply codes (milter to MTA),
// from libmilter's mfdef.h.
const (
	MilterOptNeg  = 'O' // SMFIC_OPTNEG, and the milter's answer to it
	MilterMacro   = 'D' // SMFIC_MACRO: no answer
	MilterConnect = 'C'
	MilterHelo    = 'H'
	MilterMail    = 'M'
	MilterRcpt    = 'R'
	MilterData    = 'T'
	MilterHeader  = 'L'
	MilterEOH     = 'N'
	MilterBody    = 'B'
	MilterEOM     = 'E' // SMFIC_BODYEOB
	MilterAbort   = 'A' // no answer
	MilterQuit    = 'Q' // no answer; the connection ends
	MilterQuitNC  = 'K' // no answer; a new CONNECT may follow

	ReplyContinue  = 'c'
	ReplyAccept    = 'a'
	ReplyReject    = 'r'
	ReplyTempfail  = 't'
	ReplyCode      = 'y' // SMFIR_REPLYCODE: "NNN x.y.z text\0"
	ReplyProgress  = 'p'
	ReplyAddHeader = 'h' // name\0value\0
	ReplyInsHeader = 'i' // uint32 index, name\0value\0
	ReplyChgHeader = 'm' // uint32 index, name\0value\0
	ReplyBody      = 'b' // raw bytes of the replacement body
)

// Action flags (SMFIF_*) a milter asks for in its negotiation answer.
const (
	ActAddHeaders uint32 = 0x01 // SMFIF_ADDHDRS: h, i
	ActChgBody    uint32 = 0x02 // SMFIF_CHGBODY: b
	ActChgHeaders uint32 = 0x10 // SMFIF_CHGHDRS: m
)

// Protocol flags (SMFIP_*) of the negotiation answer.
const (
	ProtoNoReplyHeader uint32 = 0x80 // SMFIP_NR_HDR: the MTA reads no answer to a header
)

// HostileScript says what a HostileMilter does on each connection.
type HostileScript struct {
	// Actions and Protocol are the SMFIF_* and SMFIP_* flags of the
	// negotiation answer. Protocol 0 means every command is answered.
	Actions, Protocol uint32
	// OptNegTail is appended to the negotiation answer after its three
	// words: where libmilter puts its macro lists (uint32 stage,
	// "names"\0, repeated).
	OptNegTail []byte
	// AfterOptNeg, when set, runs right after the negotiation answer is
	// written: bytes sent there come before any command.
	AfterOptNeg func(c *HostileConn) error
	// At maps a command code to what the milter does instead of answering
	// CONTINUE. An error ends the connection (the milter closes it).
	At map[byte]func(c *HostileConn) error
}

// HostileMilter serves a HostileScript on 127.0.0.1.
type HostileMilter struct {
	Port   int
	script HostileScript
	ln     net.Listener
	tb     TB

	halt     chan struct{}
	haltOnce sync.Once

	mu      sync.Mutex
	n       int
	conns   map[net.Conn]bool
	events  []HostileEvent
	started map[byte]chan struct{}
	wg      sync.WaitGroup
}

// HostileEvent is something a HostileMilter connection saw, for the test
// and its log.
type HostileEvent struct {
	Conn int
	At   time.Time
	What string // "command X", "script X done: err", "eof"
}

// StartHostileMilter listens on a free port of 127.0.0.1 and serves
// script on every connection until the test ends.
func StartHostileMilter(tb TB, script HostileScript) *HostileMilter {
	tb.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("harness: hostile milter: %v", err)
	}
	m := &HostileMilter{Port: ln.Addr().(*net.TCPAddr).Port, script: script, ln: ln, tb: tb,
		halt: make(chan struct{}), conns: map[net.Conn]bool{}, started: map[byte]chan struct{}{}}
	m.wg.Add(1)
	go m.serve()
	tb.Cleanup(m.Stop)
	tb.Logf("harness: hostile milter on 127.0.0.1:%d", m.Port)
	return m
}

// Spec is the milter's socket as filter-milter's -milter takes it.
func (m *HostileMilter) Spec() string { return fmt.Sprintf("inet:127.0.0.1:%d", m.Port) }

// Halt makes every script's writes fail from now on (a flood stops, the
// milter closes its connections): the test's blow-up guard.
func (m *HostileMilter) Halt() { m.haltOnce.Do(func() { close(m.halt) }) }

// Stop closes the listener and every connection and waits for them.
func (m *HostileMilter) Stop() {
	m.Halt()
	_ = m.ln.Close()
	m.mu.Lock()
	for c := range m.conns {
		_ = c.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// Connections is how many connections the milter accepted.
func (m *HostileMilter) Connections() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n
}

// Events is what the connections saw so far.
func (m *HostileMilter) Events() []HostileEvent {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]HostileEvent(nil), m.events...)
}

// Started is closed when some connection first runs the script at
// command code.
func (m *HostileMilter) Started(code byte) <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.startedLocked(code)
}

func (m *HostileMilter) startedLocked(code byte) chan struct{} {
	ch, ok := m.started[code]
	if !ok {
		ch = make(chan struct{})
		m.started[code] = ch
	}
	return ch
}

// WaitEvent waits until an event whose What starts with prefix was seen,
// and returns it; ok is false after timeout.
func (m *HostileMilter) WaitEvent(prefix string, timeout time.Duration) (HostileEvent, bool) {
	deadline := time.Now().Add(timeout)
	for {
		for _, e := range m.Events() {
			if strings.HasPrefix(e.What, prefix) {
				return e, true
			}
		}
		if time.Now().After(deadline) {
			return HostileEvent{}, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (m *HostileMilter) event(conn int, what string) {
	m.mu.Lock()
	m.events = append(m.events, HostileEvent{Conn: conn, At: time.Now(), What: what})
	m.mu.Unlock()
}

func (m *HostileMilter) serve() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		m.mu.Lock()
		k := m.n
		m.n++
		m.conns[c] = true
		m.mu.Unlock()
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			hc := &HostileConn{c: c, w: bufio.NewWriterSize(c, 64<<10), m: m, k: k}
			err := hc.run()
			m.event(k, "end: "+fmt.Sprint(err))
			_ = c.Close()
			m.mu.Lock()
			delete(m.conns, c)
			m.mu.Unlock()
		}()
	}
}

// HostileConn is one connection of a HostileMilter, as its script sees it.
type HostileConn struct {
	c  net.Conn
	w  *bufio.Writer
	m  *HostileMilter
	k  int
	rd sync.Once
}

// errHalted is what a script's write returns once the test halted the milter.
var errHalted = errors.New("hostile milter halted by the test")

// errEOF ends a connection that filter-milter closed.
var errEOF = errors.New("eof")

func (hc *HostileConn) run() error {
	hdr := make([]byte, 4)
	for {
		_ = hc.c.SetReadDeadline(time.Now().Add(5 * time.Minute))
		if _, err := io.ReadFull(hc.c, hdr); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				hc.m.event(hc.k, "eof")
				return errEOF
			}
			return err
		}
		n := binary.BigEndian.Uint32(hdr)
		if n == 0 || n > 64<<20 {
			return fmt.Errorf("packet length %d from the MTA", n)
		}
		pkt := make([]byte, n)
		if _, err := io.ReadFull(hc.c, pkt); err != nil {
			return err
		}
		code := pkt[0]
		hc.m.event(hc.k, "command "+string(rune(code)))
		switch code {
		case MilterOptNeg:
			s := hc.m.script
			p := binary.BigEndian.AppendUint32(nil, 6)
			p = binary.BigEndian.AppendUint32(p, s.Actions)
			p = binary.BigEndian.AppendUint32(p, s.Protocol)
			p = append(p, s.OptNegTail...)
			if err := hc.Send(MilterOptNeg, p); err != nil {
				return err
			}
			if s.AfterOptNeg != nil {
				if err := hc.script("after optneg", s.AfterOptNeg); err != nil {
					return err
				}
			}
			continue
		case MilterMacro, MilterAbort, MilterQuitNC:
			continue
		case MilterQuit:
			return nil
		}
		if f := hc.m.script.At[code]; f != nil {
			hc.m.mu.Lock()
			ch := hc.m.startedLocked(code)
			select {
			case <-ch:
			default:
				close(ch)
			}
			hc.m.mu.Unlock()
			if err := hc.script(string(rune(code)), f); err != nil {
				return err
			}
			continue
		}
		if code == MilterHeader && hc.m.script.Protocol&ProtoNoReplyHeader != 0 {
			continue
		}
		if err := hc.Send(ReplyContinue, nil); err != nil {
			return err
		}
	}
}

func (hc *HostileConn) script(name string, f func(*HostileConn) error) error {
	err := f(hc)
	if err == nil {
		err = hc.w.Flush()
	}
	hc.m.event(hc.k, fmt.Sprintf("script %s done: %v", name, err))
	return err
}

// Queue writes one packet into the connection's buffer (it goes out when
// the buffer is full, or on Flush or Send).
func (hc *HostileConn) Queue(code byte, payload []byte) error {
	select {
	case <-hc.m.halt:
		return errHalted
	default:
	}
	_ = hc.c.SetWriteDeadline(time.Now().Add(time.Minute))
	var h [5]byte
	binary.BigEndian.PutUint32(h[:], uint32(len(payload)+1))
	h[4] = code
	if _, err := hc.w.Write(h[:]); err != nil {
		return err
	}
	_, err := hc.w.Write(payload)
	return err
}

// Send writes one packet at once.
func (hc *HostileConn) Send(code byte, payload []byte) error {
	if err := hc.Queue(code, payload); err != nil {
		return err
	}
	return hc.w.Flush()
}

// Flush writes what Queue buffered.
func (hc *HostileConn) Flush() error { return hc.w.Flush() }

// WatchEOF reads (and drops) whatever filter-milter sends from now on, in
// the background, and returns a channel that is closed when the read ends
// (filter-milter closed the connection, or the milter was stopped). The
// event "eof" is recorded then. A script that calls it must not return
// nil afterwards: the command loop cannot read any more.
func (hc *HostileConn) WatchEOF() <-chan struct{} {
	done := make(chan struct{})
	hc.rd.Do(func() {
		go func() {
			defer close(done)
			_ = hc.c.SetReadDeadline(time.Time{})
			_, err := io.Copy(io.Discard, hc.c)
			// A socket closed with unread data in its receive buffer
			// (PROGRESS packets filter-milter had no reason to read)
			// sends a reset, not a FIN: that is a close all the same.
			if err == nil || errors.Is(err, syscall.ECONNRESET) {
				hc.m.event(hc.k, "eof")
			} else {
				hc.m.event(hc.k, "read error: "+err.Error())
			}
		}()
	})
	return done
}

// Halted is closed when the test halts the milter.
func (hc *HostileConn) Halted() <-chan struct{} { return hc.m.halt }

// HeaderPayload is name\0value\0.
func HeaderPayload(name, value string) []byte {
	return []byte(name + "\x00" + value + "\x00")
}

// IndexedHeaderPayload is uint32 index, name\0value\0 (insert, change).
func IndexedHeaderPayload(index uint32, name, value string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, index), HeaderPayload(name, value)...)
}

// ReplyPayload is a SMFIR_REPLYCODE payload: the text and its NUL.
func ReplyPayload(text string) []byte { return append([]byte(text), 0) }

// ---------------------------------------------------------------------------
// The filter process

// FilterPID finds the filter-milter process smtpd started whose command
// line contains marker (a milter's spec is unique to a test), waiting up
// to timeout for smtpd to have started it.
func FilterPID(tb TB, marker string, timeout time.Duration) int {
	tb.Helper()
	bin := BuildFilterMilter(tb)
	deadline := time.Now().Add(timeout)
	for {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if err != nil {
				continue
			}
			args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
			if len(args) == 0 || args[0] != bin {
				continue
			}
			if strings.Contains(string(cmd), marker) {
				return pid
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("harness: no filter-milter process (%s) with %q in its command line after %v", bin, marker, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ProcStatusKiB reads a "Name:   N kB" field of /proc/<pid>/status
// (VmRSS, VmHWM); ok is false when the process is gone.
func ProcStatusKiB(pid int, field string) (kib int64, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		v, found := strings.CutPrefix(l, field+":")
		if !found {
			continue
		}
		v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	}
	return 0, false
}
