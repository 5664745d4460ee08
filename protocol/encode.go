package protocol

import (
	"errors"
	"strconv"
	"strings"

	"github.com/filter-milter/filter-milter/compat"
)

// Decision is the verb of a filter-result. The filter protocol has others
// (junk, report) that filter-milter never sends: junk at commit and any
// report line kill smtpd.
type Decision string

const (
	Proceed    Decision = "proceed"
	Junk       Decision = "junk"
	Reject     Decision = "reject"
	Disconnect Decision = "disconnect"
	Rewrite    Decision = "rewrite"
)

// AppendRegister appends "register|kind|subsystem|name\n".
func AppendRegister(dst []byte, kind, subsystem, name string) []byte {
	dst = append(dst, "register|"...)
	dst = append(dst, kind...)
	dst = append(dst, '|')
	dst = append(dst, subsystem...)
	dst = append(dst, '|')
	dst = append(dst, name...)
	return append(dst, '\n')
}

// AppendRegisterReady appends "register|ready\n".
func AppendRegisterReady(dst []byte) []byte { return append(dst, "register|ready\n"...) }

func appendIDs(dst []byte, l compat.Layout, session, token string) []byte {
	if l.TokenFirst {
		session, token = token, session
	}
	dst = append(dst, session...)
	dst = append(dst, '|')
	dst = append(dst, token...)
	return append(dst, '|')
}

// AppendResult appends a filter-result line. Everything smtpd would die
// on is refused here (smtpd answers a malformed filter line with fatalx):
// a parameter after proceed or junk, a missing one after the others, a
// reject or disconnect reply that is not a valid 4xx/5xx reply, CR, LF or
// NUL in the parameter.
func AppendResult(dst []byte, l compat.Layout, session, token string, d Decision, param string) ([]byte, error) {
	switch d {
	case Proceed, Junk:
		if param != "" {
			return dst, errors.New("protocol: " + string(d) + " takes no parameter")
		}
	case Reject, Disconnect:
		if !ValidReply(param) {
			return dst, errors.New("protocol: " + string(d) + " needs a valid 4xx or 5xx reply, got " + strconv.Quote(param))
		}
	case Rewrite:
		if param == "" || strings.ContainsAny(param, "\r\n\x00") {
			return dst, errors.New("protocol: rewrite needs a one-line parameter")
		}
	default:
		return dst, errors.New("protocol: unknown decision " + strconv.Quote(string(d)))
	}
	dst = append(dst, "filter-result|"...)
	dst = appendIDs(dst, l, session, token)
	dst = append(dst, d...)
	if param != "" {
		dst = append(dst, '|')
		dst = append(dst, param...)
	}
	return append(dst, '\n'), nil
}

// ValidReply reports whether smtpd takes s as a reject or disconnect reply:
// "[45]NN " and some text, on one line. smtpd replaces anything else with
// "421 Internal server error" and disconnects the client.
func ValidReply(s string) bool {
	if len(s) < 5 || (s[0] != '4' && s[0] != '5') || !digit(s[1]) || !digit(s[2]) || s[3] != ' ' {
		return false
	}
	return !strings.ContainsAny(s, "\r\n\x00")
}

func digit(c byte) bool { return '0' <= c && c <= '9' }

// AppendDataLine appends "filter-dataline|session|token|line\n".
func AppendDataLine(dst []byte, l compat.Layout, session, token string, line []byte) []byte {
	dst = append(dst, "filter-dataline|"...)
	dst = appendIDs(dst, l, session, token)
	dst = append(dst, line...)
	return append(dst, '\n')
}
