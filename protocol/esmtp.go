package protocol

import "strings"

// ESMTPParams returns the ESMTP parameters of a raw MAIL or RCPT command
// line as the protocol-client report gives it: for
// "MAIL FROM:<a@b> SIZE=12 BODY=8BITMIME" it returns
// ["SIZE=12" "BODY=8BITMIME"].
//
// The mail-from and rcpt-to filter requests carry the bare address only,
// smtpd having stripped the brackets and the parameters, but milters get
// the parameters with the address (SMFIC_MAIL, SMFIC_RCPT); the preceding
// protocol-client report is the one place that still has them.
//
// The verb and the FROM or TO keyword are matched without regard to case,
// spaces and tabs around ':' and between parameters are skipped, and the
// address ends at the first '>' after '<', as in smtpd. A command without
// parameters, or one that is not MAIL FROM or RCPT TO with a bracketed
// address, gives nil.
func ESMTPParams(command string) []string {
	verb, rest := cutWord(command)
	var keyword string
	switch {
	case strings.EqualFold(verb, "MAIL"):
		keyword = "FROM"
	case strings.EqualFold(verb, "RCPT"):
		keyword = "TO"
	default:
		return nil
	}
	if len(rest) < len(keyword) || !strings.EqualFold(rest[:len(keyword)], keyword) {
		return nil
	}
	rest = trimBlank(rest[len(keyword):])
	if !strings.HasPrefix(rest, ":") {
		return nil
	}
	rest = trimBlank(rest[1:])
	if !strings.HasPrefix(rest, "<") {
		return nil
	}
	end := strings.IndexByte(rest, '>')
	if end < 0 {
		return nil
	}
	params := strings.FieldsFunc(rest[end+1:], isBlank)
	if len(params) == 0 {
		return nil
	}
	return params
}

// cutWord returns the first blank-separated word of s and the rest of s
// after the blanks that follow it.
func cutWord(s string) (word, rest string) {
	s = trimBlank(s)
	i := strings.IndexFunc(s, isBlank)
	if i < 0 {
		return s, ""
	}
	return s[:i], trimBlank(s[i:])
}

func trimBlank(s string) string { return strings.TrimLeft(s, " \t") }

func isBlank(r rune) bool { return r == ' ' || r == '\t' }
