package miltertest

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// StartNull serves a minimal null milter for benchmarks on a unix socket: it
// negotiates version 6 with the given actions and no protocol flags (so
// the gateway sends every stage, headers and body included), answers
// continue to every command and accept at end of message, never asks for a
// change, and allocates nothing per connection or packet once warm.
func StartNull(tb testing.TB, actions uint32) string {
	tb.Helper()
	return startNull(tb, actions, 0)
}

// StartNullNoHeaderReply is StartNull for a null milter that also
// negotiates SMFIP_NR_HDR: it sends no reply to a header, so the MTA sends
// the header fields one after the other without a round trip each.
func StartNullNoHeaderReply(tb testing.TB, actions uint32) string {
	tb.Helper()
	return startNull(tb, actions, protoNoHeaderReply)
}

// StartNullNoHeaders is StartNull for a null milter that negotiates
// SMFIP_NOHDRS: the MTA sends it no header field at all.
func StartNullNoHeaders(tb testing.TB, actions uint32) string {
	tb.Helper()
	return startNull(tb, actions, protoNoHeaders)
}

const (
	protoNoHeaderReply = 0x80 // SMFIP_NR_HDR
	protoNoHeaders     = 0x20 // SMFIP_NOHDRS
)

func startNull(tb testing.TB, actions, protocol uint32) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "fm-bench-")
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(dir, "null.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	optneg := []byte{0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(optneg[9:], actions)
	binary.BigEndian.PutUint32(optneg[13:], protocol)
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				serveNull(c, optneg, protocol&protoNoHeaderReply != 0)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				_ = c.Close()
			}()
		}
	}()
	tb.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
		_ = os.RemoveAll(dir)
	})
	return "unix:" + path
}

type nullBufs struct {
	r   *bufio.Reader
	w   *bufio.Writer
	buf []byte
	hdr [4]byte // here, not on the stack: io.ReadFull would move it to the heap for every packet
}

var nullPool = sync.Pool{New: func() any {
	return &nullBufs{r: bufio.NewReaderSize(nil, 64<<10), w: bufio.NewWriterSize(nil, 4<<10), buf: make([]byte, 0, 64<<10)}
}}

func serveNull(c net.Conn, optneg []byte, noHeaderReply bool) {
	bufs := nullPool.Get().(*nullBufs)
	defer nullPool.Put(bufs)
	r, w := bufs.r, bufs.w
	r.Reset(c)
	w.Reset(c)
	reply := [5]byte{0, 0, 0, 1, 'c'}
	for {
		if _, err := io.ReadFull(r, bufs.hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(bufs.hdr[:])
		if n == 0 || n > 64<<20 {
			return
		}
		if cap(bufs.buf) < int(n) {
			bufs.buf = make([]byte, n)
		}
		buf := bufs.buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		switch buf[0] {
		case 'O': // SMFIC_OPTNEG
			_, _ = w.Write(optneg)
		case 'D', 'A': // SMFIC_MACRO, SMFIC_ABORT: no reply
		case 'Q': // SMFIC_QUIT
			_ = w.Flush()
			return
		case 'L': // SMFIC_HEADER
			if !noHeaderReply {
				reply[4] = 'c'
				_, _ = w.Write(reply[:])
			}
		case 'E': // SMFIC_BODYEOB: accept
			reply[4] = 'a'
			_, _ = w.Write(reply[:])
		default: // CONNECT, HELO, MAIL, RCPT, DATA, HEADER, EOH, BODY, UNKNOWN: continue
			reply[4] = 'c'
			_, _ = w.Write(reply[:])
		}
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}
