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
	"github.com/filter-milter/filter-milter/smtpdplay"
)

// stuckMilter is a raw milter that negotiates, continues CONNECT and
// HELO, and never answers MAIL: it reads on, and reports when the MTA
// closes the connection.
type stuckMilter struct {
	spec   string
	atMail chan struct{} // closed when MAIL came
	closed chan struct{} // closed when the MTA closed the connection
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
	m := &stuckMilter{spec: "unix:" + path, atMail: make(chan struct{}), closed: make(chan struct{})}
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
			close(m.atMail) // and no answer, ever
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

func TestReapingInterruptsAStuckMilter(t *testing.T) {
	logs, _ := observer.New(zap.DebugLevel)
	p, m := startStuck(t, logs)
	p.handshakeWith(smtpdplay.Config{SmtpdVersion: "7.8.0", SessionTimeout: 1})
	p.toMail(m)
	// smtpd says nothing more: the session is reaped after its 1 s
	// timeout, long before the milter's one-minute command timeout.
	m.waitClosed(t, 10*time.Second, "the session timeout")
	p.waitSessions(0)
	p.s.Abandon() // smtpd timed the session out: an answer to MAIL would be dropped
}

func TestShutdownInterruptsAStuckMilter(t *testing.T) {
	logs, _ := observer.New(zap.DebugLevel)
	p, m := startStuck(t, logs)
	p.g.cfg.ShutdownTimeout = 100 * time.Millisecond
	p.handshake()
	p.toMail(m)
	p.s.Abandon()
	_ = p.in.Close() // smtpd is gone
	m.waitClosed(t, 5*time.Second, "shutdown")
	p.waitSessions(0)
}
