//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestMultiMilter runs several milters in a row through real OpenSMTPD:
//
//   - fault_milter.py in mode chsubject (smfi_chgheader on Subject, plus
//     "X-Fault-Milter: seen"), then opendkim signing: the delivered
//     signature verifies with go-msgauth over the changed Subject, so the
//     signer saw the first milter's change;
//   - the same two the other way round: the Subject is changed after
//     signing and the signature fails, and verifies again once the
//     original Subject is put back: the order of -milter is the order of
//     the milters;
//   - scripted_milter.py, which rejects a recipient at RCPT and a message
//     at end of message, then fault_milter.py in mode ok, which logs every
//     call: the second milter never sees the command or the message the
//     first rejected.
func TestMultiMilter(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		key := harness.GenerateDKIMKey(t, env, "keys")
		signer := harness.StartOpenDKIM(t, env, harness.OpenDKIMConfig{
			Name: "opendkim-sign", Mode: harness.DKIMSign, Canonicalization: "relaxed/simple", Key: key,
		})
		subject := harness.StartFaultMilter(t, env, "chsubject-milter", "chsubject")
		scripted := harness.StartPyMilter(t, env, "scripted-milter", harness.ScriptedMilter(t), "inet")
		second := harness.StartFaultMilter(t, env, "second-milter", "ok")
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "subject-then-sign", Filter: multiArgs(subject.SpecHostPort(), signer.Spec)},
			{Name: "sign-then-subject", Filter: multiArgs(signer.Spec, subject.SpecHostPort())},
			{Name: "reject-then-log", Filter: multiArgs(scripted.SpecHostPort(), second.SpecHostPort())},
		}})
		t.Logf("%s: subject-then-sign on %d: chsubject milter %s, then opendkim %s; sign-then-subject on %d: the reverse; reject-then-log on %d: scripted milter %s, then fault milter (ok) %s",
			s.Version, s.Port("subject-then-sign"), subject.SpecHostPort(), signer.Spec, s.Port("sign-then-subject"),
			s.Port("reject-then-log"), scripted.SpecHostPort(), second.SpecHostPort())

		t.Run("subject-then-sign", func(t *testing.T) {
			msg := multiMessage("subject-then-sign")
			d := multiSend(t, s, "subject-then-sign", msg)
			orig, changed := multiSubjectChanged(t, msg, d)
			res := multiVerify(t, d, key)
			t.Logf("delivered Subject %q (sent %q); go-msgauth: %s", changed, orig, res)
			if !res.Pass() {
				t.Errorf("the signature made after the Subject change does not verify: %s; delivered:\n%s", res, d.Data)
			}
			if !multiContainsFold(res.HeaderKeys, "Subject") {
				t.Errorf("the signature does not cover Subject (h=%s): the test proves nothing", strings.Join(res.HeaderKeys, ":"))
			}
			if multiContainsFold(res.HeaderKeys, fieldFaultMilter) {
				t.Logf("the signature also covers %s, which the first milter added", fieldFaultMilter)
			}
			// Byte for byte: what was sent, with the Subject changed and
			// the fields the two milters add.
			rest, added := harness.RemoveFields(harness.StripDelivered(d.Data), "DKIM-Signature", "DKIM-Filter", fieldFaultMilter)
			want := bytes.Replace(harness.Normalize(msg.Data), []byte("Subject: "+orig+"\n"), []byte("Subject: "+changed+"\n"), 1)
			if diff := harness.Diff(want, rest); diff != "" {
				t.Errorf("apart from the Subject and the added fields, the message changed: %s", diff)
			}
			t.Logf("added: %s", fieldNames(added))
		})

		t.Run("sign-then-subject", func(t *testing.T) {
			msg := multiMessage("sign-then-subject")
			d := multiSend(t, s, "sign-then-subject", msg)
			orig, changed := multiSubjectChanged(t, msg, d)
			res := multiVerify(t, d, key)
			t.Logf("delivered Subject %q (sent %q); go-msgauth: %s", changed, orig, res)
			if res.Pass() {
				t.Errorf("the signature verifies although the Subject was changed after signing: the second milter did not run after the first, or the signature does not cover Subject (h=%s)",
					strings.Join(res.HeaderKeys, ":"))
			}
			// Put the original Subject back: the signature verifies, so
			// the only thing that broke it is the later milter's change.
			restored := bytes.Replace(d.Data, []byte("Subject: "+changed+"\n"), []byte("Subject: "+orig+"\n"), 1)
			again := multiVerify(t, harness.Delivery{Path: d.Path, Data: restored}, key)
			t.Logf("with the original Subject put back: %s", again)
			if !again.Pass() {
				t.Errorf("with the original Subject put back the signature still fails (%s): opendkim did not sign what was sent", again)
			}
		})

		t.Run("reject-then-log", func(t *testing.T) {
			// RCPT: the first milter rejects one recipient; the second
			// must see only the other.
			msg := multiMessage("rcpt-reject")
			msg.To = []string{"rcpt-reject@test.example", "ok@test.example"}
			r := s.Send(t, "reject-then-log", msg)
			rej, ok := r.Reply("RCPT TO:<rcpt-reject@test.example>"), r.Reply("RCPT TO:<ok@test.example>")
			t.Logf("RCPT rcpt-reject@ → %q, RCPT ok@ → %q; %s", rej, ok, r.Summary())
			if want := "550 5.7.1 recipient rejected by scripted milter"; rej != want {
				t.Errorf("RCPT TO:<rcpt-reject@test.example>: got %q, want %q", rej, want)
			}
			if !strings.HasPrefix(ok, "250 ") || !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
				t.Fatalf("RCPT ok@ %q, end of DATA %q: want 250; swaks said:\n%s", ok, r.EndOfDataReply(), r.Output)
			}
			d := s.WaitDeliveries(t, 1, 10*time.Second)[0]
			_, added := harness.RemoveFields(harness.StripDelivered(d.Data), fieldFaultMilter)
			if d.Rcpt != "ok@test.example" || len(added) != 1 {
				t.Errorf("delivered to %q with %s; want ok@test.example with the second milter's field", d.Rcpt, faultFields(added))
			}
			if got := second.Lines(" rcpt ", "<ok@test.example>"); len(got) != 1 {
				t.Errorf("the second milter saw RCPT ok@test.example %d times, want once", len(got))
			}
			if got := second.Lines(" rcpt ", "rcpt-reject@test.example"); len(got) != 0 {
				t.Errorf("the second milter saw the RCPT the first one rejected:\n%s", strings.Join(got, "\n"))
			} else {
				t.Logf("the second milter saw RCPT ok@test.example and never rcpt-reject@test.example")
			}

			// End of message: the first milter rejects the message; the
			// second must see none of it (no header, no end of message).
			msg = multiMessage("eom-reject", "X-Test-Verdict: reject")
			msg.To = []string{"bob@test.example"}
			r = s.Send(t, "reject-then-log", msg)
			t.Logf("X-Test-Verdict: reject → %s", r.Summary())
			if want := "554 5.7.1 message rejected by scripted milter"; r.EndOfDataReply() != want {
				t.Errorf("end of DATA: got %q, want %q", r.EndOfDataReply(), want)
			}
			s.NoDeliveries(t, 500*time.Millisecond)
			id := multiMessageID("eom-reject")
			if got := scripted.Proc.Log(); !strings.Contains(got, id) {
				t.Errorf("the first milter's log has no header with %s: it did not see the message", id)
			}
			if got := second.Lines(id); len(got) != 0 {
				t.Errorf("the second milter saw the message the first one rejected at end of message:\n%s", strings.Join(got, "\n"))
			}
			if got := second.Lines("X-Test-Verdict"); len(got) != 0 {
				t.Errorf("the second milter saw a header of the rejected message:\n%s", strings.Join(got, "\n"))
			}
			if got := second.Lines(" eom ", id); len(got) != 0 {
				t.Errorf("the second milter got end of message for the rejected message")
			}
			t.Logf("the second milter's log has nothing of the message the first rejected; its last lines:\n%s", harness.Tail(second.Log, 4))
		})
		s.Healthy(t)
	})
}

