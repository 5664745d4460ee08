package milter_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/milter"
)

// Actions a test milter negotiates (SMFIF_*, libmilter's mfdef.h).
const (
	smfifAddHdrs uint32 = 0x01
	smfifChgBody uint32 = 0x02
)

// failsafe bounds how long a test waits for a call that the old code
// would never return from; it is a test failure, never the expected path.
const failsafe = 20 * time.Second

// answer is what a scripted milter writes in reply to one command (nil:
// nothing). All of it is written in one write, so that what follows a
// reply is on the socket before the client can send its next command.
type answer func(cmd byte, data []byte) []byte

// scriptedMilter listens on a unix socket, negotiates the given actions
// and protocol flags, and answers each command with answer until the
// client closes. It returns the spec to dial; everything it starts is
// stopped when the test ends.
func scriptedMilter(t *testing.T, actions, protocol uint32, answer answer) string {
	t.Helper()
	return unixMilter(t, func(c net.Conn) {
		if !negotiate(c, actions, protocol) {
			return
		}
		for {
			p, err := readPacket(c)
			if err != nil || len(p) == 0 {
				return
			}
			if out := answer(p[0], p[1:]); len(out) > 0 {
				if _, err := c.Write(out); err != nil {
					return
				}
			}
		}
	})
}

// unixMilter listens on a unix socket in a directory of its own, serves
// the first connection with serve and returns the spec to dial. The
// listener, the connection and the directory go when the test ends.
func unixMilter(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mt") // short: a socket path has ~108 bytes
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		_ = os.RemoveAll(dir)
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	return "unix:" + path
}

// negotiate reads the client's SMFIC_OPTNEG and answers with version 6,
// actions and protocol flags.
func negotiate(c net.Conn, actions, protocol uint32) bool {
	if _, err := readPacket(c); err != nil {
		return false
	}
	optneg := []byte{'O'}
	optneg = binary.BigEndian.AppendUint32(optneg, 6)
	optneg = binary.BigEndian.AppendUint32(optneg, actions)
	optneg = binary.BigEndian.AppendUint32(optneg, protocol)
	writePacket(c, optneg)
	return true
}

// pkt is one milter packet on the wire.
func pkt(code byte, data ...string) []byte {
	payload := []byte{code}
	for _, d := range data {
		payload = append(payload, d...)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(payload))), payload...)
}

// continueUntilEOM answers CONTINUE to every command that expects a reply
// and eom(data) to end of message.
func continueUntilEOM(eom func() []byte) answer {
	return func(cmd byte, _ []byte) []byte {
		switch cmd {
		case 'D', 'A', 'Q':
			return nil
		case 'E':
			return eom()
		}
		return pkt('c')
	}
}

// toEndOfMessage runs a transaction up to its body.
func toEndOfMessage(t *testing.T, s *milter.Session) {
	t.Helper()
	ok := checker(t)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	ok(s.Helo("h"))
	ok(s.Mail("a@b", nil))
	ok(s.Rcpt("c@d", nil))
	ok(s.Data())
	ok(s.Header("Subject", " x"))
	ok(s.EndOfHeaders())
	ok(s.Body([]byte("body\r\n")))
}

type endResult struct {
	v    milter.Verdict
	mods []milter.Modification
	err  error
}

// endWithFailsafe runs End in a goroutine and fails the test if it has
// not returned within failsafe (then interrupts it).
func endWithFailsafe(t *testing.T, s *milter.Session, body interface{ Write([]byte) (int, error) }) endResult {
	t.Helper()
	res := make(chan endResult, 1)
	go func() {
		var r endResult
		if body == nil {
			r.v, r.mods, r.err = s.End(nil)
		} else {
			r.v, r.mods, r.err = s.End(body)
		}
		res <- r
	}()
	select {
	case r := <-res:
		return r
	case <-time.After(failsafe):
		s.Interrupt()
		<-res
		t.Fatalf("End did not return within %v", failsafe)
	}
	return endResult{}
}

// mustFailWith checks that err wraps want and has no raw control bytes
// from the milter in its text.
func mustFailWith(t *testing.T, err, want error, mention string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	if strings.ContainsAny(err.Error(), "\x00\r\n") {
		t.Errorf("error %q has the milter's raw bytes in it", err)
	}
	if !strings.Contains(err.Error(), mention) {
		t.Errorf("error %q should say %q", err, mention)
	}
}

