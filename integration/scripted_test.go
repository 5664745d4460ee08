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

// scriptedMessage is a small message for the scripted milter, with extra
// header fields inserted before Message-ID.
func scriptedMessage(name string, extra ...string) harness.Message {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Alice <alice@test.example>\nTo: Bob <bob@test.example>\nSubject: scripted milter test %s\n", name)
	fmt.Fprintf(&b, "Date: Tue, 24 Nov 2026 11:00:00 +0000\n")
	for _, e := range extra {
		fmt.Fprintf(&b, "%s\n", e)
	}
	fmt.Fprintf(&b, "Message-ID: <scripted-%s@test.example>\n\nbody of %s\n.leading dot\n", name, name)
	return harness.Message{Name: name, From: "alice@test.example", To: []string{"bob@test.example"}, Data: b.Bytes()}
}

// TestScriptedMilterRejects checks that the milter's verdicts reach the
// SMTP client through filter-milter and smtpd: a recipient rejected at
// RCPT (the other recipient is still accepted and gets the message), a
// message rejected at end of DATA (554, the milter's text, nothing
// delivered) and a temporary failure (451). The milter listens on a unix
// socket.
func TestScriptedMilterRejects(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		m := harness.StartPyMilter(t, env, "scripted-milter", harness.ScriptedMilter(t), "unix")
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "milter", Filter: filterArgs(m.Spec)},
		}})
		t.Logf("%s: listener milter on 127.0.0.1:%d: filter-milter → scripted milter on %s", s.Version, s.Port("milter"), m.Spec)

		t.Run("rcpt-reject", func(t *testing.T) {
			msg := scriptedMessage("rcpt-reject")
			msg.To = []string{"rcpt-reject@test.example", "ok@test.example"}
			r := s.Send(t, "milter", msg)
			rej := r.Reply("RCPT TO:<rcpt-reject@test.example>")
			ok := r.Reply("RCPT TO:<ok@test.example>")
			t.Logf("RCPT rcpt-reject@test.example → %q; RCPT ok@test.example → %q; %s", rej, ok, r.Summary())
			if want := "550 5.7.1 recipient rejected by scripted milter"; rej != want {
				t.Errorf("RCPT TO:<rcpt-reject@test.example>: got %q, want %q; swaks said:\n%s", rej, want, r.Output)
			}
			if !strings.HasPrefix(ok, "250 ") {
				t.Errorf("RCPT TO:<ok@test.example>: got %q, want 250; swaks said:\n%s", ok, r.Output)
			}
			if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
				t.Fatalf("end of DATA: got %q, want 250; swaks said:\n%s", r.EndOfDataReply(), r.Output)
			}
			ds := s.WaitDeliveries(t, 1, 10*time.Second)
			if ds[0].Rcpt != "ok@test.example" {
				t.Errorf("delivered to %q, want only ok@test.example", ds[0].Rcpt)
			}
			if diff := harness.Diff(harness.Normalize(msg.Data), harness.StripDelivered(ds[0].Data)); diff != "" {
				t.Errorf("delivered message changed: %s", diff)
			}
			t.Logf("delivered once, to %s, unchanged", ds[0].Rcpt)
		})

		t.Run("reject", func(t *testing.T) {
			msg := scriptedMessage("verdict-reject", "X-Test-Verdict: reject")
			r := s.Send(t, "milter", msg)
			t.Logf("X-Test-Verdict: reject → %s", r.Summary())
			if want := "554 5.7.1 message rejected by scripted milter"; r.EndOfDataReply() != want {
				t.Errorf("end of DATA: got %q, want %q; swaks said:\n%s", r.EndOfDataReply(), want, r.Output)
			}
			if r.ExitCode == 0 {
				t.Errorf("swaks exited 0 for a rejected message")
			}
			s.NoDeliveries(t, 500*time.Millisecond)
			t.Logf("nothing delivered")
		})

		t.Run("tempfail", func(t *testing.T) {
			msg := scriptedMessage("verdict-tempfail", "X-Test-Verdict: tempfail")
			r := s.Send(t, "milter", msg)
			t.Logf("X-Test-Verdict: tempfail → %s", r.Summary())
			got := r.EndOfDataReply()
			if !strings.HasPrefix(got, "451 ") {
				t.Errorf("end of DATA: got %q, want 451; swaks said:\n%s", got, r.Output)
			} else if want := "451 4.7.1 message temporarily rejected by scripted milter"; got != want {
				t.Errorf("end of DATA: got %q, want the milter's own reply %q", got, want)
			}
			s.NoDeliveries(t, 500*time.Millisecond)
			t.Logf("nothing delivered")
		})

		t.Run("accepted-after", func(t *testing.T) {
			// The same smtpd and filter-milter still pass mail afterwards.
			msg := scriptedMessage("after")
			r := s.Send(t, "milter", msg)
			t.Logf("plain message after the rejections → %s", r.Summary())
			if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
				t.Fatalf("end of DATA: got %q, want 250; swaks said:\n%s", r.EndOfDataReply(), r.Output)
			}
			s.WaitDeliveries(t, 1, 10*time.Second)
		})
		t.Logf("scripted milter's log (%s):\n%s", m.Proc.LogPath, harness.Tail(m.Proc.LogPath, 30))
		s.Healthy(t)
	})
}

