package milter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"
)

// ErrPacketTooLarge is returned when a milter announces a packet longer than
// the configured limit. The length is checked before anything is allocated,
// so a broken or hostile milter cannot make the gateway allocate gigabytes
// (go-milter itself accepts up to 512 MiB and panics on a zero length).
var ErrPacketTooLarge = errors.New("milter packet length out of range")

// conn is the net.Conn that go-milter talks through. It does what
// the library cannot:
//
//   - Timeouts per stage. go-milter sets one fixed read deadline per packet;
//     conn replaces every deadline it sets with now + the timeout of the
//     stage in progress (command or content, as Postfix distinguishes), so a
//     PROGRESS packet, which makes go-milter read again, restarts the timer.
//   - Write coalescing. go-milter writes a packet's header and payload
//     separately and a macro packet before each command; with TCP_NODELAY
//     each would be its own segment. conn buffers writes and flushes them
//     before it reads, which is when the milter must have them.
//   - Frame checks. Every packet length the milter announces is checked
//     against [1, maxPacket] before go-milter sees it.
//   - Protocol checks, as Postfix's milter8.c makes them (replies.go): a
//     reply code the phase does not allow (PROGRESS anywhere but end of
//     message, a modification outside it, one the milter did not
//     negotiate), a NUL inside a header modification; and, a step beyond
//     milter8.c, bytes waiting before a command is sent (quiet).
//   - End of message bounds: the whole of it is capped at EOMTimeout
//     whatever PROGRESS says, and its modifications at a count and a
//     number of bytes, checked on each packet's header before its payload
//     is read.
//   - Replacement body streaming: at end of message conn reads
//     SMFIR_REPLBODY packets itself and writes their payload to the
//     caller's writer, so a body of any size is never held in memory;
//     go-milter never sees them.
//   - What go-milter would only warn about through its process-wide hook
//     (LogWarning), conn settles and logs in the session's log: macro
//     lists in the negotiation answer it cannot use (completeSymlists)
//     and DISCARD in answer to CONNECT or HELO (phaseGreeting).
//
// Two of these patch go-milter's traffic at the byte level, and
// TestGoMilterWritePattern pins the write pattern each relies on:
// skipEmptyBody (an empty BODY is one Write of emptyBody) and writeHeader
// (a header packet is what HeaderField writes).
//
// On TCP it also re-arms TCP_QUICKACK before each read: libmilter writes each
// end-of-message modification as its own small packet, and without quick
// ACKs the second one waits ~40 ms for the delayed ACK (Linux's
// TCP_DELACK_MIN, with Nagle on the milter's side).
type conn struct {
	net.Conn
	r                     *bufio.Reader
	w                     *bufio.Writer
	timeout               atomic.Int64 // nanoseconds; the deadline for the current stage
	readArmed, writeArmed time.Time    // the deadlines last set on the socket (see arm)
	maxPacket             uint32
	remaining             uint32          // bytes left of the packet go-milter is reading
	raw                   syscall.RawConn // TCP only, for TCP_QUICKACK
	sock                  syscall.RawConn // any socket, to peek at it (quiet); nil when not a socket

	phase   readPhase
	actions uint32 // SMFIF_*, negotiated: the modifications the milter may send
	eom     endOfMessage
	chunk   []byte // the buffer replacement body packets are copied through

	headerBatch []byte // see writeHeader; nil outside a large header stage

	// quiet's peek at the socket.
	peekSocket func(fd uintptr)
	peeked     [64]byte
	npeeked    int

	// An empty body is sent as no BODY packet at all (Postfix and
	// Sendmail; opendkim drops the connection on an empty one), but
	// go-milter's state machine insists on a body event before end of
	// message. When armed, conn swallows the empty BODY packet and, unless
	// the milter negotiated no reply to bodies, hands go-milter a CONTINUE.
	swallowEmptyBody bool
	fakeReply        bool
	fake             []byte

	// negotiating is set until the negotiation answer has been read (see
	// completeSymlists).
	negotiating bool
	symlists    *[numMacroStages]string // the configured macro lists (Options.Macros)

	log *zap.Logger // the problems conn corrects in what the milter sent

	trace *packetTrace // nil unless the session is traced (Session.Trace)
}

var emptyBody = []byte{0, 0, 0, 1, 'B'}

// skipEmptyBody arms the swallowing of the next empty BODY packet.
func (c *conn) skipEmptyBody(on, reply bool) { c.swallowEmptyBody, c.fakeReply = on, reply }

