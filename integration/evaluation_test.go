//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestEvaluation runs the scripted milter in evaluation mode (evaluation
// = true in its [[milter]] table), alone, through real smtpd:
//
//   - a message it rejects at end of message (X-Test-Verdict: reject) is
//     delivered, byte for byte as sent; filter-milter logs one line saying
//     the milter would have rejected it, with its reply, and counts it in
//     evaluation_verdicts_total{verdict="reject"};
//   - a message it adds a header to (X-Test-Actions: addheader) is
//     delivered without that header, byte for byte; the line names the
//     change it would have made;
//
// and the milter was given both messages whole (its log).
func TestEvaluation(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		m := harness.StartPyMilter(t, env, "scripted-milter", harness.ScriptedMilter(t), "inet")
		port := harness.FreePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		conf := env.WriteFile("filter-milter.toml", []byte(fmt.Sprintf(`# written by TestEvaluation
metrics_listen = %q
default_action = "tempfail"

[[milter]]
name = "trial"
socket = %q
evaluation = true
`, addr, m.SpecHostPort())), 0o644)
		args := []string{"-config", conf}
		if fa := filterArgs(m.SpecHostPort()); len(fa) > 2 {
			args = append(args, fa[2:]...) // -log-level LEVEL
		}
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "evaluation", Filter: args},
		}})
		harness.WaitTCP(t, s.Proc, port, 10*time.Second)
		const line = "evaluation: what the milter would have done"

		for i, c := range []struct {
			name, header string
			want         []string // in the evaluation line
		}{
			{"eval-reject", "X-Test-Verdict: reject", []string{`"verdict": "reject"`, `"stage": "eom"`, `"reply": "554 5.7.1 message rejected by scripted milter"`}},
			{"eval-addheader", "X-Test-Actions: addheader", []string{`"verdict": "accept"`, `"modifications": ["addheader X-Scripted-Milter"]`}},
		} {
			t.Run(c.name, func(t *testing.T) {
				msg := scriptedMessage(c.name, c.header)
				r := s.Send(t, "evaluation", msg)
				t.Logf("%s: %s", c.name, r.Summary())
				expectEndOfData(t, r, "250 ")
				d := s.WaitDeliveries(t, 1, 10*time.Second)[0]
				rest, added := harness.RemoveFields(harness.StripDelivered(d.Data), "X-Scripted-Milter")
				if len(added) != 0 {
					t.Errorf("delivered with the evaluating milter's %s", fieldNames(added))
				}
				if diff := harness.Diff(harness.Normalize(msg.Data), rest); diff != "" {
					t.Errorf("the delivered message is not the one sent: %s\n%s", diff, d.Data)
				}
				if got := m.Proc.Log(); !strings.Contains(got, "scripted-"+c.name+"@test.example") || strings.Count(got, "eom bodybytes=") != i+1 {
					t.Errorf("the evaluating milter was not given the message %s; its log:\n%s", c.name, harness.Tail(m.Proc.LogPath, 20))
				}
				lines := s.WaitFilterLines(t, i+1, 10*time.Second, line)
				got := lines[len(lines)-1]
				t.Logf("filter-milter: %s", got)
				for _, w := range append(c.want, `"milter": "trial"`) {
					if !strings.Contains(got, w) {
						t.Errorf("the evaluation line lacks %s", w)
					}
				}
			})
		}
		samples := harness.ParseMetrics(harness.ScrapeMetrics(t, "http://"+addr+"/metrics"))
		for verdict, want := range map[string]float64{"reject": 1, "accept": 1} {
			if got, ok := harness.Metric(samples, "filter_milter_evaluation_verdicts_total", map[string]string{"milter": "trial", "verdict": verdict}); got != want {
				t.Errorf("evaluation_verdicts_total{verdict=%q} = %v (present %v), want %v", verdict, got, ok, want)
			}
		}
		if got, _ := harness.Metric(samples, "filter_milter_messages_total", map[string]string{"verdict": "accept"}); got != 2 {
			t.Errorf("messages_total{verdict=accept} = %v, want 2: both messages were accepted", got)
		}
		if got := len(s.FilterLines(line)); got != 2 {
			t.Errorf("%d evaluation lines, want one per message", got)
		}
		s.Healthy(t)
	})
}
