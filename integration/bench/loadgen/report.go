package main

// loadgen -report DIR -out FILE turns the raw results integration/bench/bench.sh
// collects in DIR into docs/benchmarks.md.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// e2eRun is one line of e2e.jsonl, written by bench.sh.
type e2eRun struct {
	ID        string `json:"id"`
	Size      int    `json:"size"`
	Count     int    `json:"count"`
	Rep       int    `json:"rep"`
	NS        int64  `json:"ns"`
	SrvCPU    int64  `json:"srv_cpu_ns"`
	MilterCPU int64  `json:"milter_cpu_ns"`
	FilterCPU int64  `json:"filter_cpu_ns"`
	Busy      int64  `json:"machine_busy_ns"`
	Queued    int    `json:"queued"`
	DKIM      string `json:"dkim"`
	Overflows int    `json:"overflows"`
	Error     string `json:"error"`
	// Per-message counters (bench.sh's BENCH_COUNTERS), when Ctr is 1:
	// the filter's and the milter's system calls from perf's tracepoints
	// (0 when perf could not count), the filter's read and write calls
	// from /proc/PID/io, its voluntary context switches summed over its
	// threads, and its thread count before and after the run. A run with
	// Rep 0 is a counter run, outside the timed medians.
	Ctr            int   `json:"ctr"`
	MilterWrite    int64 `json:"milter_write"`
	MilterWritev   int64 `json:"milter_writev"`
	MilterSendmsg  int64 `json:"milter_sendmsg"`
	MilterSyscalls int64 `json:"milter_syscalls"`
	FilterSyscalls int64 `json:"filter_syscalls"`
	FilterSyscr    int64 `json:"filter_syscr"`
	FilterSyscw    int64 `json:"filter_syscw"`
	FilterVcsw     int64 `json:"filter_vcsw"`
	Threads0       int   `json:"filter_threads0"`
	Threads1       int   `json:"filter_threads1"`
	// The rspamd setups' checks (rspamd.sh's rspamd_after): the messages
	// rspamd's log shows scanned in the run (nil for the other setups),
	// and whether a queued message carries rspamd's headers.
	RspamdScanned *int   `json:"rspamd_scanned"`
	RspamdHeaders string `json:"rspamd_headers"`
}

var setups = []struct{ id, name string }{
	{"A", "OpenSMTPD, no filter"},
	{"B", "OpenSMTPD + floor filter (integration/bench/floorfilter)"},
	{"Br", "OpenSMTPD + floor filter registering filter-milter's reports (floorfilter -reports)"},
	{"M", "OpenSMTPD + filter-milter + libmilter null milter (unix)"},
	{"Me", "OpenSMTPD + filter-milter + null milter asking for end of message only (unix)"},
	{"Mo", "OpenSMTPD + baseline filter-milter (BENCH_BASELINE) + libmilter null milter (unix)"},
	{"Ku", "OpenSMTPD + filter-milter + opendkim (unix)"},
	{"Ki", "OpenSMTPD + filter-milter + opendkim (inet)"},
	{"C", "OpenSMTPD + filter-dkimsign"},
	{"E", "Postfix, no milter"},
	{"Pu", "Postfix + opendkim (unix)"},
	{"R", "OpenSMTPD + filter-rspamd + rspamd normal worker (HTTP)"},
	{"Rm", "OpenSMTPD + filter-milter + rspamd proxy worker, milter, self_scan (inet)"},
}

// e2eStat is the medians of one setup at one size.
type e2eStat struct {
	ok, runs          int
	rate, min, max    float64 // msgs/s
	cpu, srv, milter  float64 // ms per message
	filter            float64 // ms per message of the filter process (part of srv)
	dkim              string
	errors            []string
	present           bool
	spreadPct         float64
	cpuMin, cpuMax    float64
	messagesPerRunMax int
	overflowRuns      int     // runs during which the machine's TCP listen queues overflowed
	foreign           float64 // median CPU seconds per run used by other programs (and the client)
	busyCPUs          float64 // median CPUs the machine kept busy during a run
}

func med(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func e2eStats(runs []e2eRun) map[string]map[int]*e2eStat {
	out := map[string]map[int]*e2eStat{}
	type acc struct {
		rate, cpu, srv, milter []float64
		foreign, filter, busy  []float64
		st                     *e2eStat
	}
	accs := map[string]map[int]*acc{}
	for _, r := range runs {
		if r.Rep == 0 {
			continue // a counter run: perf slows every system call
		}
		if accs[r.ID] == nil {
			accs[r.ID] = map[int]*acc{}
		}
		a := accs[r.ID][r.Size]
		if a == nil {
			a = &acc{st: &e2eStat{present: true}}
			accs[r.ID][r.Size] = a
		}
		a.st.runs++
		a.st.messagesPerRunMax = max(a.st.messagesPerRunMax, r.Count)
		if r.Overflows > 0 {
			a.st.overflowRuns++
		}
		if r.Error != "" {
			a.st.errors = append(a.st.errors, r.Error)
			continue
		}
		a.st.ok++
		n := float64(r.Count)
		a.rate = append(a.rate, n/(float64(r.NS)/1e9))
		a.srv = append(a.srv, float64(r.SrvCPU)/1e6/n)
		a.milter = append(a.milter, float64(r.MilterCPU)/1e6/n)
		a.cpu = append(a.cpu, float64(r.SrvCPU+r.MilterCPU)/1e6/n)
		a.foreign = append(a.foreign, float64(r.Busy-r.SrvCPU-r.MilterCPU)/1e9)
		a.filter = append(a.filter, float64(r.FilterCPU)/1e6/n)
		if r.NS > 0 {
			a.busy = append(a.busy, float64(r.Busy)/float64(r.NS))
		}
		if a.st.dkim == "" || r.DKIM == "no" {
			a.st.dkim = r.DKIM
		}
	}
	for id, bySize := range accs {
		out[id] = map[int]*e2eStat{}
		for size, a := range bySize {
			st := a.st
			if len(a.rate) > 0 {
				st.rate, st.min, st.max = med(a.rate), slices.Min(a.rate), slices.Max(a.rate)
				st.cpu, st.srv, st.milter = med(a.cpu), med(a.srv), med(a.milter)
				st.cpuMin, st.cpuMax = slices.Min(a.cpu), slices.Max(a.cpu)
				st.spreadPct = 100 * (st.max - st.min) / st.rate
				st.foreign = med(a.foreign)
				st.filter = med(a.filter)
				st.busyCPUs = med(a.busy)
			}
			out[id][size] = st
		}
	}
	return out
}

func readLG(dir, name string) (*summary, string) {
	b, err := os.ReadFile(filepath.Join(dir, "lg-"+name+".json"))
	if err != nil {
		txt, _ := os.ReadFile(filepath.Join(dir, "lg-"+name+".txt"))
		why := strings.TrimSpace(string(txt))
		if why == "" {
			why = "not run"
		}
		return nil, why
	}
	var s summary
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err.Error()
	}
	return &s, ""
}

