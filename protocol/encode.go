package protocol

import (
	"errors"
	"strconv"
	"strings"

	"github.com/filter-milter/filter-milter/compat"
)

// Decision is the verb of a filter-result line.
//
// The protocol has one more, report, which filter-milter never sends:
// smtpd up to 7.5 dies on it ("Invalid directive") and later versions
// feed its text to the SMTP command as if it were a rewrite.
type Decision string

// The decisions a filter-result can carry.
const (
	// Proceed passes the request on to the next filter, or lets smtpd
	// carry on after the last one.
	Proceed Decision = "proceed"
	// Junk marks the session or transaction as spam: smtpd adds
	// "X-Spam: Yes" to the message. Answering junk to a commit request is
	// fatal to smtpd ("filter-reponse junk after DATA"); send it before.
	Junk Decision = "junk"
	// Reject answers the SMTP command with the reply in the parameter.
	Reject Decision = "reject"
	// Disconnect sends the reply in the parameter and closes the session.
	Disconnect Decision = "disconnect"
	// Rewrite replaces the command's argument with the parameter (for
	// mail-from and rcpt-to, "<address>" with the brackets).
	Rewrite Decision = "rewrite"
)

// AppendRegister appends "register|kind|subsystem|name\n", e.g.
// register|report|smtp-in|link-connect or register|filter|smtp-in|data-line.
// smtpd dies on an unknown event or phase name, and on a filter
// registered for any subsystem but smtp-in.
func AppendRegister(dst []byte, kind, subsystem, name string) []byte {
	dst = append(dst, "register|"...)
	dst = append(dst, kind...)
	dst = append(dst, '|')
	dst = append(dst, subsystem...)
	dst = append(dst, '|')
	dst = append(dst, name...)
	return append(dst, '\n')
}

// AppendRegisterReady appends "register|ready\n", which ends the
// registration. smtpd serves no mail at all until every filter process
// has sent it.
func AppendRegisterReady(dst []byte) []byte {
	return append(dst, "register|ready\n"...)
}

// appendIDs appends the session id and the token, in the order of l, and
// the separator after them.
func appendIDs(dst []byte, l compat.Layout, session, token string) []byte {
	if l.TokenFirst {
		session, token = token, session
	}
	dst = append(dst, session...)
	dst = append(dst, '|')
	dst = append(dst, token...)
	return append(dst, '|')
}

// MaxParam is the longest parameter of a filter-result line, reply or
// rewrite, that filter-milter writes, in bytes: the longest SMTP reply
// line RFC 5321 allows (4.5.3.1.5: 512 octets with the code and the CRLF),
// which also fits every step of every supported smtpd:
//
//   - smtpd reads a filter's line in its lookup process. 6.8.0p2 copies it
//     into char buffer[LINE_MAX] (lka_filter.c,
//     lka_filter_process_response), 2048 bytes on Linux, and silently
//     truncates the rest; 7.4.0p1, 7.6.0p1 and 7.8.0p1 parse the line in
//     place, with no bound of their own.
//   - The lookup process hands a reject or disconnect parameter to the
//     SMTP process as one imsg (lka_filter.c, filter_result_reject and
//     filter_result_disconnect; m_add_string), and m_add (mproc.c) calls
//     fatal ("warn: message too large") when an imsg would pass
//     MAX_IMSGSIZE, 16384 bytes with its header (openbsd-compat/imsg.h),
//     in 6.8.0p2, 7.4.0p1, 7.6.0p1 and 7.8.0p1 alike: the lookup process
//     dies and the whole of smtpd with it.
//   - The SMTP process formats the reply into char buf[LINE_MAX*2]
//     (smtp_session.c, smtp_reply, all four versions), 4096 bytes on
//     Linux, cut silently, and also reports it back to the filters
//     (smtp_report_filter_response), another imsg.
//
// The RFC's bound is the smallest of these.
const MaxParam = 512 - len("\r\n")

