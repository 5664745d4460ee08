//go:build integration

package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestInteropSpamAssMilter runs smtpd → filter-milter → Debian's
// spamass-milter → spamd. A clean message is delivered with X-Spam-Status:
// No and the other X-Spam-* fields, and nothing else changed; GTUBE scores
// far above -r 15 and is rejected at the end of DATA with the -R text.
func TestInteropSpamAssMilter(t *testing.T) {
	env := harness.NewEnv(t)
	sa := harness.StartSpamAss(t, env)
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		senv := harness.NewEnv(t)
		s := harness.StartSMTPD(t, senv, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "spamass", Filter: filterArgs(sa.Spec)},
		}})

		t.Run("clean", func(t *testing.T) {
			m := interopMessage("spamass-clean", "Alice <alice@test.example>", nil,
				"Hello Bob,\n\nthe meeting moved to Thursday at ten. See you there.\n\nAlice\n")
			r := sendOne(t, s, "spamass", "alice@test.example", m)
			expectEndOfData(t, r, "250 ")
			d := s.WaitDeliveries(t, 1, 30*time.Second)[0]
			rest, added := splitAdded(d.Data, func(n string) bool { return strings.HasPrefix(strings.ToLower(n), "x-spam-") })
			for _, f := range added {
				t.Logf("added by spamass-milter: %s", strings.TrimRight(string(f.Raw), "\n"))
			}
			if st, n := fieldValue(added, "X-Spam-Status"); n != 1 || !strings.HasPrefix(st, "No,") {
				t.Errorf("X-Spam-Status %q (%d fields), want one No, ...", st, n)
			}
			if v, n := fieldValue(added, "X-Spam-Checker-Version"); n != 1 || !strings.HasPrefix(v, "SpamAssassin ") {
				t.Errorf("X-Spam-Checker-Version %q (%d fields)", v, n)
			}
			if _, n := fieldValue(added, "X-Spam-Flag"); n != 0 {
				t.Errorf("clean message got X-Spam-Flag")
			}
			if diff := harness.Diff(harness.Normalize(m.Data), rest); diff != "" {
				t.Errorf("apart from X-Spam-*, the delivery differs from what was sent: %s\n%s", diff, d.Data)
			}
		})

		t.Run("gtube-rejected", func(t *testing.T) {
			m := interopMessage("spamass-gtube", "Alice <alice@test.example>", nil, "Hello Bob,\n\n"+gtube+"\n\nAlice\n")
			r := sendOne(t, s, "spamass", "alice@test.example", m)
			expectEndOfData(t, r, "550 5.7.1 "+sa.RejectText)
			s.NoDeliveries(t, 300*time.Millisecond)
		})
		s.Healthy(t)
	})
}
