package gateway

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

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
	Discard    DiscardPolicy    // a milter's DISCARD
	Quarantine QuarantinePolicy // a milter's QUARANTINE
	Envelope   EnvelopePolicy   // a milter's sender or recipient change at end of message
}

// DiscardPolicy is what a milter's DISCARD does to the message.
type DiscardPolicy string

const (
	DiscardReject DiscardPolicy = "reject" // 550 5.7.1 at commit (the default)
	DiscardJunk   DiscardPolicy = "junk"   // deliver it marked X-Spam: yes
)

// QuarantinePolicy is what a milter's QUARANTINE does to the message.
type QuarantinePolicy string

const (
	QuarantineMark     QuarantinePolicy = "mark"     // deliver it marked X-Spam: yes (the default)
	QuarantineReject   QuarantinePolicy = "reject"   // 550 5.7.1 at commit
	QuarantineTempfail QuarantinePolicy = "tempfail" // 451 4.7.1 at commit
)

// EnvelopePolicy is what a milter's envelope change at end of message
// does to the message.
type EnvelopePolicy string

const (
	EnvelopeTempfail EnvelopePolicy = "tempfail" // 451 4.7.1 at commit (the default)
	EnvelopeReject   EnvelopePolicy = "reject"   // 550 5.7.1 at commit
	EnvelopeIgnore   EnvelopePolicy = "ignore"   // deliver it unchanged, a warning per change
)

// ParseDiscardPolicy reads a discard setting.
func ParseDiscardPolicy(s string) (DiscardPolicy, error) {
	return parseChoice("discard", s, DiscardReject, DiscardJunk)
}

// ParseQuarantinePolicy reads a quarantine setting.
func ParseQuarantinePolicy(s string) (QuarantinePolicy, error) {
	return parseChoice("quarantine", s, QuarantineMark, QuarantineReject, QuarantineTempfail)
}

// ParseEnvelopePolicy reads an envelope-change setting.
func ParseEnvelopePolicy(s string) (EnvelopePolicy, error) {
	return parseChoice("envelope-change", s, EnvelopeTempfail, EnvelopeReject, EnvelopeIgnore)
}

func parseChoice[P ~string](name, s string, choices ...P) (P, error) {
	for _, c := range choices {
		if s == string(c) {
			return c, nil
		}
	}
	want := make([]string, len(choices))
	for i, c := range choices {
		want[i] = string(c)
	}
	return "", fmt.Errorf("%s policy %q: want one of %s", name, s, strings.Join(want, ", "))
}

// DefaultPolicy is what filter-milter does unless told otherwise.
var DefaultPolicy = Policy{Discard: DiscardReject, Quarantine: QuarantineMark, Envelope: EnvelopeTempfail}

// Check reports a setting that is not one of the choices.
func (p Policy) Check() error {
	if _, err := ParseDiscardPolicy(string(p.Discard)); err != nil {
		return err
	}
	if _, err := ParseQuarantinePolicy(string(p.Quarantine)); err != nil {
		return err
	}
	_, err := ParseEnvelopePolicy(string(p.Envelope))
	return err
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
// smfi_setmlreply) is joined into one, and a line longer than smtpd takes
// is cut (fitReply); long is the joined reply when it was cut, for the log.
// A reply smtpd would not take (it turns an invalid reply into "421
// Internal server error" and disconnects) is errInvalidReply. 421 means
// "reply and close", as in Sendmail and Postfix, which is smtpd's
// disconnect.
func refusal(v milter.Verdict) (a answer, long string, err error) {
	reply := oneLine(v.Reply)
	if !protocol.ValidReply(reply) || (v.Kind == milter.Reject) != (reply[0] == '5') {
		return answer{}, "", errInvalidReply
	}
	if cut, ok := fitReply(reply); ok {
		long, reply = reply, cut
	}
	if strings.HasPrefix(reply, "421") {
		return answer{protocol.Disconnect, reply}, long, nil
	}
	return answer{protocol.Reject, reply}, long, nil
}

var errInvalidReply = errors.New("not a one-line 4xx (tempfail) or 5xx (reject) SMTP reply")

// fitReply cuts a valid reply longer than protocol.MaxParam, the longest
// smtpd 6.8 to 7.8 and RFC 5321 take (see there), to that length: the code
// and the enhanced code stay, and the text is cut after its last whole
// word that fits, or, for a single word longer than the room, at the last
// UTF-8 character boundary that fits. cut reports whether it did.
func fitReply(reply string) (_ string, cut bool) {
	if len(reply) <= protocol.MaxParam {
		return reply, false
	}
	head, text := reply[:4], reply[4:] // "550 ": ValidReply checked it
	if i := strings.IndexByte(text, ' '); i > 0 && isEnhancedCode(text[:i]) {
		head, text = reply[:4+i+1], text[i+1:]
	}
	room := protocol.MaxParam - len(head)
	// A blank just past the room ends a word that fits whole.
	kept := ""
	if i := strings.LastIndexAny(text[:room+1], " \t"); i > 0 {
		kept = strings.TrimRight(text[:i], " \t")
	}
	if kept == "" {
		kept = cutAtRune(text, room)
	}
	return head + kept, true
}

// logText bounds a peer's text for a log field: the field is escaped, and
// a reply of many kilobytes would make one log line of them.
func logText(s string) string {
	const max = 1024
	if len(s) <= max {
		return s
	}
	return cutAtRune(s, max) + "..."
}

// cutAtRune is s cut to at most n bytes (n < len(s)), at a UTF-8
// character boundary.
func cutAtRune(s string, n int) string {
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
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
