package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The bridge limit, the Postfix comparison and the counters from made-up
// runs whose figures are easy to follow: 1,000 messages in 1 s each.
func TestReportTargetsAndCounters(t *testing.T) {
	dir := t.TempDir()
	ms := func(v float64) int64 { return int64(v * 1e6 * 1000) } // ms/msg of 1,000 messages, in ns
	runs := []e2eRun{
		// B: 1000 msgs/s, MTA 1.0 ms/msg of which the floor 0.2
		{ID: "B", SrvCPU: ms(1.0), FilterCPU: ms(0.2)},
		// Br: 800 msgs/s, MTA 1.25 ms/msg of which the floor 0.25: stream 0.2
		{ID: "Br", NS: 1.25e9, SrvCPU: ms(1.25), FilterCPU: ms(0.25)},
		// M: 500 msgs/s, MTA 2.0 (filter 0.8) + milter 0.25: limit 1.5 ms/msg, 800 × 1.25 / 1.5 = 666.7 msgs/s
		{ID: "M", NS: 2e9, SrvCPU: ms(2.0), FilterCPU: ms(0.8), MilterCPU: ms(0.25)},
		// Postfix's milter client: (Pu − E) = 0.6 ms/msg; filter-milter's in Ku 0.5
		{ID: "E", SrvCPU: ms(1.0)},
		{ID: "Pu", SrvCPU: ms(1.6), MilterCPU: ms(3)},
		{ID: "Ku", SrvCPU: ms(2.0), FilterCPU: ms(0.5), MilterCPU: ms(3)},
		// a counter run of M: 11,000 replies by writev for 1,000 messages
		{ID: "M", Rep: 0, Ctr: 1, MilterWritev: 11000, MilterWrite: 6000, MilterSyscalls: 40000, FilterSyscalls: 90000,
			FilterSyscr: 3000, FilterSyscw: 2000, FilterVcsw: 25000, Threads0: 9, Threads1: 10},
	}
	f, err := os.Create(filepath.Join(dir, "e2e.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	enc := json.NewEncoder(f)
	for _, size := range []int{2048, 102400} {
		for _, r := range runs {
			r.Size, r.Count = size, 1000
			if r.NS == 0 {
				r.NS = 1e9
			}
			if r.Ctr == 0 {
				r.Rep = 1
			}
			r.Busy = 2 * r.NS
			if err := enc.Encode(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	f.Close()
	if err := os.WriteFile(filepath.Join(dir, "machine.txt"), []byte("nproc=2\ncounters_mode=extra\ncounters_perf=ok\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.md")
	if err := report(dir, out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{
		"| filter-milter + null milter ≥ 0.90 × floor filter msgs/s, 2 KB (M / B) | 0.50 (500 vs 1000 msgs/s) | **not met** |",
		"| filter-milter + null milter ≥ 0.95 × the limit of a milter bridge msgs/s, 2 KB (M / limit) | 0.75 (500 vs 667 msgs/s) | **not met** |",
		"| 2 KB | **bridge limit**: Br + the null milter's CPU | 667 | 1.50 | 1.00 | 0.25 | 0.25 | |",
		"smtpd's cost of the report stream (Br − B, MTA without the filter) 0.20 ms/msg",
		"| filter-milter's own CPU/msg ≤ Postfix's milter-client cost, opendkim (unix), 2 KB (Ku's filter process / (Pu − E), MTA only) | 0.83 (0.50 vs 0.60 ms/msg) | **met** |",
		"M − B 1.25 ms/msg of CPU (MTA + milter): smtpd's report stream 0.20; null milter 0.25; filter-milter above the floor filter with the same reports (M − Br, filter process) 0.55; smtpd beside filter-milter above smtpd beside that floor (M − Br, MTA without the filter process) 0.20",
		"| 2 KB | M: filter-milter + null milter, every stage | 11.0 | 6.0 | 40.0 | 90.0 | 5.0 | 25.0 | 9 → 10 (changed during a run: the switches of a thread that ended are missing) | 0.80 | 0.25 | 1000 (2.00) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("the report lacks\n%s", want)
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", md)
	}
}
