package gateway

import (
	"bytes"
	"errors"
	"iter"
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
// names, unfolds values and cannot insert at a position, while a milter's
// SMFIR_INSHEADER names a position and SMFIR_CHGHEADER the Index-th field
// of a name, as written (libmilter's smfi_insheader and smfi_chgheader).
//
// Cost: parse, the header values, the body and emit each read the lines
// once, in order (raw fields never change their relative order, whatever
// milters insert or delete around them); a field costs one node of fields
// and no copy of its text. Applying modifications costs O(log n) per
// insert, add or change (see apply).
type message struct {
	st *lineStore // the lines as received

	fields    seq[field] // the header fields, in order
	bodyStart int        // index of the first body line
	separator bool       // an empty line separates header and body

	newBody *bodyStore // the body a milter replaced it with, nil if none
	text    []byte     // fieldText's buffer for the fields that are not one stored line
	// failed is set when the message cannot be written back as the
	// milters left it (a replacement body lost on disk, a NUL in one):
	// it must not be delivered.
	failed error
}

// field is one header field: either raw lines [first, last] of the message,
// or, once a milter added or changed it, name and value to serialize.
type field struct {
	first, last int32       // raw lines; first < 0 for a field a milter wrote
	w           *writtenHdr // for a written field
}

type writtenHdr struct {
	name  string // as the milter sent it
	value string // the text after the colon, LF between lines
}

func (f *field) raw() bool { return f.first >= 0 }

// newMessage keeps everything in memory (for tests).
func newMessage() *message { return newMessageIn(newLineStore(1<<30, newBudget(1<<62), "")) }

func newMessageIn(st *lineStore) *message { return &message{st: st} }

// add appends one data line as received.
func (m *message) add(line string) { m.st.add(line) }

func (m *message) line(i int) []byte { return m.st.line(i) }

// err is set when the message could not be kept whole (a spilled part
// could not be written or read back, a replacement body could not be
// kept): it must not be delivered.
func (m *message) err() error {
	if m.st.err != nil {
		return m.st.err
	}
	return m.failed
}

func (m *message) fail(err error) {
	if m.failed == nil {
		m.failed = err
	}
}

func (m *message) release() {
	m.st.release()
	m.newBody.release()
}

// newReplacement is where a milter's new body (SMFIR_REPLBODY) is written
// as it arrives: it is kept in memory up to what is left of the message's
// limit while the global budget allows, then in a temporary file. apply
// takes it over; whoever does not pass it to apply releases it. A write
// error fails this message, even once the store is released.
func (m *message) newReplacement() *bodyStore {
	return &bodyStore{limit: max(0, m.st.limit-len(m.st.mem)), b: m.st.b, dir: m.st.dir, onFail: m.fail}
}

// unstuffed is line i as the message text has it: SMTP dot-stuffing (one
// leading '.') removed. smtpd sends data lines raw, still stuffed as the
// client sent them (RFC 5321 4.5.2; smtpd-filters(7): "raw dot-escaped
// SMTP DATA input"), and strips one leading dot from each line it gets
// back.
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
	var bd builder[field]
	var last *tnode[field]
	var nodes []tnode[field] // allocated in growing blocks, never moved
	i := 0
	for ; i < n; i++ {
		l := m.unstuffed(i)
		if len(l) == 0 {
			m.separator = true
			break
		}
		if (l[0] == ' ' || l[0] == '\t') && last != nil {
			last.v.last = int32(i)
			continue
		}
		if _, ok := nameOf(l); !ok {
			break
		}
		if len(nodes) == cap(nodes) {
			nodes = make([]tnode[field], 0, min(max(16, 2*cap(nodes)), 4096))
		}
		nodes = append(nodes, tnode[field]{v: field{first: int32(i), last: int32(i)}})
		last = &nodes[len(nodes)-1]
		bd.push(last)
	}
	m.bodyStart = i
	if m.separator {
		m.bodyStart++
	}
	bd.finish(&m.fields)
}

// nameOf returns the name of a header line "Name: value" as written
// (white space before the colon included): printable ASCII without ':',
// white space allowed only before the colon (RFC 5322's obsolete syntax,
// still seen in the wild).
func nameOf(l []byte) ([]byte, bool) {
	colon := bytes.IndexByte(l, ':')
	if colon <= 0 {
		return nil, false
	}
	name := bytes.TrimRight(l[:colon], " \t")
	if len(name) == 0 {
		return nil, false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return nil, false
		}
	}
	return l[:colon], true
}

// fieldText is what a milter is sent for field f: the name without the
// white space before the colon, and the text after the colon with
// continuation lines joined by a bare LF, leading white space kept (the
// milter session strips the one space the protocol wants).
//
// Both are views, valid until the next line is read or fieldText is called
// again: into the stored line for a field of one line (most of a header of
// short fields), otherwise into m.text, which is reused. A header of 45 000
// fields per MB costs no allocation per field.
func (m *message) fieldText(f *field) (name, value []byte) {
	if !f.raw() {
		m.text = append(append(m.text[:0], f.w.name...), f.w.value...)
		return m.text[:len(f.w.name)], m.text[len(f.w.name):]
	}
	first := m.unstuffed(int(f.first))
	colon := bytes.IndexByte(first, ':')
	name = first[:colon]
	for len(name) > 0 && (name[len(name)-1] == ' ' || name[len(name)-1] == '\t') {
		name = name[:len(name)-1] // bytes.TrimRight builds its cutset for every call
	}
	if f.last == f.first {
		return name, first[colon+1:]
	}
	// The next line read may overwrite first (a spilled line is a view of
	// the file's read window): copy the name and the first line now.
	m.text = append(append(m.text[:0], name...), first[colon+1:]...)
	for i := f.first + 1; i <= f.last; i++ {
		m.text = append(m.text, '\n')
		m.text = append(m.text, m.unstuffed(int(i))...)
	}
	return m.text[:len(name)], m.text[len(name):]
}