func readKV(path string) map[string]string {
	m := map[string]string{}
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

type mdWriter struct{ b strings.Builder }

func (w *mdWriter) p(format string, a ...any) { fmt.Fprintf(&w.b, format+"\n", a...) }

func verdict(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**not met**"
}

// statsOf gives the medians of a setup at a size, or nil when none of
// its runs succeeded.
func statsOf(st map[string]map[int]*e2eStat) func(id string, size int) *e2eStat {
	return func(id string, size int) *e2eStat {
		if s := st[id][size]; s != nil && s.ok > 0 {
			return s
		}
		return nil
	}
}

func report(dir, out string) error {
	m := readKV(filepath.Join(dir, "machine.txt"))
	var runs []e2eRun
	if f, err := os.Open(filepath.Join(dir, "e2e.jsonl")); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var r e2eRun
			if err := json.Unmarshal(sc.Bytes(), &r); err == nil {
				runs = append(runs, r)
			}
		}
		f.Close()
	}
	st := e2eStats(runs)
	get := statsOf(st)

	var w mdWriter
	w.p("# filter-milter performance")
	w.p("")
	w.p("Written by `integration/bench/bench.sh` (`make bench`), run as root on %s: %s, %s CPUs (%s), %s RAM, kernel %s; Debian %s.",
		"the shared Debian bookworm VM", m["date"], m["nproc"], m["cpu"], m["mem"], m["kernel"], m["debian"])
	w.p("Commit %s%s, %s. Peers: OpenSMTPD %s, opendkim %s, libmilter %s, opensmtpd-filter-dkimsign %s, Postfix %s (`dpkg -x`).",
		m["commit"], dirtyNote(m["dirty"]), m["go"], m["opensmtpd"], m["opendkim"], m["libmilter"], m["dkimsign"], m["postfix"])
	w.p("The whole run took %s minutes. Load average at the end: %s. Figures vary by machine and hour (other programs share this machine's CPUs; treat a single figure as ±10–20 %%): only ratios between figures of one run compare, and the ratios here are of medians of runs interleaved in this run.",
		m["minutes"], m["load"])
	w.p("")
	w.p("    %s    # %s", strings.TrimSpace(m["command"]), m["settings"])
	w.p("")

	if m["baseline"] != "" {
		compareSection(&w, dir, m, get)
	}

	// ------------------------------------------------------------ targets
	ctr := counterStats(runs)
	targetsSection(&w, dir, m, get, ctr)
	bridgeSection(&w, m, get)
	countersSection(&w, m, get, ctr)

	// ------------------------------------------------------------ e2e
	w.p("## End to end: acceptance only")
	w.p("")
	w.p("Each run: two `smtp-source -d -s 5` processes (10 sessions, many messages per session), the second started once the first one's five connections are up (OpenSMTPD 6.8 listens with a backlog of 5; the kernel's listen-overflow counter is checked around every run); HELO, one recipient, a body of 78-character lines, to 127.0.0.1. Acceptance only: every OpenSMTPD has `smtpctl pause mda` and `pause mta` (its action relays to a port where nothing listens, never tried), Postfix puts each message on hold (`check_recipient_access inline:{bench.example=HOLD}`); each run checks that exactly the messages sent are queued, and one queued message for a DKIM signature; they are removed outside the measured window. Queues are on tmpfs (each MTA in its own mount namespace), so no fsync cost is measured. OpenSMTPD resolves 127.0.0.1 from /etc/hosts (`lookup file bind`, no DNS stall). Throughput: messages / (first client start → last client exit). CPU: cpuacct cgroup of the MTA's process tree (smtpd and its filter process; Postfix master and children) plus the milter daemon's own cgroup, per message; the client is not counted. *Of which the filter process*: the filter's own user+system time (/proc, 10 ms ticks), part of the MTA figure. *Other CPU*: machine busy time (/proc/stat) minus the MTA's and milter's during the run, i.e. the client plus every other program on the machine — a noise indicator. DKIM: opendkim (`Mode s`) and filter-dkimsign with the same 2048-bit RSA key, relaxed/relaxed, rsa-sha256. Medians of %s runs per cell, the order of the setups rotated every repetition, sizes alternating.", m["repsN"])
	w.p("")
	for _, size := range []int{2048, 102400} {
		w.p("### %s (%d messages per run)", sizeName(size), maxCount(st, size))
		w.p("")
		w.p("| setup | runs ok | msgs/s median (min–max) | CPU ms/msg (MTA + milter) | of which the filter process | × floor msgs/s | × floor CPU | DKIM-Signature | runs with listen overflows | other CPU s per run |")
		w.p("|---|---|---|---|---|---|---|---|---|---|")
		floor := get("B", size)
		for _, s := range setups {
			x := st[s.id][size]
			if x == nil && s.id == "Mo" {
				continue // no baseline in this run
			}
			if x == nil {
				w.p("| %s (%s) | not run | | | | | | | | |", s.name, s.id)
				continue
			}
			if x.ok == 0 {
				w.p("| %s (%s) | 0/%d | failed: %s | | | | | | | |", s.name, s.id, x.runs, oneLine(strings.Join(uniq(x.errors), "; ")))
				continue
			}
			rr, rc := "", ""
			if floor != nil {
				rr = fmt.Sprintf("%.2f", x.rate/floor.rate)
				rc = fmt.Sprintf("%.2f", x.cpu/floor.cpu)
			}
			cpu := fmt.Sprintf("%.2f", x.cpu)
			if x.milter > 0 {
				cpu = fmt.Sprintf("%.2f (%.2f + %.2f)", x.cpu, x.srv, x.milter)
			}
			dk := "—"
			if s.id == "Ku" || s.id == "Ki" || s.id == "C" || s.id == "Pu" {
				dk = x.dkim
			}
			note := ""
			if len(x.errors) > 0 {
				note = " — failed runs: " + oneLine(strings.Join(uniq(x.errors), "; "))
			}
			fp := "—"
			if x.filter > 0 {
				fp = fmt.Sprintf("%.2f", x.filter)
			}
			w.p("| %s (%s) | %d/%d | %.0f (%.0f–%.0f) | %s | %s | %s | %s | %s%s | %d | %.1f |", s.name, s.id, x.ok, x.runs, x.rate, x.min, x.max, cpu, fp, rr, rc, dk, note, x.overflowRuns, x.foreign)
		}
		w.p("")
	}
	rspamdSection(&w, runs, get)
	if b, err := os.ReadFile(filepath.Join(dir, "e2e-log-trouble.txt")); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		w.p("Lines of the MTA logs that mention an error or warning (first 20):")
		w.p("")
		w.p("```")
		w.p("%s", strings.TrimSpace(string(b)))
		w.p("```")
		w.p("")
	}

	// ------------------------------------------------------------ loadgen
	w.p("## filter-milter on its pipe (loadgen)")
	w.p("")
	w.p("`integration/bench/loadgen` plays smtpd 6.8 with package smtpdplay (protocol 0.6 lines, reports only for the events the filter registered) on the filter's stdin/stdout and checks every data line that comes back. filter-milter runs as a process (default log level, stderr to a file) with the libmilter null milter (`integration/bench/nullmilter`, every callback registered, no actions; in the last row the same milter started with `eom`, which negotiates every stage away but end of message); the floor is `integration/bench/floorfilter`. Floor and filter-milter alternate, medians of the runs. CPU is the filter process's (rusage) plus the milter process's (/proc, 10 ms ticks), per message; RSS is the filter's VmHWM.")
	w.p("")
	w.p("| load | milter socket | floor msgs/s | filter-milter msgs/s | × floor | `.`→commit p50 / p99 ms | filter CPU ms/msg | milter CPU ms/msg | × floor CPU (filter only) | filter-milter peak RSS MiB |")
	w.p("|---|---|---|---|---|---|---|---|---|---|")
	for _, n := range []string{"2k-unix", "2k-inet", "100k-unix", "100k-inet", "2k-unix-100s", "2k-unix-eom"} {
		s, why := readLG(dir, n)
		if s == nil {
			w.p("| %s | | failed: %s | | | | | | | |", n, oneLine(why))
			continue
		}
		f, fl := s.Median["filter-milter"], s.Median["floor"]
		sock := "unix"
		if strings.HasPrefix(s.Milters[0], "inet") {
			sock = "inet"
		}
		if strings.HasSuffix(n, "-eom") {
			sock += ", null milter asking for end of message only"
		}
		w.p("| %d sessions × %d × %s (%d runs) | %s | %.0f | %.0f | %.2f | %.2f / %.2f | %.3f | %.3f | %.1f | %.1f |",
			s.Concurrency, s.Messages, sizeName(s.Size), len(s.Runs)/2, sock, fl.MsgsPerSec, f.MsgsPerSec, f.MsgsPerSec/fl.MsgsPerSec,
			f.P50ms, f.P99ms, f.FilterCPUms, f.MilterCPUms, f.FilterCPUms/fl.FilterCPUms, float64(f.PeakRSSKiB)/1024)
	}
	w.p("")

	// ------------------------------------------------------------ memory
	w.p("## Memory: many sessions at once")
	w.p("")
	w.p("loadgen with every session open at once (`-concurrency` = `-sessions`), each sending its message in ~64 KB batches interleaved with the others' (as smtpd's lookup process interleaves sessions), filter-milter as a process with the libmilter null milter on a unix socket; peak RSS is the filter's VmHWM (and VmRSS sampled every 50 ms). A run is stopped when the filter's RSS passes `-max-rss`, or at its `-timeout`; the figures are then those of the run so far. At this commit the gateway keeps up to 1 MiB of a message in memory per session and 64 MiB for all sessions' messages together, and writes the rest to an unlinked temporary file in $TMPDIR; what else it holds per session and per queued line is in the findings below.")
	w.p("")
	w.p("| load | result | peak RSS MiB | msgs/s | filter CPU ms/msg |")
	w.p("|---|---|---|---|---|")
	for _, n := range []string{"mem-2k", "mem-big"} {
		s, why := readLG(dir, n)
		if s == nil {
			w.p("| %s | failed: %s | | | |", n, oneLine(why))
			continue
		}
		f := s.Median["filter-milter"]
		res := "completed"
		cpu := fmt.Sprintf("%.2f", f.FilterCPUms)
		if f.Stopped {
			res = oneLine(f.Note)
			cpu = "—"
		}
		w.p("| %d sessions at once × %d × %s | %s | %.0f | %.1f | %s |", s.Concurrency, s.Messages, sizeName(s.Size), res, float64(f.PeakRSSKiB)/1024, f.MsgsPerSec, cpu)
	}
	w.p("")
	if s, _ := readLG(dir, "mem-big"); s != nil && len(s.Median["filter-milter"].RSSTrace) > 0 {
		tr := s.Median["filter-milter"].RSSTrace
		w.p("RSS of filter-milter during the %d × %s run (one sample per second, every %d-th shown):", s.Sessions, sizeName(s.Size), max(1, len(tr)/12))
		w.p("")
		w.p("| seconds | data lines sent MiB | messages committed | RSS MiB |")
		w.p("|---|---|---|---|")
		step := max(1, len(tr)/12)
		for i, x := range tr {
			if i%step == 0 || i == len(tr)-1 {
				w.p("| %.0f | %.0f | %d | %.0f |", x.Seconds, x.SentMiB, x.Done, x.RSSMiB)
			}
		}
		w.p("")
	}

	// ------------------------------------------------------------ profile
	w.p("## CPU profile of the gateway under load")
	w.p("")
	w.p("`perf` is installed but the VM exposes no hardware counters (`perf stat -e instructions true`: %s), so the profile is Go's: loadgen `-inprocess` runs gateway.New(...).Run on in-memory pipes inside loadgen with runtime/pprof on, the gateway's goroutines labelled `side=filter`; the milter is the libmilter null milter on a unix socket (a separate process, not in the profile). `go tool pprof -tagfocus side=filter -relative_percentages` keeps only the gateway's samples; percentages are of those. In process, smtpd's pipe is an io.Pipe, so the system calls of the real stdin/stdout are missing here (they are in the process figures above). The shares below are cumulative and overlap (a function's share includes what it calls).", oneLine(m["perf"]))
	w.p("")
	for _, p := range []struct{ name, what string }{{"2k", "2 KB messages"}, {"100k", "100 KB messages"}} {
		if s, _ := readLG(dir, "prof-"+p.name); s != nil {
			f := s.Median["filter-milter"]
			w.p("### %s: %d sessions × %d messages, %.0f msgs/s in process", p.what, s.Concurrency, s.Messages, f.MsgsPerSec)
		} else {
			w.p("### %s", p.what)
		}
		w.p("")
		if cats := profileCategories(filepath.Join(dir, "pprof-"+p.name+"-cum.txt")); len(cats) > 0 {
			w.p("%s", renderCategories(cats))
			w.p("")
			w.p("Finding: %s.", finding(cats))
			w.p("")
		}
		if b, err := os.ReadFile(filepath.Join(dir, "pprof-"+p.name+"-top.txt")); err == nil {
			w.p("```")
			w.p("%s", strings.TrimSpace(trimPprofHeader(string(b))))
			w.p("```")
			w.p("")
		} else {
			w.p("no profile (the run failed)")
			w.p("")
		}
	}

	// ------------------------------------------------------------ go bench
	w.p("## Go benchmarks")
	w.p("")
	w.p("`go test -run XXX -bench . -benchmem -benchtime %s ./gateway ./milter` (the gateway benchmarks: a whole SMTP session with one message through gateway.New + Run on in-memory pipes, playing smtpd's lines as the 6.8 transcripts show; see gateway/bench_test.go and milter/bench_test.go for what each variant is). In CI they run with `-benchtime 1x`.", m["gotime"])
	w.p("")
	if b, err := os.ReadFile(filepath.Join(dir, "gobench.txt")); err == nil {
		w.p("```")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Benchmark") || strings.HasPrefix(l, "ok") || strings.HasPrefix(l, "FAIL") || strings.HasPrefix(l, "---") || strings.HasPrefix(l, "pkg:") {
				w.p("%s", l)
			}
		}
		w.p("```")
	} else {
		w.p("not run")
	}
	w.p("")
	notes := keptNotes(out)
	if notes == "" {
		notes = notesMarker + "\n\n## Notes\n\n(none yet)\n"
	}
	w.b.WriteString(notes)
	return os.WriteFile(out, []byte(w.b.String()), 0o644)
}

