package gateway

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/filter-milter/filter-milter/milter"
)

// message is one message's data lines as smtpd sent them (still
// dot-stuffed, without the final "."), with its header fields indexed.
//
// The raw lines are the truth: a field no milter touched is written back
// from its raw lines, byte for byte, and so is the body unless a milter
// replaced it. Only fields a milter added or changed are serialized anew.
// go-message is not used as the header model because it canonicalizes
// names, unfolds values and cannot insert at a position
// (shared/docs/milter-client.md §3.4).
type message struct {
	st *lineStore // the lines as received

	fields    []field
	bodyStart int  // index of the first body line
	separator bool // an empty line separates header and body

	newBody      []byte // the body a milter replaced it with, CRLF text, unstuffed
	bodyReplaced bool
}

// field is one header field: either raw lines [first, last] of the message,
// or, once a milter added or changed it, name and value to serialize.
type field struct {
	name        string // as written, without the colon
	first, last int    // raw lines; first < 0 for a field a milter wrote
	value       string // for a written field: the text after the colon, LF between lines
}

func (f *field) raw() bool { return f.first >= 0 }

// newMessage keeps everything in memory (for tests).
func newMessage() *message { return newMessageIn(newLineStore(1<<30, &budget{max: 1 << 62}, "")) }

func newMessageIn(st *lineStore) *message { return &message{st: st} }

// add appends one data line as received.
func (m *message) add(line string) { m.st.add(line) }

func (m *message) line(i int) []byte { return m.st.line(i) }

// err is set when the message could not be kept whole (a spilled part
// could not be written or read back): it must not be delivered.
func (m *message) err() error { return m.st.err }

func (m *message) release() { m.st.release() }

// unstuffed is line i as the message text has it: SMTP dot-stuffing (one
// leading '.') removed. smtpd sends data lines still stuffed
// (shared/docs/filter-protocol.md §6).
func (m *message) unstuffed(i int) []byte {
	l := m.line(i)
	if len(l) > 0 && l[0] == '.' {
		return l[1:]
	}
	return l
}

// parse indexes the header fields. The header ends at the first empty
// line, or, as in Postfix, at the first line that is neither a field nor a
// continuation: that line is then the first body line.
func (m *message) parse() {
	n := m.st.count()
	i := 0
	for ; i < n; i++ {
		l := m.unstuffed(i)
		if len(l) == 0 {
			m.separator = true
			m.bodyStart = i + 1
			return
		}
		if (l[0] == ' ' || l[0] == '\t') && len(m.fields) > 0 {
			m.fields[len(m.fields)-1].last = i
			continue
		}
		name, ok := fieldName(l)
		if !ok {
			break
		}
		m.fields = append(m.fields, field{name: name, first: i, last: i})
	}
	m.bodyStart = i
}

// fieldName returns the name of a header line "Name: value": printable
// ASCII without ':', white space allowed only before the colon (RFC 5322's
// obsolete syntax, still seen in the wild).
func fieldName(l []byte) (string, bool) {
	colon := bytes.IndexByte(l, ':')
	if colon <= 0 {
		return "", false
	}
	name := bytes.TrimRight(l[:colon], " \t")
	if len(name) == 0 {
		return "", false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return "", false
		}
	}
	return string(l[:colon]), true
}

// headerValue is what a milter is sent for field f: the text after the
// colon with continuation lines joined by a bare LF, leading white space
// kept (the milter session strips the one space the protocol wants).
func (m *message) headerValue(f *field) (name, value string) {
	if !f.raw() {
		return f.name, f.value
	}
	var b strings.Builder
	first := m.unstuffed(f.first)
	b.Write(first[len(f.name)+1:])
	for i := f.first + 1; i <= f.last; i++ {
		b.WriteByte('\n')
		b.Write(m.unstuffed(i))
	}
	return strings.TrimRight(f.name, " \t"), b.String()
}

// body calls fn with the body as the milter protocol wants it: unstuffed
// lines ending in CRLF, in chunks of at most milter.MaxChunk bytes. fn
// returns false to stop early (a milter that said SKIP or decided).
func (m *message) body(buf []byte, fn func([]byte) bool) {
	if m.bodyReplaced {
		for b := m.newBody; len(b) > 0; {
			n := min(len(b), milter.MaxChunk)
			if !fn(b[:n]) {
				return
			}
			b = b[n:]
		}
		return
	}
	buf = buf[:0]
	stopped := false
	m.st.each(m.bodyStart, func(l []byte) bool {
		if len(l) > 0 && l[0] == '.' {
			l = l[1:]
		}
		buf = append(buf, l...)
		buf = append(buf, '\r', '\n')
		// Fill each chunk exactly, as Postfix does; lines may straddle chunks.
		start := 0
		for len(buf)-start >= milter.MaxChunk {
			if !fn(buf[start : start+milter.MaxChunk]) {
				stopped = true
				return false
			}
			start += milter.MaxChunk
		}
		if start > 0 {
			buf = append(buf[:0], buf[start:]...)
		}
		return true
	})
	if len(buf) > 0 && !stopped {
		fn(buf)
	}
}

