// Command loadgen measures an OpenSMTPD filter on its pipe, without smtpd:
// it starts the filter process (filter-milter, built from ./cmd/filter-milter
// unless -filter names a binary), plays smtpd's side of the filter protocol
// (0.6, the line formats of Debian's smtpd 6.8 in testdata/transcripts),
// and drives SMTP sessions through it as fast as the filter answers.
//
//	go run ./integration/bench/loadgen -sessions 10 -messages 500 -size 2KB -concurrency 10 -milter unix:/run/null.sock [-floor]
//
// Each session: link-connect and connect, link-greeting and ehlo, then per
// message protocol-client MAIL and mail-from, tx-begin, RCPT and rcpt-to,
// DATA and data, the data lines (smtpd's Received header first, still
// dot-stuffed, in batches of about 64 KB so that sessions interleave as they
// do in smtpd's lookup process), the final ".", and once the filter has
// written every line back, commit; then tx-commit, tx-reset and finally
// link-disconnect. Reports go out only for the events the filter registered,
// requests only for the phases it registered, as smtpd does. Answers are
// matched to sessions by session id; every data line that comes back is
// checked (count and FNV-1a hash) against what was sent, and every answer
// must be proceed.
//
// It prints messages/s, the p50 and p99 of the time from the "." sent to
// the commit answer received, the filter process's peak RSS (VmHWM), and
// CPU per message of the filter process (and of -milter-pid processes).
// With -floor it runs integration/bench/floorfilter (answers proceed, echoes data
// lines) with the same load in the same run, -reps times alternating, and
// prints the ratios of the medians. With -baseline BIN it runs another
// filter-milter binary (an older revision, built by bench.sh from
// BENCH_BASELINE) with the same arguments and load, alternating with the
// current one, and prints the ratios new/old.
//
// With -inprocess the gateway runs inside loadgen (gateway.New + Run on
// in-memory pipes) instead of as a process, and -cpuprofile writes a CPU
// profile in which the gateway's goroutines carry the label side=filter:
//
//	go tool pprof -tagfocus side=filter -top profile.out
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/integration/bench/benchmsg"
	"github.com/filter-milter/filter-milter/milter"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

type sizeFlag int

func (s *sizeFlag) String() string { return strconv.Itoa(int(*s)) }
func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	*s = sizeFlag(n)
	return err
}

// parseSize reads 2048, 2KB, 2k, 100KB, 10MB, 10M (powers of 1024).
func parseSize(v string) (int, error) {
	u := strings.ToUpper(strings.TrimSpace(v))
	mult := 1
	for _, s := range []struct {
		suffix string
		mult   int
	}{{"KB", 1 << 10}, {"K", 1 << 10}, {"MB", 1 << 20}, {"M", 1 << 20}, {"B", 1}} {
		if strings.HasSuffix(u, s.suffix) {
			u, mult = strings.TrimSuffix(u, s.suffix), s.mult
			break
		}
	}
	n, err := strconv.Atoi(u)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 2048, 2KB, 100KB, 10MB)", v)
	}
	return n * mult, nil
}

type options struct {
	sessions, messages, concurrency, reps int
	size                                  int
	milters, filterArgs                   listFlag
	milterPIDs                            listFlag
	filter, floorFilter, baseline         string
	floor, inprocess                      bool
	cpuprofile, memprofile, jsonOut       string
	filterLog                             string
	maxRSS                                int // MiB; 0: no limit
	timeout                               time.Duration
	quiet                                 bool
}

