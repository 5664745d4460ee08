package gateway

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
	"github.com/filter-milter/filter-milter/smtpdplay"
)

// FuzzMilterConversation drives whole SMTP sessions through a gateway, as
// smtpd 6.8 would (filter protocol 0.6), against an in-process milter on
// a unix socket whose every answer comes from the fuzz input: packet codes,
// lengths and payloads, PROGRESS, modifications it did or did not
// negotiate, replies of any length, garbage, replies before a command or
// twice to one, a closed connection. Once the input is used up the milter
// answers CONTINUE, so every session can end.
//
// Invariants, each of which takes smtpd down (or loses mail) when broken:
//   - every line on stdout is one smtpd takes (smtpdplay checks them):
//     register|..., filter-result with a known decision for the pending
//     request, its reply (reject, disconnect) valid for smtpd
//     (protocol.ValidReply) and at most 512 octets (RFC 5321 4.5.3.1.5),
//     no junk at commit, filter-dataline with no NUL and no CR (the
//     driver sends none, so they came from a milter);
//   - the final "." of a message is written once, after every other data
//     line and before the answer to commit, and never unless smtpd sent its
//     own "." first;
//   - nothing is written for a session that smtpd did not ask about;
//   - no panic; every case ends in bounded time (short timeouts); the heap
//     after a case stays below fuzzHeapLimit; no session outlives its
//     link-disconnect.
func FuzzMilterConversation(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		runConversation(t, data)
	})
}

// fuzzHeapLimit bounds the live heap after a case: far above what one
// small session needs, far below what an unbounded flood takes. A
// blow-up guard, not a measurement.
const fuzzHeapLimit = 256 << 20

// Fuzz-input ops: one byte each, then their arguments. The high bit marks
// the last packet of one answer.
const (
	opContinue = iota
	opAccept
	opReject
	opTempfail
	opReplyCode // n, n bytes of reply text, r: with r > 0 the text repeated r*16 times and a last line "NNN 5.7.1 end"
	opProgress
	opAddHeader // n, name, m, value
	opInsHeader // index byte, n, name, m, value
	opChgHeader // index byte, n, name, m, value
	opBody      // n, n bytes (repeated by the next byte's count * 64)
	opDiscard
	opQuarantine
	opSkip
	opRaw     // code, n, n bytes: any packet
	opGarbage // n, n unframed bytes
	opClose   // close the connection
	opFlood   // count byte: count*1024 add-headers
	opCount
	opLast = 0x80
)

// fuzzScript is the fuzz input as the milter consumes it.
type fuzzScript struct {
	mu   sync.Mutex
	data []byte
}

func (s *fuzzScript) byte() (byte, bool) {
	if len(s.data) == 0 {
		return 0, false
	}
	b := s.data[0]
	s.data = s.data[1:]
	return b, true
}

func (s *fuzzScript) bytes() []byte {
	n, _ := s.byte()
	n2 := min(int(n), len(s.data))
	b := s.data[:n2]
	s.data = s.data[n2:]
	return b
}

