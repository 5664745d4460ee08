package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// Two runs per setup and size as bench.sh writes them: the rows carry the
// medians, the checks count the runs, and a failed run counts for neither.
func TestRspamdRows(t *testing.T) {
	lines := []string{
		`{"id":"R","size":2048,"count":600,"rep":1,"ns":4000000000,"srv_cpu_ns":2400000000,"milter_cpu_ns":1200000000,"filter_cpu_ns":600000000,"error":"","rspamd_scanned":600,"rspamd_headers":"no"}`,
		`{"id":"R","size":2048,"count":600,"rep":2,"ns":4000000000,"srv_cpu_ns":2400000000,"milter_cpu_ns":1200000000,"filter_cpu_ns":600000000,"error":"","rspamd_scanned":600,"rspamd_headers":"no"}`,
		`{"id":"Rm","size":2048,"count":600,"rep":1,"ns":3000000000,"srv_cpu_ns":1800000000,"milter_cpu_ns":1200000000,"filter_cpu_ns":300000000,"error":"","rspamd_scanned":600,"rspamd_headers":"yes"}`,
		`{"id":"Rm","size":2048,"count":600,"rep":2,"ns":3000000000,"srv_cpu_ns":1800000000,"milter_cpu_ns":1200000000,"filter_cpu_ns":300000000,"error":"rspamd scanned 599 of 600 messages","rspamd_scanned":599,"rspamd_headers":"yes"}`,
		`{"id":"M","size":2048,"count":600,"rep":1,"ns":1000000000,"srv_cpu_ns":600000000,"milter_cpu_ns":100000000,"filter_cpu_ns":300000000,"error":""}`,
	}
	var runs []e2eRun
	for _, l := range lines {
		var r e2eRun
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		runs = append(runs, r)
	}
	get := statsOf(e2eStats(runs))
	var w mdWriter
	rspamdTargets(&w, get)
	rspamdSection(&w, runs, get)
	got := w.b.String()
	for _, want := range []string{
		// 200 vs 150 msgs/s; MTA = srv - filter: 3.00 - 0.50, 4.00 - 1.00
		"| filter-milter + rspamd ≥ 1.2 × filter-rspamd + rspamd msgs/s, 2 KB | 1.33 (200 vs 150 msgs/s; CPU ms/msg MTA / filter process / rspamd: 2.50 / 0.50 / 2.00 vs 3.00 / 1.00 / 2.00) | **met** |",
		"| filter-milter + rspamd ≥ 1.2 × filter-rspamd + rspamd msgs/s, 100 KB | no figures",
		"| 2 KB | filter-rspamd + rspamd (R) | 2/2 | 150 (150–150) | 6.00 | 3.00 / 1.00 / 2.00 | 2/2 | 0/2 |",
		"| 2 KB | filter-milter + rspamd (Rm) | 1/2 | 200 (200–200) | 5.00 | 2.50 / 0.50 / 2.00 | 1/2 | 2/2 |",
		"| 100 KB | filter-rspamd + rspamd (R) | 0 | no figures",
		"Rm against R — 2 KB: 1.33 × the messages/s, 0.83 × the CPU per message (filter process 0.50 ×, rspamd 1.00 ×).",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
}
