//go:build integration

package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// TestInteropRspamd runs smtpd → filter-milter → Debian's rspamd (proxy
// worker in milter mode, self_scan). A clean message is delivered with
// rspamd's headers added and nothing else changed; GTUBE is rejected at
// the end of DATA with rspamd's own reply; a message that a local rule
// scores between add_header and reject is delivered with X-Spam: Yes.
func TestInteropRspamd(t *testing.T) {
	env := harness.NewEnv(t)
	rs := harness.StartRspamd(t, env)
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		senv := harness.NewEnv(t)
		s := harness.StartSMTPD(t, senv, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "rspamd", Filter: filterArgs(rs.Spec)},
		}})
		isRspamd := func(name string) bool {
			n := strings.ToLower(name)
			return strings.HasPrefix(n, "x-rspamd-") || strings.HasPrefix(n, "x-spam")
		}

		t.Run("clean", func(t *testing.T) {
			m := interopMessage("rspamd-clean", "Alice <alice@test.example>", nil,
				"Hello Bob,\n\nthis is a perfectly ordinary message about the meeting tomorrow.\n\nAlice\n")
			r := sendOne(t, s, "rspamd", "alice@test.example", m)
			expectEndOfData(t, r, "250 ")
			d := s.WaitDeliveries(t, 1, 20*time.Second)[0]
			rest, added := splitAdded(d.Data, isRspamd)
			for _, f := range added {
				t.Logf("added by rspamd: %s", strings.TrimRight(string(f.Raw), "\n"))
			}
			for _, name := range []string{"X-Spamd-Result", "X-Rspamd-Queue-Id", "X-Rspamd-Server", "X-Spam-Status"} {
				if _, n := fieldValue(added, name); n != 1 {
					t.Errorf("%d %s fields, want 1", n, name)
				}
			}
			if st, _ := fieldValue(added, "X-Spam-Status"); !strings.HasPrefix(st, "No,") {
				t.Errorf("X-Spam-Status %q, want No, ...", st)
			}
			if _, n := fieldValue(added, "X-Spam"); n != 0 {
				t.Errorf("clean message got X-Spam")
			}
			if diff := harness.Diff(harness.Normalize(m.Data), rest); diff != "" {
				t.Errorf("apart from rspamd's fields the delivery differs from what was sent: %s\n%s", diff, d.Data)
			}
		})

		t.Run("gtube-rejected", func(t *testing.T) {
			m := interopMessage("rspamd-gtube", "Alice <alice@test.example>", nil,
				"Hello Bob,\n\n"+gtube+"\n\nAlice\n")
			r := sendOne(t, s, "rspamd", "alice@test.example", m)
			expectEndOfData(t, r, "554 5.7.1 Gtube pattern")
			s.NoDeliveries(t, 300*time.Millisecond)
		})

		t.Run("add-header-action", func(t *testing.T) {
			m := interopMessage("rspamd-addheader", "Alice <alice@test.example>", []string{"X-Interop-Test: add-header"},
				"Hello Bob,\n\nthis one trips the local FM_INTEROP_ADD_HEADER rule.\n\nAlice\n")
			r := sendOne(t, s, "rspamd", "alice@test.example", m)
			expectEndOfData(t, r, "250 ")
			d := s.WaitDeliveries(t, 1, 20*time.Second)[0]
			rest, added := splitAdded(d.Data, isRspamd)
			for _, f := range added {
				t.Logf("added by rspamd: %s", strings.TrimRight(string(f.Raw), "\n"))
			}
			if v, n := fieldValue(added, "X-Spam"); n != 1 || !strings.EqualFold(v, "Yes") {
				t.Errorf("X-Spam: %q (%d fields), want one X-Spam: Yes", v, n)
			}
			if st, _ := fieldValue(added, "X-Spam-Status"); !strings.HasPrefix(st, "Yes,") {
				t.Errorf("X-Spam-Status %q, want Yes, ...", st)
			}
			if res, _ := fieldValue(added, "X-Spamd-Result"); !strings.Contains(res, "FM_INTEROP_ADD_HEADER") {
				t.Errorf("X-Spamd-Result %q lacks FM_INTEROP_ADD_HEADER", res)
			}
			if diff := harness.Diff(harness.Normalize(m.Data), rest); diff != "" {
				t.Errorf("apart from rspamd's fields the delivery differs from what was sent: %s\n%s", diff, d.Data)
			}
		})
		s.Healthy(t)
	})
	if exited, err := rs.Proc.Exited(); exited {
		t.Errorf("rspamd exited during the test: %v\n%s", err, harness.Tail(rs.Proc.LogPath, 40))
	}
}
