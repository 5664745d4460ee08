//go:build integration

package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestInteropOpenDKIMSignsAuthenticated runs OpenSMTPD with STARTTLS and
// AUTH → filter-milter → opendkim signing, with InternalHosts NOT
// containing 127.0.0.1: opendkim signs only because filter-milter passes
// {auth_authen}. A message sent after AUTH gets a DKIM-Signature that
// go-msgauth verifies; the same message sent over TLS without AUTH is
// delivered unsigned. It runs on every selected version but 6.8, whose
// STARTTLS is broken with OpenSSL 3; when only 6.8 is selected, on 7.4.
func TestInteropOpenDKIMSignsAuthenticated(t *testing.T) {
	var vs []harness.SMTPDVersion
	for _, v := range harness.SMTPDVersions() {
		if v.Name != harness.SMTPD68.Name {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		vs = []harness.SMTPDVersion{harness.SMTPD74}
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			v.Require(t)
			testOpenDKIMSignsAuthenticated(t, v)
		})
	}
}

func testOpenDKIMSignsAuthenticated(t *testing.T, v harness.SMTPDVersion) {
	env := harness.NewEnv(t)
	key := harness.GenerateDKIMKey(t, env, "keys")
	signer := harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{Name: "opendkim-sign", Mode: harness.DKIMSign, Key: key,
		// a later InternalHosts replaces the harness's 127.0.0.1, ::1
		Extra: []string{"InternalHosts 192.0.2.1"}})
	s := harness.StartSMTPDAuth(t, env, v.Binary, filterArgs(signer.Spec))

	for _, tc := range []struct {
		name string
		auth bool
	}{{"authenticated-signed", true}, {"unauthenticated-not-signed", false}} {
		t.Run(tc.name, func(t *testing.T) {
			m := interopMessage("auth-"+tc.name, "Alice <alice@test.example>", nil, "Hello Bob,\n\nsent over STARTTLS.\n")
			m.From = "alice@test.example"
			m.To = []string{"bob+" + m.Name + "@test.example"}
			r := s.SendAuth(t, m, tc.auth)
			t.Logf("%s: %s", m.Name, r.Summary())
			if tc.auth {
				if got := r.Reply("AUTH"); !strings.HasPrefix(got, "235 ") {
					t.Fatalf("AUTH: %q, want 235; swaks:\n%s", got, r.Output)
				}
			}
			if got := r.Reply("STARTTLS"); !strings.HasPrefix(got, "220 ") {
				t.Fatalf("STARTTLS: %q, want 220; swaks:\n%s", got, r.Output)
			}
			expectEndOfData(t, r, "250 ")
			d := s.WaitDeliveries(t, 1, 20*time.Second)[0]
			rest, added := splitAdded(d.Data, func(n string) bool {
				return strings.EqualFold(n, "DKIM-Signature") || strings.EqualFold(n, "DKIM-Filter")
			})
			_, nsig := fieldValue(added, "DKIM-Signature")
			if tc.auth {
				res, err := harness.VerifyDKIM(d.Data, key.Records())
				t.Logf("go-msgauth: %v %v", res, err)
				if nsig != 1 || err != nil || len(res) != 1 || !res[0].Pass() {
					t.Errorf("want one verifying DKIM-Signature, got %d (%v %v); delivered:\n%s", nsig, res, err, d.Data)
				}
			} else if nsig != 0 {
				t.Errorf("unauthenticated message from 127.0.0.1 (not in InternalHosts) was signed; delivered:\n%s", d.Data)
			}
			if diff := harness.Diff(harness.Normalize(m.Data), rest); diff != "" {
				t.Errorf("apart from DKIM-Signature/DKIM-Filter the delivery differs from what was sent: %s\n%s", diff, d.Data)
			}
		})
	}
	s.Healthy(t)
}
