package milter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrPacketTooLarge is returned when a milter announces a packet longer than
// the configured limit. The length is checked before anything is allocated,
// so a broken or hostile milter cannot make the gateway allocate gigabytes
// (go-milter itself accepts up to 512 MiB and panics on a zero length).
var ErrPacketTooLarge = errors.New("milter packet length out of range")

// conn is the net.Conn that go-milter talks through. It does three things
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
//
// On TCP it also re-arms TCP_QUICKACK before each read: libmilter writes each
// end-of-message modification as its own small packet, and without quick
// ACKs the second one waits ~40 ms for the delayed ACK (shared/docs/peers.md).
type conn struct {
	net.Conn
	r                     *bufio.Reader
	w                     *bufio.Writer
	timeout               atomic.Int64 // nanoseconds; the deadline for the current stage
	readArmed, writeArmed time.Time    // the deadlines last set on the socket (see arm)
	maxPacket             uint32
	remaining             uint32 // bytes left of the packet go-milter is reading
	raw                   syscall.RawConn

	// An empty body is sent as no BODY packet at all (Postfix and
	// Sendmail; opendkim drops the connection on an empty one), but
	// go-milter's state machine insists on a body event before end of
	// message. When armed, conn swallows the empty BODY packet and, unless
	// the milter negotiated no reply to bodies, hands go-milter a CONTINUE.
	swallowEmptyBody bool
	fakeReply        bool
	fake             []byte

	// defaults are the macro lists per stage; set until negotiation has
	// been read (see completeSymlists).
	defaults [][]string
}

var emptyBody = []byte{0, 0, 0, 1, 'B'}

// skipEmptyBody arms the swallowing of the next empty BODY packet.
func (c *conn) skipEmptyBody(on, reply bool) { c.swallowEmptyBody, c.fakeReply = on, reply }

func newConn(c net.Conn, timeout time.Duration, maxPacket uint32) *conn {
	mc := &conn{Conn: c, maxPacket: maxPacket}
	mc.r = bufio.NewReaderSize(readerFunc(mc.readRaw), 4<<10)
	mc.w = bufio.NewWriterSize(c, 4<<10) // body chunks bigger than this go straight to the socket
	mc.timeout.Store(int64(timeout))
	if tc, ok := c.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			mc.raw = raw
		}
	}
	return mc
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

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
func (c *conn) arm(setDeadline func(time.Time) error, armed *time.Time) error {
	d := time.Duration(c.timeout.Load())
	earliest := time.Now().Add(d)
	if !armed.Before(earliest) && armed.Before(earliest.Add(d/8)) {
		return nil
	}
	*armed = earliest.Add(d / 8)
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
// next 4 bytes it asks for are always a length that Read can check first.
func (c *conn) Read(p []byte) (int, error) {
	if len(c.fake) > 0 {
		n := copy(p, c.fake)
		c.fake = c.fake[n:]
		return n, nil
	}
	if err := c.flush(); err != nil {
		return 0, err
	}
	if c.defaults != nil && c.remaining == 0 {
		if err := c.completeSymlists(); err != nil {
			return 0, err
		}
		if len(c.fake) > 0 {
			return c.Read(p)
		}
	}
	if c.remaining == 0 {
		hdr, err := c.r.Peek(4)
		if err != nil {
			return 0, err
		}
		n := binary.BigEndian.Uint32(hdr)
		if n == 0 || n > c.maxPacket {
			return 0, fmt.Errorf("%w: %d bytes announced, limit %d", ErrPacketTooLarge, n, c.maxPacket)
		}
		c.remaining = 4 + n
	}
	if uint32(len(p)) > c.remaining {
		p = p[:c.remaining]
	}
	n, err := c.r.Read(p)
	c.remaining -= uint32(n)
	return n, err
}

func (c *conn) readRaw(p []byte) (int, error) {
	if c.raw != nil {
		_ = c.raw.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpQuickAck, 1)
		})
	}
	return c.Conn.Read(p)
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

// completeSymlists reads the milter's negotiation reply and, when it asks
// for its own macro lists for some stages, adds the default lists for the
// stages it did not name before go-milter sees the reply. Postfix and
// Sendmail replace only the stages a milter asks for; go-milter would
// leave every other stage without macros.
func (c *conn) completeSymlists() error {
	defaults := c.defaults
	c.defaults = nil
	hdr, err := c.r.Peek(4)
	if err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr)
	if n <= 13 || n > c.maxPacket {
		return nil // no symlists, or a bad length that Read refuses at once
	}
	if hdr, err = c.r.Peek(5); err != nil {
		return err
	}
	if hdr[4] != 'O' {
		return nil // not a negotiation reply: left to go-milter
	}
	pkt := make([]byte, 4+n)
	if _, err := io.ReadFull(c.r, pkt); err != nil {
		return err
	}
	asked := map[uint32]bool{}
	for rest := pkt[17:]; len(rest) >= 5; {
		stage := binary.BigEndian.Uint32(rest)
		end := bytes.IndexByte(rest[4:], 0)
		if end < 0 {
			break
		}
		asked[stage] = true
		rest = rest[4+end+1:]
	}
	for stage, names := range defaults {
		if asked[uint32(stage)] || len(names) == 0 {
			continue
		}
		pkt = binary.BigEndian.AppendUint32(pkt, uint32(stage))
		pkt = append(append(pkt, strings.Join(names, " ")...), 0)
	}
	binary.BigEndian.PutUint32(pkt, uint32(len(pkt)-4))
	c.fake = append(c.fake, pkt...)
	return nil
}
