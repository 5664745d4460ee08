//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestDKIMSigningVerifies runs smtpd → filter-milter → opendkim (signing)
// for every sample message, once with relaxed/simple and once with
// simple/simple canonicalization. Each delivered message must carry one
// DKIM-Signature that go-msgauth verifies (key record from the generated
// key, no DNS), and apart from the added DKIM-Signature/DKIM-Filter fields
// (and smtpd's Received header and the mda's lines) it must be
// byte-identical to what was sent. A third listener runs filter-milter with
// opendkim in verify mode: a signed message re-sent there gets
// Authentication-Results with dkim=pass, a tampered copy dkim=fail.
func TestDKIMSigningVerifies(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		key := harness.GenerateDKIMKey(t, env, "keys")
		relaxed := harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{
			Name: "opendkim-relaxed-simple", Mode: harness.DKIMSign, Canonicalization: "relaxed/simple", Key: key,
		})
		simple := harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{
			Name: "opendkim-simple-simple", Mode: harness.DKIMSign, Canonicalization: "simple/simple", Key: key, Unix: true,
		})
		verifier := harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{
			Name: "opendkim-verify", Mode: harness.DKIMVerify, Key: key,
		})
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "relaxed", Filter: filterArgs(relaxed.Spec)},
			{Name: "simple", Filter: filterArgs(simple.Spec)},
			{Name: "verify", Filter: filterArgs(verifier.Spec)},
		}})
		msgs := harness.LoadMessages(t)

		signed := map[string][]byte{}
		for _, lc := range []struct{ listener, canon string }{{"relaxed", "relaxed/simple"}, {"simple", "simple/simple"}} {
			t.Run(lc.listener, func(t *testing.T) {
				t.Logf("%s: listener %s on 127.0.0.1:%d: filter-milter → opendkim signing with %s",
					s.Version, lc.listener, s.Port(lc.listener), lc.canon)
				for _, m := range sendAll(t, s, lc.listener, msgs) {
					res, err := harness.VerifyDKIM(m.Delivery.Data, key.Records())
					verdict := fmt.Sprint(res)
					if err != nil {
						verdict = "error: " + err.Error()
					}
					stripped := harness.StripDelivered(m.Delivery.Data)
					rest, added := harness.RemoveFields(stripped, "DKIM-Signature", "DKIM-Filter")
					t.Logf("%s (%d bytes): %s; delivered %d bytes; added %s at %s; go-msgauth: %s",
						m.Name, len(m.Data), m.Result.Summary(), len(m.Delivery.Data), fieldNames(added),
						positions(stripped, added), verdict)
					ok := true
					if err != nil || len(res) != 1 || !res[0].Pass() {
						t.Errorf("%s: want exactly one DKIM-Signature that verifies, got %s", m.Name, verdict)
						ok = false
					}
					if n := countNamed(added, "DKIM-Signature"); n != 1 {
						t.Errorf("%s: %d DKIM-Signature fields added, want 1", m.Name, n)
						ok = false
					}
					if diff := harness.Diff(harness.Normalize(m.Data), rest); diff != "" {
						t.Errorf("%s: apart from DKIM-Signature/DKIM-Filter, the delivered message is not what was sent: %s", m.Name, diff)
						ok = false
					}
					if !ok {
						t.Logf("%s: delivered file %s:\n%s", m.Name, m.Delivery.Path, m.Delivery.Data)
					}
					signed[lc.listener+"/"+m.Name] = harness.StripMDAHeaders(m.Delivery.Data)
				}
			})
		}

		t.Run("opendkim-verify", func(t *testing.T) {
			t.Logf("%s: listener verify on 127.0.0.1:%d: filter-milter → opendkim verifying (TestDNSData)", s.Version, s.Port("verify"))
			var resend []harness.Message
			for _, k := range []string{"relaxed/01-plain", "simple/07-folded-headers", "relaxed/03-utf8-8bit"} {
				data, ok := signed[k]
				if !ok {
					t.Fatalf("no signed delivery of %s to re-send", k)
				}
				resend = append(resend, harness.Message{Name: "signed-" + strings.ReplaceAll(k, "/", "-"), Data: data})
			}
			tampered := bytes.Replace(resend[0].Data, []byte("this is a plain message."), []byte("this is a TAMPERED message."), 1)
			if bytes.Equal(tampered, resend[0].Data) {
				t.Fatalf("could not tamper with %s", resend[0].Name)
			}
			resend = append(resend, harness.Message{Name: "tampered-relaxed-01-plain", Data: tampered})
			for _, m := range sendAll(t, s, "verify", resend) {
				fields, _ := harness.SplitMessage(harness.StripMDAHeaders(m.Delivery.Data))
				var ar []string
				for _, f := range fields {
					if strings.EqualFold(f.Name, "Authentication-Results") {
						ar = append(ar, strings.Join(strings.Fields(f.Value()), " "))
					}
				}
				want := "dkim=pass"
				if strings.HasPrefix(m.Name, "tampered") {
					want = "dkim=fail"
				}
				t.Logf("%s: %s; Authentication-Results: %q", m.Name, m.Result.Summary(), ar)
				if len(ar) != 1 || !strings.Contains(ar[0], want) {
					t.Errorf("%s: want one Authentication-Results with %s from opendkim, got %q; delivered:\n%s", m.Name, want, ar, m.Delivery.Data)
				}
			}
		})
		s.Healthy(t)
	})
}

func fieldNames(fs []harness.Field) string {
	var n []string
	for _, f := range fs {
		n = append(n, f.Name)
	}
	if len(n) == 0 {
		return "nothing"
	}
	return strings.Join(n, ", ")
}

func countNamed(fs []harness.Field, name string) int {
	n := 0
	for _, f := range fs {
		if strings.EqualFold(f.Name, name) {
			n++
		}
	}
	return n
}

// positions says where the fields sit in msg's header: "index i of n".
func positions(msg []byte, fs []harness.Field) string {
	all, _ := harness.SplitMessage(msg)
	var out []string
	for _, f := range fs {
		for i, a := range all {
			if bytes.Equal(a.Raw, f.Raw) {
				out = append(out, fmt.Sprintf("%d", i))
			}
		}
	}
	return fmt.Sprintf("header index [%s] of %d", strings.Join(out, " "), len(all))
}