func newConn(c net.Conn, timeout time.Duration, maxPacket uint32, log *zap.Logger) *conn {
	mc := &conn{Conn: c, maxPacket: maxPacket, negotiating: true, log: log}
	mc.r = bufio.NewReaderSize(readerFunc(mc.readRaw), 4<<10)
	mc.w = bufio.NewWriterSize((*rawWriter)(mc), 4<<10) // body chunks bigger than this go straight to the socket
	mc.timeout.Store(int64(timeout))
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			mc.sock = raw
			if _, tcp := c.(*net.TCPConn); tcp {
				mc.raw = raw
			}
		}
	}
	return mc
}

// endOfMessage is what conn keeps while the milter answers end of message.
type endOfMessage struct {
	deadline time.Time // EOM start + EOMTimeout: no read or write goes past it
	timeout  time.Duration
	body     io.Writer // where SMFIR_REPLBODY payloads go; nil: to go-milter
	maxMods  int
	maxBytes int64
	mods     int   // modification packets so far
	bytes    int64 // and their payload bytes
	passed   int   // modification packets handed to go-milter
	bodyAt   int   // go-milter's modification count at the first streamed body packet; -1 before
}

// beginEndOfMessage switches to the end-of-message phase; call it before
// go-milter writes SMFIC_BODYEOB.
func (c *conn) beginEndOfMessage(timeout time.Duration, body io.Writer, maxMods int, maxBytes int64) {
	c.phase = phaseEndOfMessage
	c.eom = endOfMessage{deadline: time.Now().Add(timeout), timeout: timeout, body: body,
		maxMods: maxMods, maxBytes: maxBytes, bodyAt: -1}
}

// endEndOfMessage goes back to one reply per command and reports where
// among the modifications go-milter returned the streamed replacement
// body belongs (-1: the milter sent none, or it went to go-milter).
func (c *conn) endEndOfMessage() (bodyAt int) {
	bodyAt = c.eom.bodyAt
	c.phase = phaseReply
	c.eom = endOfMessage{}
	c.readArmed, c.writeArmed = time.Time{}, time.Time{} // they may be the capped deadline
	return bodyAt
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// rawWriter is conn's socket for its write buffer (writeRaw); a method
// value would cost an allocation per connection.
type rawWriter conn

func (w *rawWriter) Write(p []byte) (int, error) { return (*conn)(w).writeRaw(p) }

// setTimeout sets the timeout for the I/O of the stage that starts now.
func (c *conn) setTimeout(d time.Duration) { c.timeout.Store(int64(d)) }

// arm makes sure the deadline set through setDeadline (the read or the
// write one; armed is what it was last set to) gives the I/O about to
// start at least the stage's timeout, and at most an eighth more.
//
// A deadline is a runtime timer, and resetting one for every packet, as
// go-milter asks, cost more than a percent of the CPU per message; so an
// armed deadline that still falls in that window is kept, and go-milter's
// resets to no deadline are not passed on (a deadline that passes while
// nothing is read or written has no effect, and the next I/O re-arms).
//
// At end of message the deadline is capped at the end-of-message deadline,
// so that PROGRESS, which restarts the per-packet timeout, cannot extend
// end of message past EOMTimeout.
func (c *conn) arm(setDeadline func(time.Time) error, armed *time.Time) error {
	d := time.Duration(c.timeout.Load())
	earliest := time.Now().Add(d)
	latest := earliest.Add(d / 8)
	if c.phase == phaseEndOfMessage && c.eom.deadline.Before(latest) {
		latest = c.eom.deadline
		if latest.Before(earliest) {
			earliest = latest
		}
	}
	if !armed.Before(earliest) && !armed.After(latest) {
		return nil
	}
	*armed = latest
	return setDeadline(*armed)
}

// SetReadDeadline and SetWriteDeadline are what go-milter calls around each
// packet: a read gets the current stage's deadline whatever go-milter
// asks, and writes are bounded by flush.
func (c *conn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		return nil // see arm
	}
	return c.arm(c.Conn.SetReadDeadline, &c.readArmed)
}

func (c *conn) SetWriteDeadline(time.Time) error { return nil }

func (c *conn) Write(p []byte) (int, error) {
	if c.swallowEmptyBody && bytes.Equal(p, emptyBody) {
		c.swallowEmptyBody = false
		if c.fakeReply {
			c.fake = append(c.fake, 0, 0, 0, 1, 'c')
		}
		return len(p), nil
	}
	if len(p) > c.w.Available() {
		// The buffer will spill to the socket now: bound that write too.
		if err := c.arm(c.Conn.SetWriteDeadline, &c.writeArmed); err != nil {
			return 0, err
		}
	}
	return c.w.Write(p)
}

