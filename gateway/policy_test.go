package gateway

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	djmilter "github.com/d--j/go-milter"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
	"github.com/filter-milter/filter-milter/protocol"
)

// TestPolicy runs what the filter protocol cannot carry through each
// setting: what commit answers and which lines go back to smtpd.
func TestPolicy(t *testing.T) {
	msg := []string{"Subject: s", "", "body"}
	marked := []string{"X-Spam: yes", "Subject: s", "", "body"}
	eom := func(f func(m djmilter.Modifier) (*djmilter.Response, error)) miltertest.Script {
		return miltertest.Script{EOM: f}
	}
	discard := eom(func(djmilter.Modifier) (*djmilter.Response, error) { return djmilter.RespDiscard, nil })
	quarantine := eom(func(m djmilter.Modifier) (*djmilter.Response, error) {
		_ = m.Quarantine("looks bad")
		return djmilter.RespAccept, nil
	})
	quarantineThenReject := eom(func(m djmilter.Modifier) (*djmilter.Response, error) {
		_ = m.Quarantine("looks bad")
		return djmilter.RejectWithCodeAndReason(554, "5.7.1 no")
	})
	addRcpt := eom(func(m djmilter.Modifier) (*djmilter.Response, error) {
		_ = m.AddRecipient("<added@test.example>", "")
		return djmilter.RespAccept, nil
	})
	multiLine := eom(func(djmilter.Modifier) (*djmilter.Response, error) {
		return djmilter.RejectWithCodeAndReason(550, "5.7.1 first\r\nsecond")
	})
	cases := []struct {
		name   string
		script miltertest.Script
		policy Policy
		commit string
		lines  []string
	}{
		{"discard rejects by default", discard, Policy{}, "reject|550 5.7.1 Message discarded by content filter", msg},
		{"discard as junk", discard, Policy{Discard: "junk"}, "proceed", marked},
		{"quarantine marks by default", quarantine, Policy{}, "proceed", marked},
		{"quarantine rejects", quarantine, Policy{Quarantine: "reject"}, "reject|550 5.7.1 Message quarantined by content filter", msg},
		{"quarantine tempfails", quarantine, Policy{Quarantine: "tempfail"}, "reject|451 4.7.1 Message held by content filter - try again later", msg},
		{"quarantine is not final", quarantineThenReject, Policy{}, "reject|554 5.7.1 no", msg},
		{"envelope change tempfails by default", addRcpt, Policy{}, "reject|" + replyEnvelope, msg},
		{"envelope change rejects", addRcpt, Policy{Envelope: "reject"}, "reject|" + replyEnvelopeRej, msg},
		{"envelope change ignored", addRcpt, Policy{Envelope: "ignore"}, "proceed", msg},
		{"a multi-line reply is joined into one line", multiLine, Policy{}, "reject|550 5.7.1 first second", msg},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := miltertest.Start(t, c.script)
			p := startGateway(t, Tempfail, srv.Spec)
			p.g.cfg.Load().Policy = c.policy
			if c.policy.Discard == "" {
				p.g.cfg.Load().Policy.Discard = DefaultPolicy.Discard
			}
			if c.policy.Quarantine == "" {
				p.g.cfg.Load().Policy.Quarantine = DefaultPolicy.Quarantine
			}
			if c.policy.Envelope == "" {
				p.g.cfg.Load().Policy.Envelope = DefaultPolicy.Envelope
			}
			p.handshake()
			p.openSession("b@test.example")
			p.sendMessage(msg)
			for _, l := range c.lines {
				p.expect(dataline(l))
			}
			p.expect(dataline("."))
			p.send(req("commit", ""))
			p.expect(result(c.commit))
		})
	}
}

func TestRefusal(t *testing.T) {
	for _, c := range []struct {
		v    milter.Verdict
		want answer
	}{
		{milter.Verdict{Kind: milter.Reject, Code: 550, Reply: "550 5.7.1 Command rejected"}, answer{protocol.Reject, "550 5.7.1 Command rejected"}},
		{milter.Verdict{Kind: milter.Tempfail, Code: 451, Reply: "451 4.7.1 later"}, answer{protocol.Reject, "451 4.7.1 later"}},
		{milter.Verdict{Kind: milter.Tempfail, Code: 421, Reply: "421 4.7.0 bye"}, answer{protocol.Disconnect, "421 4.7.0 bye"}},
		{milter.Verdict{Kind: milter.Reject, Code: 550, Reply: "550-5.7.1 one\r\n550-5.7.1 two\r\n550 5.7.1 three"}, answer{protocol.Reject, "550 5.7.1 one two three"}},
		{milter.Verdict{Kind: milter.Reject, Code: 554, Reply: "554-a\r\n554 b"}, answer{protocol.Reject, "554 a b"}},
	} {
		if got, long, err := refusal(c.v); err != nil || got != c.want || long != "" {
			t.Errorf("refusal(%q) = %+v, %v; want %+v", c.v.Reply, got, err, c.want)
		}
	}
	// Replies smtpd would turn into "421 Internal server error" and a
	// disconnect: the caller applies the default action instead.
	for _, v := range []milter.Verdict{
		{Kind: milter.Reject, Code: 550, Reply: "550"},
		{Kind: milter.Reject, Code: 550, Reply: "450 4.7.1 wrong class"},
		{Kind: milter.Tempfail, Code: 451, Reply: "551 5.7.1 wrong class"},
		{Kind: milter.Reject, Code: 250, Reply: "250 ok"},
		{Kind: milter.Reject, Code: 550, Reply: "550 a\x00b"},
	} {
		if a, _, err := refusal(v); err == nil {
			t.Errorf("refusal(%q) = %+v, want an error", v.Reply, a)
		}
	}
}

