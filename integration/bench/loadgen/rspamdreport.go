package main

// The rspamd rows of the report: setups R (OpenSMTPD + filter-rspamd +
// rspamd's normal worker) and Rm (OpenSMTPD + filter-milter + rspamd's proxy
// worker as a milter, self_scan), started by integration/bench/rspamd.sh.

import (
	"fmt"
	"math"
	"strings"
)

// rspamdTarget is the bar: filter-milter + rspamd at least this
// many times the messages/s of filter-rspamd + rspamd.
const rspamdTarget = 1.2

// rspamdCheck sums up the per-run checks of one setup at one size.
type rspamdCheck struct {
	runs, scannedAll, headers int
}

func rspamdChecks(runs []e2eRun) map[string]map[int]*rspamdCheck {
	out := map[string]map[int]*rspamdCheck{}
	for _, r := range runs {
		if r.RspamdScanned == nil {
			continue
		}
		if out[r.ID] == nil {
			out[r.ID] = map[int]*rspamdCheck{}
		}
		c := out[r.ID][r.Size]
		if c == nil {
			c = &rspamdCheck{}
			out[r.ID][r.Size] = c
		}
		c.runs++
		if *r.RspamdScanned >= r.Count {
			c.scannedAll++
		}
		if r.RspamdHeaders == "yes" {
			c.headers++
		}
	}
	return out
}

// rspamdCPU is "MTA / filter process / rspamd" CPU in ms per message: the
// MTA is the smtpd cgroup without the filter process.
func rspamdCPU(s *e2eStat) string {
	return fmt.Sprintf("%.2f / %.2f / %.2f", s.srv-s.filter, s.filter, s.milter)
}

// rspamdTargets writes the target rows (one per size) for the targets
// table: Rm's messages/s over R's, with the CPU per message of each part.
// It returns, for each size that misses the target, where the CPU goes.
func rspamdTargets(w *mdWriter, get func(id string, size int) *e2eStat) (missed []string) {
	for _, size := range []int{2048, 102400} {
		r, rm := get("R", size), get("Rm", size)
		if r == nil || rm == nil {
			w.p("| filter-milter + rspamd ≥ %.1f × filter-rspamd + rspamd msgs/s, %s | no figures (see the rspamd section) | — |", rspamdTarget, sizeName(size))
			continue
		}
		ratio := rm.rate / r.rate
		w.p("| filter-milter + rspamd ≥ %.1f × filter-rspamd + rspamd msgs/s, %s | %.2f (%.0f vs %.0f msgs/s; CPU ms/msg MTA / filter process / rspamd: %s vs %s) | %s |",
			rspamdTarget, sizeName(size), ratio, rm.rate, r.rate, rspamdCPU(rm), rspamdCPU(r), verdict(ratio >= rspamdTarget))
		if ratio < rspamdTarget {
			missed = append(missed, fmt.Sprintf("filter-milter + rspamd ≥ %.1f × filter-rspamd, %s: CPU per message (MTA / filter process / rspamd) %s with filter-milter against %s with filter-rspamd.",
				rspamdTarget, sizeName(size), rspamdCPU(rm), rspamdCPU(r)))
		}
	}
	return missed
}

// rspamdSection is the end-to-end subsection of the two rspamd setups.
func rspamdSection(w *mdWriter, runs []e2eRun, get func(id string, size int) *e2eStat) {
	checks := rspamdChecks(runs)
	if len(checks) == 0 && get("R", 2048) == nil && get("Rm", 2048) == nil && get("R", 102400) == nil && get("Rm", 102400) == nil {
		return // neither setup ran
	}
	w.p("### rspamd: filter-rspamd (HTTP) against filter-milter (milter)")
	w.p("")
	w.p("Two ways to put rspamd behind OpenSMTPD. **R**: Debian's opensmtpd-filter-rspamd, a filter process that keeps each message and POSTs it to rspamd's normal worker (`/checkv2`, HTTP on 127.0.0.1) at the end of data. **Rm**: filter-milter talking the milter protocol (inet, 127.0.0.1) to rspamd's proxy worker in milter mode with `self_scan` (the proxy scans the message itself, no normal worker behind it). Each setup has its own rspamd, with as many workers as CPUs, in its own cpuacct cgroup (its CPU is the milter column of the tables above), and both read the same configuration: Debian's, with every module that asks DNS, HTTP or redis off (rbl, surbl, spf, dmarc, asn, hfilter, mx_check, emails, phishing, multimap, whitelist, mid, mime_types, rspamd_update, url_redirector, ratelimit, greylist, neural, replies, reputation, history_redis, dcc, fuzzy_check; no redis, so no bayes), dkim_signing and arc off (no keys), DNS sent to 127.0.0.9 with a 0.1 s timeout for anything left, the action thresholds raised so that nothing is rejected, greylisted or marked (acceptance only), milter_headers adding X-Spamd-Result, X-Rspamd-Server and X-Rspamd-Queue-Id, and the regexps compiled for hyperscan once before both start. Every run is checked: rspamd's log has a task line for every message sent in the run (the warm-up excluded), none of them with a DNS request, and for Rm a queued message carries X-Rspamd-Server; a run that fails a check is not counted. filter-rspamd 0.1.7 writes only the string-valued headers of rspamd's reply (and ARC / Authentication-Results), while rspamd 3.4 sends X-Spamd-Result and the others as objects (`{\"order\":…,\"value\":…}`): R's messages get none of them, so Rm carries that work (rspamd asks for the headers over the milter protocol, filter-milter inserts them) and R does not.")
	w.p("")
	w.p("| size | setup | runs ok | msgs/s median (min–max) | CPU ms/msg, all | MTA / filter process / rspamd | runs where rspamd scanned every message | runs with rspamd's headers in the message |")
	w.p("|---|---|---|---|---|---|---|---|")
	for _, size := range []int{2048, 102400} {
		for _, id := range []string{"R", "Rm"} {
			name := map[string]string{"R": "filter-rspamd + rspamd (R)", "Rm": "filter-milter + rspamd (Rm)"}[id]
			c := checks[id][size]
			if c == nil {
				c = &rspamdCheck{}
			}
			s := get(id, size)
			if s == nil {
				w.p("| %s | %s | 0 | no figures (see the tables above) | | | %d/%d | %d/%d |", sizeName(size), name, c.scannedAll, c.runs, c.headers, c.runs)
				continue
			}
			w.p("| %s | %s | %d/%d | %.0f (%.0f–%.0f) | %.2f | %s | %d/%d | %d/%d |", sizeName(size), name, s.ok, s.runs, s.rate, s.min, s.max, s.cpu, rspamdCPU(s), c.scannedAll, c.runs, c.headers, c.runs)
		}
	}
	w.p("")
	var ratios []string
	for _, size := range []int{2048, 102400} {
		if r, rm := get("R", size), get("Rm", size); r != nil && rm != nil {
			ratios = append(ratios, fmt.Sprintf("%s: %.2f × the messages/s, %.2f × the CPU per message (filter process %.2f ×, rspamd %.2f ×)",
				sizeName(size), rm.rate/r.rate, rm.cpu/r.cpu, ratioOrNaN(rm.filter, r.filter), ratioOrNaN(rm.milter, r.milter)))
		}
	}
	if len(ratios) > 0 {
		w.p("Rm against R — %s.", strings.Join(ratios, "; "))
		w.p("")
	}
}

// ratioOrNaN is a/b, NaN (printed "NaN") when b is zero.
func ratioOrNaN(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}
