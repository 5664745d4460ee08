package gateway

// Benchmarks of whole messages through the gateway: Run on in-memory pipes,
// the benchmark playing smtpd with the line formats of the real 6.8
// transcripts (protocol 0.6), one SMTP session with one message per
// operation, against an in-process milter that accepts everything.
//
//	go test -run XXX -bench . -benchmem ./gateway
//
// Sub-benchmarks:
//
//	size=2KB|100KB       the message, as smtpd's data lines (its Received
//	                     header, then the client's header and body lines)
//	milter=null          a hand-written null milter on a unix socket that
//	                     allocates nothing per connection or packet, so
//	                     allocs/op and B/op are the gateway's (this driver
//	                     allocates nothing per message once warm). It
//	                     negotiates no actions, like the libmilter null
//	                     milter of the end-to-end runs: the gateway may
//	                     echo each data line at once.
//	milter=null-addheader  the same milter negotiating SMFIF_ADDHDRS (as
//	                     opendkim does) and never using it: the gateway
//	                     holds every line until the end of message.
//	milter=miltertest    milter/miltertest (go-milter's server side, TCP,
//	                     every action): its own allocations and the copy of
//	                     every message it records count in allocs/op, B/op
//	sessions=1|32        SMTP sessions in flight at once
//
// msgs/s is b.N over the measured time.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/filter-milter/filter-milter/integration/bench/benchmsg"
	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
)

func BenchmarkMessage(b *testing.B) {
	for _, size := range []struct {
		name  string
		bytes int
	}{{"2KB", 2 << 10}, {"100KB", 100 << 10}} {
		for _, ml := range []string{"null", "null-addheader", "miltertest"} {
			for _, sessions := range []int{1, 32} {
				b.Run(fmt.Sprintf("size=%s/milter=%s/sessions=%d", size.name, ml, sessions), func(b *testing.B) {
					var spec string
					switch ml {
					case "null":
						spec = miltertest.StartNull(b, benchNoActions)
					case "null-addheader":
						spec = miltertest.StartNull(b, benchAddHeader)
					default:
						spec = miltertest.Start(b, miltertest.Script{}).Spec
					}
					benchMessages(b, spec, size.bytes, sessions)
				})
			}
		}
	}
}

// benchMessages runs b.N sessions of one message each, with at most
// sessions of them at once, and reports msgs/s.
func benchMessages(b *testing.B, spec string, size, sessions int) {
	body, _ := benchmsg.Lines(size)
	benchLines(b, spec, body, size, sessions, 10*time.Second)
}

// benchLines runs b.N sessions of one message of the given lines, with at
// most sessions of them at once, each step answered within timeout. It
// returns the CPU time the process used meanwhile (user and system, every
// goroutine: the gateway, the in-process milter, the benchmark's smtpd),
// which, unlike the elapsed time, other work on the machine hardly moves.
func benchLines(b *testing.B, spec string, body [][]byte, size, sessions int, timeout time.Duration) (cpu time.Duration) {
	d := startBenchSmtpd(b, spec)
	var next atomic.Int64
	errc := make(chan error, sessions)
	var wg sync.WaitGroup
	scripts := make([]*benchScript, sessions)
	for w := range scripts {
		scripts[w] = d.newScript(w, body)
		scripts[w].timeout = timeout
	}
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	cpu0 := processCPU(b)
	for _, sc := range scripts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := sc.run(); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	cpu = processCPU(b) - cpu0
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	return cpu
}

// processCPU is the CPU time the process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchSmtpd plays smtpd on the gateway's pipes: scripts write their lines
// (each batch in one Write, which io.Pipe keeps whole), one goroutine reads
// the gateway's answers and hands each to its session.
type benchSmtpd struct {
	in   *io.PipeWriter
	mu   sync.RWMutex
	sess map[[16]byte]*benchSession
}

type benchSession struct {
	ch    chan benchAnswer
	lines int // data lines echoed so far; the reader's
}

type benchAnswer struct {
	dot    bool   // the final "." of the data lines came back
	lines  int    // with dot: how many data lines came back before it
	answer string // a filter-result other than proceed ("" for proceed)
}