// answer is the next answer's packets (framed bytes) and whether the
// milter closes its connection after them. An exhausted script answers
// CONTINUE.
func (s *fuzzScript) answer() (out []byte, closeConn bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pkt := func(code byte, payload []byte) {
		out = binary.BigEndian.AppendUint32(out, uint32(len(payload)+1))
		out = append(append(out, code), payload...)
	}
	for range 64 {
		op, ok := s.byte()
		if !ok {
			if len(out) == 0 {
				pkt('c', nil)
			}
			return out, false
		}
		switch op &^ opLast % opCount {
		case opContinue:
			pkt('c', nil)
		case opAccept:
			pkt('a', nil)
		case opReject:
			pkt('r', nil)
		case opTempfail:
			pkt('t', nil)
		case opReplyCode:
			text := s.bytes()
			r, _ := s.byte()
			if r > 0 {
				// smfi_setmlreply's form: the lines, then the last one.
				text = []byte(strings.Repeat(string(text), int(r)*16) + string(text[:min(3, len(text))]) + " 5.7.1 end")
			}
			pkt('y', append(text, 0))
		case opProgress:
			pkt('p', nil)
		case opAddHeader:
			name, value := s.bytes(), s.bytes()
			pkt('h', append(append(append(name, 0), value...), 0))
		case opInsHeader, opChgHeader:
			idx, _ := s.byte()
			name, value := s.bytes(), s.bytes()
			code := byte('i')
			if op&^opLast%opCount == opChgHeader {
				code = 'm'
			}
			p := binary.BigEndian.AppendUint32(nil, uint32(idx))
			pkt(code, append(append(append(append(p, name...), 0), value...), 0))
		case opBody:
			b := s.bytes()
			n, _ := s.byte()
			for range 1 + int(n)*64 {
				pkt('b', b)
			}
		case opDiscard:
			pkt('d', nil)
		case opQuarantine:
			pkt('q', append(s.bytes(), 0))
		case opSkip:
			pkt('s', nil)
		case opRaw:
			code, _ := s.byte()
			pkt(code, s.bytes())
		case opGarbage:
			out = append(out, s.bytes()...)
		case opClose:
			return out, true
		case opFlood:
			n, _ := s.byte()
			for range int(n) * 1024 {
				pkt('h', []byte("X-Flood\x00v\x00"))
			}
		}
		if op&opLast != 0 {
			return out, false
		}
	}
	return out, false
}

// fuzzMilter serves a fuzzScript on a unix socket.
type fuzzMilter struct {
	ln     net.Listener
	script *fuzzScript
	// negotiation answer: actions and protocol flags
	actions, protocol uint32
	wg                sync.WaitGroup
	mu                sync.Mutex
	conns             map[net.Conn]bool
}

func startFuzzMilter(t *testing.T, script *fuzzScript, actions, proto uint32) (*fuzzMilter, string) {
	t.Helper()
	// A short path: a unix socket path is limited to 108 bytes.
	dir, err := os.MkdirTemp("", "fzm")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "m.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	m := &fuzzMilter{ln: ln, script: script, actions: actions, protocol: proto, conns: map[net.Conn]bool{}}
	m.wg.Add(1)
	go m.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		m.mu.Lock()
		for c := range m.conns {
			_ = c.Close()
		}
		m.mu.Unlock()
		m.wg.Wait()
		_ = os.RemoveAll(dir)
	})
	return m, "unix:" + path
}

func (m *fuzzMilter) serve() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		m.mu.Lock()
		m.conns[c] = true
		m.mu.Unlock()
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.handle(c)
			_ = c.Close()
			m.mu.Lock()
			delete(m.conns, c)
			m.mu.Unlock()
		}()
	}
}

func (m *fuzzMilter) handle(c net.Conn) {
	r := bufio.NewReader(c)
	hdr := make([]byte, 4)
	for {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(r, hdr); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr)
		if n == 0 || n > 1<<26 {
			return
		}
		pkt := make([]byte, n)
		if _, err := io.ReadFull(r, pkt); err != nil {
			return
		}
		var out []byte
		closeConn := false
		switch pkt[0] {
		case 'O':
			p := binary.BigEndian.AppendUint32(nil, 6)
			p = binary.BigEndian.AppendUint32(p, m.actions)
			p = binary.BigEndian.AppendUint32(p, m.protocol)
			out = binary.BigEndian.AppendUint32(nil, uint32(len(p)+1))
			out = append(append(out, 'O'), p...)
			// What the script says next may come before any command.
			if b, ok := m.script.peekEarly(); ok && b {
				more, cl := m.script.answer()
				out, closeConn = append(out, more...), cl
			}
		case 'D', 'A', 'K':
			continue
		case 'Q':
			return
		default:
			out, closeConn = m.script.answer()
		}
		if _, err := c.Write(out); err != nil || closeConn {
			return
		}
	}
}

// peekEarly consumes one byte that says whether the milter writes an
// answer right after negotiation (odd) or not.
func (s *fuzzScript) peekEarly() (bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.byte()
	return b%7 == 3, ok
}

// fuzzSession is the driver's view of one session's output.
type fuzzSession struct {
	t       *testing.T
	out     chan string
	pending string // the phase whose filter-result is awaited ("" none)
	dot     int    // "." data lines seen in this message
}

const (
	fuzzSID = "0123456789abcdef"
	fuzzTok = "fedcba9876543210"
)