// multiArgs are filter-milter's arguments for several milters in order.
func multiArgs(specs ...string) []string {
	var args []string
	for _, sp := range specs {
		args = append(args, filterArgs(sp)[:2]...)
	}
	return append(args, filterArgs("x")[2:]...)
}

func multiMessageID(name string) string { return "<multi-" + name + "@test.example>" }

// multiMessage is a small message from test.example (opendkim signs it)
// with extra header fields before Message-ID.
func multiMessage(name string, extra ...string) harness.Message {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Alice <alice@test.example>\nTo: Bob <bob@test.example>\nSubject: multi-milter test %s\n", name)
	fmt.Fprintf(&b, "Date: Tue, 24 Nov 2026 11:00:00 +0000\n")
	for _, e := range extra {
		fmt.Fprintf(&b, "%s\n", e)
	}
	fmt.Fprintf(&b, "Message-ID: %s\n\nbody of %s\n.leading dot\n", multiMessageID(name), name)
	return harness.Message{Name: name, From: "alice@test.example", To: []string{"bob+" + name + "@test.example"}, Data: b.Bytes()}
}

// multiSend sends one message that must be accepted and returns its delivery.
func multiSend(t *testing.T, s *harness.SMTPD, listener string, msg harness.Message) harness.Delivery {
	t.Helper()
	r := s.Send(t, listener, msg)
	if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
		t.Fatalf("%s via %s: %s, want 250; swaks said:\n%s", msg.Name, listener, r.Summary(), r.Output)
	}
	return s.WaitDeliveries(t, 1, 10*time.Second)[0]
}

// multiSubjectChanged returns the sent and the delivered Subject and fails
// the test unless the first milter changed it as it does.
func multiSubjectChanged(t *testing.T, msg harness.Message, d harness.Delivery) (orig, changed string) {
	t.Helper()
	orig = multiSubject(msg.Data)
	changed = multiSubject(d.Data)
	if want := "[changed by fault_milter] " + orig; changed != want {
		t.Fatalf("delivered Subject %q, want %q; delivered:\n%s", changed, want, d.Data)
	}
	return orig, changed
}

func multiSubject(msg []byte) string {
	fields, _ := harness.SplitMessage(harness.StripMDAHeaders(msg))
	for _, f := range fields {
		if strings.EqualFold(f.Name, "Subject") {
			return strings.TrimPrefix(f.Value(), " ")
		}
	}
	return ""
}

// multiVerify verifies the one DKIM-Signature of a delivery.
func multiVerify(t *testing.T, d harness.Delivery, key *harness.DKIMKey) harness.DKIMResult {
	t.Helper()
	res, err := harness.VerifyDKIM(d.Data, key.Records())
	if err != nil || len(res) != 1 {
		t.Fatalf("want one DKIM-Signature, got %v (%v); delivered:\n%s", res, err, d.Data)
	}
	return res[0]
}

func multiContainsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(strings.TrimSpace(x), s) {
			return true
		}
	}
	return false
}