func startBenchSmtpd(b *testing.B, spec string) *benchSmtpd {
	b.Helper()
	opts := milter.DefaultOptions
	c, err := milter.ParseConfig(spec, opts)
	if err != nil {
		b.Fatal(err)
	}
	// The production logger (cmd/filter-milter) at its default level, to
	// io.Discard: the gateway's one log line per message is part of its cost.
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = ""
	logger := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(io.Discard), zapcore.InfoLevel))
	g := New(Config{Milters: []*milter.Pool{milter.NewPool(c, logger)}, DefaultAction: Tempfail, Log: logger})
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- g.Run(inR, outW); _ = outW.Close() }()
	d := &benchSmtpd{in: inW, sess: map[[16]byte]*benchSession{}}
	out := bufio.NewReaderSize(outR, 64<<10)
	if _, err := io.WriteString(inW, "config|smtpd-version|6.8.0p2\nconfig|smtp-session-timeout|300\n"+
		"config|subsystem|smtp-in\nconfig|admd|mx.bench.example\nconfig|ready\n"); err != nil {
		b.Fatal(err)
	}
	for {
		l, err := out.ReadString('\n')
		if err != nil {
			b.Fatalf("handshake: %v", err)
		}
		if l == "register|ready\n" {
			break
		}
	}
	readDone := make(chan struct{})
	go func() { d.read(out); close(readDone) }()
	b.Cleanup(func() {
		_ = inW.Close()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			b.Error("the gateway did not stop after stdin closed")
		}
		<-readDone
	})
	return d
}

func (d *benchSmtpd) read(out *bufio.Reader) {
	const idLen = 16
	for {
		l, err := out.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				panic("benchmark: answer line longer than the read buffer")
			}
			return
		}
		l = l[:len(l)-1]
		var rest []byte
		dataline := bytes.HasPrefix(l, []byte("filter-dataline|"))
		switch {
		case dataline:
			rest = l[len("filter-dataline|"):]
		case bytes.HasPrefix(l, []byte("filter-result|")):
			rest = l[len("filter-result|"):]
		default:
			panic(fmt.Sprintf("benchmark: unexpected line from the gateway: %q", l))
		}
		if len(rest) < 2*idLen+2 {
			panic(fmt.Sprintf("benchmark: short line from the gateway: %q", l))
		}
		var id [idLen]byte
		copy(id[:], rest)
		d.mu.RLock()
		s := d.sess[id]
		d.mu.RUnlock()
		if s == nil {
			panic(fmt.Sprintf("benchmark: answer for an unknown session: %q", l))
		}
		payload := rest[2*idLen+2:]
		switch {
		case dataline && len(payload) == 1 && payload[0] == '.':
			s.ch <- benchAnswer{dot: true, lines: s.lines}
			s.lines = 0
		case dataline:
			s.lines++
		case string(payload) == "proceed":
			s.ch <- benchAnswer{}
		default:
			s.ch <- benchAnswer{answer: string(payload)}
		}
	}
}

// benchScript is one worker's SMTP session, as smtpd's lines with the
// session id patched in for each operation.
type benchScript struct {
	d       *benchSmtpd
	worker  int
	n       int
	id      [16]byte
	sess    *benchSession
	timer   *time.Timer
	steps   [][]byte      // each step's lines; every step but the last gets an answer
	ids     [][]int       // offsets of the session id in each step
	nlines  int           // data lines in the message
	timeout time.Duration // for the gateway's answer to each step
}

const benchSIDMark = "SSSSSSSSSSSSSSSS"