func fuzzReport(event string, fields ...string) string {
	return strings.Join(append([]string{"report|0.6|1795504415.685235|smtp-in|" + event + "|" + fuzzSID}, fields...), "|")
}

func fuzzRequest(phase, param string) string {
	return "filter|0.6|1795504415.685300|smtp-in|" + phase + "|" + fuzzSID + "|" + fuzzTok + "|" + param
}

func runConversation(t *testing.T, data []byte) {
	if len(data) < 4 {
		return
	}
	cfgByte, actByte, protoByte, msgByte := data[0], data[1], data[2], data[3]
	script := &fuzzScript{data: data[4:]}
	// Actions: any of SMFIF_* (0x1ff); protocol: the NO* and NR_* flags
	// go-milter's client offers, or anything at all now and then.
	actions := uint32(actByte) | uint32(actByte&1)<<8
	proto := uint32(protoByte&0x7f) | uint32(protoByte&0x80)<<5
	if cfgByte&0x40 != 0 {
		proto = uint32(protoByte) * 0x01010101
	}
	_, spec := startFuzzMilter(t, script, actions, proto)

	opts := milter.DefaultOptions
	opts.ConnectTimeout, opts.CommandTimeout, opts.ContentTimeout = 300*time.Millisecond, 300*time.Millisecond, 300*time.Millisecond
	opts.EOMTimeout = time.Second
	mc, err := milter.ParseConfig(spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	action := Action(cfgByte % 3)
	g := New(Config{
		Milters: []*milter.Pool{milter.NewPool(mc, nil)}, DefaultAction: action, Log: zap.NewNop(),
		ShutdownTimeout: 2 * time.Second, BufferLimit: 4096, MemoryBudget: 1 << 20, TempDir: t.TempDir(),
	})
	inR, inW := io.Pipe()
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Run(inR, outW); _ = outW.Close() }()
	// smtpdplay checks every line as smtpd takes it: a known decision for
	// a request it asked, a valid reply, data lines only under the
	// message's token and up to one ".", nothing for a session or token
	// it did not ask about. Every timeout of the case is far shorter than
	// its Wait: a longer one is a hang.
	play, err := smtpdplay.Start(inW, outR, smtpdplay.Config{Wait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Close reads stdout to its end: once it returns, so has Run.
		if err := play.Close(); err != nil {
			t.Errorf("the gateway's output: %v", err)
		}
		_ = outR.Close()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, io.EOF) {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the gateway did not stop within 10 s of stdin closing")
		}
		if n := g.Sessions(); n != 0 {
			t.Errorf("%d sessions still live after link-disconnect and shutdown", n)
		}
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		if ms.HeapAlloc > fuzzHeapLimit {
			t.Errorf("live heap %d MiB after the case, over the %d MiB guard", ms.HeapAlloc>>20, fuzzHeapLimit>>20)
		}
	}()

	s := play.NewSession()
	report := func(event string, fields ...string) {
		if err := s.Report(event, fields...); err != nil {
			t.Fatalf("write to the gateway: %v", err)
		}
	}
	// ask sends a request and checks its answer beyond what smtpdplay
	// checks: a reply smtpd 7.4 does not exit on, no junk at commit.
	ask := func(phase, param string) protocol.Decision {
		d, reply, err := s.Ask(phase, param)
		if err != nil {
			t.Fatal(err)
		}
		if len(reply)+2 > 512 {
			t.Fatalf("%s with a reply of %d octets (RFC 5321 allows 512 with CRLF; smtpd 7.4 exits past ~16 KiB): %.200q...", d, len(reply), reply)
		}
		if d == protocol.Junk && phase == "commit" {
			t.Fatalf("junk at commit (smtpd 6.8 and 7.4 exit on it)")
		}
		return d
	}

	report("link-connect", "localhost", "pass", "127.0.0.1:47092", "127.0.0.1:2525")
	steps := []struct{ phase, param string }{
		{"connect", "localhost|127.0.0.1"},
		{"helo", "client.example"},
		{"mail-from", "a@test.example"},
		{"rcpt-to", "b@test.example"},
		{"data", ""},
	}
	reports := map[string][][]string{
		"helo":      {{"link-greeting", "mx.test.example"}, {"protocol-client", "helo client.example"}},
		"mail-from": {{"protocol-client", "MAIL FROM:<a@test.example>"}},
		"rcpt-to":   {{"tx-begin", "2a4946c4"}, {"protocol-client", "RCPT TO:<b@test.example>"}},
	}
	for _, st := range steps {
		for _, r := range reports[st.phase] {
			report(r[0], r[1:]...)
		}
		if ask(st.phase, st.param) != protocol.Proceed {
			report("link-disconnect")
			return
		}
	}
	msg := fuzzMessages[int(msgByte)%len(fuzzMessages)]
	tok := s.StartData()
	if err := s.SendData(tok, append(msg[:len(msg):len(msg)], ".")...); err != nil {
		t.Fatalf("write to the gateway: %v", err)
	}
	lines, err := s.ReadMessage(tok)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		if strings.ContainsAny(l, "\x00\r") {
			t.Fatalf("data line with NUL or CR (smtpd cuts the line at NUL; CR was never sent by smtpd): %q", l)
		}
	}
	report("protocol-client", ".")
	ask("commit", "")
	report("tx-reset", "2a4946c4")
	report("link-disconnect")
}