// AppendResult appends the answer to a filter request,
// "filter-result|SESSION|TOKEN|DECISION[|PARAM]\n" (TOKEN|SESSION in
// protocol 0.4).
//
// smtpd reads a filter's lines in its lookup process and answers a bad
// one with fatalx, which shuts the whole of smtpd down. So AppendResult
// refuses, with an error and without appending anything, what smtpd
// would die on or misread: an unknown decision; a parameter after
// proceed or junk ("Unexpected parameter"); a missing one after reject,
// disconnect or rewrite ("Missing parameter"); CR, LF or NUL in the
// parameter (a LF would end the line early and make the rest a line of
// its own); a parameter longer than MaxParam (smtpd 7.4 to 7.8 die on a
// long one, 6.8 cuts it; callers cut replies to size before). A reject or disconnect reply must also pass ValidReply, or
// smtpd would replace it by "421 Internal server error" and drop the
// client.
func AppendResult(dst []byte, l compat.Layout, session, token string, d Decision, param string) ([]byte, error) {
	if len(param) > MaxParam {
		return dst, errors.New("protocol: " + quoteParam(string(d)) + " parameter of " + strconv.Itoa(len(param)) +
			" bytes is over the limit of " + strconv.Itoa(MaxParam) + ": " + quoteParam(param))
	}
	switch d {
	case Proceed, Junk:
		if param != "" {
			return dst, errors.New("protocol: " + string(d) + " takes no parameter")
		}
	case Reject, Disconnect:
		if !ValidReply(param) {
			return dst, errors.New("protocol: " + string(d) + " needs a one-line 4xx or 5xx SMTP reply, got " + quoteParam(param))
		}
	case Rewrite:
		if param == "" {
			return dst, errors.New("protocol: rewrite needs a parameter")
		}
		if hasLineBreak(param) {
			return dst, errors.New("protocol: rewrite parameter " + quoteParam(param) + " contains CR, LF or NUL")
		}
	default:
		return dst, errors.New("protocol: unknown decision " + quoteParam(string(d)))
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

// ValidReply reports whether smtpd takes s as the reply of a reject or
// disconnect decision: at least 5 bytes, three digits of which the first
// is 4 or 5, a space, and no CR, LF or NUL anywhere.
//
// smtpd checks the first part itself (valid_smtp_response) and replaces a
// reply that fails it by "421 Internal server error", disconnecting the
// client; a reply with a line break would be cut in two on the pipe and
// kill smtpd. Note that smtpd turns any reply starting with 421 into a
// disconnect, whatever the decision.
func ValidReply(s string) bool {
	if len(s) < 5 || (s[0] != '4' && s[0] != '5') || !isDigit(s[1]) || !isDigit(s[2]) || s[3] != ' ' {
		return false
	}
	return !hasLineBreak(s)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func hasLineBreak(s string) bool { return strings.ContainsAny(s, "\r\n\x00") }

func quoteParam(s string) string {
	if len(s) > maxQuote {
		s = s[:maxQuote] + "..."
	}
	return strconv.Quote(s)
}

// AppendDataLine appends "filter-dataline|SESSION|TOKEN|LINE\n"
// (TOKEN|SESSION in protocol 0.4), one line of the message the filter
// hands back in the data-line phase.
//
// line is written as is, still dot-stuffed as smtpd sent it: smtpd strips
// one leading '.' from every line it gets back and takes a line of just
// "." as the end of the message. line must not contain '\n', which would
// end the protocol line early; lines from Reader never do. It takes the
// line as a string (as parsed) or as bytes (as buffered) without a copy.
func AppendDataLine[L string | []byte](dst []byte, l compat.Layout, session, token string, line L) []byte {
	dst = append(dst, "filter-dataline|"...)
	dst = appendIDs(dst, l, session, token)
	dst = append(dst, line...)
	return append(dst, '\n')
}
