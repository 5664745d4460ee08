package protocol

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/filter-milter/filter-milter/compat"
)

// Parsed is a line from smtpd: a Config, a Report or a Request.
type Parsed interface{ parsed() }

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
	Event     Event  // EventLinkConnect, EventTxMail, ...
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
	Phase     Phase // PhaseConnect, PhaseMailFrom, PhaseDataLine, ...
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

func (Config) parsed()  {}
func (Report) parsed()  {}
func (Request) parsed() {}

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
func Parse(line []byte) (Parsed, error) {
	var l Line
	if err := ParseLine(string(line), &l); err != nil {
		return nil, err
	}
	switch l.Kind {
	case KindConfig:
		return l.Config, nil
	case KindReport:
		return l.Report, nil
	}
	return l.Request, nil
}

// Kind says which of a Line's values is set.
type Kind uint8

// The kinds of line smtpd sends.
const (
	KindConfig Kind = iota + 1
	KindReport
	KindRequest
)

// Line is a parsed line held by value: the reader of smtpd's pipe parses
// every line into one, so it neither allocates nor boxes per line as an
// Parsed would.
type Line struct {
	Kind    Kind
	Config  Config
	Report  Report
	Request Request
}

// ParseLine is Parse for a line that is already a string: l's fields are
// substrings of line, so nothing is copied or allocated. The caller
// chooses how line was made (see Arena for data lines).
func ParseLine(line string, l *Line) error {
	switch {
	case strings.HasPrefix(line, "filter|"):
		l.Kind = KindRequest
		return parseRequest(line, &l.Request)
	case strings.HasPrefix(line, "report|"):
		l.Kind = KindReport
		return parseReport(line, &l.Report)
	case strings.HasPrefix(line, "config|"):
		l.Kind = KindConfig
		return parseConfig(line, &l.Config)
	case len(line) == 0:
		return newParseError(line, "empty line")
	}
	return newParseError(line, "not a config, report or filter line")
}

// DataLine is a data-line filter request cut from its line without a
// copy: the byte slices point into that line and are valid as long as it
// is.
type DataLine struct {
	Version        compat.Version
	Session, Token []byte
	Param          []byte // the data line, still dot-stuffed
}

// DataLineCutter cuts data-line requests, most of what smtpd sends, with
// no allocation: it checks what parseRequest checks, and remembers the
// last version field, which is the same on every line of an smtpd.
type DataLineCutter struct {
	rawVersion []byte
	version    compat.Version
}

// Cut fills d and reports true when line is a well-formed data-line
// request. Any other line, well-formed or not, gives false and is for
// ParseLine, which says what is wrong with a bad one.
func (c *DataLineCutter) Cut(line []byte, d *DataLine) bool {
	if !bytes.HasPrefix(line, []byte("filter|")) {
		return false
	}
	rest := line[len("filter|"):]
	var f [6][]byte // version, timestamp, subsystem, phase, session, token
	for i := range f {
		j := bytes.IndexByte(rest, '|')
		if j < 0 {
			return false
		}
		f[i], rest = rest[:j], rest[j+1:]
	}
	if string(f[3]) != string(PhaseDataLine) || len(f[1]) == 0 || len(f[2]) == 0 || !isHex(f[4]) || !isHex(f[5]) {
		return false
	}
	if !bytes.Equal(f[0], c.rawVersion) || c.rawVersion == nil {
		v, err := compat.ParseVersion(string(f[0]))
		if err != nil {
			return false
		}
		c.rawVersion, c.version = append(c.rawVersion[:0], f[0]...), v
	}
	*d = DataLine{Version: c.version, Session: f[4], Token: f[5], Param: rest}
	return true
}

func parseConfig(line string, c *Config) error {
	key, value, _ := strings.Cut(line[len("config|"):], "|")
	if key == "" {
		return newParseError(line, "empty config key")
	}
	*c = Config{Key: key, Value: value}
	return nil
}

func parseReport(line string, r *Report) error {
	var f [4]string // version, timestamp, subsystem, event
	rest, ok := cutFields(line[len("report|"):], f[:])
	if !ok {
		return newParseError(line, "want report|version|timestamp|subsystem|event|session[|params]")
	}
	session, params, _ := strings.Cut(rest, "|")
	v, reason := checkHeader(f[:], session)
	if reason != "" {
		return newParseError(line, reason)
	}
	*r = Report{Version: v, Timestamp: f[1], Subsystem: f[2], Event: Event(f[3]), Session: session, Params: params}
	return nil
}

func parseRequest(line string, r *Request) error {
	var f [6]string // version, timestamp, subsystem, phase, session, token
	param, ok := cutFields(line[len("filter|"):], f[:])
	if !ok {
		return newParseError(line, "want filter|version|timestamp|subsystem|phase|session|token|parameter")
	}
	v, reason := checkHeader(f[:4], f[4])
	if reason == "" && !isHex(f[5]) {
		reason = "token is not hex"
	}
	if reason != "" {
		return newParseError(line, reason)
	}
	*r = Request{Version: v, Timestamp: f[1], Subsystem: f[2], Phase: Phase(f[3]), Session: f[4], Token: f[5], Param: param}
	return nil
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
func isHex[T string | []byte](s T) bool {
	if len(s) == 0 {
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
