//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestNoReplyStages runs smtpd → filter-milter → a libmilter milter
// (python3-milter) that negotiated away the reply to every stage but end
// of message (SMFIP_NR_*). filter-milter must not wait for a reply the
// milter will never send (the session would stall until the command
// timeout and then fail to the default action), must give it every header
// field and the whole body, and must apply what it asks at end of
// message. The trace shows the round trips: the milter's only replies are
// end of message's (its header and accept), one per message.
func TestNoReplyStages(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		script := env.WriteFile("noreply.py", []byte(harness.NoReplyMilterScript), 0o755)
		m := harness.StartPyMilter(t, env, "noreply-milter", script, "unix")
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "noreply", Filter: []string{"-milter", m.Spec, "-log-level", "debug"}},
		}})
		const messages = 2
		body := "Hello Bob,\n\nno replies but end of message.\n"
		for i := range messages {
			msg := interopMessage(fmt.Sprintf("noreply-%d", i), "Alice <alice@test.example>", []string{"X-Extra: one", "X-Extra: two"}, body)
			// A wait for a reply that never comes ends in the command
			// timeout and the default action (tempfail), not 250.
			expectEndOfData(t, sendOne(t, s, "noreply", "alice@test.example", msg), "250 ")
			d := s.WaitDeliveries(t, 1, 20*time.Second)[0]
			sent, _ := harness.SplitMessage(harness.Normalize(msg.Data))
			delivered, _ := harness.SplitMessage(harness.StripDelivered(d.Data))
			wantBody := len(strings.ReplaceAll(body, "\n", "\r\n"))
			got, _ := fieldValue(delivered, "X-Noreply")
			var headers, bodyBytes int
			if _, err := fmt.Sscanf(got, "headers=%d body=%d", &headers, &bodyBytes); err != nil {
				t.Fatalf("message %d delivered without the milter's X-Noreply (%q): %v\n%s", i, got, err, d.Data)
			}
			// smtpd may put its own Received field on top; the milter
			// sees at least every field sent.
			if headers < len(sent) || bodyBytes != wantBody {
				t.Errorf("message %d: the milter saw %d header fields and %d body bytes, want at least %d and %d", i, headers, bodyBytes, len(sent), wantBody)
			}
		}

		var replies []string
		commands := 0
		for _, l := range traceOf(traceLines(t, s.Proc.Log()), "noreply") {
			switch l.Msg {
			case "milter reply":
				replies = append(replies, fmt.Sprint(l.Fields["packet"]))
			case "milter command":
				commands++
			}
		}
		want := strings.TrimSuffix(strings.Repeat("SMFIR_ADDHEADER SMFIR_ACCEPT ", messages), " ")
		if strings.Join(replies, " ") != want {
			t.Errorf("the milter's replies: %q; want end of message's only, %q (%d commands sent)", replies, want, commands)
		}
		if strings.Contains(s.Proc.Log(), "bytes no command asked for") {
			t.Errorf("filter-milter saw a reply out of turn:\n%s", harness.Tail(s.LogPath(), 30))
		}
		s.Healthy(t)
	})
}