func main() {
	var o options
	sz := sizeFlag(2048)
	flag.IntVar(&o.sessions, "sessions", 10, "SMTP sessions in all")
	flag.IntVar(&o.messages, "messages", 100, "messages per session")
	flag.Var(&sz, "size", "message size as queued (bytes, or with KB or MB)")
	flag.IntVar(&o.concurrency, "concurrency", 0, "sessions in flight at once (default: -sessions)")
	flag.Var(&o.milters, "milter", "a milter socket for the filter (-milter SPEC of filter-milter); repeatable")
	flag.StringVar(&o.filter, "filter", "", "the filter binary (default: build ./cmd/filter-milter into a temporary directory)")
	flag.Var(&o.filterArgs, "filter-arg", "one more argument for the filter; repeatable")
	flag.BoolVar(&o.floor, "floor", false, "also run the floor filter (integration/bench/floorfilter) with the same load, and print the ratios")
	flag.StringVar(&o.floorFilter, "floor-filter", "", "the floor filter binary (default: build ./integration/bench/floorfilter)")
	flag.StringVar(&o.baseline, "baseline", "", "also run this filter-milter binary (an older revision) with the same arguments and load, and print the ratios new/old")
	flag.IntVar(&o.reps, "reps", 1, "repetitions (with -floor or -baseline, the filters alternate); medians are reported")
	flag.BoolVar(&o.inprocess, "inprocess", false, "run the gateway inside loadgen instead of a filter process")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "with -inprocess: write a CPU profile here (gateway goroutines labelled side=filter)")
	flag.StringVar(&o.memprofile, "memprofile", "", "with -inprocess: write a heap profile here each time the RSS reaches a new high (at most every 500 ms)")
	flag.Var(&o.milterPIDs, "milter-pid", "a milter process whose CPU time counts in CPU per message; repeatable")
	flag.IntVar(&o.maxRSS, "max-rss", 0, "stop the run when the filter's RSS exceeds this many MiB (0: no limit)")
	flag.StringVar(&o.jsonOut, "json", "", "write the results as JSON to this file")
	flag.StringVar(&o.filterLog, "filter-log", "", "the filter's stderr (default: a file in the temporary directory, removed unless the run fails)")
	flag.DurationVar(&o.timeout, "timeout", 15*time.Minute, "give up after this long")
	flag.BoolVar(&o.quiet, "q", false, "print only the summary")
	reportDir := flag.String("report", "", "instead of a run: write the report of integration/bench/bench.sh's results in this directory to -out")
	reportOut := flag.String("out", "docs/benchmarks.md", "with -report: the report file")
	flag.Parse()
	if *reportDir != "" {
		if err := report(*reportDir, *reportOut); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		return
	}
	o.size = int(sz)
	if o.concurrency <= 0 || o.concurrency > o.sessions {
		o.concurrency = o.sessions
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// result is one run's figures.
type result struct {
	Name        string  `json:"name"`
	Messages    int     `json:"messages"`
	Seconds     float64 `json:"seconds"`
	MsgsPerSec  float64 `json:"msgs_per_s"`
	P50ms       float64 `json:"p50_ms"`
	P99ms       float64 `json:"p99_ms"`
	PeakRSSKiB  int     `json:"peak_rss_kib"`
	FilterCPUms float64 `json:"filter_cpu_ms_per_msg"`
	MilterCPUms float64 `json:"milter_cpu_ms_per_msg"`
	CPUms       float64 `json:"cpu_ms_per_msg"`
	Note        string  `json:"note,omitempty"`
	// A run stopped by -max-rss: what had happened by then.
	Stopped  bool        `json:"stopped,omitempty"`
	SentMiB  float64     `json:"sent_mib,omitempty"`
	RSSTrace []rssSample `json:"rss_trace,omitempty"`
}

// rssSample is the filter's RSS at a moment of a run.
type rssSample struct {
	Seconds float64 `json:"s"`
	SentMiB float64 `json:"sent_mib"` // data lines handed to the filter so far
	RSSMiB  float64 `json:"rss_mib"`
	Done    int64   `json:"done"` // messages committed so far
}

type summary struct {
	Sessions    int                 `json:"sessions"`
	Messages    int                 `json:"messages_per_session"`
	Size        int                 `json:"size"`
	Concurrency int                 `json:"concurrency"`
	Milters     []string            `json:"milters"`
	InProcess   bool                `json:"inprocess"`
	Runs        []result            `json:"runs"`
	Median      map[string]result   `json:"median"`
	Ratio       *map[string]float64 `json:"ratio_filter_to_floor,omitempty"`
}

func run(o options) error {
	tmp, err := os.MkdirTemp("", "loadgen-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	var filterBin, floorBin string
	if !o.inprocess {
		filterBin = o.filter
		if filterBin == "" {
			if filterBin, err = build(tmp, "./cmd/filter-milter", "filter-milter"); err != nil {
				return err
			}
		}
	}
	if o.floor {
		floorBin = o.floorFilter
		if floorBin == "" {
			if floorBin, err = build(tmp, "./integration/bench/floorfilter", "floorfilter"); err != nil {
				return err
			}
		}
	}
	if len(o.milters) == 0 {
		return errors.New("give at least one -milter SPEC")
	}
	msg := newMessage(o.size)
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()

	sum := summary{Sessions: o.sessions, Messages: o.messages, Size: o.size, Concurrency: o.concurrency,
		Milters: o.milters, InProcess: o.inprocess}
	if !o.quiet {
		fmt.Printf("load: %d sessions x %d messages of %d bytes (%d data lines), %d sessions at once\n",
			o.sessions, o.messages, o.size, len(msg.lines), o.concurrency)
	}
	byName := map[string][]result{}
	for rep := 0; rep < o.reps; rep++ {
		var order []string
		if o.floor {
			order = append(order, "floor")
		}
		if o.baseline != "" {
			order = append(order, "baseline")
		}
		order = append(order, "filter-milter")
		if rep%2 == 1 {
			slices.Reverse(order)
		}
		for _, name := range order {
			var t target
			var err error
			switch {
			case name == "floor":
				t, err = startProcess(tmp, "floor", floorBin, nil, o.filterLog, nil)
			case name == "baseline":
				t, err = startProcess(tmp, "baseline", o.baseline, filterArgs(o), o.filterLog, o.milterPIDs)
			case o.inprocess:
				t, err = startInProcess(o.milters, o.cpuprofile, rep)
			default:
				t, err = startProcess(tmp, "filter-milter", filterBin, filterArgs(o), o.filterLog, o.milterPIDs)
			}
			if err != nil {
				return err
			}
			r, err := drive(ctx, o, t, msg)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			r.Name = name
			if !o.quiet || o.reps == 1 {
				printResult(r)
			}
			sum.Runs = append(sum.Runs, r)
			byName[name] = append(byName[name], r)
		}
	}
	sum.Median = map[string]result{}
	for name, rs := range byName {
		sum.Median[name] = median(name, rs)
	}
	if o.reps > 1 {
		fmt.Printf("medians of %d runs:\n", o.reps)
		for _, name := range []string{"floor", "baseline", "filter-milter"} {
			if r, ok := sum.Median[name]; ok {
				printResult(r)
			}
		}
	}
	if o.floor {
		f, fl := sum.Median["filter-milter"], sum.Median["floor"]
		ratio := map[string]float64{
			"throughput":  f.MsgsPerSec / fl.MsgsPerSec,
			"cpu_per_msg": f.CPUms / fl.CPUms,
			"p50":         f.P50ms / fl.P50ms,
		}
		sum.Ratio = &ratio
		fmt.Printf("ratio filter-milter/floor: throughput %.2f, CPU per message %.2f (filter process only: %.2f), p50 %.2f\n",
			ratio["throughput"], ratio["cpu_per_msg"], f.FilterCPUms/fl.FilterCPUms, ratio["p50"])
	}
	if o.baseline != "" {
		f, old := sum.Median["filter-milter"], sum.Median["baseline"]
		fmt.Printf("ratio new/old (filter-milter/baseline): throughput %.2f, filter CPU per message %.2f, p50 %.2f\n",
			f.MsgsPerSec/old.MsgsPerSec, f.FilterCPUms/old.FilterCPUms, f.P50ms/old.P50ms)
	}
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent(sum, "", "  ")
		if err := os.WriteFile(o.jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// filterArgs are the arguments of a filter-milter process: its milters,
// then -filter-arg's.
func filterArgs(o options) []string {
	var args []string
	for _, m := range o.milters {
		args = append(args, "-milter", m)
	}
	return append(args, o.filterArgs...)
}

func printResult(r result) {
	cpu := fmt.Sprintf("CPU %.3f ms/msg", r.CPUms)
	if r.MilterCPUms > 0 {
		cpu += fmt.Sprintf(" (filter %.3f + milter %.3f)", r.FilterCPUms, r.MilterCPUms)
	}
	note := ""
	if r.Note != "" {
		note = "; " + r.Note
	}
	fmt.Printf("%-13s %7d msgs in %7.3fs = %8.1f msgs/s; \".\"->commit p50 %.3f ms, p99 %.3f ms; peak RSS %.1f MiB; %s%s\n",
		r.Name, r.Messages, r.Seconds, r.MsgsPerSec, r.P50ms, r.P99ms, float64(r.PeakRSSKiB)/1024, cpu, note)
}

func median(name string, rs []result) result {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return result{
		Name:        name,
		Messages:    rs[0].Messages,
		Seconds:     pick(func(r result) float64 { return r.Seconds }),
		MsgsPerSec:  pick(func(r result) float64 { return r.MsgsPerSec }),
		P50ms:       pick(func(r result) float64 { return r.P50ms }),
		P99ms:       pick(func(r result) float64 { return r.P99ms }),
		PeakRSSKiB:  int(pick(func(r result) float64 { return float64(r.PeakRSSKiB) })),
		FilterCPUms: pick(func(r result) float64 { return r.FilterCPUms }),
		MilterCPUms: pick(func(r result) float64 { return r.MilterCPUms }),
		CPUms:       pick(func(r result) float64 { return r.CPUms }),
		Note:        rs[0].Note,
		Stopped:     rs[0].Stopped,
		SentMiB:     rs[0].SentMiB,
		RSSTrace:    rs[0].RSSTrace,
	}
}

// build compiles a main package of this module into dir.
func build(dir, pkg, name string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-buildvcs=false", "-o", bin, pkg)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s in %s: %v\n%s", pkg, root, err, out)
	}
	return bin, nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.Contains(b, []byte("module github.com/filter-milter/filter-milter\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the filter-milter module: run loadgen from the repository, or give -filter and -floor-filter")
		}
		dir = parent
	}
}

// target is a running filter: smtpd's ends of its pipes, and its figures.
type target struct {
	in   io.WriteCloser
	out  io.Reader
	pid  int // the process whose RSS is watched: the filter, or loadgen itself
	note string
	// finish waits for the filter to end after in is closed, and returns
	// the CPU time it used (the filter's; with -inprocess the whole
	// process's, loadgen included).
	finish  func() (time.Duration, error)
	milters []int // milter processes whose CPU counts
	logPath string
}

func startProcess(tmp, name, bin string, args []string, logPath string, milterPIDs []string) (target, error) {
	cmd := exec.Command(bin, args...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return target{}, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return target{}, err
	}
	if logPath == "" {
		logPath = filepath.Join(tmp, name+".log")
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return target{}, err
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return target{}, fmt.Errorf("starting %s: %w", bin, err)
	}
	t := target{in: in, out: bufio.NewReaderSize(out, 256<<10), pid: cmd.Process.Pid, logPath: logPath}
	for _, p := range milterPIDs {
		n, err := strconv.Atoi(p)
		if err != nil {
			return target{}, fmt.Errorf("-milter-pid %q: %v", p, err)
		}
		t.milters = append(t.milters, n)
	}
	t.finish = func() (time.Duration, error) {
		err := cmd.Wait()
		logf.Close()
		if err != nil {
			return 0, fmt.Errorf("%s exited: %v; its log: %s", name, err, logPath)
		}
		return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
	}
	return t, nil
}

// startInProcess runs the gateway on in-memory pipes in this process, with
// the production logger at its default level writing to io.Discard.
func startInProcess(specs []string, cpuprofile string, rep int) (target, error) {
	var pools []*milter.Pool
	for _, s := range specs {
		c, err := milter.ParseConfig(s, milter.DefaultOptions)
		if err != nil {
			return target{}, err
		}
		pools = append(pools, milter.NewPool(c))
	}
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = ""
	logger := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(io.Discard), zapcore.InfoLevel))
	g := gateway.New(gateway.Config{Milters: pools, DefaultAction: gateway.Tempfail, Log: logger})
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	var prof *os.File
	if cpuprofile != "" {
		name := cpuprofile
		if rep > 0 {
			name = fmt.Sprintf("%s.%d", cpuprofile, rep)
		}
		f, err := os.Create(name)
		if err != nil {
			return target{}, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return target{}, err
		}
		prof = f
	}
	cpu0 := selfCPU()
	done := make(chan error, 1)
	go pprof.Do(context.Background(), pprof.Labels("side", "filter"), func(context.Context) {
		err := g.Run(inR, outW)
		_ = outW.Close()
		done <- err
	})
	return target{
		in: inW, out: bufio.NewReaderSize(outR, 256<<10), pid: os.Getpid(),
		note: "in-process: RSS and CPU are loadgen's whole process",
		finish: func() (time.Duration, error) {
			err := <-done
			if prof != nil {
				pprof.StopCPUProfile()
				prof.Close()
			}
			return selfCPU() - cpu0, err
		},
	}, nil
}

