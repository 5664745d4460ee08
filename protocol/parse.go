package protocol

import (
	"bytes"
	"fmt"

	"github.com/filter-milter/filter-milter/compat"
)

// Event is a line from smtpd: Config, Report or Request.
type Event interface{ event() }

// Config is a handshake line, "config|key|value"; "config|ready" has Key
// "ready". Unknown keys are to be ignored (smtpd-filters(7)).
type Config struct{ Key, Value string }

// Report is "report|version|time|subsystem|event|session[|params]".
type Report struct {
	Version   compat.Version
	Timestamp string
	Subsystem string
	Event     string
	Session   string
	Params    string // everything after the session id, verbatim; "" when none
}

// Request is "filter|version|time|subsystem|phase|session|token|param":
// it must be answered.
type Request struct {
	Version   compat.Version
	Timestamp string
	Subsystem string
	Phase     string
	Session   string
	Token     string // names the chain entry, not the request: echo it as is
	Param     string // the last field, verbatim: may contain '|' or be empty
}

func (Config) event()  {}
func (Report) event()  {}
func (Request) event() {}

// ParseError names the line that could not be parsed.
type ParseError struct {
	Line   string
	Reason string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("protocol: malformed line %q: %s", e.Line, e.Reason)
}

func parseError(line []byte, reason string) *ParseError {
	const max = 200
	l := string(line)
	if len(l) > max {
		l = l[:max] + "..."
	}
	return &ParseError{Line: l, Reason: reason}
}

// Parse turns one line from smtpd into an Event. Only the last field of a
// line may contain '|' (smtpd-filters(7)), so lines are split with a field
// limit and the tail is kept whole: data lines, SMTP commands and user
// names contain '|'.
func Parse(line []byte) (Event, error) {
	kind, rest, ok := cut(line)
	if !ok {
		if string(kind) == "config" {
			return nil, parseError(line, "no key")
		}
		return nil, parseError(line, "not a config, report or filter line")
	}
	switch string(kind) {
	case "config":
		key, value, _ := cut(rest)
		if len(key) == 0 {
			return nil, parseError(line, "empty config key")
		}
		return Config{Key: string(key), Value: string(value)}, nil
	case "report":
		var f [5][]byte
		tail, err := fields(line, rest, f[:])
		if err != nil {
			return nil, err
		}
		v, perr := compat.ParseVersion(string(f[0]))
		if perr != nil {
			return nil, parseError(line, perr.Error())
		}
		if !isHex(f[4]) {
			return nil, parseError(line, "session id is not hex")
		}
		// tail is nil when the event has no fields (link-disconnect).
		return Report{Version: v, Timestamp: string(f[1]), Subsystem: string(f[2]), Event: string(f[3]),
			Session: string(f[4]), Params: string(tail)}, nil
	case "filter":
		var f [6][]byte
		tail, err := fields(line, rest, f[:])
		if err != nil {
			return nil, err
		}
		if tail == nil {
			return nil, parseError(line, "no parameter field")
		}
		v, perr := compat.ParseVersion(string(f[0]))
		if perr != nil {
			return nil, parseError(line, perr.Error())
		}
		if !isHex(f[4]) || !isHex(f[5]) {
			return nil, parseError(line, "session id or token is not hex")
		}
		return Request{Version: v, Timestamp: string(f[1]), Subsystem: string(f[2]), Phase: string(f[3]),
			Session: string(f[4]), Token: string(f[5]), Param: string(tail)}, nil
	}
	return nil, parseError(line, "not a config, report or filter line")
}

// fields splits rest into len(f) '|'-separated fields and returns what
// follows them (nil if nothing, not even a separator, follows).
func fields(line, rest []byte, f [][]byte) ([]byte, error) {
	for i := range f {
		var ok bool
		f[i], rest, ok = cut(rest)
		if len(f[i]) == 0 {
			return nil, parseError(line, fmt.Sprintf("field %d is empty or missing", i+2))
		}
		if !ok {
			if i < len(f)-1 {
				return nil, parseError(line, fmt.Sprintf("only %d fields", i+2))
			}
			return nil, nil
		}
	}
	if rest == nil {
		rest = []byte{}
	}
	return rest, nil
}

func cut(b []byte) (before, after []byte, found bool) {
	if i := bytes.IndexByte(b, '|'); i >= 0 {
		return b[:i], b[i+1:], true
	}
	return b, nil, false
}

func isHex(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
