//go:build integration

package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestInteropDKIMPyMilter runs smtpd → filter-milter → Debian's
// dkimpy-milter signing for test.example (client 127.0.0.1 is in
// InternalHosts). The delivered message carries one DKIM-Signature that
// go-msgauth verifies and is otherwise byte-identical to what was sent.
func TestInteropDKIMPyMilter(t *testing.T) {
	env := harness.NewEnv(t)
	key := harness.GenerateDKIMKey(t, env, "keys")
	dm := harness.StartDKIMPyMilter(t, env, key)
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		senv := harness.NewEnv(t)
		s := harness.StartSMTPD(t, senv, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "dkimpy", Filter: filterArgs(dm.Spec)},
		}})
		m := interopMessage("dkimpy-sign", "Alice <alice@test.example>", nil,
			"Hello Bob,\n\n.a line with a leading dot\ntrailing spaces   \n\nAlice\n")
		r := sendOne(t, s, "dkimpy", "alice@test.example", m)
		expectEndOfData(t, r, "250 ")
		d := s.WaitDeliveries(t, 1, 20*time.Second)[0]
		res, err := harness.VerifyDKIM(d.Data, key.Records())
		t.Logf("go-msgauth: %v %v", res, err)
		if err != nil || len(res) != 1 || !res[0].Pass() {
			t.Errorf("want one DKIM-Signature that verifies, got %v %v; delivered:\n%s", res, err, d.Data)
		}
		rest, added := splitAdded(d.Data, func(n string) bool { return strings.EqualFold(n, "DKIM-Signature") })
		if len(added) != 1 {
			t.Errorf("%d DKIM-Signature fields, want 1", len(added))
		}
		if diff := harness.Diff(harness.Normalize(m.Data), rest); diff != "" {
			t.Errorf("apart from DKIM-Signature the delivery differs from what was sent: %s\n%s", diff, d.Data)
		}
		s.Healthy(t)
	})
}

// TestInteropPySPFMilter runs smtpd → filter-milter → pyspf-milter (the
// code of Debian's pyspf-milter from python3-spf-engine; the pyspf-milter
// package itself needs postfix, see StartPySPFMilter) with DNS from a
// local dnsmasq. test.example's SPF record
// does not list 127.0.0.1 (-all): MAIL FROM is rejected with pyspf's
// 550 5.7.23; pass.test.example lists it: the message is delivered with
// Authentication-Results: ... spf=pass.
func TestInteropPySPFMilter(t *testing.T) {
	env := harness.NewEnv(t)
	dns := harness.StartTestDNS(t, env, `txt-record=pass.test.example,"v=spf1 ip4:127.0.0.1 -all"`)
	sp := harness.StartPySPFMilter(t, env, dns)
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		senv := harness.NewEnv(t)
		s := harness.StartSMTPD(t, senv, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "spf", Filter: filterArgs(sp.Spec)},
		}})

		t.Run("spf-pass", func(t *testing.T) {
			m := interopMessage("spf-pass", "Alice <alice@pass.test.example>", nil, "Hello Bob,\n\nSPF allows 127.0.0.1.\n")
			r := sendOne(t, s, "spf", "alice@pass.test.example", m)
			expectEndOfData(t, r, "250 ")
			d := s.WaitDeliveries(t, 1, 20*time.Second)[0]
			rest, added := splitAdded(d.Data, func(n string) bool { return strings.EqualFold(n, "Authentication-Results") })
			ar, n := fieldValue(added, "Authentication-Results")
			t.Logf("Authentication-Results: %q", ar)
			if n != 1 || !strings.Contains(ar, "spf=pass") || !strings.Contains(ar, "smtp.mailfrom=pass.test.example") ||
				!strings.Contains(ar, "envelope-from=alice@pass.test.example") {
				t.Errorf("want one Authentication-Results with spf=pass smtp.mailfrom=pass.test.example, envelope-from=alice@pass.test.example; delivered:\n%s", d.Data)
			}
			if diff := harness.Diff(harness.Normalize(m.Data), rest); diff != "" {
				t.Errorf("apart from Authentication-Results the delivery differs from what was sent: %s\n%s", diff, d.Data)
			}
		})

		t.Run("spf-fail-rejected", func(t *testing.T) {
			m := interopMessage("spf-fail", "Alice <alice@test.example>", nil, "Hello Bob,\n\nSPF does not allow 127.0.0.1.\n")
			r := sendOne(t, s, "spf", "alice@test.example", m)
			got := r.Reply("MAIL FROM")
			t.Logf("MAIL FROM: %q", got)
			if !strings.HasPrefix(got, "550 5.7.23 ") || !strings.Contains(got, "SPF fail") {
				t.Errorf("MAIL FROM: got %q, want pyspf-milter's 550 5.7.23 ... SPF fail ...; swaks:\n%s", got, r.Output)
			}
			s.NoDeliveries(t, 300*time.Millisecond)
		})
		s.Healthy(t)
	})
}
