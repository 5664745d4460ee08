//go:build integration

package integration

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestHarnessBaseline checks the harness and the peers without
// filter-milter, so that a failure here is not the gateway's: smtpd with no
// filter, and with a filter that echoes every data-line, delivers every
// sample message byte-identical to what was sent (apart from the mda's
// lines and smtpd's Received header), sessions are
// not delayed by DNS, a message signed here with go-msgauth still verifies
// after the trip through smtpd, and opendkim and the scripted milter start
// and listen.
func TestHarnessBaseline(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		key := harness.GenerateDKIMKey(t, env, "keys")
		harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{Mode: harness.DKIMSign, Key: key})
		harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{Mode: harness.DKIMVerify, Key: key, Unix: true})
		harness.StartPyMilter(t, env, "scripted-milter", harness.ScriptedMilter(t), "unix")
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "plain"},
			{Name: "echo", FilterCommand: harness.EchoFilterCommand(t, env)},
		}})
		t.Logf("%s: listener plain (no filter) on 127.0.0.1:%d, listener echo (a python filter that echoes every data-line) on 127.0.0.1:%d",
			s.Version, s.Port("plain"), s.Port("echo"))

		msgs := harness.LoadMessages(t)
		var slowest time.Duration
		for _, listener := range []string{"plain", "echo"} {
			for _, m := range sendAll(t, s, listener, msgs) {
				slowest = max(slowest, m.Result.Duration)
				got := harness.StripDelivered(m.Delivery.Data)
				if diff := harness.Diff(harness.Normalize(m.Data), got); diff != "" {
					t.Errorf("%s via %s: delivered message differs from the sent one: %s", m.Name, listener, diff)
					continue
				}
				t.Logf("%s via %s (%d bytes): %s; delivered to %s byte-identical", m.Name, listener, len(m.Data), m.Result.Summary(), m.Delivery.Rcpt)
			}
		}
		if slowest > 2*time.Second {
			t.Errorf("slowest swaks session took %v: smtpd's PTR lookup is stalling despite the private resolv.conf", slowest)
		} else {
			t.Logf("slowest swaks session: %v (no resolver stall)", slowest.Round(time.Millisecond))
		}

		// go-msgauth signs, smtpd carries, the harness verifies.
		signer := loadSigner(t, key.PrivatePath)
		for _, canon := range []dkim.Canonicalization{dkim.CanonicalizationSimple, dkim.CanonicalizationRelaxed} {
			m := harness.LoadMessages(t)[6] // 07-folded-headers
			var signed bytes.Buffer
			err := dkim.Sign(&signed, bytes.NewReader(bytes.ReplaceAll(m.Data, []byte("\n"), []byte("\r\n"))), &dkim.SignOptions{
				Domain: key.Domain, Selector: key.Selector, Signer: signer,
				HeaderCanonicalization: canon, BodyCanonicalization: canon,
			})
			if err != nil {
				t.Fatalf("dkim.Sign: %v", err)
			}
			m.Name = "go-msgauth-signed-" + string(canon)
			m.Data = signed.Bytes()
			m.From, m.To = "alice@test.example", []string{"bob@test.example"}
			r := s.Send(t, "plain", m)
			if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
				t.Fatalf("%s: %s\n%s", m.Name, r.Summary(), r.Output)
			}
			d := s.WaitDeliveries(t, 1, 10*time.Second)[0]
			res, err := harness.VerifyDKIM(d.Data, key.Records())
			if err != nil || len(res) != 1 || !res[0].Pass() {
				t.Errorf("%s: harness DKIM verification of a go-msgauth signature: %v %v", m.Name, res, err)
				continue
			}
			t.Logf("%s: %s", m.Name, res[0])
		}
		// Filter procs run as opensmtpd on both versions (Debian builds
		// them with opensmtpd/opensmtpq, not _smtpd/_smtpq).
		var who string
		for _, l := range strings.Split(s.Proc.Log(), "\n") {
			if _, rest, ok := strings.Cut(l, "echo_filter: running as "); ok {
				who = rest
			}
		}
		t.Logf("%s runs filter procs as: %s", s.Version, who)
		if !strings.Contains(who, "(opensmtpd)") {
			t.Errorf("%s: filter proc runs as %q, want user opensmtpd (files it writes must be writable by that user)", s.Version, who)
		}
		s.Healthy(t)
	})
}

func loadSigner(t *testing.T, path string) crypto.Signer {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		return k
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return k.(crypto.Signer)
}
