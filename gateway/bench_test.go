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
//	                     allocs/op and B/op are the gateway's (smtpdplay, playing
//	                     smtpd, allocates nothing per message once warm). It
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
	"github.com/filter-milter/filter-milter/smtpdplay"
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
// goroutine: the gateway, the in-process milter, smtpdplay playing smtpd),
// which, unlike the elapsed time, other work on the machine hardly moves.
func benchLines(b *testing.B, spec string, body [][]byte, size, sessions int, timeout time.Duration) (cpu time.Duration) {
	play := startBenchGateway(b, spec, timeout)
	steps := benchSteps(play, body)
	var next atomic.Int64
	errc := make(chan error, sessions)
	var wg sync.WaitGroup
	// A copy of the steps per worker, as Play patches them in place; the
	// first worker takes the originals (a 35 MB message is 70 MB of steps).
	workers := [][]*smtpdplay.Step{steps}
	for range sessions - 1 {
		mine := make([]*smtpdplay.Step, len(steps))
		for i, st := range steps {
			mine[i] = st.Clone()
		}
		workers = append(workers, mine)
	}
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	cpu0 := processCPU(b)
	for _, steps := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := play.NewSession()
			for next.Add(1) <= int64(b.N) {
				for _, st := range steps {
					if err := s.Play(st); err != nil {
						errc <- err
						return
					}
				}
				if err := s.Renew(); err != nil { // a fresh session id for the next
					errc <- err
					return
				}
			}
			if err := s.End(); err != nil {
				errc <- err
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

// startBenchGateway runs a gateway on in-memory pipes against the milter
// at spec, with smtpdplay playing smtpd 6.8 on them.
func startBenchGateway(b *testing.B, spec string, timeout time.Duration) *smtpdplay.Player {
	b.Helper()
	c, err := milter.ParseConfig(spec, milter.DefaultOptions)
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
	play, err := smtpdplay.Start(inW, outR, smtpdplay.Config{Admd: "mx.bench.example", Wait: timeout})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := play.Close(); err != nil {
			b.Error(err)
		}
		if err := <-done; err != nil { // play.Close saw stdout end: Run has returned
			b.Errorf("Run: %v", err)
		}
	})
	return play
}

// benchSteps is one SMTP session with one message, as smtpd 6.8 reports
// and filters it (the line formats of testdata/transcripts).
func benchSteps(play *smtpdplay.Player, body [][]byte) []*smtpdplay.Step {
	sb := play.NewSteps()
	sb.Report("link-connect", "localhost", "pass", "127.0.0.1:50230", "127.0.0.1:2525")
	steps := []*smtpdplay.Step{sb.Request("connect", "localhost|127.0.0.1")}
	sb.Report("link-greeting", "mx.bench.example")
	sb.Report("protocol-client", "EHLO client.bench.example")
	steps = append(steps, sb.Request("ehlo", "client.bench.example"))
	sb.Report("protocol-client", "MAIL FROM:<sender@bench.example> SIZE=3137")
	steps = append(steps, sb.Request("mail-from", "sender@bench.example"))
	sb.Report("tx-begin", "2a4946c4")
	sb.Report("protocol-client", "RCPT TO:<rcpt@bench.example>")
	steps = append(steps, sb.Request("rcpt-to", "rcpt@bench.example"))
	sb.Report("protocol-client", "DATA")
	steps = append(steps, sb.Request("data", ""), sb.Message(body))
	sb.Report("protocol-client", ".")
	steps = append(steps, sb.Request("commit", ""))
	sb.Report("tx-commit", "2a4946c4", "3137")
	sb.Report("tx-reset", "2a4946c4")
	sb.Report("protocol-client", "QUIT")
	sb.Report("link-disconnect")
	return append(steps, sb.Flush())
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