func writeHeapProfile(name string) {
	f, err := os.Create(name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: heap profile:", err)
	}
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is a process's user+system time from /proc/PID/stat (all its
// threads), in clock ticks of 10 ms.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may contain spaces: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// procStatus reads a field in KiB (VmRSS, VmHWM) of /proc/PID/status.
func procStatus(pid int, field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

// message is the data lines of one message, and what comes back.
type message struct {
	lines [][]byte
	hash  uint64 // FNV-1a of every line followed by '\n'
	size  int    // bytes as queued (CRLF line ends)
}

// newMessage builds the benchmark message of about size bytes (package
// benchmsg) and its hash.
func newMessage(size int) message {
	lines, queued := benchmsg.Lines(size)
	m := message{lines: lines, size: queued}
	h := fnv.New64a()
	for _, l := range lines {
		h.Write(l)
		h.Write([]byte{'\n'})
	}
	m.hash = h.Sum64()
	return m
}

// smtpd is loadgen's side of one filter.
type smtpd struct {
	t       target
	phases  map[string]bool
	reports map[string]bool
	allRep  bool

	wch  chan *[]byte // batches of lines for the writer
	wErr atomic.Value

	mu   sync.RWMutex
	sess map[[16]byte]*session
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 80<<10); return &b }}

type answer struct {
	dot   bool
	lines int
	hash  uint64
	text  string // a filter-result other than proceed; "" for proceed
}