// writeHeader writes the SMFIC_HEADER packet of one header field, byte
// for byte as go-milter's ClientSession.HeaderField would (name NUL value
// NUL, after go-milter's trimLastLineBreak of the value), without a copy
// in between: into the write buffer while the header fits in it (most
// headers: 4 KiB), then into headerBatch, which goes to the socket every
// headerBatchSize bytes, so that a header of tens of thousands of fields
// costs a write per 64 KiB, not per 4 KiB. endHeaders writes the rest.
func (c *conn) writeHeader(name, value []byte) error {
	value = trimLastLineBreak(value)
	size := 1 + len(name) + 1 + len(value) + 1
	if size > maxWritePacket {
		return fmt.Errorf("milter: cannot write %d bytes in one message", size)
	}
	if c.headerBatch == nil {
		if p := c.w.AvailableBuffer(); 4+size <= cap(p) {
			_, err := c.w.Write(appendHeader(p, size, name, value))
			return err
		}
		c.headerBatch = make([]byte, 0, headerBatchSize)
	}
	c.headerBatch = appendHeader(c.headerBatch, size, name, value)
	if len(c.headerBatch) < headerBatchSize {
		return nil
	}
	_, err := c.Write(c.headerBatch)
	c.headerBatch = c.headerBatch[:0]
	return err
}

// endHeaders writes the header packets still in headerBatch and drops
// it: a header that needs one is rare, and the memory is not kept.
func (c *conn) endHeaders() error {
	if c.headerBatch == nil {
		return nil
	}
	_, err := c.Write(c.headerBatch)
	c.headerBatch = nil
	return err
}

const headerBatchSize = 64 << 10

func appendHeader(p []byte, size int, name, value []byte) []byte {
	p = binary.BigEndian.AppendUint32(p, uint32(size))
	p = append(p, cmdHeader)
	p = append(append(p, name...), 0)
	return append(append(p, value...), 0)
}

// cmdHeader is SMFIC_HEADER.
const cmdHeader = 'L'

// maxWritePacket is go-milter's limit on a packet it writes (512 MiB).
const maxWritePacket = 512 << 20

// trimLastLineBreak is go-milter's (client.go): it cuts one trailing CRLF,
// LF or CR from a header value, with its quirks (a value of CRLF alone
// becomes CR, a lone LF or CR stays), so that both ways of sending a
// header put the same bytes on the wire.
func trimLastLineBreak(v []byte) []byte {
	l := len(v)
	switch {
	case l > 2 && v[l-2] == '\r' && v[l-1] == '\n':
		return v[:l-2]
	case l > 1 && (v[l-1] == '\n' || v[l-1] == '\r'):
		return v[:l-1]
	}
	return v
}

func (c *conn) flush() error {
	if c.w.Buffered() == 0 {
		return nil
	}
	if err := c.arm(c.Conn.SetWriteDeadline, &c.writeArmed); err != nil {
		return err
	}
	return c.w.Flush()
}

// Read hands go-milter at most the rest of the current packet, so that the
// next 4 bytes it asks for are always a packet header that Read checks
// first (see nextPacket).
func (c *conn) Read(p []byte) (int, error) {
	n, err := c.read(p)
	if err != nil && c.phase == phaseEndOfMessage && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(c.eom.deadline) {
		err = fmt.Errorf("%w (%v): %w", ErrEOMTimeout, c.eom.timeout, err)
	}
	return n, err
}

func (c *conn) read(p []byte) (int, error) {
	if len(c.fake) > 0 {
		n := copy(p, c.fake)
		c.fake = c.fake[n:]
		return n, nil
	}
	if err := c.flush(); err != nil {
		return 0, err
	}
	if c.negotiating && c.remaining == 0 {
		if err := c.completeSymlists(); err != nil {
			return 0, err
		}
		if len(c.fake) > 0 {
			return c.read(p)
		}
	}
	if c.remaining == 0 {
		if err := c.nextPacket(); err != nil {
			return 0, err
		}
		if len(c.fake) > 0 {
			return c.read(p)
		}
	}
	if uint32(len(p)) > c.remaining {
		p = p[:c.remaining]
	}
	n, err := c.r.Read(p)
	c.remaining -= uint32(n)
	return n, err
}

