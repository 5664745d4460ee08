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
}

var setups = []struct{ id, name string }{
	{"A", "OpenSMTPD, no filter"},
	{"B", "OpenSMTPD + floor filter (integration/bench/floorfilter)"},
	{"M", "OpenSMTPD + filter-milter + libmilter null milter (unix)"},
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
		foreign, filter        []float64
		st                     *e2eStat
	}
	accs := map[string]map[int]*acc{}
	for _, r := range runs {
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
	get := func(id string, size int) *e2eStat {
		if s := st[id][size]; s != nil && s.ok > 0 {
			return s
		}
		return nil
	}

	var w mdWriter
	w.p("# filter-milter performance")
	w.p("")
	w.p("Written by `integration/bench/bench.sh` (`make bench`), run as root on %s: %s, %s CPUs (%s), %s RAM, kernel %s; Debian %s.",
		"the shared Debian bookworm VM", m["date"], m["nproc"], m["cpu"], m["mem"], m["kernel"], m["debian"])
	w.p("Commit %s%s, %s. Peers: OpenSMTPD %s, opendkim %s, libmilter %s, opensmtpd-filter-dkimsign %s, Postfix %s (`dpkg -x`).",
		m["commit"], dirtyNote(m["dirty"]), m["go"], m["opensmtpd"], m["opendkim"], m["libmilter"], m["dkimsign"], m["postfix"])
	w.p("The whole run took %s minutes. Load average at the end: %s. Other programs share the machine's CPUs, so treat single figures as ±10–20 %%; the ratios compare medians of runs interleaved in the same session.",
		m["minutes"], m["load"])
	w.p("")
	w.p("    %s    # %s", strings.TrimSpace(m["command"]), m["settings"])
	w.p("")

	if m["baseline"] != "" {
		compareSection(&w, dir, m, get)
	}

	// ------------------------------------------------------------ targets
	w.p("## Targets of the issue")
	w.p("")
	w.p("| target | measured | |")
	w.p("|---|---|---|")
	for _, size := range []int{2048, 102400} {
		b, mm := get("B", size), get("M", size)
		if b != nil && mm != nil {
			r := mm.rate / b.rate
			w.p("| filter-milter + null milter ≥ 0.90 × floor throughput, %s (end to end) | %.2f (%.0f vs %.0f msgs/s) | %s |", sizeName(size), r, mm.rate, b.rate, verdict(r >= 0.90))
			c := mm.cpu / b.cpu
			w.p("| filter-milter + null milter ≤ 1.2 × floor CPU/message, %s (end to end, milter included) | %.2f (%.2f vs %.2f ms) | %s |", sizeName(size), c, mm.cpu, b.cpu, verdict(c <= 1.2))
		} else {
			w.p("| filter-milter + null milter vs floor, %s | no figures (see the end-to-end section) | — |", sizeName(size))
		}
	}
	for _, size := range []int{2048, 102400} {
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
	rspamdTargets(&w, get)
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
	if s, why := readLG(dir, "mem-big"); s != nil {
		f := s.Median["filter-milter"]
		if f.Stopped {
			total := float64(s.Sessions) * float64(s.Messages) * float64(s.Size) / (1 << 20)
			if f.PeakRSSKiB >= 256<<10 {
				w.p("| %d sessions × %s under 256 MiB RSS | peak RSS %.0f MiB, and growing when the run was stopped at its -max-rss bound, after %.0f of the %.0f MiB had been sent (%d messages committed) | %s |",
					s.Sessions, sizeName(s.Size), float64(f.PeakRSSKiB)/1024, f.SentMiB, total, f.Messages, verdict(false))
			} else {
				w.p("| %d sessions × %s under 256 MiB RSS | peak RSS %.0f MiB, but the run did not finish (%s): not proven | **not shown** |",
					s.Sessions, sizeName(s.Size), float64(f.PeakRSSKiB)/1024, oneLine(f.Note))
			}
		} else {
			w.p("| %d sessions × %s under 256 MiB RSS | peak RSS %.0f MiB | %s |", s.Sessions, sizeName(s.Size), float64(f.PeakRSSKiB)/1024, verdict(f.PeakRSSKiB < 256<<10))
		}
	} else {
		w.p("| 1,000 sessions × 10 MB under 256 MiB RSS | %s | **not met** |", oneLine(why))
	}
	w.p("")
	for _, p := range []struct{ name, what string }{{"2k", "2 KB"}, {"100k", "100 KB"}} {
		if cats := profileCategories(filepath.Join(dir, "pprof-"+p.name+"-cum.txt")); len(cats) > 0 {
			w.p("Profile, %s messages: %s (details below).", p.what, finding(cats))
			w.p("")
		}
	}

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
	rspamdSection(&w, dir, get)
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
