//go:build integration

package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// chainArgs are filter-milter's arguments for several milters in order.
func chainArgs(specs ...string) []string {
	args := filterArgs(specs[0])
	var more []string
	for _, s := range specs[1:] {
		more = append(more, "-milter", s)
	}
	return append(args[:2:2], append(more, args[2:]...)...)
}

// TestInteropOpenDMARC runs Debian's opendmarc behind opendkim in one
// filter-milter chain. DNS (the _dmarc and SPF records of test.example)
// comes from a local dnsmasq; opendmarc sees it through a bind-mounted
// /etc/resolv.conf in its own mount namespace. SPF does not allow
// 127.0.0.1, the SMTP client's address, so DMARC can only pass through an
// aligned DKIM signature:
//   - listener "signed" (opendkim sign → opendkim verify → opendmarc): a
//     message From: test.example is signed, verified (dkim=pass) and gets
//     dmarc=pass;
//   - listener "unsigned" (opendkim verify → opendmarc): the same From:
//     without a signature is rejected by opendmarc's p=reject.
func TestInteropOpenDMARC(t *testing.T) {
	env := harness.NewEnv(t)
	dns := harness.StartTestDNS(t, env)
	dmarc := harness.StartOpenDMARC(t, env, dns)
	key := harness.GenerateDKIMKey(t, env, "keys")
	signer := harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{Name: "opendkim-sign", Mode: harness.DKIMSign, Key: key})
	verifier := harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{Name: "opendkim-verify", Mode: harness.DKIMVerify, Key: key})
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		senv := harness.NewEnv(t)
		s := harness.StartSMTPD(t, senv, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "signed", Filter: chainArgs(signer.Spec, verifier.Spec, dmarc.Spec)},
			{Name: "unsigned", Filter: chainArgs(verifier.Spec, dmarc.Spec)},
		}})

		t.Run("aligned-dkim-pass", func(t *testing.T) {
			m := interopMessage("dmarc-aligned", "Alice <alice@test.example>", nil, "Hello Bob,\n\nsigned and aligned.\n")
			r := sendOne(t, s, "signed", "alice@test.example", m)
			expectEndOfData(t, r, "250 ")
			d := s.WaitDeliveries(t, 1, 20*time.Second)[0]
			fields, _ := harness.SplitMessage(harness.StripMDAHeaders(d.Data))
			var ar []string
			for _, f := range fields {
				if strings.EqualFold(f.Name, "Authentication-Results") {
					ar = append(ar, strings.Join(strings.Fields(f.Value()), " "))
				}
			}
			t.Logf("Authentication-Results: %q", ar)
			all := strings.Join(ar, "\n")
			if !strings.Contains(all, "dkim=pass") || !strings.Contains(all, "dmarc=pass") || !strings.Contains(all, "header.from=test.example") {
				t.Errorf("want dkim=pass and dmarc=pass header.from=test.example in Authentication-Results; delivered:\n%s", d.Data)
			}
			if _, n := fieldValue(fields, "DMARC-Filter"); n != 1 {
				t.Errorf("%d DMARC-Filter fields, want 1 (SoftwareHeader true)", n)
			}
		})

		t.Run("spoof-rejected", func(t *testing.T) {
			m := interopMessage("dmarc-spoof", "Alice <alice@test.example>", nil, "Hello Bob,\n\nnot signed, SPF fails.\n")
			r := sendOne(t, s, "unsigned", "alice@test.example", m)
			expectEndOfData(t, r, "550 5.7.1 rejected by DMARC policy for test.example")
			s.NoDeliveries(t, 300*time.Millisecond)
		})
		s.Healthy(t)
	})
}
