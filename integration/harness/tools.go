package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// This file has the helpers of the postmaster-tool tests: running
// filter-milter's check and test subcommands, and scraping its metrics.

// ToolResult is one run of the filter-milter binary from the command line.
type ToolResult struct {
	Args     []string
	Stdout   string
	Stderr   string
	ExitCode int
	Duration time.Duration
}

// Summary is a one-line description for logs.
func (r ToolResult) Summary() string {
	return fmt.Sprintf("filter-milter %s: exit %d in %v", strings.Join(r.Args, " "), r.ExitCode, r.Duration.Round(time.Millisecond))
}

// RunFilterMilter runs the filter-milter binary (built by
// BuildFilterMilter) with args, stdin empty, in dir (the working
// directory; "" for the current one). It fails the test only when the
// binary cannot be run or takes longer than timeout: the exit status is
// what the caller checks.
func RunFilterMilter(tb TB, dir string, timeout time.Duration, args ...string) ToolResult {
	tb.Helper()
	bin := BuildFilterMilter(tb)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	r := ToolResult{Args: args, Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: exitCode(err), Duration: time.Since(start)}
	if ctx.Err() != nil {
		tb.Fatalf("harness: %s took longer than %v\nstdout:\n%s\nstderr:\n%s", r.Summary(), timeout, r.Stdout, r.Stderr)
	}
	if r.ExitCode < 0 {
		tb.Fatalf("harness: cannot run %s %s: %v", bin, strings.Join(args, " "), err)
	}
	tb.Logf("harness: %s", r.Summary())
	return r
}

// ScrapeMetrics fetches a Prometheus text page.
func ScrapeMetrics(tb TB, url string) string {
	tb.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		tb.Fatalf("harness: GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("harness: GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("harness: GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}

// Sample is one line of a Prometheus text page.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// ParseMetrics reads the samples of a Prometheus text page (comments
// skipped).
func ParseMetrics(text string) []Sample {
	var out []Sample
	for _, l := range strings.Split(text, "\n") {
		m := sampleLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		s := Sample{Name: m[1], Labels: map[string]string{}, Value: v}
		for _, p := range labelPair.FindAllStringSubmatch(m[2], -1) {
			uq, err := strconv.Unquote(`"` + p[2] + `"`)
			if err != nil {
				uq = p[2]
			}
			s.Labels[p[1]] = uq
		}
		out = append(out, s)
	}
	return out
}

// Metric returns the value of the sample with exactly these labels, and
// whether there is one.
func Metric(samples []Sample, name string, labels map[string]string) (float64, bool) {
	for _, s := range samples {
		if s.Name == name && len(s.Labels) == len(labels) && hasLabels(s, labels) {
			return s.Value, true
		}
	}
	return 0, false
}

// hasLabels reports whether s carries every one of labels.
func hasLabels(s Sample, labels map[string]string) bool {
	for k, v := range labels {
		if s.Labels[k] != v {
			return false
		}
	}
	return true
}

// MetricSum adds up the samples of name whose labels include these.
func MetricSum(samples []Sample, name string, labels map[string]string) float64 {
	sum := 0.0
	for _, s := range samples {
		if s.Name == name && hasLabels(s, labels) {
			sum += s.Value
		}
	}
	return sum
}

// MetricLines returns the sample lines of the page whose names start with
// prefix, sorted, for logs.
func MetricLines(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}
