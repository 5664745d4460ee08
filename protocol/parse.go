package protocol

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/filter-milter/filter-milter/compat"
)

// Event is a line from smtpd: a Config, a Report or a Request.
type Event interface{ event() }

// Config is a handshake line, "config|key|value". "config|ready" has Key
// "ready" and an empty Value; the value keeps any '|'. smtpd-filters(7)
// says filters are to ignore keys they do not need, and new keys have
// appeared over time (subsystem, admd, protocol).
type Config struct{ Key, Value string }

// Report is a line smtpd sends for information only,
// "report|version|timestamp|subsystem|event|session[|params]".
// Report.Decode types it.
type Report struct {
	Version   compat.Version
	Timestamp string // "1795504415.685235", kept as text
	Subsystem string // "smtp-in" or "smtp-out"
	Event     string // "link-connect", "tx-mail", ...
	Session   string
	// Params is everything after "<session>|", verbatim. It is "" when the
	// event has no fields (link-disconnect, timeout): smtpd writes the
	// separator only when fields follow.
	Params string
}

// Request is a filter request, which smtpd holds the SMTP session on
// until the filter answers it:
// "filter|version|timestamp|subsystem|phase|session|token|param".
type Request struct {
	Version   compat.Version
	Timestamp string
	Subsystem string
	Phase     string // "connect", "mail-from", "data-line", ...
	Session   string
	// Token names the chain entry (one filter in one phase), not the
	// request: several requests of a session can carry the same token.
	// Echo it back as it came.
	Token string
	// Param is the last field, verbatim. It may contain '|' (a data line,
	// "rdns|src" for connect) and may be empty: phases without a
	// parameter (data, commit, quit, ...) and empty data lines still end
	// in '|'.
	Param string
}

func (Config) event()  {}
func (Report) event()  {}
func (Request) event() {}

// maxQuote bounds how much of a bad line an error quotes: a bad line can
// be a 64 KB data line, and errors end up in smtpd's log.
const maxQuote = 200

// ParseError reports a line that is not what smtpd sends.
type ParseError struct {
	Line   string // the line, cut to about 200 bytes ("..." marks the cut)
	Reason string
}

func (e *ParseError) Error() string {
	return "protocol: malformed line " + strconv.Quote(e.Line) + ": " + e.Reason
}

func newParseError[T string | []byte](line T, reason string) *ParseError {
	if len(line) > maxQuote {
		return &ParseError{Line: string(line[:maxQuote]) + "...", Reason: reason}
	}
	return &ParseError{Line: string(line), Reason: reason}
}

// Parse turns one line from smtpd, without its '\n', into a Config, a
// Report or a Request.
//
// Only the last field of a line may contain '|' (smtpd-filters(7)), and
// the last field often does: data lines, SMTP commands, addresses, user
// names. So Parse cuts exactly as many fields as the line kind has and
// keeps the rest whole; a plain split on '|' would tear those apart.
//
// A malformed or unknown line gives a *ParseError naming the line. The
// fields of the returned value share one copy of the line.
func Parse(line []byte) (Event, error) {
	switch {
	case bytes.HasPrefix(line, []byte("filter|")):
		return parseRequest(line)
	case bytes.HasPrefix(line, []byte("report|")):
		return parseReport(line)
	case bytes.HasPrefix(line, []byte("config|")):
		return parseConfig(line)
	case len(line) == 0:
		return nil, newParseError(line, "empty line")
	}
	return nil, newParseError(line, "not a config, report or filter line")
}

func parseConfig(line []byte) (Event, error) {
	key, value, _ := strings.Cut(string(line[len("config|"):]), "|")
	if key == "" {
		return nil, newParseError(line, "empty config key")
	}
	return Config{Key: key, Value: value}, nil
}

func parseReport(line []byte) (Event, error) {
	// One string for all fields: a conversion per field would cost an
	// allocation each.
	s := string(line[len("report|"):])
	var f [4]string // version, timestamp, subsystem, event
	rest, ok := cutFields(s, f[:])
	if !ok {
		return nil, newParseError(line, "want report|version|timestamp|subsystem|event|session[|params]")
	}
	session, params, _ := strings.Cut(rest, "|")
	v, reason := checkHeader(f[:], session)
	if reason != "" {
		return nil, newParseError(line, reason)
	}
	return Report{Version: v, Timestamp: f[1], Subsystem: f[2], Event: f[3], Session: session, Params: params}, nil
}

func parseRequest(line []byte) (Event, error) {
	s := string(line[len("filter|"):])
	var f [6]string // version, timestamp, subsystem, phase, session, token
	param, ok := cutFields(s, f[:])
	if !ok {
		return nil, newParseError(line, "want filter|version|timestamp|subsystem|phase|session|token|parameter")
	}
	v, reason := checkHeader(f[:4], f[4])
	if reason == "" && !isHex(f[5]) {
		reason = "token is not hex"
	}
	if reason != "" {
		return nil, newParseError(line, reason)
	}
	return Request{Version: v, Timestamp: f[1], Subsystem: f[2], Phase: f[3], Session: f[4], Token: f[5], Param: param}, nil
}

// cutFields cuts len(f) '|'-terminated fields off the front of s and
// returns what follows the last separator. ok is false if s has fewer
// separators.
func cutFields(s string, f []string) (rest string, ok bool) {
	for i := range f {
		j := strings.IndexByte(s, '|')
		if j < 0 {
			return "", false
		}
		f[i], s = s[:j], s[j+1:]
	}
	return s, true
}

// checkHeader validates the fields that reports and requests share: h is
// version, timestamp, subsystem and event or phase.
func checkHeader(h []string, session string) (compat.Version, string) {
	v, err := compat.ParseVersion(h[0])
	switch {
	case err != nil:
		return v, "bad protocol version"
	case h[1] == "":
		return v, "empty timestamp"
	case h[2] == "":
		return v, "empty subsystem"
	case h[3] == "":
		return v, "empty event or phase"
	case !isHex(session):
		return v, "session id is not hex"
	}
	return v, ""
}

// isHex reports whether s is a non-empty string of hex digits. smtpd
// writes session ids and tokens as 16 lowercase hex digits and reads them
// back with strtoull(.., 16), so any hex is taken.
func isHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
