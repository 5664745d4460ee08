//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestMetricsAfterRealSessions runs smtpd with filter-milter serving
// metrics (metrics_listen on 127.0.0.1 in its configuration file, from
// inside smtpd's namespace, as user opensmtpd) in front of the scripted
// milter, sends three messages
// with swaks (two accepted, one rejected by the milter at end of message)
// and scrapes the metrics over HTTP: sessions, messages by verdict, bytes,
// the milter's answers per stage and verdict, and the latency histogram
// counts must match the three sessions exactly.
func TestMetricsAfterRealSessions(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		m := harness.StartPyMilter(t, env, "scripted-milter", harness.ScriptedMilter(t), "inet")
		port := harness.FreePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		// The filter reads its configuration file as user opensmtpd; the
		// milter's name is its label in the metrics. The test's log
		// level flag, when given, overrides the file's.
		const spec = "scripted"
		conf := env.WriteFile("filter-milter.toml", []byte(fmt.Sprintf(`# written by TestMetricsAfterRealSessions
metrics_listen = %q
log_level = "info"
default_action = "tempfail"

[[milter]]
name = %q
socket = %q
command_timeout = "10s"
`, addr, spec, m.SpecHostPort())), 0o644)
		args := []string{"-config", conf}
		if fa := filterArgs(m.SpecHostPort()); len(fa) > 2 {
			args = append(args, fa[2:]...) // -log-level LEVEL
		}
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "milter", Filter: args},
		}})
		harness.WaitTCP(t, s.Proc, port, 10*time.Second)
		url := "http://" + addr + "/metrics"

		before := harness.ParseMetrics(harness.ScrapeMetrics(t, url))
		if n, ok := harness.Metric(before, "filter_milter_sessions_total", nil); !ok || n != 0 {
			t.Fatalf("before any session: sessions_total %v (present %v), want 0", n, ok)
		}

		msgs := []harness.Message{scriptedMessage("metrics-1"), scriptedMessage("metrics-2"),
			scriptedMessage("metrics-reject", "X-Test-Verdict: reject")}
		wantBytes := 0
		for i, msg := range msgs {
			msg.To = []string{fmt.Sprintf("bob+%d@test.example", i)}
			r := s.Send(t, "milter", msg)
			want := "250 "
			if i == 2 {
				want = "554 5.7.1 message rejected by scripted milter"
			}
			if !strings.HasPrefix(r.EndOfDataReply(), want) {
				t.Fatalf("%s: end of DATA %q, want %q; swaks said:\n%s", msg.Name, r.EndOfDataReply(), want, r.Output)
			}
			n := harness.Normalize(msg.Data)
			wantBytes += len(n) + strings.Count(string(n), "\n") // as queued, with CRLF
		}
		s.WaitDeliveries(t, 2, 10*time.Second)

		// The last session's link-disconnect may still be on its way.
		var text string
		var samples []harness.Sample
		deadline := time.Now().Add(10 * time.Second)
		for {
			text = harness.ScrapeMetrics(t, url)
			samples = harness.ParseMetrics(text)
			open, _ := harness.Metric(samples, "filter_milter_sessions_open", nil)
			total, _ := harness.Metric(samples, "filter_milter_sessions_total", nil)
			if (open == 0 && total == 3) || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		var shown []string
		for _, l := range strings.Split(harness.MetricLines(text, "filter_milter_"), "\n") {
			if !strings.Contains(l, "_bucket{") {
				shown = append(shown, l)
			}
		}
		t.Logf("scraped %s (histogram buckets left out):\n%s", url, strings.Join(shown, "\n"))

		want := func(name string, labels map[string]string, value float64) {
			t.Helper()
			got, ok := harness.Metric(samples, name, labels)
			if !ok || got != value {
				t.Errorf("%s%v = %v (present %v), want %v", name, labels, got, ok, value)
			}
		}
		want("filter_milter_sessions_open", nil, 0)
		want("filter_milter_sessions_total", nil, 3)
		want("filter_milter_messages_total", map[string]string{"verdict": "accept"}, 2)
		want("filter_milter_messages_total", map[string]string{"verdict": "reject"}, 1)
		for _, stage := range []string{"connect", "ehlo", "mail", "rcpt", "data", "eoh", "body"} {
			want("filter_milter_milter_replies_total", map[string]string{"milter": spec, "stage": stage, "verdict": "continue"}, 3)
			want("filter_milter_milter_reply_seconds_count", map[string]string{"milter": spec, "stage": stage}, 3)
			want("filter_milter_milter_reply_seconds_bucket", map[string]string{"milter": spec, "stage": stage, "le": "+Inf"}, 3)
		}
		want("filter_milter_milter_replies_total", map[string]string{"milter": spec, "stage": "eom", "verdict": "accept"}, 2)
		want("filter_milter_milter_replies_total", map[string]string{"milter": spec, "stage": "eom", "verdict": "reject"}, 1)
		want("filter_milter_milter_reply_seconds_count", map[string]string{"milter": spec, "stage": "eom"}, 3)

		// The header stage is counted once per message, whatever its
		// number of fields.
		headers := harness.MetricSum(samples, "filter_milter_milter_replies_total", map[string]string{"milter": spec, "stage": "header"})
		wantHeaders := float64(3)
		if headers != wantHeaders {
			t.Errorf("header answers %v, want %v", headers, wantHeaders)
		}
		want("filter_milter_milter_reply_seconds_count", map[string]string{"milter": spec, "stage": "header"}, wantHeaders)
		// A milter answers in well under 5 seconds on loopback.
		if fast := harness.MetricSum(samples, "filter_milter_milter_reply_seconds_bucket", map[string]string{"milter": spec, "stage": "eom", "le": "5"}); fast != 3 {
			t.Errorf("eom answers under 5s: %v, want 3", fast)
		}

		bytes, _ := harness.Metric(samples, "filter_milter_message_bytes_total", nil)
		// smtpd adds its Received: field (~200 bytes) before the filter.
		if bytes < float64(wantBytes) || bytes > float64(wantBytes+3*400) {
			t.Errorf("message_bytes_total %v, want the %d bytes sent plus smtpd's Received fields", bytes, wantBytes)
		}
		if errs := harness.MetricSum(samples, "filter_milter_milter_errors_total", nil); errs != 0 {
			t.Errorf("milter errors counted: %v", errs)
		}
		if _, ok := harness.Metric(samples, "go_goroutines", nil); !ok {
			t.Errorf("no Go runtime metrics")
		}
		s.Healthy(t)
	})
}