// apply carries out one milter's modifications, in the order it sent them,
// so that the next milter sees the message as this one left it. Header
// changes that would corrupt the message are refused and reported in
// refused; envelope changes and quarantine are left to the caller's policy.
func (m *message) apply(mods []milter.Modification) (refused []error) {
	replacing := false
	for _, mod := range mods {
		switch mod.Kind {
		case milter.AddHeader, milter.InsertHeader, milter.ChangeHeader:
			if err := checkHeader(mod); err != nil {
				refused = append(refused, err)
				continue
			}
		}
		switch mod.Kind {
		case milter.AddHeader:
			m.fields = append(m.fields, written(mod))
		case milter.InsertHeader:
			i := max(0, min(mod.Index, len(m.fields)))
			m.fields = append(m.fields, field{})
			copy(m.fields[i+1:], m.fields[i:])
			m.fields[i] = written(mod)
		case milter.ChangeHeader:
			m.changeHeader(mod)
		case milter.ReplaceBody:
			if !replacing {
				// The first chunk of this milter's replacement starts a new body.
				m.newBody, m.bodyReplaced, replacing = m.newBody[:0], true, true
			}
			m.newBody = append(m.newBody, mod.Body...)
		}
	}
	return refused
}

func written(mod milter.Modification) field {
	return field{name: mod.Name, first: -1, last: -1, value: strings.ReplaceAll(mod.Value, "\r\n", "\n")}
}

// changeHeader changes or, with an empty value, deletes the Index-th field
// named Name (1-based, case-insensitive; index 0 means 1, as in Postfix).
// A change of a field that does not exist adds it, as Sendmail does.
func (m *message) changeHeader(mod milter.Modification) {
	want := max(mod.Index, 1)
	seen := 0
	for i := range m.fields {
		if !strings.EqualFold(strings.TrimRight(m.fields[i].name, " \t"), mod.Name) {
			continue
		}
		if seen++; seen < want {
			continue
		}
		if strings.TrimSpace(mod.Value) == "" {
			m.fields = append(m.fields[:i], m.fields[i+1:]...)
		} else {
			m.fields[i] = written(mod)
		}
		return
	}
	if strings.TrimSpace(mod.Value) != "" {
		m.fields = append(m.fields, written(mod))
	}
}

// checkHeader refuses a header a milter asked for that cannot be written
// safely: a name that is not printable ASCII without ':' and white space,
// a value with NUL or a bare CR, or a line break not followed by white
// space (which would start a new field or end the header).
func checkHeader(mod milter.Modification) error {
	if _, ok := fieldName([]byte(mod.Name + ":")); !ok || strings.ContainsAny(mod.Name, " \t:") {
		return fmt.Errorf("%s: invalid header name %q", mod.Kind, mod.Name)
	}
	v := strings.ReplaceAll(mod.Value, "\r\n", "\n")
	if strings.ContainsAny(v, "\x00\r") {
		return fmt.Errorf("%s %s: value contains NUL or a bare CR", mod.Kind, mod.Name)
	}
	for i := strings.IndexByte(v, '\n'); i >= 0; i = strings.IndexByte(v, '\n') {
		if i+1 >= len(v) || (v[i+1] != ' ' && v[i+1] != '\t') {
			return fmt.Errorf("%s %s: line break not followed by white space", mod.Kind, mod.Name)
		}
		v = v[i+1:]
	}
	return nil
}

// emit calls fn with every line of the message as it is to be written back
// to smtpd: dot-stuffed, without the final ".".
func (m *message) emit(fn func(line []byte)) {
	var stuffed []byte
	put := func(l []byte) {
		if len(l) > 0 && l[0] == '.' {
			stuffed = append(append(stuffed[:0], '.'), l...)
			fn(stuffed)
			return
		}
		fn(l)
	}
	for i := range m.fields {
		f := &m.fields[i]
		if f.raw() {
			for j := f.first; j <= f.last; j++ {
				fn(m.line(j))
			}
			continue
		}
		text := f.name + ":" + f.value
		for text != "" {
			l, rest, _ := strings.Cut(text, "\n")
			put([]byte(l))
			text = rest
		}
	}
	if m.separator {
		fn(m.line(m.bodyStart - 1))
	}
	if !m.bodyReplaced {
		m.st.each(m.bodyStart, func(l []byte) bool { fn(l); return true })
		return
	}
	body := m.newBody
	for len(body) > 0 {
		l := body
		if j := bytes.IndexByte(body, '\n'); j >= 0 {
			l, body = body[:j], body[j+1:]
		} else {
			body = nil
		}
		put(bytes.TrimSuffix(l, []byte{'\r'}))
	}
}

// emitOriginal calls fn with the lines exactly as they were received.
func (m *message) emitOriginal(fn func(line []byte)) {
	m.st.each(0, func(l []byte) bool { fn(l); return true })
}