func TestPolicyCheck(t *testing.T) {
	if err := DefaultPolicy.Check(); err != nil {
		t.Error(err)
	}
	for _, p := range []Policy{{"drop", "mark", "tempfail"}, {"reject", "hold", "tempfail"}, {"reject", "mark", "accept"}} {
		if p.Check() == nil {
			t.Errorf("%+v accepted", p)
		}
	}
}

func TestFitReply(t *testing.T) {
	words := func(prefix string, n int) string { // "prefix w0001 w0002 ..." of n bytes at least
		var b strings.Builder
		b.WriteString(prefix)
		for i := 1; b.Len() < n; i++ {
			fmt.Fprintf(&b, " w%04d", i)
		}
		return b.String()
	}
	max := protocol.MaxParam
	for _, c := range []struct {
		name, in, head string
		wantCut        bool
	}{
		{"short", "550 5.7.1 no", "550 5.7.1 ", false},
		{"exactly at the limit", "550 5.7.1 " + strings.Repeat("x", max-len("550 5.7.1 ")), "550 5.7.1 ", false},
		{"one over the limit", "550 5.7.1 " + strings.Repeat("x", max-len("550 5.7.1 ")) + "y", "550 5.7.1 ", true},
		{"words, enhanced code", words("550 5.7.1", 27000), "550 5.7.1 ", true},
		{"words, no enhanced code", words("451", 2000), "451 ", true},
		{"421 keeps its code", words("421 4.7.0", 600), "421 4.7.0 ", true},
		{"a single huge word", "554 5.7.1 " + strings.Repeat("z", 20000), "554 5.7.1 ", true},
		{"UTF-8 word", "550 5.7.1 " + strings.Repeat("é", 600), "550 5.7.1 ", true},
		{"UTF-8 words", "550 5.7.1 " + strings.Repeat("日本語 ", 200), "550 5.7.1 ", true},
	} {
		got, cut := fitReply(c.in)
		if cut != c.wantCut {
			t.Errorf("%s: cut = %v, want %v", c.name, cut, c.wantCut)
		}
		if !cut {
			if got != c.in {
				t.Errorf("%s: changed to %q", c.name, got)
			}
			continue
		}
		if len(got) > max || !protocol.ValidReply(got) || !utf8.ValidString(got) {
			t.Errorf("%s: %d bytes, valid %v, UTF-8 %v: %q", c.name, len(got), protocol.ValidReply(got), utf8.ValidString(got), got)
		}
		if !strings.HasPrefix(got, c.head) || !strings.HasPrefix(c.in, got) {
			t.Errorf("%s: %q is not a prefix of the reply keeping %q", c.name, got, c.head)
		}
		if rest := c.in[len(got):]; strings.Contains(c.in[len(c.head):], " ") && rest[0] != ' ' {
			t.Errorf("%s: cut inside a word: ...%q | %q...", c.name, got[len(got)-10:], rest[:10])
		}
	}
	// The huge single word is cut at the limit itself, on a character
	// boundary: nothing is lost that would have fitted.
	if got, _ := fitReply("554 5.7.1 " + strings.Repeat("z", 20000)); len(got) != max {
		t.Errorf("a single huge word: cut to %d bytes, want %d", len(got), max)
	}
	if got, _ := fitReply("550 5.7.1 " + strings.Repeat("é", 600)); len(got) < max-1 {
		t.Errorf("a UTF-8 word: cut to %d bytes, want %d or %d", len(got), max-1, max)
	}
	// Words: the text keeps every word that fits whole.
	in := words("550 5.7.1", 27000)
	got, _ := fitReply(in)
	if next := strings.Fields(in[len(got):])[0]; len(got)+1+len(next) <= max {
		t.Errorf("cut at %d bytes, but the next word %q would have fitted", len(got), next)
	}
}

// A multi-line reply that joins into more than smtpd takes (the issue's
// 30 lines of smfi_setmlreply) is cut, and refusal says so.
func TestRefusalCutsALongMultiLineReply(t *testing.T) {
	var lines []string
	for i := 0; i < 30; i++ {
		sep := "-"
		if i == 29 {
			sep = " "
		}
		lines = append(lines, "550"+sep+"5.7.1 "+strings.Repeat(fmt.Sprintf("line%02d ", i), 120))
	}
	v := milter.Verdict{Kind: milter.Reject, Code: 550, Reply: strings.Join(lines, "\r\n")}
	a, long, err := refusal(v)
	if err != nil {
		t.Fatal(err)
	}
	if a.decision != protocol.Reject || len(a.reply) > protocol.MaxParam || !strings.HasPrefix(a.reply, "550 5.7.1 line00 ") {
		t.Errorf("refusal = %s %d bytes %q", a.decision, len(a.reply), a.reply)
	}
	if long != oneLine(v.Reply) || len(long) < 20000 {
		t.Errorf("the joined reply is not reported: %d bytes", len(long))
	}
}

// Every reply filter-milter gives in its own name fits smtpd as it is.
func TestOwnRepliesFit(t *testing.T) {
	for _, r := range []string{replyTempfail, replyReject, replyDiscard, replyEnvelope, replyEnvelopeRej, replyQuarantine, replyQuarantineTF} {
		if _, cut := fitReply(r); cut || !protocol.ValidReply(r) {
			t.Errorf("%q: %d bytes, valid %v", r, len(r), protocol.ValidReply(r))
		}
	}
}