// TestPassthroughUnchanged sends every sample message through
// filter-milter with the scripted milter taking no action, and through a
// second listener of the same smtpd without any filter: both deliveries
// must be byte-identical to each other and to what was sent (ignoring
// smtpd's Received header and the mda's lines). With "X-Test-Actions:
// addheader" the milter adds X-Scripted-Milter: seen, which must be the one
// added line, at the end of the header (smfi_addheader appends).
func TestPassthroughUnchanged(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		m := harness.StartPyMilter(t, env, "scripted-milter", harness.ScriptedMilter(t), "inet")
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "milter", Filter: filterArgs(m.SpecHostPort())},
			{Name: "plain"},
		}})
		t.Logf("%s: listener milter on 127.0.0.1:%d: filter-milter → scripted milter on %s; listener plain on 127.0.0.1:%d: no filter",
			s.Version, s.Port("milter"), m.SpecHostPort(), s.Port("plain"))
		msgs := harness.LoadMessages(t)
		viaMilter := sendAll(t, s, "milter", msgs)
		viaPlain := map[string]sentMessage{}
		for _, p := range sendAll(t, s, "plain", msgs) {
			viaPlain[p.Name] = p
		}
		for _, fm := range viaMilter {
			want := harness.Normalize(fm.Data)
			got := harness.StripDelivered(fm.Delivery.Data)
			plain := harness.StripDelivered(viaPlain[fm.Name].Delivery.Data)
			t.Logf("%s (%d bytes): via filter-milter %s; without filter %s", fm.Name, len(fm.Data), fm.Result.Summary(), viaPlain[fm.Name].Result.Summary())
			if diff := harness.Diff(plain, got); diff != "" {
				t.Errorf("%s: delivered through filter-milter differs from delivered without filter: %s\nfile: %s", fm.Name, diff, fm.Delivery.Path)
			} else if diff := harness.Diff(want, got); diff != "" {
				t.Errorf("%s: delivered differs from the sent message (with and without filter): %s", fm.Name, diff)
			} else {
				t.Logf("%s: byte-identical with and without filter-milter", fm.Name)
			}
		}

		t.Run("addheader", func(t *testing.T) {
			msg := scriptedMessage("addheader", "X-Test-Actions: addheader")
			msg.To = []string{"bob+addheader@test.example"}
			r := s.Send(t, "milter", msg)
			if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
				t.Fatalf("end of DATA: got %q, want 250; swaks said:\n%s", r.EndOfDataReply(), r.Output)
			}
			d := s.WaitDeliveries(t, 1, 10*time.Second)[0]
			got := harness.StripDelivered(d.Data)
			sentFields, sentRest := harness.SplitMessage(harness.Normalize(msg.Data))
			want := harness.JoinMessage(append(sentFields, harness.Field{Name: "X-Scripted-Milter", Raw: []byte("X-Scripted-Milter: seen\n")}), sentRest)
			gotFields, _ := harness.SplitMessage(got)
			idx := -1
			for i, f := range gotFields {
				if f.Name == "X-Scripted-Milter" {
					idx = i
				}
			}
			t.Logf("X-Test-Actions: addheader → %s; X-Scripted-Milter at header index %d of %d (sent header had %d fields)",
				r.Summary(), idx, len(gotFields), len(sentFields))
			if diff := harness.Diff(want, got); diff != "" {
				t.Errorf("want the sent message plus one line \"X-Scripted-Milter: seen\" at the end of the header: %s\ndelivered:\n%s", diff, d.Data)
			}
		})
		s.Healthy(t)
	})
}
