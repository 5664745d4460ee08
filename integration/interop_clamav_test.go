//go:build integration

package integration

import (
	"encoding/base64"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// TestInteropClamAV runs smtpd → filter-milter → Debian's clamav-milter →
// clamd with local test signatures only. A message with the EICAR test
// file as a base64 attachment is rejected at the end of DATA with
// clamav-milter's reply; a clean message is delivered with X-Virus-Scanned
// and X-Virus-Status: Clean, and nothing else changed.
func TestInteropClamAV(t *testing.T) {
	env := harness.NewEnv(t)
	cav := harness.StartClamAV(t, env)
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		senv := harness.NewEnv(t)
		s := harness.StartSMTPD(t, senv, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "clamav", Filter: filterArgs(cav.Spec)},
		}})

		t.Run("clean", func(t *testing.T) {
			m := interopMessage("clamav-clean", "Alice <alice@test.example>", nil, "Hello Bob,\n\nnothing to see here.\n")
			r := sendOne(t, s, "clamav", "alice@test.example", m)
			expectEndOfData(t, r, "250 ")
			d := s.WaitDeliveries(t, 1, 20*time.Second)[0]
			rest, added := splitAdded(d.Data, func(n string) bool { return strings.HasPrefix(strings.ToLower(n), "x-virus-") })
			for _, f := range added {
				t.Logf("added by clamav-milter: %s", strings.TrimRight(string(f.Raw), "\n"))
			}
			if v, n := fieldValue(added, "X-Virus-Status"); n != 1 || v != "Clean" {
				t.Errorf("X-Virus-Status %q (%d fields), want one Clean", v, n)
			}
			if v, n := fieldValue(added, "X-Virus-Scanned"); n != 1 || !strings.HasPrefix(v, "clamav-milter ") {
				t.Errorf("X-Virus-Scanned %q (%d fields), want one \"clamav-milter <version> at mx.test.example\"", v, n)
			}
			if diff := harness.Diff(harness.Normalize(m.Data), rest); diff != "" {
				t.Errorf("apart from X-Virus-*, the delivery differs from what was sent: %s\n%s", diff, d.Data)
			}
		})

		t.Run("eicar-rejected", func(t *testing.T) {
			b64 := base64.StdEncoding.EncodeToString([]byte(eicar))
			body := "--b1\nContent-Type: text/plain\n\nsee attachment\n\n--b1\n" +
				"Content-Type: application/octet-stream; name=eicar.com\nContent-Transfer-Encoding: base64\n" +
				"Content-Disposition: attachment; filename=eicar.com\n\n" + b64 + "\n--b1--\n"
			m := interopMessage("clamav-eicar", "Alice <alice@test.example>", []string{`Content-Type: multipart/mixed; boundary="b1"`}, body)
			r := sendOne(t, s, "clamav", "alice@test.example", m)
			expectEndOfData(t, r, "550 5.7.1 Virus found: Interop.Test.EICAR.")
			s.NoDeliveries(t, 300*time.Millisecond)
		})
		s.Healthy(t)
	})
	if b, err := os.ReadFile(cav.Dir + "/clamav-milter.log"); err == nil {
		t.Logf("clamav-milter.log:\n%s", b)
	}
}
