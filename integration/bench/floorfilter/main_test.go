package main

import (
	"bufio"
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/gateway"
)

const handshake = "config|smtpd-version|6.8.0\nconfig|smtp-session-timeout|300\nconfig|subsystem|smtp-in\nconfig|admd|mx.test\nconfig|ready\n"

// registrations splits register lines into report events and filter phases.
func registrations(t *testing.T, lines []string) (reports, filters []string) {
	t.Helper()
	for _, l := range lines {
		f := strings.Split(l, "|")
		switch {
		case len(f) == 4 && f[0] == "register" && f[1] == "report" && f[2] == "smtp-in":
			reports = append(reports, f[3])
		case len(f) == 4 && f[0] == "register" && f[1] == "filter" && f[2] == "smtp-in":
			filters = append(filters, f[3])
		default:
			t.Fatalf("unexpected registration line %q", l)
		}
	}
	slices.Sort(reports)
	slices.Sort(filters)
	return reports, filters
}

// readRegistration reads lines up to register|ready (not included).
func readRegistration(t *testing.T, r io.Reader) []string {
	t.Helper()
	var lines []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if sc.Text() == "register|ready" {
			return lines
		}
		lines = append(lines, sc.Text())
	}
	t.Fatalf("no register|ready (after %q): %v", lines, sc.Err())
	return nil
}

// filterMilterRegistration plays smtpd's handshake to filter-milter's
// gateway (no milters: registration does not depend on them) and returns
// the lines it registers.
func filterMilterRegistration(t *testing.T) []string {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := gateway.New(gateway.Config{}).Run(inR, outW)
		outW.Close()
		done <- err
	}()
	go func() { _, _ = io.WriteString(inW, handshake) }()
	lines := readRegistration(t, outR)
	inW.Close()
	go func() { _, _ = io.Copy(io.Discard, outR) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not stop after its input closed")
	}
	return lines
}

func floorRegistration(t *testing.T, reports bool) []string {
	t.Helper()
	var out bytes.Buffer
	if err := run(strings.NewReader(handshake), &out, reports); err != nil {
		t.Fatal(err)
	}
	return readRegistration(t, &out)
}

// With -reports the floor filter registers exactly what filter-milter
// registers, reports and filter phases; without, the same phases and no
// reports. If filter-milter's table changes, this fails until
// reportEvents (or phases) follow it.
func TestRegistersWhatFilterMilterRegisters(t *testing.T) {
	fmReports, fmFilters := registrations(t, filterMilterRegistration(t))
	if len(fmReports) == 0 || len(fmFilters) == 0 {
		t.Fatalf("filter-milter registered reports %q, filters %q", fmReports, fmFilters)
	}
	r, f := registrations(t, floorRegistration(t, true))
	if !slices.Equal(r, fmReports) {
		t.Errorf("floorfilter -reports registers reports %q, filter-milter %q", r, fmReports)
	}
	if !slices.Equal(f, fmFilters) {
		t.Errorf("floorfilter -reports registers filters %q, filter-milter %q", f, fmFilters)
	}
	r, f = registrations(t, floorRegistration(t, false))
	if len(r) != 0 {
		t.Errorf("floorfilter registers reports %q without -reports", r)
	}
	if !slices.Equal(f, fmFilters) {
		t.Errorf("floorfilter registers filters %q, filter-milter %q", f, fmFilters)
	}
}

// Report lines get no answer; requests still do, data lines come back.
func TestDropsReports(t *testing.T) {
	in := handshake +
		"report|0.6|1700000000.000000|smtp-in|link-connect|abc|mx|pass|127.0.0.1:1234|127.0.0.1:25\n" +
		"filter|0.6|1700000000.000000|smtp-in|connect|abc|tok1|mx|127.0.0.1\n" +
		"report|0.6|1700000000.000000|smtp-in|tx-begin|abc|00000001\n" +
		"filter|0.6|1700000000.000000|smtp-in|data-line|abc|tok2|..dot|ted\n"
	var out bytes.Buffer
	if err := run(strings.NewReader(in), &out, true); err != nil {
		t.Fatal(err)
	}
	_, after, _ := strings.Cut(out.String(), "register|ready\n")
	want := "filter-result|abc|tok1|proceed\nfilter-dataline|abc|tok2|..dot|ted\n"
	if after != want {
		t.Errorf("answers %q, want %q", after, want)
	}
}