func (d *benchSmtpd) newScript(worker int, body [][]byte) *benchScript {
	const v = "0.6|1795504923.801342|smtp-in|"
	rep := func(event, params string) string {
		return "report|" + v + event + "|" + benchSIDMark + params + "\n"
	}
	req := func(phase, tok, param string) string {
		return "filter|" + v + phase + "|" + benchSIDMark + "|" + tok + "|" + param + "\n"
	}
	var data bytes.Buffer
	for _, l := range body {
		data.WriteString("filter|" + v + "data-line|" + benchSIDMark + "|0b70359911b2783b|")
		data.Write(l)
		data.WriteByte('\n')
	}
	data.WriteString(req("data-line", "0b70359911b2783b", "."))
	texts := []string{
		rep("link-connect", "|localhost|pass|127.0.0.1:50230|127.0.0.1:2525") +
			req("connect", "0b703591b1454d71", "localhost|127.0.0.1"),
		rep("link-greeting", "|mx.bench.example") +
			rep("protocol-client", "|EHLO client.bench.example") +
			req("ehlo", "0b703593f79517b4", "client.bench.example"),
		rep("protocol-client", "|MAIL FROM:<sender@bench.example> SIZE=3137") +
			req("mail-from", "0b703596e6d1e39f", "sender@bench.example"),
		rep("tx-begin", "|2a4946c4") +
			rep("protocol-client", "|RCPT TO:<rcpt@bench.example>") +
			req("rcpt-to", "0b703597dd6b2e30", "rcpt@bench.example"),
		rep("protocol-client", "|DATA") +
			req("data", "0b7035986cc3a08a", ""),
		data.String(),
		rep("protocol-client", "|.") +
			req("commit", "0b70359fc373e2bc", ""),
		rep("tx-commit", "|2a4946c4|3137") + rep("tx-reset", "|2a4946c4") +
			rep("protocol-client", "|QUIT") + rep("link-disconnect", ""),
	}
	sc := &benchScript{d: d, worker: worker, nlines: len(body), timer: time.NewTimer(time.Hour), timeout: 10 * time.Second,
		sess: &benchSession{ch: make(chan benchAnswer, 4)}}
	sc.timer.Stop()
	for _, t := range texts {
		step := []byte(t)
		var offs []int
		for i := 0; ; {
			j := bytes.Index(step[i:], []byte(benchSIDMark))
			if j < 0 {
				break
			}
			offs = append(offs, i+j)
			i += j + len(benchSIDMark)
		}
		sc.steps = append(sc.steps, step)
		sc.ids = append(sc.ids, offs)
	}
	return sc
}

// run plays one whole session with one message and checks every answer.
func (sc *benchScript) run() error {
	sc.n++
	// A fresh session id: worker in the high half, a counter in the low.
	const hex = "0123456789abcdef"
	for i, v := 0, uint64(sc.worker+1)<<32|uint64(uint32(sc.n)); i < 16; i++ {
		sc.id[15-i] = hex[v>>(4*i)&0xf]
	}
	for i, step := range sc.steps {
		for _, off := range sc.ids[i] {
			copy(step[off:], sc.id[:])
		}
	}
	sc.d.mu.Lock()
	sc.d.sess[sc.id] = sc.sess
	sc.d.mu.Unlock()
	defer func() {
		sc.d.mu.Lock()
		delete(sc.d.sess, sc.id)
		sc.d.mu.Unlock()
	}()
	last := len(sc.steps) - 1
	for i, step := range sc.steps {
		if _, err := sc.d.in.Write(step); err != nil {
			return err
		}
		if i == last {
			break
		}
		var a benchAnswer
		sc.timer.Reset(sc.timeout)
		select {
		case a = <-sc.sess.ch:
			sc.timer.Stop()
		case <-sc.timer.C:
			return fmt.Errorf("session %s: no answer to step %d within %v", sc.id, i, sc.timeout)
		}
		switch {
		case a.answer != "":
			return fmt.Errorf("session %s: step %d answered %q", sc.id, i, a.answer)
		case i == 5 && (!a.dot || a.lines != sc.nlines):
			return fmt.Errorf("session %s: %d data lines came back (dot %v), want %d", sc.id, a.lines, a.dot, sc.nlines)
		case i != 5 && a.dot:
			return fmt.Errorf("session %s: data lines at step %d", sc.id, i)
		}
	}
	return nil
}

// Milter action flags (libmilter's SMFIF_*) for miltertest.StartNull.
const (
	benchNoActions = 0
	benchAddHeader = 0x01 // SMFIF_ADDHDRS: the gateway must hold the lines until end of message
)