// compareSection is the current tree against the baseline binary
// (BENCH_BASELINE), measured in the same run: loadgen's invocations
// alternate the two binaries, and the end-to-end setups M and Mo take turns
// in every repetition. The bar of issue #14 is new/old ≥ 0.95 in throughput.
func compareSection(w *mdWriter, dir string, m map[string]string, get func(id string, size int) *e2eStat) {
	w.p("## New against old: %s against baseline %s", m["commit"], m["baseline"])
	w.p("")
	w.p("The current tree's binary and the one built from the baseline revision (`BENCH_BASELINE`, `git archive` of it, same Go), in the same run: loadgen (the pipe harness, libmilter null milter on a unix socket, 10 sessions) alternates the two binaries in each invocation; end to end, setups M (new) and Mo (old) each have their own smtpd and null milter and take turns in every repetition. Medians of %s runs. Throughput new/old ≥ 0.95 is the bar (CPU per message: new/old ≤ 1/0.95).", m["repsN"])
	w.p("")
	w.p("| measure | old (%s) | new (%s) | new/old | |", m["baseline"], m["commit"])
	w.p("|---|---|---|---|---|")
	row := func(what string, old, cur float64, format string, higherIsBetter bool) {
		if old <= 0 || cur <= 0 {
			w.p("| %s | no figures | | | |", what)
			return
		}
		r := cur / old
		ok := r >= 0.95
		if !higherIsBetter {
			ok = r <= 1/0.95
		}
		w.p("| %s | "+format+" | "+format+" | %.2f | %s |", what, old, cur, r, verdict(ok))
	}
	for _, c := range []struct{ name, what string }{{"cmp-2k", "2 KB"}, {"cmp-100k", "100 KB"}} {
		s, why := readLG(dir, c.name)
		if s == nil {
			w.p("| loadgen %s | failed: %s | | | |", c.what, oneLine(why))
			continue
		}
		old, cur := s.Median["baseline"], s.Median["filter-milter"]
		row("loadgen "+c.what+": msgs/s", old.MsgsPerSec, cur.MsgsPerSec, "%.0f", true)
		row("loadgen "+c.what+": filter CPU ms/msg", old.FilterCPUms, cur.FilterCPUms, "%.3f", false)
	}
	for _, size := range []int{2048, 102400} {
		old, cur := get("Mo", size), get("M", size)
		if old == nil || cur == nil {
			w.p("| end to end %s | no figures (see the end-to-end section) | | | |", sizeName(size))
			continue
		}
		row("end to end "+sizeName(size)+": msgs/s", old.rate, cur.rate, "%.0f", true)
		row("end to end "+sizeName(size)+": filter process CPU ms/msg", old.filter, cur.filter, "%.2f", false)
	}
	w.p("")
}