// nextPacket checks the header of the milter's next packet, and its code
// against the phase, before go-milter reads it. It leaves c.remaining set
// to the packet's size for go-milter to read; or, for a modification at
// end of message, reads the packet itself and either puts it in c.fake for
// go-milter (after checking it) or streams a replacement body and goes on
// to the next packet.
func (c *conn) nextPacket() error {
	for {
		hdr, err := c.r.Peek(4)
		if err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(hdr)
		if n == 0 || n > c.maxPacket {
			return fmt.Errorf("%w: %d bytes announced, limit %d", ErrPacketTooLarge, n, c.maxPacket)
		}
		if c.phase == phaseNegotiation {
			c.remaining = 4 + n
			return nil
		}
		if hdr, err = c.r.Peek(5); err != nil {
			return err
		}
		code := hdr[4]
		switch {
		case code == replyProgress && c.phase != phaseEndOfMessage:
			// Sendmail calls it a "bogus response" too; Postfix accepts
			// it anywhere, which lets a milter hold a session forever.
			return fmt.Errorf("%w: PROGRESS in answer to a command other than end of message (libmilter's smfi_progress is only allowed in xxfi_eom)", ErrProtocol)
		case code == replyDiscard && c.phase == phaseGreeting:
			// go-milter takes it for CONTINUE, as libmilter's MTA
			// side does, and says so through its process-wide warning
			// hook; conn does the same here, in this session's log.
			if _, err := c.r.Discard(int(4 + n)); err != nil {
				return err
			}
			c.log.Warn("milter answered DISCARD to CONNECT or HELO, where there is no message to discard; taken as CONTINUE")
			c.fake = append(c.fake, 0, 0, 0, 1, replyContinue)
			return nil
		case isVerdict(code) || code == replyProgress:
		case c.phase == phaseEndOfMessage && modifications[code].name != "":
			streamed, err := c.modification(code, n-1)
			if err != nil || !streamed {
				return err
			}
			if err := c.arm(c.Conn.SetReadDeadline, &c.readArmed); err != nil {
				return err // go-milter arms before each packet it reads, not before those it never sees
			}
			continue
		case modifications[code].name != "":
			return fmt.Errorf("%w: modification %s (%q) in answer to a command other than end of message", ErrProtocol, modifications[code].name, code)
		default:
			return fmt.Errorf("%w: unknown reply code %q", ErrProtocol, code)
		}
		c.remaining = 4 + n
		return nil
	}
}

// modification handles one modification packet at end of message, of
// which only the 5 header bytes have been peeked: it checks that the
// milter negotiated it and that it fits the budget before reading the
// payload, then streams a replacement body to the caller's writer
// (streamed) or reads the packet, checks it and queues it for go-milter.
func (c *conn) modification(code byte, size uint32) (streamed bool, err error) {
	m := modifications[code]
	if c.actions&m.needs == 0 {
		return false, fmt.Errorf("%w: %s without %s negotiated", ErrProtocol, m.name, m.action)
	}
	c.eom.mods++
	c.eom.bytes += int64(size)
	if c.eom.mods > c.eom.maxMods {
		return false, fmt.Errorf("%w: more than %d modifications", ErrOverBudget, c.eom.maxMods)
	}
	if c.eom.bytes > c.eom.maxBytes {
		return false, fmt.Errorf("%w: %d bytes of modifications, limit %d", ErrOverBudget, c.eom.bytes, c.eom.maxBytes)
	}
	if code == replyBody && c.eom.body != nil {
		return true, c.streamBody(size)
	}
	pkt := make([]byte, 5+size)
	if _, err := io.ReadFull(c.r, pkt); err != nil {
		return false, err
	}
	if code == replyBody {
		if err := checkBody(pkt[5:]); err != nil {
			return false, err
		}
	} else if err := m.checkPayload(pkt[5:]); err != nil {
		return false, err
	}
	c.fake = append(c.fake, pkt...)
	c.eom.passed++
	return false, nil
}

// streamBody copies one SMFIR_REPLBODY payload of size bytes to the
// caller's writer, in pieces, each checked before it is written.
func (c *conn) streamBody(size uint32) error {
	if _, err := c.r.Discard(5); err != nil {
		return err
	}
	if c.eom.bodyAt < 0 {
		c.eom.bodyAt = c.eom.passed
	}
	if c.chunk == nil {
		c.chunk = make([]byte, 32<<10)
	}
	for left := int(size); left > 0; {
		piece := c.chunk[:min(left, len(c.chunk))]
		if _, err := io.ReadFull(c.r, piece); err != nil {
			return err
		}
		if err := checkBody(piece); err != nil {
			return err
		}
		if _, err := c.eom.body.Write(piece); err != nil {
			return &bodyWriteError{err}
		}
		left -= len(piece)
	}
	return nil
}

// checkBody refuses a NUL byte in a replacement body: smtpd would cut the
// line there.
func checkBody(b []byte) error {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return fmt.Errorf("%w: NUL byte in the replacement body: %s", ErrProtocol, quoteSome(b[max(0, i-16):]))
	}
	return nil
}

