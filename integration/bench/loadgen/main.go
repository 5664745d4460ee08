// Command loadgen measures an OpenSMTPD filter on its pipe, without smtpd:
// it starts the filter process (filter-milter, built from ./cmd/filter-milter
// unless -filter names a binary), plays smtpd's side of the filter protocol
// with package smtpdplay (0.6, the line formats of Debian's smtpd 6.8 in
// testdata/transcripts), and drives SMTP sessions through it as fast as the
// filter answers.
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
// requests only for the phases it registered, as smtpd does. Every request
// carries a fresh token; smtpdplay checks each line the filter writes as
// smtpd would, every data line that comes back (count and FNV-1a hash)
// against what was sent, and every answer must be proceed.
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
	"github.com/filter-milter/filter-milter/smtpdplay"
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
	if o.sessions < 1 || o.messages < 1 {
		fmt.Fprintln(os.Stderr, "loadgen: -sessions and -messages must be at least 1")
		os.Exit(2)
	}
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
		pools = append(pools, milter.NewPool(c, nil))
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

// message is the benchmark message (package benchmsg): its data lines as
// smtpd sends them, dot-stuffed, and its size as queued.
type message struct {
	lines [][]byte
	size  int // bytes as queued (CRLF line ends)
}

func newMessage(size int) message {
	lines, queued := benchmsg.Lines(size)
	return message{lines: lines, size: queued}
}

// answerWait bounds each wait for the filter (an answer, the echo of a
// message, the end of its output): a hung filter fails the run instead of
// hanging it. A 10 MB message among a thousand in flight can take minutes.
const answerWait = 5 * time.Minute

func drive(ctx context.Context, o options, t target, msg message) (result, error) {
	cpuMilters0 := map[int]time.Duration{}
	for _, p := range t.milters {
		c, err := procCPU(p)
		if err != nil {
			return result{}, fmt.Errorf("milter pid %d: %v", p, err)
		}
		cpuMilters0[p] = c
	}
	// smtpd 6.8 (protocol 0.6), the version of Debian's transcripts
	p, err := smtpdplay.Start(t.in, t.out, smtpdplay.Config{Admd: "mx.bench.example", Wait: answerWait})
	if err != nil {
		_ = t.in.Close()
		_, ferr := t.finish()
		return result{}, errors.Join(err, ferr)
	}

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
	var lat []time.Duration // "." sent to commit answered, of every message
	var latMu sync.Mutex
	for w := 0; w < o.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A worker plays its sessions one after the other on one
			// smtpdplay.Session, renewed (a fresh id) for each.
			sc := newScript(p, msg.size)
			var s *smtpdplay.Session
			var mine []time.Duration
			defer func() {
				latMu.Lock()
				lat = append(lat, mine...)
				latMu.Unlock()
			}()
			for next.Add(1) <= int64(o.sessions) {
				if s == nil {
					s = p.NewSession()
				} else if err := s.Renew(); err != nil {
					errc <- err
					return
				}
				if err := sc.play(s, o.messages, msg, &sent, &committed, &mine); err != nil {
					errc <- err
					return
				}
			}
			if s != nil {
				if err := s.End(); err != nil {
					errc <- err
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
	// Close closes the filter's stdin and waits for its stdout to end: the
	// filter closes it once it has answered everything, before it exits,
	// and only then may finish's Wait close the pipe.
	perr := p.Close()
	cpu, err := t.finish()
	if err != nil {
		return result{}, err
	}
	if perr != nil {
		return result{}, perr
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

// script is one SMTP session as smtpd 6.8 reports and filters it,
// encoded once per worker (smtpdplay.Steps leaves out the reports and
// requests the filter did not register, as smtpd does): link-connect and
// connect, link-greeting and ehlo, then per message MAIL, tx-begin and
// RCPT, DATA, tx-data, the data lines (PlayMessage), "." and commit, then
// tx-commit and tx-reset; finally QUIT and link-disconnect.
type script struct {
	connect, ehlo       *smtpdplay.Step
	firstMail, nextMail *smtpdplay.Step // nextMail first ends the previous transaction
	rcpt, data, txData  *smtpdplay.Step
	commit              *smtpdplay.Step
	quit, disconnect    *smtpdplay.Step
}

func newScript(p *smtpdplay.Player, size int) script {
	msgid := fmt.Sprintf("%08x", rand.Uint32())
	b := p.NewSteps()
	var sc script
	b.Report("link-connect", "localhost", "pass", "127.0.0.1:50230", "127.0.0.1:2525")
	sc.connect = b.Request("connect", "localhost|127.0.0.1")
	b.Report("link-greeting", "mx.bench.example")
	b.Report("protocol-client", "EHLO client.bench.example")
	sc.ehlo = b.Request("ehlo", "client.bench.example")
	mail := func() *smtpdplay.Step {
		b.Report("protocol-client", fmt.Sprintf("MAIL FROM:<sender@bench.example> SIZE=%d", size))
		return b.Request("mail-from", "sender@bench.example")
	}
	endTx := func() {
		b.Report("tx-commit", msgid, strconv.Itoa(size))
		b.Report("tx-reset", msgid)
	}
	sc.firstMail = mail()
	endTx()
	sc.nextMail = mail()
	b.Report("tx-begin", msgid)
	b.Report("tx-mail", msgid, "ok", "sender@bench.example")
	b.Report("protocol-client", "RCPT TO:<rcpt@bench.example>")
	sc.rcpt = b.Request("rcpt-to", "rcpt@bench.example")
	b.Report("tx-envelope", msgid, msgid+"0924d652")
	b.Report("tx-rcpt", msgid, "ok", "rcpt@bench.example")
	b.Report("protocol-client", "DATA")
	sc.data = b.Request("data", "")
	b.Report("tx-data", msgid, "ok")
	sc.txData = b.Flush()
	b.Report("protocol-client", ".")
	sc.commit = b.Request("commit", "")
	endTx()
	b.Report("protocol-client", "QUIT")
	sc.quit = b.Request("quit", "")
	b.Report("link-disconnect")
	sc.disconnect = b.Flush()
	return sc
}

// play plays one SMTP session with n messages (at least one) on s, and
// appends each message's time from "." sent to commit answered to lat.
func (sc script) play(s *smtpdplay.Session, n int, msg message, sent, committed *atomic.Int64, lat *[]time.Duration) error {
	for _, st := range []*smtpdplay.Step{sc.connect, sc.ehlo} {
		if err := s.Play(st); err != nil {
			return err
		}
	}
	for m := 0; m < n; m++ {
		mail := sc.nextMail
		if m == 0 {
			mail = sc.firstMail
		}
		for _, st := range []*smtpdplay.Step{mail, sc.rcpt, sc.data, sc.txData} {
			if err := s.Play(st); err != nil {
				return err
			}
		}
		t0 := time.Now() // a filter without data-line: from here
		if err := s.PlayMessage(msg.lines, func(dataBytes int) {
			sent.Add(int64(dataBytes))
			t0 = time.Now() // the last call follows the write of "."
		}); err != nil {
			return err
		}
		if err := s.Play(sc.commit); err != nil {
			return err
		}
		*lat = append(*lat, time.Since(t0))
		committed.Add(1)
	}
	for _, st := range []*smtpdplay.Step{sc.quit, sc.disconnect} {
		if err := s.Play(st); err != nil {
			return err
		}
	}
	return nil
}