// goBenchMetric finds a custom metric (msgs/s) of one benchmark in go test's output.
func goBenchMetric(path, name, unit string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || !strings.HasPrefix(f[0], name+"-") && f[0] != name {
			continue
		}
		for i := 1; i < len(f); i++ {
			if f[i] == unit {
				v, _ := strconv.ParseFloat(f[i-1], 64)
				return v
			}
		}
	}
	return 0
}

func dirtyNote(d string) string {
	if d == "" || d == "0" {
		return ""
	}
	return fmt.Sprintf(" (with %s uncommitted changes in the tree)", d)
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

func maxCount(st map[string]map[int]*e2eStat, size int) int {
	n := 0
	for _, bySize := range st {
		if s := bySize[size]; s != nil {
			n = max(n, s.messagesPerRunMax)
		}
	}
	return n
}

func uniq(v []string) []string {
	s := slices.Clone(v)
	slices.Sort(s)
	return slices.Compact(s)
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ReplaceAll(s, "|", "\\|")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

func trimPprofHeader(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Time:") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

var pprofLine = regexp.MustCompile(`^\s*([\d.]+)(s|ms|us|µs|ns|min|h)?\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)(s|ms|us|µs|ns|min|h)?\s+([\d.]+)%\s+(.+)$`)

type category struct {
	what string
	pct  float64
}

// profileCategories reads the cumulative share of a few entry points of
// the gateway's work from `pprof -top -cum`.
func profileCategories(path string) []category {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	cum := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		mm := pprofLine.FindStringSubmatch(l)
		if mm == nil {
			continue
		}
		pct, _ := strconv.ParseFloat(mm[7], 64)
		cum[strings.TrimSpace(mm[8])] = pct
	}
	get := func(prefix string) (float64, bool) {
		best, found := 0.0, false
		for name, pct := range cum {
			if strings.HasPrefix(name, prefix) && pct >= best {
				best, found = pct, true
			}
		}
		return best, found
	}
	const gw = "github.com/filter-milter/filter-milter/gateway."
	rows := []struct{ what, prefix, minus string }{
		{"reading smtpd's lines (protocol.Reader, Parse, dispatch to sessions)", gw + "(*Gateway).Run", ""},
		{"session goroutines (everything a session does)", gw + "(*session).run", ""},
		{"  SMTP stages to the milter (connect, helo, mail, rcpt, data)", gw + "(*session).each", ""},
		{"  data lines as they come (keep, echo)", gw + "(*session).dataLine", gw + "(*session).finishData"},
		{"  end of data (message to the milter, lines written back)", gw + "(*session).finishData", ""},
		{"    of which the message to the milter (headers, body, end of message)", gw + "(*session).filterMessage", ""},
		{"  opening milter sessions (dial, negotiate)", gw + "(*session).openMilters", ""},
		{"  closing milter sessions", gw + "(*session).closeMilters", ""},
		{"  logging (zap)", "go.uber.org/zap.(*Logger).Info", ""},
		{"writing answers to smtpd (writer goroutine)", gw + "(*writer).run", ""},
		{"milter round trips (go-milter wire.ReadPacket: flush the command, wait, read the reply)", "github.com/d--j/go-milter/internal/wire.ReadPacket", ""},
		{"system calls", "internal/runtime/syscall", ""},
		{"memory allocation (mallocgc)", "runtime.mallocgc", ""},
		{"garbage collector background work", "runtime.gcBgMarkWorker", ""},
	}
	var out []category
	for _, r := range rows {
		v, found := get(r.prefix)
		if !found {
			continue
		}
		if r.minus != "" {
			m, _ := get(r.minus)
			v -= m
		}
		out = append(out, category{r.what, v})
	}
	return out
}

func renderCategories(cats []category) string {
	if len(cats) == 0 {
		return ""
	}
	var w strings.Builder
	w.WriteString("| where the gateway's CPU goes | cumulative share of its samples |\n|---|---|\n")
	for _, c := range cats {
		what := strings.TrimLeft(c.what, " ")
		fmt.Fprintf(&w, "| %s%s | %.1f %% |\n", strings.Repeat("↳ ", (len(c.what)-len(what))/2), what, c.pct)
	}
	return strings.TrimSpace(w.String())
}

// finding names what dominates a profile: the largest of the disjoint
// stages, and the largest of the cross-cutting costs.
func finding(cats []category) string {
	pick := func(names ...string) (category, bool) {
		var best category
		ok := false
		for _, c := range cats {
			for _, n := range names {
				if strings.HasPrefix(strings.TrimSpace(c.what), n) && c.pct > best.pct {
					best, ok = c, true
				}
			}
		}
		return best, ok
	}
	var parts []string
	if c, ok := pick("reading smtpd's lines", "data lines as they come", "end of data", "SMTP stages", "opening milter", "closing milter", "writing answers"); ok {
		parts = append(parts, fmt.Sprintf("the largest stage is %s (%.0f %%)", strings.TrimSpace(c.what), c.pct))
	}
	if c, ok := pick("system calls", "memory allocation", "milter round trips"); ok {
		parts = append(parts, fmt.Sprintf("the largest cross-cutting cost is %s (%.0f %%)", c.what, c.pct))
	}
	return strings.Join(parts, "; ")
}

// notesMarker starts the part of the report that bench.sh keeps across
// runs: notes written by hand about a run's figures.
const notesMarker = "<!-- bench.sh keeps everything below this line across runs -->"

func keptNotes(out string) string {
	b, err := os.ReadFile(out)
	if err != nil {
		return ""
	}
	if i := strings.Index(string(b), notesMarker); i >= 0 {
		return string(b[i:])
	}
	return ""
}

// getter is a setup's timed medians at one size, nil without a run that passed.
type getter func(id string, size int) *e2eStat

var sizes = []int{2048, 102400}

// ctrStat is the per-message counters of one setup at one size: medians of
// its counter runs (bench.sh's BENCH_COUNTERS) that passed their checks.
type ctrStat struct {
	runs               int
	rate               float64 // msgs/s during the counter runs
	roundTrips         float64 // the milter's replies: writev + sendmsg (libmilter writes each reply with one writev)
	milterWrite        float64 // the milter's write calls (libmilter: its worker pool's wake-up pipe)
	milterSC, filterSC float64 // all system calls (perf)
	filterRW           float64 // the filter's read and write calls (/proc/PID/io syscr + syscw)
	wakeups            float64 // the filter's voluntary context switches, summed over its threads
	threads0, threads1 int     // the filter's threads before the first and after the last counter run
	threadsChanged     bool
	perfCounted        bool
}

func counterStats(runs []e2eRun) map[string]map[int]*ctrStat {
	type acc struct {
		rate, rt, mw, msc, fsc, frw, wk []float64
		st                              *ctrStat
	}
	accs := map[string]map[int]*acc{}
	for _, r := range runs {
		if r.Ctr != 1 || r.Error != "" || r.Count == 0 || r.NS == 0 {
			continue
		}
		if accs[r.ID] == nil {
			accs[r.ID] = map[int]*acc{}
		}
		a := accs[r.ID][r.Size]
		if a == nil {
			a = &acc{st: &ctrStat{threads0: r.Threads0}}
			accs[r.ID][r.Size] = a
		}
		n := float64(r.Count)
		a.st.runs++
		a.st.threads1 = r.Threads1
		if r.Threads1 != r.Threads0 {
			a.st.threadsChanged = true
		}
		if r.FilterSyscalls > 0 {
			a.st.perfCounted = true
		}
		a.rate = append(a.rate, n/(float64(r.NS)/1e9))
		a.rt = append(a.rt, float64(r.MilterWritev+r.MilterSendmsg)/n)
		a.mw = append(a.mw, float64(r.MilterWrite)/n)
		a.msc = append(a.msc, float64(r.MilterSyscalls)/n)
		a.fsc = append(a.fsc, float64(r.FilterSyscalls)/n)
		a.frw = append(a.frw, float64(r.FilterSyscr+r.FilterSyscw)/n)
		a.wk = append(a.wk, float64(r.FilterVcsw)/n)
	}
	out := map[string]map[int]*ctrStat{}
	for id, bySize := range accs {
		out[id] = map[int]*ctrStat{}
		for size, a := range bySize {
			st := a.st
			st.rate, st.roundTrips, st.milterWrite = med(a.rate), med(a.rt), med(a.mw)
			st.milterSC, st.filterSC, st.filterRW, st.wakeups = med(a.msc), med(a.fsc), med(a.frw), med(a.wk)
			out[id][size] = st
		}
	}
	return out
}

// bridge is the limit of a milter bridge on smtpd at one size: a bridge
// costs at least smtpd's own work for the stream the bridge needs (the
// floor filter registering filter-milter's report events, setup Br, whose
// CPU includes the floor filter) plus the milter's own CPU (the null
// milter's cgroup in setup M). On a machine whose CPUs are all busy,
// throughput goes as the inverse of CPU per message, so the limit's
// msgs/s is Br's scaled by Br's CPU over the limit's.
type bridge struct {
	b, br, m  *e2eStat
	cpu, rate float64 // the limit: ms/msg, msgs/s
	stream    float64 // smtpd's cost of the report stream: Br − B, MTA CPU without the filter process, ms/msg
}

func bridgeLimit(get getter, size int) *bridge {
	b, br, m := get("B", size), get("Br", size), get("M", size)
	if br == nil || m == nil {
		return nil
	}
	x := &bridge{b: b, br: br, m: m}
	x.cpu = br.cpu + m.milter
	x.rate = br.rate * br.cpu / x.cpu
	if b != nil {
		x.stream = (br.srv - br.filter) - (b.srv - b.filter)
	}
	return x
}

// mtaOnly is the MTA's CPU per message without its filter process.
func mtaOnly(s *e2eStat) float64 { return s.srv - s.filter }

// nullMilterCost is where M's CPU per message goes beyond a floor: the
// measured parts of what is left to remove.
func nullMilterCost(get getter, ctr map[string]map[int]*ctrStat, size int, fromFloor bool) string {
	b, br, m := get("B", size), get("Br", size), get("M", size)
	if m == nil || br == nil {
		return "no figures for M and Br"
	}
	var parts []string
	if fromFloor && b != nil {
		parts = append(parts, fmt.Sprintf("M − B %.2f ms/msg of CPU (MTA + milter): smtpd's report stream %.2f", m.cpu-b.cpu, (br.srv-br.filter)-(b.srv-b.filter)),
			fmt.Sprintf("null milter %.2f", m.milter))
	} else {
		lim := bridgeLimit(get, size)
		parts = append(parts, fmt.Sprintf("M − bridge limit %.2f ms/msg of CPU", m.cpu-lim.cpu))
	}
	parts = append(parts, fmt.Sprintf("filter-milter above the floor filter with the same reports (M − Br, filter process) %.2f", m.filter-br.filter),
		fmt.Sprintf("smtpd beside filter-milter above smtpd beside that floor (M − Br, MTA without the filter process) %.2f", mtaOnly(m)-mtaOnly(br)))
	if c, cb := ctr["M"][size], ctr["Br"][size]; c != nil && cb != nil && c.perfCounted {
		parts = append(parts, fmt.Sprintf("per message filter-milter makes %.1f milter round trips, %.0f system calls (floor with reports: %.0f) and %.1f wake-ups (floor: %.1f)",
			c.roundTrips, c.filterSC, cb.filterSC, c.wakeups, cb.wakeups))
	}
	return strings.Join(parts, "; ")
}

// targetsSection is issue #15's targets (item 3), then the earlier issues'
// that still apply.
func targetsSection(w *mdWriter, dir string, m map[string]string, get getter, ctr map[string]map[int]*ctrStat) {
	w.p("## Targets of the issue")
	w.p("")
	w.p("Issue #15: filter-milter against what a postmaster would run instead, and against the limit of any milter bridge on smtpd. Ratios of medians from this run; the figures behind them are in the sections below.")
	w.p("")
	w.p("| target | measured | |")
	w.p("|---|---|---|")
	var missed []string
	for _, size := range sizes {
		b, mm := get("B", size), get("M", size)
		if b == nil || mm == nil {
			w.p("| filter-milter + null milter ≥ 0.90 × floor filter msgs/s, %s | no figures (see the end-to-end section) | — |", sizeName(size))
			continue
		}
		r := mm.rate / b.rate
		w.p("| filter-milter + null milter ≥ 0.90 × floor filter msgs/s, %s (M / B) | %.2f (%.0f vs %.0f msgs/s) | %s |", sizeName(size), r, mm.rate, b.rate, verdict(r >= 0.90))
		if r < 0.90 {
			missed = append(missed, fmt.Sprintf("0.90 × floor, %s: %s.", sizeName(size), nullMilterCost(get, ctr, size, true)))
		}
	}
	for _, size := range sizes {
		lim := bridgeLimit(get, size)
		if lim == nil {
			w.p("| filter-milter + null milter ≥ 0.95 × the limit of a milter bridge msgs/s, %s | no figures (needs Br and M) | — |", sizeName(size))
			continue
		}
		r := lim.m.rate / lim.rate
		w.p("| filter-milter + null milter ≥ 0.95 × the limit of a milter bridge msgs/s, %s (M / limit) | %.2f (%.0f vs %.0f msgs/s) | %s |", sizeName(size), r, lim.m.rate, lim.rate, verdict(r >= 0.95))
		if r < 0.95 {
			missed = append(missed, fmt.Sprintf("0.95 × bridge limit, %s: %s.", sizeName(size), nullMilterCost(get, ctr, size, false)))
		}
	}
	for _, size := range sizes {
		ku, e, pu := get("Ku", size), get("E", size), get("Pu", size)
		if ku == nil || e == nil || pu == nil {
			w.p("| filter-milter's own CPU/msg ≤ Postfix's milter-client cost, opendkim (unix), %s | no figures (needs Ku, E and Pu) | — |", sizeName(size))
			continue
		}
		pf := mtaOnly(pu) - mtaOnly(e)
		ok := ku.filter <= pf
		ratio := "—"
		if pf > 0 {
			ratio = fmt.Sprintf("%.2f", ku.filter/pf)
		}
		w.p("| filter-milter's own CPU/msg ≤ Postfix's milter-client cost, opendkim (unix), %s (Ku's filter process / (Pu − E), MTA only) | %s (%.2f vs %.2f ms/msg) | %s |", sizeName(size), ratio, ku.filter, pf, verdict(ok))
		if !ok {
			missed = append(missed, fmt.Sprintf("filter-milter ≤ Postfix's milter client, %s: filter-milter's process %.2f ms/msg above Postfix's milter-client cost (Postfix + opendkim %.2f, Postfix alone %.2f ms/msg, opendkim's own CPU not counted on either side).",
				sizeName(size), ku.filter-pf, mtaOnly(pu), mtaOnly(e)))
		}
	}
	// filter-milter + rspamd's proxy worker ≥ 1.2 × filter-rspamd + rspamd's
	// normal worker, 2 KB and 100 KB
	missed = append(missed, rspamdTargets(w, get)...)
	memoryTarget(w, dir)
	w.p("")
	if len(missed) > 0 {
		w.p("Where a target is missed, the remaining cost, measured in this run (CPU per message, medians):")
		w.p("")
		for _, s := range missed {
			w.p("- %s", s)
		}
		w.p("")
	}
	earlierTargets(w, dir, get)
}

func memoryTarget(w *mdWriter, dir string) {
	s, why := readLG(dir, "mem-big")
	if s == nil {
		w.p("| 1,000 sessions × 10 MB under 256 MiB RSS | %s | **not met** |", oneLine(why))
		return
	}
	f := s.Median["filter-milter"]
	if !f.Stopped {
		w.p("| %d sessions × %s under 256 MiB RSS | peak RSS %.0f MiB | %s |", s.Sessions, sizeName(s.Size), float64(f.PeakRSSKiB)/1024, verdict(f.PeakRSSKiB < 256<<10))
		return
	}
	total := float64(s.Sessions) * float64(s.Messages) * float64(s.Size) / (1 << 20)
	if f.PeakRSSKiB >= 256<<10 {
		w.p("| %d sessions × %s under 256 MiB RSS | peak RSS %.0f MiB, and growing when the run was stopped at its -max-rss bound, after %.0f of the %.0f MiB had been sent (%d messages committed) | %s |",
			s.Sessions, sizeName(s.Size), float64(f.PeakRSSKiB)/1024, f.SentMiB, total, f.Messages, verdict(false))
		return
	}
	w.p("| %d sessions × %s under 256 MiB RSS | peak RSS %.0f MiB, but the run did not finish (%s): not proven | **not shown** |",
		s.Sessions, sizeName(s.Size), float64(f.PeakRSSKiB)/1024, oneLine(f.Note))
}

// earlierTargets is the targets of the issues before #15 that #15 does not
// replace: the null milter's CPU against the floor's, opendkim through
// filter-milter against filter-dkimsign and Postfix, and the pipe harness.
// (The 0.90 × floor throughput target is #15's too, above.)
func earlierTargets(w *mdWriter, dir string, get getter) {
	w.p("Earlier targets that still apply (issues before #15):")
	w.p("")
	w.p("| target | measured | |")
	w.p("|---|---|---|")
	for _, size := range sizes {
		b, mm := get("B", size), get("M", size)
		if b != nil && mm != nil {
			c := mm.cpu / b.cpu
			w.p("| filter-milter + null milter ≤ 1.2 × floor CPU/message, %s (end to end, milter included) | %.2f (%.2f vs %.2f ms) | %s |", sizeName(size), c, mm.cpu, b.cpu, verdict(c <= 1.2))
		}
	}
	for _, size := range sizes {
		ku, ki, c, pu := get("Ku", size), get("Ki", size), get("C", size), get("Pu", size)
		if ku != nil && c != nil {
			r := ku.rate / c.rate
			w.p("| filter-milter + opendkim (unix) ≥ 1.0 × filter-dkimsign, %s | %.2f (%.0f vs %.0f msgs/s) | %s |", sizeName(size), r, ku.rate, c.rate, verdict(r >= 1.0))
		}
		if ki != nil && c != nil {
			r := ki.rate / c.rate
			w.p("| filter-milter + opendkim (inet) ≥ 1.0 × filter-dkimsign, %s | %.2f (%.0f vs %.0f msgs/s) | %s |", sizeName(size), r, ki.rate, c.rate, verdict(r >= 1.0))
		}
		if ku != nil && pu != nil {
			r := ku.rate / pu.rate
			w.p("| filter-milter + opendkim (unix) ≥ 1.0 × Postfix + opendkim (unix), %s | %.2f (%.0f vs %.0f msgs/s) | %s |", sizeName(size), r, ku.rate, pu.rate, verdict(r >= 1.0))
		}
	}
	best := 0.0
	var bestWhat string
	for _, n := range []string{"2k-unix", "2k-unix-100s", "2k-inet"} {
		if s, _ := readLG(dir, n); s != nil {
			if f, ok := s.Median["filter-milter"]; ok && f.MsgsPerSec > best {
				best, bestWhat = f.MsgsPerSec, fmt.Sprintf("loadgen, filter-milter binary + libmilter null milter asking for every stage, %d sessions, %s", s.Concurrency, s.Milters[0][:4])
			}
		}
	}
	if best > 0 {
		w.p("| pipe harness ≥ 20,000 small (2 KB) messages/s | %.0f msgs/s (%s) | %s |", best, bestWhat, verdict(best >= 20000))
	} else {
		w.p("| pipe harness ≥ 20,000 small messages/s | no figures | — |")
	}
	if s, _ := readLG(dir, "2k-unix-eom"); s != nil {
		f := s.Median["filter-milter"]
		w.p("| pipe harness ≥ 20,000 small (2 KB) messages/s, with a milter that asks for end of message only | %.0f msgs/s (%d sessions, unix) | %s |", f.MsgsPerSec, s.Concurrency, verdict(f.MsgsPerSec >= 20000))
	}
	if v := goBenchMetric(filepath.Join(dir, "gobench.txt"), "BenchmarkMessage/size=2KB/milter=null/sessions=32", "msgs/s"); v > 0 {
		w.p("| (for comparison: the gateway alone in process, Go benchmark, 2 KB, 32 sessions, hand-written null milter) | %.0f msgs/s | — |", v)
	}
	w.p("")
	for _, p := range []struct{ name, what string }{{"2k", "2 KB"}, {"100k", "100 KB"}} {
		if cats := profileCategories(filepath.Join(dir, "pprof-"+p.name+"-cum.txt")); len(cats) > 0 {
			w.p("Profile, %s messages: %s (details below).", p.what, finding(cats))
			w.p("")
		}
	}
}

// bridgeSection is the limit of a milter bridge on smtpd against filter-milter.
func bridgeSection(w *mdWriter, m map[string]string, get getter) {
	nproc, _ := strconv.Atoi(m["nproc"])
	w.p("## The limit of a milter bridge")
	w.p("")
	w.p("What any milter bridge on smtpd costs at least: smtpd's own work for the stream of lines the bridge registers, and the milter's own CPU. Setup Br is the floor filter (`integration/bench/floorfilter -reports`) registering every report event filter-milter registers besides the same filter phases, reading and dropping them: its MTA CPU per message is smtpd's cost of that stream plus the least a filter process can cost. The bridge limit's CPU per message is Br's plus the null milter's own (its cgroup in setup M); its msgs/s is Br's × Br's CPU per message ÷ the limit's, which holds while the machine's %d CPUs are all busy (throughput then goes as the inverse of CPU per message; the busy column checks it: busy CPUs during the run, of %d, from /proc/stat, the client included). smtpd's cost of the report stream is Br − B of the MTA's CPU without the filter process. Medians of the timed runs.", nproc, nproc)
	w.p("")
	w.p("| size | setup | msgs/s | CPU ms/msg (MTA + milter) | MTA without the filter process | filter process | milter | machine busy CPUs |")
	w.p("|---|---|---|---|---|---|---|---|")
	row := func(size int, what string, s *e2eStat) {
		if s == nil {
			w.p("| %s | %s | no figures | | | | | |", sizeName(size), what)
			return
		}
		w.p("| %s | %s | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f |", sizeName(size), what, s.rate, s.cpu, mtaOnly(s), s.filter, s.milter, s.busyCPUs)
	}
	var ratios []string
	notBound := false
	for _, size := range sizes {
		row(size, "B: floor filter", get("B", size))
		row(size, "Br: floor filter with filter-milter's reports", get("Br", size))
		lim := bridgeLimit(get, size)
		if lim != nil {
			w.p("| %s | **bridge limit**: Br + the null milter's CPU | %.0f | %.2f | %.2f | %.2f | %.2f | |", sizeName(size), lim.rate, lim.cpu, mtaOnly(lim.br), lim.br.filter, lim.m.milter)
			if nproc > 0 && lim.br.busyCPUs < 0.9*float64(nproc) {
				notBound = true
			}
		} else {
			w.p("| %s | bridge limit | no figures (needs Br and M) | | | | | |", sizeName(size))
		}
		row(size, "M: filter-milter + null milter", get("M", size))
		if lim != nil {
			r := fmt.Sprintf("%s: M / bridge limit **%.2f**", sizeName(size), lim.m.rate/lim.rate)
			if lim.b != nil {
				r += fmt.Sprintf(", M / B %.2f, bridge limit / B %.2f; smtpd's cost of the report stream (Br − B, MTA without the filter) %.2f ms/msg", lim.m.rate/lim.b.rate, lim.rate/lim.b.rate, lim.stream)
			}
			ratios = append(ratios, r)
		}
	}
	w.p("")
	for _, r := range ratios {
		w.p("- %s.", r)
	}
	if notBound {
		w.p("- Br's runs kept fewer than 90 %% of the machine's CPUs busy: the machine was not CPU-bound, and the limit's msgs/s (scaled by CPU per message) is an estimate to read with care.")
	}
	w.p("")
}

// countersSection is the per-message counters of filter-milter (M, Me)
// and the floor filter (B, Br).
func countersSection(w *mdWriter, m map[string]string, get getter, ctr map[string]map[int]*ctrStat) {
	w.p("## Where the time goes per message")
	w.p("")
	perf := m["counters_perf"]
	mode := m["counters_mode"]
	how := "in one counter run per setup and size after the timed runs, left out of the timed medians (perf's system-call tracepoints slow every system call on the machine; the run's msgs/s against the timed median shows by how much)"
	if mode == "timed" {
		how = "in every timed run of these setups (BENCH_COUNTERS=timed: perf's tracepoints slow their system calls)"
	}
	w.p("Counted %s, over the measured window (first client start to 0.2 s after the last client's exit, as the CPU figures). The filter process and the milter each in a cgroup v2 group of their own, counted with `perf stat -a -G` on software tracepoints (this VM has no hardware counters), so threads started during the run are counted too. Round trips are the milter's replies: libmilter writes each reply with one `writev` (its `write` calls wake its own poll loop from its worker threads, shown apart). The filter's read and write calls are /proc/PID/io's syscr + syscw (a cross-check of perf's count); wake-ups are its voluntary context switches summed over /proc/PID/task/*/status (each ends a sleep that a wake-up ends; threads alive at both ends of the run). CPU columns are the timed runs' medians.", how)
	w.p("")
	if perf != "" && perf != "ok" {
		w.p("perf not available (%s): the perf columns are empty.", oneLine(perf))
		w.p("")
	}
	if mode == "off" {
		w.p("Not counted (BENCH_COUNTERS=off).")
		w.p("")
		return
	}
	w.p("| size | setup | milter round trips/msg | milter's write calls/msg | milter system calls/msg | filter system calls/msg | filter read+write calls/msg | filter wake-ups/msg | filter threads | filter CPU ms/msg | milter CPU ms/msg | msgs/s while counted (× timed median) |")
	w.p("|---|---|---|---|---|---|---|---|---|---|---|---|")
	names := map[string]string{"M": "M: filter-milter + null milter, every stage", "Me": "Me: filter-milter + null milter, end of message only", "B": "B: floor filter", "Br": "Br: floor filter with reports"}
	f1 := func(v float64, ok bool) string {
		if !ok {
			return "—"
		}
		return fmt.Sprintf("%.1f", v)
	}
	some := false
	for _, size := range sizes {
		for _, id := range []string{"M", "Me", "B", "Br"} {
			c := ctr[id][size]
			if c == nil {
				continue
			}
			some = true
			milter := id == "M" || id == "Me"
			threads := fmt.Sprintf("%d", c.threads1)
			if c.threadsChanged {
				threads = fmt.Sprintf("%d → %d (changed during a run: the switches of a thread that ended are missing)", c.threads0, c.threads1)
			}
			cpuF, cpuM, rel := "", "", ""
			if s := get(id, size); s != nil {
				cpuF = fmt.Sprintf("%.2f", s.filter)
				if milter {
					cpuM = fmt.Sprintf("%.2f", s.milter)
				}
				rel = fmt.Sprintf(" (%.2f)", c.rate/s.rate)
			}
			w.p("| %s | %s | %s | %s | %s | %s | %.1f | %.1f | %s | %s | %s | %.0f%s |", sizeName(size), names[id],
				f1(c.roundTrips, milter && c.perfCounted), f1(c.milterWrite, milter && c.perfCounted), f1(c.milterSC, milter && c.perfCounted),
				f1(c.filterSC, c.perfCounted), c.filterRW, c.wakeups, threads, cpuF, cpuM, c.rate, rel)
		}
	}
	if !some {
		w.p("| | no counter runs in this run (BENCH_E2E_IDS without B, Br, M, Me, or every counter run failed) | | | | | | | | | | |")
	}
	w.p("")
}
