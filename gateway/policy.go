package gateway

import (
	"fmt"
	"strings"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
)

// Action is what the gateway does for a session when a milter cannot be
// reached, times out, or breaks the protocol (Postfix's
// milter_default_action).
type Action int

const (
	Tempfail Action = iota // 451 4.7.1: the client retries later (Postfix's default before 3.11)
	Accept                 // go on without that milter
	Reject                 // 550 5.7.1
)

// ParseAction reads a default-action setting.
func ParseAction(s string) (Action, error) {
	switch strings.ToLower(s) {
	case "tempfail":
		return Tempfail, nil
	case "accept":
		return Accept, nil
	case "reject":
		return Reject, nil
	}
	return 0, fmt.Errorf("unknown default action %q (want tempfail, accept or reject)", s)
}

func (a Action) String() string {
	switch a {
	case Accept:
		return "accept"
	case Reject:
		return "reject"
	}
	return "tempfail"
}

// Policy decides what the filter protocol cannot carry. OpenSMTPD has no
// silent drop, no quarantine and no envelope change after RCPT, and its
// own "junk" cannot be answered at commit (smtpd dies on it).
type Policy struct {
	Discard    string // "reject" (default): 550 5.7.1; "junk": deliver marked X-Spam: yes
	Quarantine string // "mark" (default): deliver marked X-Spam: yes; "reject"; "tempfail"
	Envelope   string // "tempfail" (default); "reject"; "ignore": deliver, a warning per change
}

// DefaultPolicy is what filter-milter does unless told otherwise.
var DefaultPolicy = Policy{Discard: "reject", Quarantine: "mark", Envelope: "tempfail"}

// Check reports a setting that is not one of the choices.
func (p Policy) Check() error {
	for _, c := range []struct{ name, value, choices string }{
		{"discard", p.Discard, "reject junk"},
		{"quarantine", p.Quarantine, "mark reject tempfail"},
		{"envelope-change", p.Envelope, "tempfail reject ignore"},
	} {
		ok := false
		for _, choice := range strings.Fields(c.choices) {
			ok = ok || c.value == choice
		}
		if !ok {
			return fmt.Errorf("%s policy %q: want one of %s", c.name, c.value, strings.ReplaceAll(c.choices, " ", ", "))
		}
	}
	return nil
}

// Replies the gateway gives in its own name; the texts are Postfix's.
const (
	replyTempfail     = "451 4.7.1 Service unavailable - try again later"
	replyReject       = "550 5.7.1 Command rejected"
	replyDiscard      = "550 5.7.1 Message discarded by content filter"
	replyEnvelope     = "451 4.7.1 Content filter asked for an envelope change that cannot be made - try again later"
	replyEnvelopeRej  = "550 5.7.1 Content filter asked for an envelope change that cannot be made"
	replyQuarantine   = "550 5.7.1 Message quarantined by content filter"
	replyQuarantineTF = "451 4.7.1 Message held by content filter - try again later"
)

// answer is the decision for one filter request.
type answer struct {
	decision protocol.Decision
	reply    string
}

var proceed = answer{decision: protocol.Proceed}

// failure is the answer the default action gives.
func (a Action) failure() answer {
	switch a {
	case Accept:
		return proceed
	case Reject:
		return answer{protocol.Reject, replyReject}
	}
	return answer{protocol.Reject, replyTempfail}
}

// refusal turns a milter's reject or tempfail into a filter-result. The
// filter protocol carries one reply line, so a multi-line reply (libmilter's
// smfi_setmlreply) is joined into one. A reply smtpd would not take (it
// turns an invalid reply into "421 Internal server error" and disconnects)
// is an error. 421 means "reply and close", as in Sendmail and Postfix,
// which is smtpd's disconnect.
func refusal(v milter.Verdict) (answer, error) {
	reply := oneLine(v.Reply)
	if !protocol.ValidReply(reply) || (v.Kind == milter.Reject) != (reply[0] == '5') {
		return answer{}, fmt.Errorf("milter reply %q is not a valid %s reply", v.Reply, v.Kind)
	}
	if strings.HasPrefix(reply, "421") {
		return answer{protocol.Disconnect, reply}, nil
	}
	return answer{protocol.Reject, reply}, nil
}

// oneLine joins "550-5.7.1 one\r\n550 5.7.1 two" into "550 5.7.1 one two":
// the code and enhanced code of the first line, then each line's text.
func oneLine(reply string) string {
	if !strings.ContainsAny(reply, "\r\n") {
		return reply
	}
	lines := strings.FieldsFunc(reply, func(r rune) bool { return r == '\r' || r == '\n' })
	if len(lines) == 0 || len(lines[0]) < 4 {
		return reply
	}
	code := lines[0][:3]
	xcode := ""
	if f := strings.Fields(lines[0][4:]); len(f) > 0 && isEnhancedCode(f[0]) {
		xcode = f[0]
	}
	var b strings.Builder
	b.WriteString(code)
	if xcode != "" {
		b.WriteString(" " + xcode)
	}
	for _, l := range lines {
		if len(l) < 4 {
			continue
		}
		text := strings.TrimSpace(l[4:])
		if xcode != "" {
			text = strings.TrimSpace(strings.TrimPrefix(text, xcode))
		}
		if text != "" {
			b.WriteString(" " + text)
		}
	}
	return b.String()
}

func isEnhancedCode(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || (parts[0] != "4" && parts[0] != "5" && parts[0] != "2") {
		return false
	}
	for _, p := range parts[1:] {
		if p == "" || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}