type session struct {
	id    [16]byte
	ch    chan answer
	lines int    // the reader's: data lines echoed in the current message
	hash  uint64 // the reader's: FNV-1a of them
	lat   []time.Duration
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func drive(ctx context.Context, o options, t target, msg message) (result, error) {
	s := &smtpd{t: t, phases: map[string]bool{}, reports: map[string]bool{}, wch: make(chan *[]byte, 64),
		sess: map[[16]byte]*session{}}
	cpuMilters0 := map[int]time.Duration{}
	for _, p := range t.milters {
		c, err := procCPU(p)
		if err != nil {
			return result{}, fmt.Errorf("milter pid %d: %v", p, err)
		}
		cpuMilters0[p] = c
	}
	rd := t.out.(*bufio.Reader)
	if err := s.handshake(rd); err != nil {
		_ = t.in.Close()
		_, ferr := t.finish()
		return result{}, errors.Join(err, ferr)
	}
	writerDone := make(chan struct{})
	go s.writer(writerDone)
	readerDone := make(chan error, 1)
	go func() { readerDone <- s.read(rd) }()

	// Watch the filter's memory.
	var peakRSS atomic.Int64
	var sent atomic.Int64      // bytes of data lines handed to the writer
	var committed atomic.Int64 // messages whose commit was answered
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	rssExceeded := make(chan int, 1)
	var trace []rssSample
	start := time.Now()
	go func() {
		defer close(watchDone)
		var lastHeap time.Time
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopWatch:
				return
			case <-tick.C:
				rss := procStatus(t.pid, "VmRSS")
				if i%20 == 0 {
					trace = append(trace, rssSample{Seconds: time.Since(start).Seconds(), SentMiB: float64(sent.Load()) / (1 << 20),
						RSSMiB: float64(rss) / 1024, Done: committed.Load()})
				}
				if int64(rss) > peakRSS.Load() {
					peakRSS.Store(int64(rss))
					if o.memprofile != "" && t.pid == os.Getpid() && time.Since(lastHeap) > 500*time.Millisecond {
						writeHeapProfile(o.memprofile)
						lastHeap = time.Now()
					}
				}
				if o.maxRSS > 0 && rss > o.maxRSS<<10 {
					select {
					case rssExceeded <- rss:
					default:
					}
					return
				}
			}
		}
	}()

	errc := make(chan error, o.concurrency)
	var next atomic.Int64
	var wg sync.WaitGroup
	var all []*session
	var allMu sync.Mutex
	for w := 0; w < o.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := next.Add(1)
				if n > int64(o.sessions) {
					return
				}
				ss := &session{ch: make(chan answer, 8)}
				copy(ss.id[:], fmt.Sprintf("%08x%08x", rand.Uint32(), uint32(n)))
				allMu.Lock()
				all = append(all, ss)
				allMu.Unlock()
				if err := s.session(ctx, ss, o.messages, msg, &sent, &committed); err != nil {
					errc <- fmt.Errorf("session %s: %w", ss.id, err)
					return
				}
			}
		}()
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()
	var runErr error
	stoppedRSS := 0
	stopped := "" // why the run was cut short: -max-rss or -timeout
	select {
	case <-allDone:
	case err := <-errc:
		runErr = err
	case stoppedRSS = <-rssExceeded:
		stopped = fmt.Sprintf("the filter's RSS reached %.0f MiB (over -max-rss %d MiB)", float64(stoppedRSS)/1024, o.maxRSS)
	case <-ctx.Done():
		stopped = fmt.Sprintf("-timeout %v", o.timeout)
	}
	elapsed := time.Since(start)
	sentAtEnd := float64(sent.Load()) / (1 << 20) // before a stopped run's sessions drain
	close(stopWatch)
	<-watchDone
	hwm := procStatus(t.pid, "VmHWM")
	trace = append(trace, rssSample{Seconds: elapsed.Seconds(), SentMiB: sentAtEnd,
		RSSMiB: float64(procStatus(t.pid, "VmRSS")) / 1024, Done: committed.Load()})
	var milterCPU time.Duration
	for _, p := range t.milters {
		c, err := procCPU(p)
		if err == nil {
			milterCPU += c - cpuMilters0[p]
		}
	}
	if runErr != nil || stopped != "" {
		if t.pid != os.Getpid() {
			_ = syscall.Kill(t.pid, syscall.SIGKILL)
		}
		_ = t.in.Close()
		_, _ = t.finish()
		if runErr != nil {
			return result{}, fmt.Errorf("%w (filter log: %s)", runErr, t.logPath)
		}
		// Stopped by -max-rss or -timeout: a result, so that the report
		// has the figures of the run so far.
		n := trace[len(trace)-1].Done
		return result{
			Messages: int(n), Seconds: elapsed.Seconds(), MsgsPerSec: float64(n) / elapsed.Seconds(),
			PeakRSSKiB: max(hwm, int(peakRSS.Load())), Stopped: true, SentMiB: sentAtEnd, RSSTrace: trace,
			Note: fmt.Sprintf("stopped: %s after %.0f MiB of data lines were sent, in %.1fs, %d messages committed",
				stopped, sentAtEnd, elapsed.Seconds(), n),
		}, nil
	}
	if err, _ := s.wErr.Load().(error); err != nil {
		return result{}, err
	}
	close(s.wch)
	<-writerDone
	_ = t.in.Close()
	// The filter ends once it has read everything: its stdout closes (the
	// reader sees EOF) before it exits, and only then may Wait close the pipe.
	rerr := <-readerDone
	cpu, err := t.finish()
	if err != nil {
		return result{}, err
	}
	if rerr != nil {
		return result{}, rerr
	}
	var lat []time.Duration
	for _, ss := range all {
		lat = append(lat, ss.lat...)
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		i := int(p * float64(len(lat)-1))
		return float64(lat[i]) / float64(time.Millisecond)
	}
	n := len(lat)
	r := result{
		Messages: n, Seconds: elapsed.Seconds(), MsgsPerSec: float64(n) / elapsed.Seconds(),
		P50ms: pct(0.50), P99ms: pct(0.99), PeakRSSKiB: max(hwm, int(peakRSS.Load())), Note: t.note,
		SentMiB: float64(sent.Load()) / (1 << 20), RSSTrace: trace,
		FilterCPUms: float64(cpu) / float64(time.Millisecond) / float64(n),
		MilterCPUms: float64(milterCPU) / float64(time.Millisecond) / float64(n),
	}
	r.CPUms = r.FilterCPUms + r.MilterCPUms
	return r, nil
}