// headerValue is fieldText as strings of their own.
func (m *message) headerValue(f *field) (name, value string) {
	n, v := m.fieldText(f)
	return string(n), string(v)
}

// headers yields each header field's name and value (see fieldText), in
// order; each pair is valid only until the loop goes on to the next.
func (m *message) headers() iter.Seq2[[]byte, []byte] {
	return func(yield func([]byte, []byte) bool) {
		m.fields.each(func(n *tnode[field]) bool {
			return yield(m.fieldText(&n.v))
		})
	}
}

// hasField reports whether a field named name (case-insensitive) has the
// value value (case-insensitive, surrounding white space ignored).
func (m *message) hasField(name, value string) bool {
	for n, v := range m.headers() {
		if bytes.EqualFold(n, []byte(name)) && bytes.EqualFold(bytes.TrimSpace(v), []byte(value)) {
			return true
		}
	}
	return false
}

// lowerName appends field f's name, without trailing white space and in
// ASCII lower case (names are ASCII: nameOf and checkHeader see to it),
// to buf.
func (m *message) lowerName(buf []byte, f *field) []byte {
	var name []byte
	if f.raw() {
		name, _ = nameOf(m.unstuffed(int(f.first)))
		name = bytes.TrimRight(name, " \t")
	} else {
		name = []byte(f.w.name)
	}
	for _, c := range name {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf = append(buf, c)
	}
	return buf
}

// body calls fn with the body as the milter protocol wants it: unstuffed
// lines ending in CRLF, in chunks of at most milter.MaxChunk bytes. fn
// returns false to stop early (a milter that said SKIP or decided).
func (m *message) body(buf []byte, fn func([]byte) bool) {
	if m.newBody != nil {
		m.newBody.each(milter.MaxChunk, fn)
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

var errNULInBody = errors.New("the replacement body contains a NUL byte")

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
	m.fields.each(func(n *tnode[field]) bool {
		f := &n.v
		if f.raw() {
			for j := f.first; j <= f.last; j++ {
				fn(m.line(int(j)))
			}
			return true
		}
		text := f.w.name + ":" + f.w.value
		for text != "" {
			l, rest, _ := strings.Cut(text, "\n")
			put([]byte(l))
			text = rest
		}
		return true
	})
	switch {
	case m.separator:
		fn(m.line(m.bodyStart - 1))
	case m.newBody != nil:
		// The header ended without an empty line (a header-only message,
		// or one whose first body line is not a field): the new body
		// gets one, or smtpd would refuse the message for a missing
		// separator and a new body starting "X-Foo: bar" would become a
		// header field.
		fn(nil)
	case m.fields.len() > 0 && m.bodyStart < m.st.count() && m.startsWithBlank(m.bodyStart):
		// A message with no field whose first line starts with white
		// space: once a milter adds a field, that line would continue it.
		fn(nil)
	}
	if m.newBody == nil {
		m.st.each(m.bodyStart, func(l []byte) bool { fn(l); return true })
		return
	}
	// The new body as lines: split at LF, one CR before it dropped.
	var partial []byte // a line that straddles two pieces
	line := func(l []byte) {
		if len(partial) > 0 {
			partial = append(partial, l...)
			l = partial
		}
		l = bytes.TrimSuffix(l, []byte{'\r'})
		if bytes.IndexByte(l, 0) >= 0 {
			// smtpd ends a line at a NUL (it handles lines as C strings),
			// so what follows it in the line would be lost. The milter
			// session refuses a body with NUL before it gets here; this
			// is the last guard: the NUL is left out of the line written
			// and the message fails (commit tempfails, smtpd drops it).
			m.fail(errNULInBody)
			l = bytes.ReplaceAll(l, []byte{0}, nil)
		}
		put(l)
		partial = partial[:0]
	}
	m.newBody.each(winSize, func(piece []byte) bool {
		for len(piece) > 0 {
			j := bytes.IndexByte(piece, '\n')
			if j < 0 {
				partial = append(partial, piece...)
				return true
			}
			line(piece[:j])
			piece = piece[j+1:]
		}
		return true
	})
	if len(partial) > 0 {
		line(nil)
	}
	if err := m.newBody.err; err != nil {
		m.fail(err)
	}
}

func (m *message) startsWithBlank(i int) bool {
	l := m.unstuffed(i)
	return len(l) > 0 && (l[0] == ' ' || l[0] == '\t')
}

// emitOriginal calls fn with the lines exactly as they were received.
func (m *message) emitOriginal(fn func(line []byte)) {
	m.st.each(0, func(l []byte) bool { fn(l); return true })
}
