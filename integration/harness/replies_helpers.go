package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ActionsMilter is the path of testdata/milters/actions_milter.py, the
// milter that answers every way and makes every modification, driven by
// the message (see its docstring).
func ActionsMilter(tb TB) string {
	tb.Helper()
	return filepath.Join(RepoRoot(tb), "testdata", "milters", "actions_milter.py")
}

// ---------------------------------------------------------------------------
// A raw SMTP client, for what swaks cannot show: the exact reply lines
// (CRLF checked), several transactions in one session, commands after a
// refused EHLO, and whether the server closed the connection.

// SMTPReply is one server reply.
type SMTPReply struct {
	Lines []string // each line without its CRLF, "250-..." and "250 ..." included
	Bare  bool     // a line ended in a bare LF instead of CRLF
	Err   error    // reading failed (EOF: the server had closed the connection)
}

// String is the reply's lines joined with "\n", or the error.
func (r SMTPReply) String() string {
	if r.Err != nil && len(r.Lines) == 0 {
		return "(" + r.Err.Error() + ")"
	}
	return strings.Join(r.Lines, "\n")
}

// Code is the reply code, 0 when there is none.
func (r SMTPReply) Code() int {
	if len(r.Lines) == 0 || len(r.Lines[0]) < 3 {
		return 0
	}
	c, _ := strconv.Atoi(r.Lines[0][:3])
	return c
}

// SMTPConn is a raw SMTP client connection on 127.0.0.1.
type SMTPConn struct {
	c          net.Conn
	r          *bufio.Reader
	Transcript strings.Builder // "C: " and "S: " lines, for logs
	Greeting   SMTPReply
}

// DialSMTP connects to 127.0.0.1:port and reads the greeting, which must
// be a 220.
func DialSMTP(tb TB, port int) *SMTPConn {
	tb.Helper()
	sc := DialSMTPFrom(tb, port, "")
	if sc.Greeting.Code() != 220 {
		tb.Fatalf("harness: greeting from 127.0.0.1:%d: %s", port, sc.Greeting)
	}
	return sc
}

// DialSMTPFrom connects to 127.0.0.1:port from the local address localIP
// (any 127.0.0.0/8 address works on Linux; "" lets the kernel choose) and
// reads the greeting, whatever it is.
func DialSMTPFrom(tb TB, port int, localIP string) *SMTPConn {
	tb.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if localIP != "" {
		ip := net.ParseIP(localIP)
		if ip == nil {
			tb.Fatalf("harness: bad local address %q", localIP)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	c, err := d.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		tb.Fatalf("harness: connect to 127.0.0.1:%d from %q: %v", port, localIP, err)
	}
	sc := &SMTPConn{c: c, r: bufio.NewReader(c)}
	tb.Cleanup(func() { c.Close() })
	sc.Greeting = sc.ReadReply()
	return sc
}

// ReadReply reads one reply, multi-line included (30 s at most).
func (sc *SMTPConn) ReadReply() SMTPReply {
	var r SMTPReply
	_ = sc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		line, err := sc.r.ReadString('\n')
		if err != nil {
			if line != "" {
				r.Lines = append(r.Lines, line)
				fmt.Fprintf(&sc.Transcript, "S: %q (then %v)\n", line, err)
			} else {
				fmt.Fprintf(&sc.Transcript, "S: (%v)\n", err)
			}
			r.Err = err
			return r
		}
		body, ok := strings.CutSuffix(line, "\r\n")
		if !ok {
			body = strings.TrimSuffix(line, "\n")
			r.Bare = true
		}
		r.Lines = append(r.Lines, body)
		fmt.Fprintf(&sc.Transcript, "S: %s\n", body)
		if len(body) < 4 || body[3] != '-' {
			return r
		}
	}
}

// Command sends one command line (CRLF added) and reads the reply.
func (sc *SMTPConn) Command(line string) SMTPReply {
	fmt.Fprintf(&sc.Transcript, "C: %s\n", line)
	_ = sc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(sc.c, line+"\r\n"); err != nil {
		fmt.Fprintf(&sc.Transcript, "C: (write: %v)\n", err)
		return SMTPReply{Err: err}
	}
	return sc.ReadReply()
}

// SendData sends a message after a 354: its wire form (WireData: CRLF,
// dot-stuffed) and the final ".", and reads the reply.
func (sc *SMTPConn) SendData(msg []byte) SMTPReply {
	wire := WireData(msg)
	fmt.Fprintf(&sc.Transcript, "C: (%d bytes of message data and \".\")\n", len(wire)+2)
	_ = sc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := sc.c.Write(append(wire, '\r', '\n')); err != nil {
		fmt.Fprintf(&sc.Transcript, "C: (write: %v)\n", err)
		return SMTPReply{Err: err}
	}
	return sc.ReadReply()
}

// ClosedByServer reports whether the server closes the connection within
// wait without sending anything more: a read then ends in EOF (or a reset).
// Anything the server still sends is returned as extra.
func (sc *SMTPConn) ClosedByServer(wait time.Duration) (closed bool, extra string) {
	_ = sc.c.SetReadDeadline(time.Now().Add(wait))
	b, err := io.ReadAll(sc.r)
	if len(b) > 0 {
		fmt.Fprintf(&sc.Transcript, "S: %q\n", b)
	}
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		fmt.Fprintf(&sc.Transcript, "S: (still open after %v)\n", wait)
		return false, string(b)
	}
	fmt.Fprintf(&sc.Transcript, "S: (connection closed: %v)\n", err)
	return true, string(b)
}

// Close closes the connection.
func (sc *SMTPConn) Close() { sc.c.Close() }