// handshake sends smtpd 6.8's configuration and reads the registrations.
func (s *smtpd) handshake(rd *bufio.Reader) error {
	if _, err := io.WriteString(s.t.in, "config|smtpd-version|6.8.0p2\nconfig|smtp-session-timeout|300\n"+
		"config|subsystem|smtp-in\nconfig|admd|mx.bench.example\nconfig|ready\n"); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	for {
		l, err := rd.ReadString('\n')
		if err != nil {
			return fmt.Errorf("handshake: reading the filter's registrations: %w", err)
		}
		l = strings.TrimSuffix(l, "\n")
		if l == "register|ready" {
			return nil
		}
		f := strings.Split(l, "|")
		if len(f) != 4 || f[0] != "register" || f[2] != "smtp-in" {
			return fmt.Errorf("handshake: unexpected line %q", l)
		}
		switch f[1] {
		case "filter":
			s.phases[f[3]] = true
		case "report":
			if f[3] == "*" {
				s.allRep = true
			}
			s.reports[f[3]] = true
		}
	}
}

// writer owns the filter's stdin: batches go out whole, and the buffer is
// flushed whenever nothing more is queued.
func (s *smtpd) writer(done chan struct{}) {
	defer close(done)
	bw := bufio.NewWriterSize(s.t.in, 256<<10)
	failed := false
	for b := range s.wch {
		if !failed {
			if _, err := bw.Write(*b); err != nil {
				s.wErr.Store(fmt.Errorf("writing to the filter: %w", err))
				failed = true
			} else if len(s.wch) == 0 {
				if err := bw.Flush(); err != nil {
					s.wErr.Store(fmt.Errorf("writing to the filter: %w", err))
					failed = true
				}
			}
		}
		*b = (*b)[:0]
		bufPool.Put(b)
	}
	if !failed {
		_ = bw.Flush()
	}
}