func TestProgressAtMailIsAProtocolError(t *testing.T) {
	spec := scriptedMilter(t, 0, 0, func(cmd byte, _ []byte) []byte {
		switch cmd {
		case 'D':
			return nil
		case 'M':
			return append(pkt('p'), pkt('c')...) // libmilter cannot send this
		}
		return pkt('c')
	})
	ok := checker(t)
	s := open(t, spec, milter.DefaultOptions, nil)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	ok(s.Helo("h"))
	_, err := s.Mail("a@b", nil)
	mustFailWith(t, err, milter.ErrProtocol, "PROGRESS")
}

func TestProgressThenSilenceEndsAtTheEOMTimeout(t *testing.T) {
	spec := scriptedMilter(t, 0, 0, func(cmd byte, _ []byte) []byte {
		switch cmd {
		case 'D', 'A', 'Q':
			return nil
		case 'E':
			return bytes.Repeat(pkt('p'), 1000)
		}
		return pkt('c')
	})
	opts := milter.DefaultOptions
	opts.ContentTimeout = time.Minute // PROGRESS restarts it: never reached
	opts.EOMTimeout = 300 * time.Millisecond
	s := open(t, spec, opts, nil)
	toEndOfMessage(t, s)
	// The milter sends 1000 PROGRESS packets and then nothing: the
	// ContentTimeout restarted by the last one is a minute away, so only
	// EOMTimeout can end this within the failsafe.
	r := endWithFailsafe(t, s, nil)
	mustFailWith(t, r.err, milter.ErrEOMTimeout, "end of message")
}

func TestProgressFloodEndsAtTheEOMTimeout(t *testing.T) {
	// A milter that never stops sending PROGRESS: the per-packet timeout
	// is restarted all the time, the total one is not.
	sp := floodMilter(t)
	opts := milter.DefaultOptions
	opts.ContentTimeout = time.Minute
	opts.EOMTimeout = 300 * time.Millisecond
	s := open(t, sp, opts, nil)
	toEndOfMessage(t, s)
	r := endWithFailsafe(t, s, nil)
	mustFailWith(t, r.err, milter.ErrEOMTimeout, "end of message")
}

// floodMilter continues every command and answers end of message with
// PROGRESS packets until the client goes away.
func floodMilter(t *testing.T) string {
	t.Helper()
	return unixMilter(t, func(c net.Conn) {
		if !negotiate(c, 0, 0) {
			return
		}
		for {
			p, err := readPacket(c)
			if err != nil {
				return
			}
			switch p[0] {
			case 'D', 'A', 'Q':
			case 'E':
				progress := bytes.Repeat(pkt('p'), 512)
				for {
					if _, err := c.Write(progress); err != nil {
						return // the client closed the session
					}
				}
			default:
				writePacket(c, []byte{'c'})
			}
		}
	})
}

func TestSilenceAtEndOfMessageIsTheContentTimeout(t *testing.T) {
	// The per-packet timeout still applies at end of message, and is not
	// reported as the end-of-message bound.
	spec := scriptedMilter(t, 0, 0, continueUntilEOM(func() []byte { return nil }))
	opts := milter.DefaultOptions
	opts.ContentTimeout = 200 * time.Millisecond
	opts.EOMTimeout = time.Minute
	s := open(t, spec, opts, nil)
	toEndOfMessage(t, s)
	r := endWithFailsafe(t, s, nil)
	var ne net.Error
	if !errors.As(r.err, &ne) || !ne.Timeout() || errors.Is(r.err, milter.ErrEOMTimeout) {
		t.Fatalf("err = %v, want the content timeout", r.err)
	}
}

func TestModificationCountOverBudget(t *testing.T) {
	// Four headers against a budget of three; the milter then waits for
	// ever: the client must stop at the fourth, not wait for the reply.
	spec := scriptedMilter(t, smfifAddHdrs, 0, continueUntilEOM(func() []byte {
		var out []byte
		for i := 0; i < 4; i++ {
			out = append(out, pkt('h', fmt.Sprintf("X-%d\x00v\x00", i))...)
		}
		return out
	}))
	opts := milter.DefaultOptions
	opts.MaxModifications = 3
	opts.ContentTimeout = failsafe / 2
	s := open(t, spec, opts, nil)
	toEndOfMessage(t, s)
	r := endWithFailsafe(t, s, nil)
	mustFailWith(t, r.err, milter.ErrOverBudget, "more than 3 modifications")
}

func TestModificationBytesOverBudget(t *testing.T) {
	spec := scriptedMilter(t, smfifAddHdrs, 0, continueUntilEOM(func() []byte {
		v := strings.Repeat("v", 600)
		return append(append(pkt('h', "X-A\x00"+v+"\x00"), pkt('h', "X-B\x00"+v+"\x00")...), pkt('a')...)
	}))
	opts := milter.DefaultOptions
	opts.MaxModificationBytes = 1000
	s := open(t, spec, opts, nil)
	toEndOfMessage(t, s)
	r := endWithFailsafe(t, s, nil)
	mustFailWith(t, r.err, milter.ErrOverBudget, "limit 1000")
}

func TestReplacementBodyOverBudgetIsRefusedBeforeItIsRead(t *testing.T) {
	// The milter announces a 40 MB body packet and sends none of it: the
	// announced length alone is over the budget.
	spec := scriptedMilter(t, smfifChgBody, 0, continueUntilEOM(func() []byte {
		return append(binary.BigEndian.AppendUint32(nil, 40<<20), 'b')
	}))
	opts := milter.DefaultOptions
	opts.MaxModificationBytes = 1 << 20
	opts.ContentTimeout = failsafe / 2
	s := open(t, spec, opts, nil)
	toEndOfMessage(t, s)
	r := endWithFailsafe(t, s, &bodyCounter{})
	mustFailWith(t, r.err, milter.ErrOverBudget, "limit 1048576")
}

// bodyCounter is the gateway's body store, reduced to what the tests
// check: how much was written, a running sum of it, and when it reached
// a size.
type bodyCounter struct {
	n, sum  int64
	at      int64
	reached chan struct{}
}

func (w *bodyCounter) Write(p []byte) (int, error) {
	for _, b := range p {
		w.sum = w.sum*31 + int64(b)
	}
	w.n += int64(len(p))
	if w.reached != nil && w.n == w.at {
		close(w.reached)
	}
	return len(p), nil
}

func TestReplacementBodyIsStreamedToTheWriter(t *testing.T) {
	const chunk, chunks = 65535, 512 // 32 MiB
	body := make([]byte, chunk)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	body[chunk-2], body[chunk-1] = '\r', '\n'
	w := &bodyCounter{at: chunk * chunks, reached: make(chan struct{})}
	sp, conn := handOverMilter(t, smfifAddHdrs|smfifChgBody)
	opts := milter.DefaultOptions
	s := open(t, sp, opts, nil)
	toEndOfMessage(t, s)
	milterDone := make(chan error, 1)
	go func() {
		c := <-conn
		write := func(b []byte) error { _, err := c.Write(b); return err }
		err := write(pkt('h', "X-Before\x001\x00"))
		for i := 0; i < chunks && err == nil; i++ {
			err = write(pkt('b', string(body)))
		}
		if err == nil {
			// The final reply goes out only once the whole body has
			// reached the writer: End cannot have waited for it.
			select {
			case <-w.reached:
			case <-time.After(failsafe):
				milterDone <- fmt.Errorf("the body did not reach the writer before the final reply")
				return
			}
			err = write(append(pkt('h', "X-After\x002\x00"), pkt('a')...))
		}
		milterDone <- err
	}()
	r := endWithFailsafe(t, s, w)
	if err := <-milterDone; err != nil {
		t.Fatal(err)
	}
	if r.err != nil || r.v.Kind != milter.Accept {
		t.Fatalf("End = %v, %v", r.v, r.err)
	}
	var want bodyCounter
	for i := 0; i < chunks; i++ {
		_, _ = want.Write(body)
	}
	if w.n != want.n || w.sum != want.sum {
		t.Errorf("writer got %d bytes (sum %x), want %d (sum %x)", w.n, w.sum, want.n, want.sum)
	}
	if len(r.mods) != 3 || r.mods[0].Name != "X-Before" || r.mods[1].Kind != milter.ReplaceBody || r.mods[2].Name != "X-After" {
		t.Fatalf("mods = %+v, want X-Before, one ReplaceBody, X-After", r.mods)
	}
	for _, m := range r.mods {
		if m.Body != nil {
			t.Errorf("a modification holds %d bytes of body: the body must only go to the writer", len(m.Body))
		}
	}
}

// handOverMilter negotiates the given actions and continues every command
// up to end of message, then hands the connection to the test (on the
// returned channel) to say what it likes.
func handOverMilter(t *testing.T, actions uint32) (string, <-chan net.Conn) {
	t.Helper()
	dir, err := os.MkdirTemp("", "mt")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 1)
	done := make(chan struct{})
	var accepted net.Conn
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		if accepted != nil {
			_ = accepted.Close()
		}
		_ = os.RemoveAll(dir)
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		accepted = c
		if _, err := readPacket(c); err != nil {
			return
		}
		optneg := []byte{'O', 0, 0, 0, 6}
		optneg = binary.BigEndian.AppendUint32(optneg, actions)
		writePacket(c, append(optneg, 0, 0, 0, 0))
		for {
			p, err := readPacket(c)
			if err != nil {
				return
			}
			switch p[0] {
			case 'D', 'A':
			case 'E':
				conns <- c
				return
			default:
				writePacket(c, []byte{'c'})
			}
		}
	}()
	return "unix:" + path, conns
}

func TestReplacementBodyWithoutWriterComesBackInChunks(t *testing.T) {
	spec := scriptedMilter(t, smfifChgBody, 0, continueUntilEOM(func() []byte {
		return append(append(pkt('b', "new "), pkt('b', "body\r\n")...), pkt('c')...)
	}))
	s := open(t, spec, milter.DefaultOptions, nil)
	toEndOfMessage(t, s)
	r := endWithFailsafe(t, s, nil)
	if r.err != nil {
		t.Fatal(r.err)
	}
	var got []byte
	for _, m := range r.mods {
		if m.Kind != milter.ReplaceBody {
			t.Errorf("unexpected %v", m.Kind)
		}
		got = append(got, m.Body...)
	}
	if string(got) != "new body\r\n" {
		t.Errorf("body chunks %q, want %q", got, "new body\r\n")
	}
}

func TestReplacementBodyWriterErrorFailsEnd(t *testing.T) {
	spec := scriptedMilter(t, smfifChgBody, 0, continueUntilEOM(func() []byte {
		return append(pkt('b', "new body\r\n"), pkt('c')...)
	}))
	s := open(t, spec, milter.DefaultOptions, nil)
	toEndOfMessage(t, s)
	diskFull := errors.New("no space left on device")
	r := endWithFailsafe(t, s, failingWriter{diskFull})
	if !errors.Is(r.err, diskFull) || errors.Is(r.err, milter.ErrProtocol) {
		t.Fatalf("err = %v, want the writer's error, not a protocol error", r.err)
	}
	if _, err := s.Mail("a@b", nil); err == nil {
		t.Error("the session must be broken after a failed end of message")
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestNULInReplacementBodyIsAProtocolError(t *testing.T) {
	for _, streamed := range []bool{true, false} {
		t.Run(fmt.Sprintf("streamed=%v", streamed), func(t *testing.T) {
			spec := scriptedMilter(t, smfifChgBody, 0, continueUntilEOM(func() []byte {
				return append(pkt('b', "line one\r\nline\x00two\r\n"), pkt('c')...)
			}))
			s := open(t, spec, milter.DefaultOptions, nil)
			toEndOfMessage(t, s)
			w := &bodyCounter{}
			var r endResult
			if streamed {
				r = endWithFailsafe(t, s, w)
			} else {
				r = endWithFailsafe(t, s, nil)
			}
			mustFailWith(t, r.err, milter.ErrProtocol, "NUL byte in the replacement body")
			if w.n != 0 {
				t.Errorf("%d bytes of a body with a NUL reached the writer", w.n)
			}
		})
	}
}

func TestNULInHeaderModificationIsAProtocolError(t *testing.T) {
	for name, mod := range map[string][]byte{
		"add value":    pkt('h', "X-A\x00bad\x00value\x00"),
		"insert name":  pkt('i', "\x00\x00\x00\x00X-\x00A\x00value\x00"),
		"change value": pkt('m', "\x00\x00\x00\x01Subject\x00a\x00b\x00"),
	} {
		t.Run(name, func(t *testing.T) {
			spec := scriptedMilter(t, 0x1ff, 0, continueUntilEOM(func() []byte {
				return append(mod, pkt('c')...)
			}))
			s := open(t, spec, milter.DefaultOptions, nil)
			toEndOfMessage(t, s)
			r := endWithFailsafe(t, s, nil)
			mustFailWith(t, r.err, milter.ErrProtocol, "NUL byte in the header name or value")
		})
	}
}

func TestModificationNotNegotiatedIsAProtocolError(t *testing.T) {
	for _, tc := range []struct {
		name    string
		actions uint32
		mod     []byte
		mention string
	}{
		{"add header with no actions", 0, pkt('h', "X-A\x00v\x00"), "SMFIR_ADDHEADER without SMFIF_ADDHDRS"},
		{"change header with no actions", 0, pkt('m', "\x00\x00\x00\x01X-A\x00v\x00"), "SMFIR_CHGHEADER without SMFIF_CHGHDRS"},
		{"body with add-header only", smfifAddHdrs, pkt('b', "new\r\n"), "SMFIR_REPLBODY without SMFIF_CHGBODY"},
		{"quarantine with add-header only", smfifAddHdrs, pkt('q', "why\x00"), "SMFIR_QUARANTINE without SMFIF_QUARANTINE"},
		{"rcpt with args without ADDRCPT_PAR", 0x04, pkt('2', "<x@y>\x00NOTIFY=NEVER\x00"), "SMFIR_ADDRCPT_PAR without SMFIF_ADDRCPT_PAR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := scriptedMilter(t, tc.actions, 0, continueUntilEOM(func() []byte {
				return append(tc.mod, pkt('c')...)
			}))
			s := open(t, spec, milter.DefaultOptions, nil)
			toEndOfMessage(t, s)
			r := endWithFailsafe(t, s, &bodyCounter{})
			mustFailWith(t, r.err, milter.ErrProtocol, tc.mention)
		})
	}
}

func TestModificationOutsideEndOfMessageIsAProtocolError(t *testing.T) {
	spec := scriptedMilter(t, smfifAddHdrs, 0, func(cmd byte, _ []byte) []byte {
		if cmd == 'D' {
			return nil
		}
		if cmd == 'H' {
			return append(pkt('h', "X-A\x00v\x00"), pkt('c')...)
		}
		return pkt('c')
	})
	ok := checker(t)
	s := open(t, spec, milter.DefaultOptions, nil)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	_, err := s.Helo("h")
	mustFailWith(t, err, milter.ErrProtocol, "SMFIR_ADDHEADER")
}

func TestUnknownReplyCodeIsQuoted(t *testing.T) {
	spec := scriptedMilter(t, 0, 0, func(cmd byte, _ []byte) []byte {
		return pkt('\n')
	})
	s := open(t, spec, milter.DefaultOptions, nil)
	_, err := s.Connect("h", milter.FamilyInet, 1, "192.0.2.1")
	mustFailWith(t, err, milter.ErrProtocol, `'\n'`)
}

func TestSecondReplyIsAProtocolError(t *testing.T) {
	spec := scriptedMilter(t, 0, 0, func(cmd byte, _ []byte) []byte {
		switch cmd {
		case 'D':
			return nil
		case 'C':
			return append(pkt('c'), pkt('r')...) // two replies to one command
		}
		return pkt('c')
	})
	ok := checker(t)
	s := open(t, spec, milter.DefaultOptions, nil)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	_, err := s.Helo("h")
	mustFailWith(t, err, milter.ErrProtocol, `"\x00\x00\x00\x01r"`)
}

func TestBytesBeforeACommandAreAProtocolError(t *testing.T) {
	// On a unix socket the bytes are in the client's receive queue when
	// the milter's write returns, so they are there before HELO; that
	// the check also sees them on TCP is TestQuietSeesTheSocket's.
	sent := make(chan struct{})
	spec := outOfTurnMilter(t, sent)
	ok := checker(t)
	s := open(t, spec, milter.DefaultOptions, nil)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	select {
	case <-sent:
	case <-time.After(failsafe):
		t.Fatal("the milter did not send its bytes")
	}
	_, err := s.Helo("h")
	mustFailWith(t, err, milter.ErrProtocol, `"2026 smtpd[1]: forged\n"`)
}

// outOfTurnMilter answers CONNECT, then writes text no command asked for
// and closes sent; it answers nothing else.
func outOfTurnMilter(t *testing.T, sent chan<- struct{}) string {
	t.Helper()
	return unixMilter(t, func(c net.Conn) {
		if !negotiate(c, 0, 0) {
			return
		}
		for {
			p, err := readPacket(c)
			if err != nil {
				return
			}
			switch p[0] {
			case 'D':
			case 'C':
				writePacket(c, []byte{'c'})
				_, _ = c.Write([]byte("2026 smtpd[1]: forged\n"))
				close(sent)
			default:
				// Anything more means the client took the junk for a
				// reply; answering keeps it from waiting.
				writePacket(c, []byte{'c'})
			}
		}
	})
}
