package gateway

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/filter-milter/filter-milter/milter"
)

// stuckMilter is a raw milter that negotiates, continues CONNECT and
// HELO, and does not answer MAIL until the test releases it (then it
// rejects): it reads on, and reports when the MTA closes the connection.
type stuckMilter struct {
	spec    string
	atMail  chan struct{} // closed when MAIL came
	closed  chan struct{} // closed when the MTA closed the connection
	release chan struct{} // closed by the test: MAIL gets SMFIR_REJECT
}

func startStuckMilter(t *testing.T) *stuckMilter {
	t.Helper()
	dir, err := os.MkdirTemp("", "fm-stuck-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "m.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	m := &stuckMilter{spec: "unix:" + path, atMail: make(chan struct{}), closed: make(chan struct{}), release: make(chan struct{})}
	served := make(chan struct{})
	var conn net.Conn
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		conn = c
		m.serve(c)
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		select {
		case <-m.closed:
		default:
			if conn != nil {
				_ = conn.Close()
			}
		}
		<-served
		_ = os.RemoveAll(dir)
	})
	return m
}

func (m *stuckMilter) serve(c net.Conn) {
	defer close(m.closed)
	reply := func(cmd byte, data ...byte) {
		p := make([]byte, 5, 5+len(data))
		binary.BigEndian.PutUint32(p, uint32(1+len(data)))
		p[4] = cmd
		_, _ = c.Write(append(p, data...))
	}
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return // the MTA closed the connection
		}
		pkt := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(c, pkt); err != nil || len(pkt) == 0 {
			return
		}
		switch pkt[0] {
		case 'O': // version 6, no actions, every stage with a reply
			reply('O', 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0)
		case 'C', 'H':
			reply('c')
		case 'M':
			close(m.atMail)
			go func() {
				select {
				case <-m.release:
					reply('r')
				case <-m.closed:
				}
			}()
		}
	}
}

// waitClosed fails unless the MTA closes the milter connection within
// d, which the tests keep far below the milter command timeout.
func (m *stuckMilter) waitClosed(t *testing.T, d time.Duration, why string) {
	t.Helper()
	select {
	case <-m.closed:
	case <-time.After(d):
		t.Fatalf("the milter connection is still open %v after %s", d, why)
	}
}

// A session stuck in a milter call that will not return for a minute (the
// command timeout) must still end at once when smtpd is done with it.
func startStuck(t *testing.T, logs zapcore.Core) (*pipe, *stuckMilter) {
	t.Helper()
	m := startStuckMilter(t)
	opts := milter.DefaultOptions
	opts.ConnectTimeout, opts.CommandTimeout, opts.ContentTimeout = 2*time.Second, time.Minute, time.Minute
	p := startGatewayWith(t, Tempfail, opts, zap.New(logs), m.spec)
	return p, m
}

func (p *pipe) toMail(m *stuckMilter) {
	p.t.Helper()
	p.send(rep("link-connect", "localhost", "pass", "127.0.0.1:47092", "127.0.0.1:2525"), req("connect", "localhost|127.0.0.1"))
	p.expect(result("proceed"))
	p.send(rep("protocol-client", "ehlo client.example"), req("ehlo", "client.example"))
	p.expect(result("proceed"))
	p.send(rep("protocol-client", "MAIL FROM:<a@test.example>"), req("mail-from", "a@test.example"))
	select {
	case <-m.atMail:
	case <-time.After(5 * time.Second):
		p.t.Fatal("the milter never got MAIL")
	}
}

func TestLinkDisconnectInterruptsAStuckMilter(t *testing.T) {
	logs, seen := observer.New(zap.DebugLevel)
	p, m := startStuck(t, logs)
	p.handshake()
	p.toMail(m)
	p.send(rep("link-disconnect"))
	m.waitClosed(t, 5*time.Second, "link-disconnect")
	p.s.Abandon() // smtpd is done with it: an answer to MAIL would be dropped
	p.waitSessions(0)
	if n := seen.FilterMessage("milter failed; applying the default action").Len(); n != 0 {
		t.Errorf("the interrupted call was logged as a milter failure %d times", n)
	}
	if n := seen.FilterMessage("milter call interrupted: the session is gone").FilterLevelExact(zap.DebugLevel).Len(); n != 1 {
		t.Errorf("%d debug lines for the interrupted call, want 1", n)
	}
}

// A session waiting on a milter is waiting for an answer smtpd is
// waiting for: smtpd is silent because of the gateway, and the reaper
// must not take that silence for a lost session, however long the call
// takes within the milter's timeouts (end of message may take up to
// -eom-timeout, twice smtpd's default session timeout). Reaped, the
// session would answer nothing, and smtpd's later lines for it would
// start a fresh session that proceeds.
func TestReapingLeavesASessionWaitingOnAMilter(t *testing.T) {
	logs, _ := observer.New(zap.DebugLevel)
	p, m := startStuck(t, logs)
	p.handshake()
	p.toMail(m)
	// The reaper's check, as it would run long after the session timeout
	// (the gateway's smtp-session-timeout is smtpd's 300 s here).
	p.g.reap(time.Now().Add(time.Hour))
	select {
	case <-m.closed:
		t.Fatal("the reaper closed the milter connection of a session waiting on it")
	default:
	}
	close(m.release)
	p.expect(result("reject|550 5.7.1 Command rejected"))
	p.finish()
}

func TestShutdownInterruptsAStuckMilter(t *testing.T) {
	logs, _ := observer.New(zap.DebugLevel)
	p, m := startStuck(t, logs)
	p.g.cfg.Load().ShutdownTimeout = 100 * time.Millisecond
	p.handshake()
	p.toMail(m)
	p.s.Abandon()
	_ = p.in.Close() // smtpd is gone
	m.waitClosed(t, 5*time.Second, "shutdown")
	p.waitSessions(0)
}