// bodyWriteError is the caller's writer failing (the gateway's spill
// file), not the milter; End fails all the same.
type bodyWriteError struct{ err error }

func (e *bodyWriteError) Error() string { return "writing the replacement body: " + e.err.Error() }
func (e *bodyWriteError) Unwrap() error { return e.err }

// quiet fails when the milter has sent anything that no command asked
// for: a second reply to the last command, or bytes out of turn, which
// would otherwise be taken for the answer to the next command. Postfix's
// milter8.c checks the bytes inside a reply packet (a reply "followed by
// data bytes" is a protocol error) but not between replies; this check
// goes one step further, for one recv(2) with MSG_PEEK per command. Call it
// before each command is written. conn's own fake packets are not the milter's:
// they are consumed before any command is sent.
func (c *conn) quiet() error {
	if n := c.r.Buffered(); n > 0 {
		b, _ := c.r.Peek(min(n, 64))
		return outOfTurn(b)
	}
	if c.sock == nil {
		return nil
	}
	if c.peekSocket == nil {
		// Made once: a closure per command would be an allocation per command.
		c.peekSocket = func(fd uintptr) {
			// recv(2) with MSG_PEEK|MSG_DONTWAIT, straight: syscall.Recvfrom
			// allocates a socket address per call.
			n, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.peeked[0])), uintptr(len(c.peeked)),
				syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
			c.npeeked = int(n)
			if errno != 0 {
				c.npeeked = 0
			}
		}
	}
	c.npeeked = 0
	if err := c.sock.Control(c.peekSocket); err != nil || c.npeeked <= 0 {
		return nil // nothing waiting (EAGAIN), the peer closed or the socket is gone: the write or read reports those
	}
	return outOfTurn(c.peeked[:c.npeeked])
}

// outOfTurn is quiet's error, with the first bytes the milter sent.
func outOfTurn(b []byte) error {
	return fmt.Errorf("%w: the milter sent bytes no command asked for (a second reply, or data out of turn): %s", ErrProtocol, quoteSome(b))
}

// readRaw and writeRaw are the socket's reads and writes, where the trace
// sees the packets as they are on the wire.
func (c *conn) readRaw(p []byte) (int, error) {
	if c.raw != nil {
		_ = c.raw.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpQuickAck, 1)
		})
	}
	n, err := c.Conn.Read(p)
	if c.trace != nil && n > 0 {
		c.trace.read(p[:n])
	}
	return n, err
}

func (c *conn) writeRaw(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.trace != nil && n > 0 {
		c.trace.wrote(p[:n])
	}
	return n, err
}

// tcpQuickAck is TCP_QUICKACK from linux/tcp.h; the syscall package does not name it.
const tcpQuickAck = 0xc

// Close sends what is still buffered (QUIT, ABORT) before closing.
func (c *conn) Close() error {
	ferr := c.flush()
	cerr := c.Conn.Close()
	if ferr != nil && !errors.Is(ferr, net.ErrClosed) {
		return ferr
	}
	return cerr
}

// completeSymlists reads the milter's negotiation answer (parseOptneg)
// and hands go-milter, in its place, the same answer with a macro list
// for every stage: the milter's own for the stages it named, the
// configured one (Options.Macros) for the others. Postfix and Sendmail
// replace only the stages a milter asks for; go-milter would leave every
// other stage without macros. What
// of the milter's lists is ignored is logged here, each as an escaped
// field, so go-milter, which would write the milter's bytes into its own
// warning through a process-wide hook, finds nothing to warn about.
func (c *conn) completeSymlists() error {
	c.negotiating = false
	hdr, err := c.r.Peek(4)
	if err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr)
	if n == 0 || n > c.maxPacket {
		return nil // a bad length, which Read refuses at once
	}
	if hdr, err = c.r.Peek(5); err != nil {
		return err
	}
	if hdr[4] != replyOptneg {
		return nil // not a negotiation answer: go-milter refuses it
	}
	pkt := make([]byte, 4+n)
	if _, err := io.ReadFull(c.r, pkt); err != nil {
		return err
	}
	answer, err := parseOptneg(pkt[5:])
	if err != nil {
		c.fake = append(c.fake, pkt...) // too short: go-milter refuses it
		return nil
	}
	for _, p := range answer.problems() {
		c.log.Warn("milter negotiation", zap.String("problem", p))
	}
	lists := answer.perStage(c.symlists)
	c.fake = append(c.fake, answer.encode(lists)...)
	return nil
}
