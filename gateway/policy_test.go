package gateway

import (
	"testing"

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
			p.g.cfg.Policy = c.policy
			if c.policy.Discard == "" {
				p.g.cfg.Policy.Discard = DefaultPolicy.Discard
			}
			if c.policy.Quarantine == "" {
				p.g.cfg.Policy.Quarantine = DefaultPolicy.Quarantine
			}
			if c.policy.Envelope == "" {
				p.g.cfg.Policy.Envelope = DefaultPolicy.Envelope
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
		if got, err := refusal(c.v); err != nil || got != c.want {
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
		if a, err := refusal(v); err == nil {
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