// read dispatches the filter's lines to their sessions.
func (s *smtpd) read(rd *bufio.Reader) error {
	var long []byte
	for {
		l, err := rd.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long, l...)
			continue
		}
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if long != nil {
			l = append(long, l...)
			long = nil
		}
		l = l[:len(l)-1]
		if err := s.dispatch(l); err != nil {
			return err
		}
	}
}

func (s *smtpd) dispatch(l []byte) error {
	var rest []byte
	dataline := false
	switch {
	case bytes.HasPrefix(l, []byte("filter-dataline|")):
		rest, dataline = l[len("filter-dataline|"):], true
	case bytes.HasPrefix(l, []byte("filter-result|")):
		rest = l[len("filter-result|"):]
	default:
		// smtpd would die on anything else (a report| line above all).
		return fmt.Errorf("the filter wrote a line smtpd does not take: %q", l)
	}
	if len(rest) < 34 || rest[16] != '|' || rest[33] != '|' {
		return fmt.Errorf("malformed line from the filter: %q", l)
	}
	var id [16]byte
	copy(id[:], rest)
	s.mu.RLock()
	ss := s.sess[id]
	s.mu.RUnlock()
	if ss == nil {
		return fmt.Errorf("answer for an unknown session: %q", l)
	}
	payload := rest[34:]
	switch {
	case dataline && len(payload) == 1 && payload[0] == '.':
		ss.ch <- answer{dot: true, lines: ss.lines, hash: ss.hash}
		ss.lines, ss.hash = 0, fnvOffset
	case dataline:
		h := ss.hash
		for _, c := range payload {
			h = (h ^ uint64(c)) * fnvPrime
		}
		ss.hash = (h ^ '\n') * fnvPrime
		ss.lines++
	case string(payload) == "proceed":
		ss.ch <- answer{}
	default:
		ss.ch <- answer{text: string(payload)}
	}
	return nil
}

// session plays one SMTP session with n messages.
func (s *smtpd) session(ctx context.Context, ss *session, n int, msg message, sent, committed *atomic.Int64) error {
	ss.hash = fnvOffset
	s.mu.Lock()
	s.sess[ss.id] = ss
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.sess, ss.id)
		s.mu.Unlock()
	}()
	sid := string(ss.id[:])
	var tokN uint32
	b := s.batch()
	ts := func() string {
		now := time.Now()
		return fmt.Sprintf("%d.%06d", now.Unix(), now.Nanosecond()/1000)
	}
	rep := func(event, params string) {
		if s.allRep || s.reports[event] {
			*b = fmt.Appendf(*b, "report|0.6|%s|smtp-in|%s|%s%s\n", ts(), event, sid, params)
		}
	}
	// req adds a filter request and reports whether the filter registered
	// the phase (and so will answer it).
	req := func(phase, param string) bool {
		if !s.phases[phase] {
			return false
		}
		tokN++
		*b = fmt.Appendf(*b, "filter|0.6|%s|smtp-in|%s|%s|%08x%08x|%s\n", ts(), phase, sid, rand.Uint32(), tokN, param)
		return true
	}
	await := func(what string) error {
		s.send(b)
		b = s.batch()
		t := time.NewTimer(2 * time.Minute)
		defer t.Stop()
		select {
		case a := <-ss.ch:
			if a.dot {
				return fmt.Errorf("%s: data lines came back instead of an answer", what)
			}
			if a.text != "" {
				return fmt.Errorf("%s: the filter answered %q", what, a.text)
			}
			return nil
		case <-t.C:
			return fmt.Errorf("%s: no answer within 2 minutes", what)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	step := func(what string, asked bool) error {
		if !asked {
			return nil
		}
		return await(what)
	}
	rep("link-connect", "|localhost|pass|127.0.0.1:50230|127.0.0.1:2525")
	if err := step("connect", req("connect", "localhost|127.0.0.1")); err != nil {
		return err
	}
	rep("link-greeting", "|mx.bench.example")
	rep("protocol-client", "|EHLO client.bench.example")
	if err := step("ehlo", req("ehlo", "client.bench.example")); err != nil {
		return err
	}
	for m := 0; m < n; m++ {
		msgid := fmt.Sprintf("%08x", rand.Uint32())
		rep("protocol-client", fmt.Sprintf("|MAIL FROM:<sender@bench.example> SIZE=%d", msg.size))
		if err := step("mail-from", req("mail-from", "sender@bench.example")); err != nil {
			return err
		}
		rep("tx-begin", "|"+msgid)
		rep("tx-mail", "|"+msgid+"|ok|sender@bench.example")
		rep("protocol-client", "|RCPT TO:<rcpt@bench.example>")
		if err := step("rcpt-to", req("rcpt-to", "rcpt@bench.example")); err != nil {
			return err
		}
		rep("tx-envelope", "|"+msgid+"|"+msgid+"0924d652")
		rep("tx-rcpt", "|"+msgid+"|ok|rcpt@bench.example")
		rep("protocol-client", "|DATA")
		if err := step("data", req("data", "")); err != nil {
			return err
		}
		rep("tx-data", "|"+msgid+"|ok")
		var t0 time.Time
		if s.phases["data-line"] {
			tokN++
			prefix := fmt.Appendf(nil, "filter|0.6|%s|smtp-in|data-line|%s|%08x%08x|", ts(), sid, rand.Uint32(), tokN)
			for _, l := range msg.lines {
				*b = append(*b, prefix...)
				*b = append(*b, l...)
				*b = append(*b, '\n')
				sent.Add(int64(len(l)))
				if len(*b) >= 64<<10 {
					s.send(b)
					b = s.batch()
				}
			}
			*b = append(*b, prefix...)
			*b = append(*b, ".\n"...)
			t0 = time.Now()
			s.send(b)
			b = s.batch()
			t := time.NewTimer(5 * time.Minute)
			select {
			case a := <-ss.ch:
				t.Stop()
				if !a.dot {
					return fmt.Errorf("data lines: got an answer %q before the final \".\"", a.text)
				}
				if a.lines != len(msg.lines) || a.hash != msg.hash {
					return fmt.Errorf("data lines: %d came back (hash %x), want %d (hash %x): the filter changed the message",
						a.lines, a.hash, len(msg.lines), msg.hash)
				}
			case <-t.C:
				return errors.New("data lines: the final \".\" did not come back within 5 minutes")
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		} else {
			t0 = time.Now()
		}
		rep("protocol-client", "|.")
		if err := step("commit", req("commit", "")); err != nil {
			return err
		}
		ss.lat = append(ss.lat, time.Since(t0))
		committed.Add(1)
		rep("tx-commit", fmt.Sprintf("|%s|%d", msgid, msg.size))
		rep("tx-reset", "|"+msgid)
	}
	rep("protocol-client", "|QUIT")
	if s.phases["quit"] {
		if err := step("quit", req("quit", "")); err != nil {
			return err
		}
	}
	rep("link-disconnect", "")
	s.send(b)
	return nil
}

func (s *smtpd) batch() *[]byte { return bufPool.Get().(*[]byte) }

func (s *smtpd) send(b *[]byte) {
	if len(*b) == 0 {
		bufPool.Put(b)
		return
	}
	s.wch <- b
}