// BenchmarkHeaderHeavy and BenchmarkBodyHeavy compare the time per MB of a
// message that is all header (short fields, "X-H: abcdefghijklmnop", one
// milter header packet each) with one of the same size that is all body
// (benchmsg's 76-character lines), from 1 MB to smtpd's default 35 MB
// size limit, past the 1 MiB -buffer-limit, so that most of each message
// is read back from the temporary file: the whole path, through the
// gateway's reader, the spilled store, parse, a null milter that wants
// every header and the body (it negotiates SMFIF_ADDHDRS: the gateway
// holds every line until the end of message), and emit.
//
// The milter negotiates SMFIP_NR_HDR (no reply to a header field): with a
// reply to each, the header-heavy message costs one round trip per field
// (45 000 per MB), which is the milter protocol's cost, the same for any
// MTA, and would hide the gateway's.
//
//	go test -run '^$' -bench 'HeaderHeavy|BodyHeavy' -benchtime 3x ./gateway/
//
// ns/MB is the time per MB (10^6 bytes, as queued); cpu-ns/MB the CPU
// time the process used per MB (see benchLines), the steadier figure on a
// busy machine.
func BenchmarkHeaderHeavy(b *testing.B) {
	benchBySize(b, miltertest.StartNullNoHeaderReply, headerHeavy)
}

// BenchmarkHeaderHeavyLongFields is BenchmarkHeaderHeavy with fields as
// long as the body-heavy message's lines (76 characters): the same number
// of lines per MB, so that its ratio to BenchmarkBodyHeavy is what a
// header line costs over a body line, without the cost every line pays
// (read from smtpd, queued, kept, written back) that the short fields
// multiply by 3.4.
func BenchmarkHeaderHeavyLongFields(b *testing.B) {
	benchBySize(b, miltertest.StartNullNoHeaderReply, headerHeavyLong)
}

const (
	shortField = "X-H: abcdefghijklmnop"
	longField  = "X-H: abcdefghijklmnopqrstuvwxyz abcdefghijklmnopqrstuvwxyz 0123456789 ABCDEF" // 76 characters
)

func headerHeavy(size int) [][]byte { return headerOf(shortField, size) }

func headerHeavyLong(size int) [][]byte { return headerOf(longField, size) }

func headerOf(field string, size int) [][]byte {
	var lines [][]byte
	queued := 0
	for queued < size {
		lines = append(lines, []byte(field))
		queued += len(field) + 2
	}
	return append(lines, []byte(""), []byte("body"))
}

func BenchmarkBodyHeavy(b *testing.B) {
	benchBySize(b, miltertest.StartNullNoHeaderReply, func(size int) [][]byte { l, _ := benchmsg.Lines(size); return l })
}

// BenchmarkHeaderHeavyNoHeaders is BenchmarkHeaderHeavy with a milter that
// negotiates SMFIP_NOHDRS: no header field goes to it, everything else is
// the same (the lines read from smtpd and written back, the buffer, parse,
// emit). Its ns/MB over BenchmarkBodyHeavy's is the ratio that remains
// however cheap the header stage, a floor for BenchmarkHeaderHeavy's.
func BenchmarkHeaderHeavyNoHeaders(b *testing.B) {
	benchBySize(b, miltertest.StartNullNoHeaders, headerHeavy)
}

func benchBySize(b *testing.B, startMilter func(testing.TB, uint32) string, message func(size int) [][]byte) {
	for _, mb := range []int{1, 3, 10, 35} {
		b.Run(fmt.Sprintf("size=%dMB", mb), func(b *testing.B) {
			size := mb * 1000 * 1000
			spec := startMilter(b, benchAddHeader)
			cpu := benchLines(b, spec, message(size), size, 1, 5*time.Minute)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(mb), "ns/MB")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/float64(mb), "cpu-ns/MB")
		})
	}
}

// BenchmarkApplyModifications applies n inserts at the top, n changes of
// the last field of a name and n adds to a header of n fields: the time
// per modification stays flat as n grows (a slice made the inserts, and a
// scan of every field the changes, quadratic).
func BenchmarkApplyModifications(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			mods := make([]milter.Modification, 0, 3*n)
			for i := range n {
				mods = append(mods,
					milter.Modification{Kind: milter.InsertHeader, Index: 0, Name: "X-Top", Value: " t"},
					milter.Modification{Kind: milter.ChangeHeader, Index: n - i, Name: "X-H", Value: " changed"},
					milter.Modification{Kind: milter.AddHeader, Name: "X-End", Value: " e"})
			}
			for b.Loop() {
				m := newMessage()
				for range n {
					m.add("X-H: abcdefghijklmnop")
				}
				m.add("")
				m.parse()
				m.apply(mods, nil)
				m.release()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(mods)), "ns/mod")
		})
	}
}
