package milter

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// scriptConn is a milter that answers negotiation and then says whatever
// the fuzzer wants: it reads from a fixed script and ignores what it is
// sent. Each Read returns at most the rest of one packet, as a milter
// that answers each command in turn would: the client would otherwise
// find the next answers already waiting before each command, and refuse
// them all as bytes out of turn.
type scriptConn struct {
	r    *bytes.Reader
	left int // bytes left of the packet being read
}

func (c *scriptConn) Read(p []byte) (int, error) {
	if c.left == 0 {
		c.left = c.r.Len()
		var hdr [4]byte
		if n, _ := c.r.ReadAt(hdr[:], c.r.Size()-int64(c.r.Len())); n == 4 {
			c.left = min(c.left, 4+int(binary.BigEndian.Uint32(hdr[:])))
		}
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= n
	return n, err
}

func (c *scriptConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.UnixAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.UnixAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

func packet(code byte, data ...byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(data)+1)), append([]byte{code}, data...)...)
}

// FuzzReplies feeds arbitrary milter replies to a whole transaction: the
// client must turn every one into a verdict, a modification or an error,
// never a panic, and must not allocate what an absurd length announces.
func FuzzReplies(f *testing.F) {
	cont := packet('c')
	f.Add(bytes.Repeat(cont, 10), uint32(0x1ff), uint32(0))
	f.Add(append(bytes.Repeat(cont, 8), append(packet('h', []byte("X-A\x00v\x00")...), packet('a')...)...), uint32(0x1ff), uint32(0))
	f.Add(append(bytes.Repeat(cont, 8), packet('y', []byte("550 5.7.1 no\x00")...)...), uint32(0x1ff), uint32(0x400))
	f.Add(append(packet('s'), packet('p')...), uint32(0x1ff), uint32(0x400))
	f.Add([]byte{0, 0, 0, 0}, uint32(0), uint32(0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 'c'}, uint32(0), uint32(0))
	f.Add(append(bytes.Repeat(cont, 8), packet('m', []byte{0, 0, 0, 1, 'S', 0, 0}...)...), uint32(0x1ff), uint32(0))
	f.Fuzz(func(t *testing.T, replies []byte, actions, protocol uint32) {
		optneg := make([]byte, 12)
		binary.BigEndian.PutUint32(optneg, 6)
		binary.BigEndian.PutUint32(optneg[4:], actions&0x1ff)
		binary.BigEndian.PutUint32(optneg[8:], protocol&0x1fffff)
		script := append(packet('O', optneg...), replies...)
		opts := DefaultOptions
		opts.MaxPacket = 1 << 16
		c := NewClient("fuzz", Spec{Network: "unix", Address: "fuzz"}, opts, nil)
		s, err := c.openOn(&scriptConn{r: bytes.NewReader(script)}, NewMacros())
		if err != nil {
			return
		}
		steps := []func() error{
			func() error { _, err := s.Connect("h", FamilyInet, 25, "192.0.2.1"); return err },
			func() error { _, err := s.Helo("h"); return err },
			func() error { _, err := s.Mail("a@b", []string{"SIZE=1"}); return err },
			func() error { _, err := s.Rcpt("c@d", nil); return err },
			func() error { _, err := s.Data(); return err },
			func() error { _, err := s.Header("Subject", " x"); return err },
			func() error { _, err := s.EndOfHeaders(); return err },
			func() error { _, err := s.Body([]byte("body\r\n")); return err },
			func() error {
				var body countingWriter
				_, mods, err := s.End(&body)
				for _, m := range mods {
					if m.Body != nil {
						t.Errorf("a streamed replacement body came back in the modifications (%d bytes)", len(m.Body))
					}
				}
				return err
			},
		}
		for _, step := range steps {
			if err := step(); err != nil {
				break
			}
		}
		_ = s.Close()
	})
}

// countingWriter counts what is written to it and keeps nothing.
type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }
