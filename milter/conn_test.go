package milter

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

	djmilter "github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// recordingConn is a scripted milter (see scriptConn) that also keeps
// every byte written to it.
type recordingConn struct {
	scriptConn
	written bytes.Buffer
}

func (c *recordingConn) Write(p []byte) (int, error) { return c.written.Write(p) }

// packets splits a byte stream into milter packets (code + payload).
func packets(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("a partial packet on the wire: %q", b)
		}
		n := int(binary.BigEndian.Uint32(b))
		if n == 0 || 4+n > len(b) {
			t.Fatalf("a bad packet on the wire: %q", b)
		}
		out = append(out, b[4:4+n])
		b = b[4+n:]
	}
	return out
}

func optnegReply(actions, protocol uint32, lists ...[]byte) []byte {
	data := binary.BigEndian.AppendUint32(nil, 6)
	data = binary.BigEndian.AppendUint32(data, actions)
	data = binary.BigEndian.AppendUint32(data, protocol)
	for _, l := range lists {
		data = append(data, l...)
	}
	return packet('O', data...)
}

// TestPatchCompleteSymlists pins the rewrite of the negotiation reply:
// conn reads the milter's reply itself at go-milter's first read, adds the
// default lists for the stages the milter did not name, and go-milter must
// then read the rewritten reply, whole, through conn. If go-milter reads
// the reply any other way, the connect stage goes out without its macros.
func TestPatchCompleteSymlists(t *testing.T) {
	eohList := binary.BigEndian.AppendUint32(nil, 6) // SMFIM_EOH
	eohList = append(eohList, "{daemon_name} i\x00"...)
	script := optnegReply(0x1ff, 0, eohList)
	for i := 0; i < 7; i++ { // CONNECT HELO MAIL RCPT DATA HEADER EOH
		script = append(script, packet('c')...)
	}
	nc := &recordingConn{scriptConn: scriptConn{r: bytes.NewReader(script)}}
	macros := NewMacros()
	macros.Set(MacroMTAName, "mx.test.example")
	macros.Set(MacroDaemonName, "smtpd")
	macros.Set(MacroQueueID, "Q1")
	s, err := NewClient("pin", Spec{Network: "unix", Address: "pin"}, DefaultOptions, nil).openOn(nc, macros)
	if err != nil {
		t.Fatal(err)
	}
	if s.conn.negotiating || len(s.conn.fake) != 0 {
		t.Fatalf("go-milter did not read the rewritten negotiation reply through conn (still negotiating %v, %d fake bytes left)", s.conn.negotiating, len(s.conn.fake))
	}
	for _, step := range []func() (Verdict, error){
		func() (Verdict, error) { return s.Connect("h", FamilyInet, 1, "192.0.2.1") },
		func() (Verdict, error) { return s.Helo("h") },
		func() (Verdict, error) { return s.Mail("a@b", nil) },
		func() (Verdict, error) { return s.Rcpt("c@d", nil) },
		s.Data,
		func() (Verdict, error) { return s.Header("Subject", " x") },
		s.EndOfHeaders,
	} {
		if _, err := step(); err != nil {
			t.Fatal(err)
		}
	}
	var macroPackets []string
	for _, p := range packets(t, nc.written.Bytes()) {
		if p[0] == 'D' {
			macroPackets = append(macroPackets, string(p[1:]))
		}
	}
	want := []string{
		"Cj\x00mx.test.example\x00{daemon_name}\x00smtpd\x00", // the default connect list, added by conn
		"N{daemon_name}\x00smtpd\x00i\x00Q1\x00",              // the milter's own EOH list
	}
	for _, w := range want {
		found := false
		for _, m := range macroPackets {
			found = found || m == w
		}
		if !found {
			t.Errorf("macro packets %q lack %q", macroPackets, w)
		}
	}
}

// TestPatchSwallowedEmptyBody pins the empty-body patch: go-milter must
// write an empty BODY as one Write of exactly its 5 header bytes, which
// conn drops, and then read exactly one reply, which conn fakes (unless
// the milter negotiated no reply to BODY). If go-milter writes it another
// way, a BODY packet reaches the milter; if it reads no reply or a second
// one, the faked CONTINUE is left over or the milter's end-of-message
// answer is taken for the body's.
func TestPatchSwallowedEmptyBody(t *testing.T) {
	for name, protocol := range map[string]uint32{"reply to body": 0, "no reply to body": 0x80000 /* SMFIP_NR_BODY */} {
		t.Run(name, func(t *testing.T) {
			script := optnegReply(0x1ff, protocol)
			for i := 0; i < 6; i++ { // CONNECT HELO MAIL RCPT DATA EOH
				script = append(script, packet('c')...)
			}
			script = append(script, packet('y', []byte("550 5.7.1 pinned\x00")...)...)
			nc := &recordingConn{scriptConn: scriptConn{r: bytes.NewReader(script)}}
			s, err := NewClient("pin", Spec{Network: "unix", Address: "pin"}, DefaultOptions, nil).openOn(nc, nil)
			if err != nil {
				t.Fatal(err)
			}
			playEnvelope(t, s)
			if _, err := s.EndOfHeaders(); err != nil {
				t.Fatal(err)
			}
			v, _, err := s.End(nil)
			if err != nil {
				t.Fatal(err)
			}
			if v.Kind != Reject || v.Reply != "550 5.7.1 pinned" {
				t.Errorf("End = %v: the milter's end-of-message reply was not the answer to end of message", v)
			}
			if len(s.conn.fake) != 0 || s.conn.swallowEmptyBody {
				t.Errorf("%d faked bytes left, swallow still armed %v", len(s.conn.fake), s.conn.swallowEmptyBody)
			}
			var codes []byte
			for _, p := range packets(t, nc.written.Bytes()) {
				codes = append(codes, p[0])
			}
			if string(codes) != "OCHMRTNE" {
				t.Errorf("commands on the wire %q, want %q (no BODY)", codes, "OCHMRTNE")
			}
		})
	}
}

// TestQuietSeesTheSocket checks both places the milter's unasked-for
// bytes can wait before a command: conn's read buffer and the socket
// itself, for TCP and unix sockets, without consuming them.
func TestQuietSeesTheSocket(t *testing.T) {
	for _, network := range []string{"tcp4", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				dir, err := os.MkdirTemp("", "mt")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = os.RemoveAll(dir) })
				addr = filepath.Join(dir, "s")
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			client, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			server, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			c := newConn(client, time.Second, 1<<20, zap.NewNop())
			c.phase = phaseReply
			if err := c.quiet(); err != nil {
				t.Fatalf("quiet on a silent socket: %v", err)
			}
			if _, err := server.Write([]byte("\x00\x00\x00\x01c\r\nforged")); err != nil {
				t.Fatal(err)
			}
			// Poll until the bytes have crossed the loopback.
			deadline := time.Now().Add(10 * time.Second)
			for err = c.quiet(); err == nil && time.Now().Before(deadline); err = c.quiet() {
				time.Sleep(time.Millisecond)
			}
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), `"\x00\x00\x00\x01c\r\nforged"`) {
				t.Fatalf("quiet = %v, want a protocol error quoting the bytes", err)
			}
			// Peeking did not consume them: the read buffer sees them too.
			if _, err := c.r.Peek(1); err != nil {
				t.Fatal(err)
			}
			if err := c.quiet(); !errors.Is(err, ErrProtocol) || c.r.Buffered() != 13 {
				t.Fatalf("quiet = %v with %d bytes buffered, want a protocol error over all 13", err, c.r.Buffered())
			}
		})
	}
}

// TestGoMilterHasNothingToWarnAbout: what go-milter would warn about
// through its process-wide hook (LogWarning, which writes the milter's
// bytes raw through the standard logger) conn corrects first and logs in
// the session's own log, the milter's bytes as an escaped field: macro
// lists for an unknown stage, twice for one stage, or not NUL-terminated,
// and DISCARD in answer to CONNECT or HELO (taken as CONTINUE, as
// go-milter does). It fails if go-milter is ever handed one of them.
func TestGoMilterHasNothingToWarnAbout(t *testing.T) {
	var warned []string
	saved := djmilter.LogWarning
	djmilter.LogWarning = func(format string, v ...any) { warned = append(warned, fmt.Sprintf(format, v...)) }
	t.Cleanup(func() { djmilter.LogWarning = saved })

	const forged = "Dec  7 01:00:00 mx smtpd[1]: forged"
	var lists []byte
	for _, l := range []struct {
		stage uint32
		names string
	}{{0, "{j}\x00"}, {9, "{x}\x00"}, {0, "{daemon_name}\x00"}, {1, "{j}\n" + forged}} {
		lists = binary.BigEndian.AppendUint32(lists, l.stage)
		lists = append(lists, l.names...)
	}
	script := optnegReply(0x1ff, 0, lists)
	script = append(script, packet('d')...) // CONNECT
	script = append(script, packet('d')...) // HELO
	nc := &recordingConn{scriptConn: scriptConn{r: bytes.NewReader(script)}}
	var out bytes.Buffer
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(&out), zap.DebugLevel))
	macros := NewMacros()
	macros.Set(MacroMTAName, "mx.test.example")
	macros.Set(MacroDaemonName, "smtpd")
	s, err := NewClient("pin", Spec{Network: "unix", Address: "pin"}, DefaultOptions, log).openOn(nc, macros)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []func() (Verdict, error){
		func() (Verdict, error) { return s.Connect("h", FamilyInet, 1, "192.0.2.1") },
		func() (Verdict, error) { return s.Helo("h") },
	} {
		if v, err := v(); err != nil || v.Kind != Continue {
			t.Fatalf("DISCARD at CONNECT or HELO = %v, %v; want continue", v, err)
		}
	}
	if len(warned) > 0 {
		t.Errorf("go-milter warned through its global hook: %q", warned)
	}
	var macroPackets []string
	for _, p := range packets(t, nc.written.Bytes()) {
		if p[0] == 'D' {
			macroPackets = append(macroPackets, string(p[1:]))
		}
	}
	if len(macroPackets) == 0 || macroPackets[0] != "C{daemon_name}\x00smtpd\x00" {
		t.Errorf("macro packets %q: want the milter's last connect list first", macroPackets)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	wantLogs := []string{"unknown stage 9", "a second macro list for stage connect", "not NUL-terminated, ignored with the rest of the answer", "DISCARD", "DISCARD"}
	if len(lines) != len(wantLogs) {
		t.Fatalf("log lines %q, want %d", lines, len(wantLogs))
	}
	for i, w := range wantLogs {
		if !strings.Contains(lines[i], w) || !strings.Contains(lines[i], `"milter": "pin"`) {
			t.Errorf("log line %q: want %q and the milter's name", lines[i], w)
		}
	}
}

// writeLog is a scripted milter that keeps each Write call apart.
type writeLog struct {
	scriptConn
	writes [][]byte
}

func (c *writeLog) Write(p []byte) (int, error) {
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

// TestGoMilterWritePattern pins, on go-milter's own client with nothing
// of conn in between, the two ways conn's byte-level patches depend on
// how go-milter writes:
//
//   - skipEmptyBody recognises an empty SMFIC_BODY as one Write of
//     exactly emptyBody; if go-milter wrote it in pieces, or with a
//     payload, the empty BODY would reach the milter (opendkim drops the
//     connection on one).
//   - writeHeader writes SMFIC_HEADER packets itself for a milter that
//     negotiated SMFIP_NR_HDR; its bytes must be those of go-milter's
//     HeaderField, value trimming included, or the two paths would send
//     different headers.
//
// If this test fails after an update of go-milter, the patch it names
// must change with it.
func TestGoMilterWritePattern(t *testing.T) {
	noReplies := protoNoConnectReply | protoNoHeloReply | protoNoMailReply | protoNoRcptReply |
		protoNoDataReply | protoNoHeaderReply | protoNoEOHReply | protoNoBodyReply
	nc := &writeLog{scriptConn: scriptConn{r: bytes.NewReader(optnegReply(0x1ff, noReplies))}}
	c := NewClient("pin", Spec{Network: "unix", Address: "pin"}, DefaultOptions, nil)
	opts := append(c.djOptions[:len(c.djOptions):len(c.djOptions)], djmilter.WithDialer(connDialer{nc}))
	dj, err := djmilter.NewClient("unix", "pin", opts...).Session(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() (*djmilter.Action, error){
		func() (*djmilter.Action, error) { return dj.Conn("h", djmilter.FamilyInet, 1, "192.0.2.1") },
		func() (*djmilter.Action, error) { return dj.Helo("h") },
		func() (*djmilter.Action, error) { return dj.Mail("a@b", "") },
		func() (*djmilter.Action, error) { return dj.Rcpt("c@d", "") },
		dj.DataStart,
	} {
		if _, err := step(); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range [][2]string{{"Subject", "x"}, {"X-Folded", "a\n\tb\r\n"}, {"X-CR", "v\r"}, {"X-Only-CRLF", "\r\n"}, {"X-Empty", ""}} {
		nc.writes = nil
		if _, err := dj.HeaderField(h[0], h[1], nil); err != nil {
			t.Fatal(err)
		}
		value := trimLastLineBreak([]byte(h[1]))
		want := appendHeader(nil, 1+len(h[0])+1+len(value)+1, []byte(h[0]), value)
		if got := bytes.Join(nc.writes, nil); !bytes.Equal(got, want) {
			t.Errorf("go-milter's HeaderField(%q, %q) wrote %q; writeHeader writes %q", h[0], h[1], got, want)
		}
	}
	if _, err := dj.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	nc.writes = nil
	if _, err := dj.BodyChunk(nil); err != nil {
		t.Fatal(err)
	}
	if len(nc.writes) != 1 || !bytes.Equal(nc.writes[0], emptyBody) {
		t.Errorf("go-milter wrote an empty body as %q; skipEmptyBody drops one Write of exactly %q", nc.writes, emptyBody)
	}
}

// playEnvelope sends CONNECT, HELO, MAIL, RCPT and DATA on s, each of
// which must succeed.
func playEnvelope(t *testing.T, s *Session) {
	t.Helper()
	for _, step := range []func() (Verdict, error){
		func() (Verdict, error) { return s.Connect("h", FamilyInet, 1, "192.0.2.1") },
		func() (Verdict, error) { return s.Helo("h") },
		func() (Verdict, error) { return s.Mail("a@b", nil) },
		func() (Verdict, error) { return s.Rcpt("c@d", nil) },
		s.Data,
	} {
		if _, err := step(); err != nil {
			t.Fatal(err)
		}
	}
}