// fuzzMessages are the messages the driver sends, as smtpd's data lines
// (dot-stuffed).
var fuzzMessages = [][]string{
	{"From: a@test.example", "To: b@test.example", "Subject: fuzz", "", "body", "..leading dot", ""},
	{"From: a@test.example", "Subject: header only"},
	{"Subject: empty body", ""},
	{"From: a@test.example", "X-Folded: one", "  two", "Subject: s", "", strings.Repeat("long body line ", 400), "end"},
}

// fuzzSeeds are a few conversations worth starting from.
func fuzzSeeds() [][]byte {
	last := func(op byte) byte { return op | opLast }
	mlReply := "550-5.7.1 one\r\n550-5.7.1 two\r\n550 5.7.1 three three three"
	longLine := "550-5.7.1 " + strings.Repeat("word ", 40) + "\r\n"
	return [][]byte{
		// tempfail, no actions, all CONTINUE
		{0, 0, 0, 0},
		// accept, add headers + body, PROGRESS then add-header then continue at eom
		{1, 0x03, 0, 0, 9, last(opContinue), last(opContinue), last(opContinue), last(opContinue), last(opContinue),
			last(opContinue), last(opContinue), last(opContinue), last(opContinue), opProgress, opAddHeader, 3, 'X', '-', 'A', 1, 'v', last(opContinue)},
		// a multi-line reply at the first command
		append(append([]byte{0, 0, 0, 1, 0, opReplyCode, byte(len(mlReply))}, mlReply...), 0),
		// a 465-line reply at RCPT, about 100 KB (smtpd 7.4 exits past 16 KiB)
		append(append([]byte{0, 0, 0, 0, 0, last(opContinue), last(opContinue), last(opContinue), opReplyCode, byte(len(longLine))}, longLine...), 29),
		// a second answer to connect
		{2, 0, 0, 2, 0, opContinue, last(opContinue)},
		// an answer before connect
		{0, 0, 0, 0, 3, last(opContinue)},
		// body replacement on a header-only message, with a NUL
		{1, 0x02, 0, 1, 0, last(opContinue), last(opContinue), last(opContinue), last(opContinue), last(opContinue),
			last(opContinue), last(opContinue), last(opContinue), opBody, 8, 'X', '-', 'F', ':', ' ', 0, '\r', '\n', 0, last(opContinue)},
		// garbage at MAIL
		{0, 0, 0, 0, 0, last(opContinue), last(opContinue), opGarbage, 5, 0xff, 0xff, 0xff, 0xf0, 'c'},
		// 65,536 add-headers at end of message (connect, helo, mail, rcpt,
		// data, 3 headers, end of headers and body answered first)
		{1, 0x01, 0, 0, 0, last(opContinue), last(opContinue), last(opContinue), last(opContinue), last(opContinue),
			last(opContinue), last(opContinue), last(opContinue), last(opContinue), last(opContinue), opFlood, 64, last(opContinue)},
		// the milter closes at RCPT
		{0, 0, 0, 0, 0, last(opContinue), last(opContinue), last(opContinue), opClose},
	}
}
