package gateway

import (
	"bytes"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/milter"
)

func msgOf(lines ...string) *message {
	m := newMessage()
	for _, l := range lines {
		m.add(l)
	}
	m.parse()
	return m
}

// fieldsOf is the message's header fields, in order.
func fieldsOf(m *message) []field {
	var fs []field
	m.fields.each(func(n *tnode[field]) bool { fs = append(fs, n.v); return true })
	return fs
}

func emitted(m *message) []string {
	var out []string
	m.emit(func(l []byte) { out = append(out, string(l)) })
	return out
}

func TestEmitUnchangedIsByteExact(t *testing.T) {
	for _, lines := range [][]string{
		tricky,
		{"Subject: only headers"},
		{"Subject: x", ""},
		{},
		{"not a header line", "Subject: y"},
		{" starts with space", "x"},
		{"From: a", "garbage line without colon", "body"},
		{"..stuffed: header?", "", ".."},
	} {
		m := msgOf(lines...)
		if got := emitted(m); strings.Join(got, "\n") != strings.Join(lines, "\n") {
			t.Errorf("emit changed the message:\n got %q\nwant %q", got, lines)
		}
	}
}

func TestParse(t *testing.T) {
	m := msgOf("A: 1", " cont", "B :2", "C:3", "", "body")
	fs := fieldsOf(m)
	if len(fs) != 3 || fs[0].last != 1 || !m.separator || m.bodyStart != 5 {
		t.Fatalf("parse: %+v separator=%v bodyStart=%d", fs, m.separator, m.bodyStart)
	}
	if n, v := m.headerValue(&fs[1]); n != "B" || v != "2" {
		t.Errorf("B field = %q %q", n, v)
	}
	// Postfix's rule: a line that is neither a field nor a continuation
	// starts the body, without a separator.
	m = msgOf("A: 1", "no colon here", "B: 2")
	if fs := fieldsOf(m); len(fs) != 1 || m.separator || m.bodyStart != 1 {
		t.Errorf("parse of a header without separator: %+v %v %d", fs, m.separator, m.bodyStart)
	}
}

func TestApply(t *testing.T) {
	base := []string{"Received: x", "Subject: one", "subject: two", "To: b", "", "body"}
	cases := []struct {
		name string
		mods []milter.Modification
		want []string
	}{
		{"add appends after the last field", []milter.Modification{{Kind: milter.AddHeader, Name: "X-A", Value: " 1"}},
			[]string{"Received: x", "Subject: one", "subject: two", "To: b", "X-A: 1", "", "body"}},
		{"insert at 0 is the top", []milter.Modification{{Kind: milter.InsertHeader, Name: "X-I", Value: " 0", Index: 0}},
			[]string{"X-I: 0", "Received: x", "Subject: one", "subject: two", "To: b", "", "body"}},
		{"insert at 2", []milter.Modification{{Kind: milter.InsertHeader, Name: "X-I", Value: " 2", Index: 2}},
			[]string{"Received: x", "Subject: one", "X-I: 2", "subject: two", "To: b", "", "body"}},
		{"insert past the end appends", []milter.Modification{{Kind: milter.InsertHeader, Name: "X-I", Value: " 9", Index: 99}},
			[]string{"Received: x", "Subject: one", "subject: two", "To: b", "X-I: 9", "", "body"}},
		{"change the second instance, case-insensitive", []milter.Modification{{Kind: milter.ChangeHeader, Name: "SUBJECT", Value: " new", Index: 2}},
			[]string{"Received: x", "Subject: one", "SUBJECT: new", "To: b", "", "body"}},
		{"index 0 means 1", []milter.Modification{{Kind: milter.ChangeHeader, Name: "Subject", Value: " new", Index: 0}},
			[]string{"Received: x", "Subject: new", "subject: two", "To: b", "", "body"}},
		{"empty value deletes", []milter.Modification{{Kind: milter.ChangeHeader, Name: "To", Index: 1}},
			[]string{"Received: x", "Subject: one", "subject: two", "", "body"}},
		{"changing a missing field adds it", []milter.Modification{{Kind: milter.ChangeHeader, Name: "X-New", Value: " v", Index: 1}},
			[]string{"Received: x", "Subject: one", "subject: two", "To: b", "X-New: v", "", "body"}},
		{"deleting a missing field does nothing", []milter.Modification{{Kind: milter.ChangeHeader, Name: "X-New", Index: 1}},
			base},
		{"folded value from a milter, CRLF or LF", []milter.Modification{{Kind: milter.AddHeader, Name: "X-F", Value: " a\r\n\tb\n c"}},
			[]string{"Received: x", "Subject: one", "subject: two", "To: b", "X-F: a", "\tb", " c", "", "body"}},
		{"replaced body, dot-stuffed", []milter.Modification{{Kind: milter.ReplaceBody, Body: []byte(".a\r\nb")}, {Kind: milter.ReplaceBody, Body: []byte("c\r\n.\r\n")}},
			[]string{"Received: x", "Subject: one", "subject: two", "To: b", "", "..a", "bc", ".."}},
		{"in the order sent", []milter.Modification{{Kind: milter.AddHeader, Name: "X-1", Value: " a"}, {Kind: milter.ChangeHeader, Name: "X-1", Value: " b", Index: 1}},
			[]string{"Received: x", "Subject: one", "subject: two", "To: b", "X-1: b", "", "body"}},
	}
	for _, c := range cases {
		m := msgOf(base...)
		if refused := m.apply(c.mods, nil); len(refused) != 0 {
			t.Errorf("%s: refused %v", c.name, refused)
		}
		if got := emitted(m); strings.Join(got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}

func TestApplyRefusesUnsafeHeaders(t *testing.T) {
	for _, mod := range []milter.Modification{
		{Kind: milter.AddHeader, Name: "Bad Name", Value: " x"},
		{Kind: milter.AddHeader, Name: "Bad:Name", Value: " x"},
		{Kind: milter.AddHeader, Name: "", Value: " x"},
		{Kind: milter.AddHeader, Name: "X-\x01", Value: " x"},
		{Kind: milter.AddHeader, Name: "X-CR", Value: " a\rb"},
		{Kind: milter.AddHeader, Name: "X-NUL", Value: " a\x00b"},
		{Kind: milter.AddHeader, Name: "X-LF", Value: " a\nInjected: yes"},
		{Kind: milter.InsertHeader, Name: "X-End", Value: " a\n"},
		{Kind: milter.ChangeHeader, Name: "Subject", Value: " a\n\nbody", Index: 1},
	} {
		m := msgOf("Subject: s", "", "b")
		if refused := m.apply([]milter.Modification{mod}, nil); len(refused) != 1 {
			t.Errorf("%+v was not refused", mod)
		}
		if got := emitted(m); strings.Join(got, "\n") != "Subject: s\n\nb" {
			t.Errorf("%+v changed the message: %q", mod, got)
		}
	}
}

func TestBodyChunks(t *testing.T) {
	long := strings.Repeat("x", 1<<20)
	m := msgOf("Subject: s", "", "..dot", long, "", "end")
	var chunks [][]byte
	m.body(nil, func(c []byte) bool {
		chunks = append(chunks, append([]byte(nil), c...))
		return true
	})
	var all []byte
	for i, c := range chunks {
		if len(c) > milter.MaxChunk || (i < len(chunks)-1 && len(c) != milter.MaxChunk) {
			t.Fatalf("chunk %d has %d bytes", i, len(c))
		}
		all = append(all, c...)
	}
	if want := ".dot\r\n" + long + "\r\n\r\nend\r\n"; !bytes.Equal(all, []byte(want)) {
		t.Errorf("body differs: got %d bytes, want %d", len(all), len(want))
	}
	// Stopping early (SKIP) stops the chunks.
	n := 0
	m.body(nil, func([]byte) bool { n++; return false })
	if n != 1 {
		t.Errorf("body went on after the callback said stop: %d calls", n)
	}
	// An empty body has no chunk at all.
	n = 0
	msgOf("Subject: s").body(nil, func([]byte) bool { n++; return true })
	if n != 0 {
		t.Errorf("empty body gave %d chunks", n)
	}
}

func FuzzMessage(f *testing.F) {
	f.Add(strings.Join(tricky, "\n"), "X-A", " v", 1)
	f.Add("Subject: a\n b\n\n.\n..", "Subject", "", 0)
	f.Add("Subject: header only", "X-Foo", "X-Foo: bar\r\nbody\r\n", 0)
	f.Add(" starts with space\nbody", "X-A", " v", 0)
	f.Add("Subject: s\nnot a field\nX-B: b", "X-B", "X-B: c\r\n\x00\r\n", 1)
	f.Fuzz(func(t *testing.T, text, name, value string, index int) {
		lines := strings.Split(text, "\n")
		for i, l := range lines {
			if l == "." {
				// smtpd never sends a lone "." inside a message (it is the
				// terminator; a body line "." arrives as ".."): make it so.
				lines[i] = ".."
			}
		}
		text = strings.Join(lines, "\n")
		m := msgOf(lines...)
		if got := emitted(m); strings.Join(got, "\n") != text {
			t.Fatalf("unchanged message not byte-exact: %q -> %q", text, got)
		}
		for _, k := range []milter.ModKind{milter.AddHeader, milter.InsertHeader, milter.ChangeHeader, milter.ReplaceBody} {
			m.apply([]milter.Modification{{Kind: k, Name: name, Value: value, Index: index, Body: []byte(value)}}, nil)
		}
		out := emitted(m)
		for _, l := range out {
			if l == "." {
				t.Fatalf("a lone \".\" would end the message early: %q", out)
			}
		}
		// What smtpd gets back has the header the milters left, no
		// more: a body line never turns into a field or continues one.
		again := msgOf(out...)
		want := fieldsOf(m)
		got := fieldsOf(again)
		if len(got) != len(want) {
			t.Fatalf("%d fields written, %d read back from %q", len(want), len(got), out)
		}
		for i := range want {
			wn, wv := m.headerValue(&want[i])
			gn, gv := again.headerValue(&got[i])
			if gn != wn || gv != wv {
				t.Fatalf("field %d written as %q:%q, read back as %q:%q", i, wn, wv, gn, gv)
			}
		}
	})
}

// refField is one field of the reference model of the header.
type refField struct{ name, text string }

// refApply is the semantics of apply written the obvious way, on a slice:
// the reference the field sequences are checked against.
func refApply(h []refField, mod milter.Modification) []refField {
	text := func() string { return mod.Name + ":" + strings.ReplaceAll(mod.Value, "\r\n", "\n") }
	switch mod.Kind {
	case milter.AddHeader:
		return append(h, refField{mod.Name, text()})
	case milter.InsertHeader:
		i := max(0, min(mod.Index, len(h)))
		return append(h[:i], append([]refField{{mod.Name, text()}}, h[i:]...)...)
	case milter.ChangeHeader:
		seen := 0
		for i := range h {
			if !strings.EqualFold(h[i].name, mod.Name) {
				continue
			}
			if seen++; seen < max(mod.Index, 1) {
				continue
			}
			if strings.TrimSpace(mod.Value) == "" {
				return append(h[:i], h[i+1:]...)
			}
			h[i] = refField{mod.Name, text()}
			return h
		}
		if strings.TrimSpace(mod.Value) != "" {
			return append(h, refField{mod.Name, text()})
		}
	}
	return h
}

// Random sequences of adds, inserts at any index, changes and deletes,
// applied in batches of random size (each batch gathers the fields of the
// names it changes anew), give the header the reference model gives, on a
// message in memory and on one whose header went to disk.
func TestApplyMatchesReferenceModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"A", "a", "B", "Subject", "X-Long"}
	for round := 0; round < 300; round++ {
		var lines []string
		var ref []refField
		for i := rng.IntN(20); i > 0; i-- {
			name := names[rng.IntN(len(names))]
			if rng.IntN(4) == 0 {
				lines = append(lines, name+" : "+strconv.Itoa(i), "\tcont")
				ref = append(ref, refField{name, name + " : " + strconv.Itoa(i) + "\n\tcont"})
				continue
			}
			lines = append(lines, name+":"+strconv.Itoa(i))
			ref = append(ref, refField{name, name + ":" + strconv.Itoa(i)})
		}
		lines = append(lines, "", "body")
		var m *message
		if round%2 == 0 {
			m = msgOf(lines...)
		} else {
			m = newMessageIn(newLineStore(1<<20, newBudget(0), t.TempDir()))
			for _, l := range lines {
				m.add(l)
			}
			m.parse()
		}
		var mods []milter.Modification
		for i := rng.IntN(200); i > 0; i-- {
			mod := milter.Modification{Name: names[rng.IntN(len(names))], Value: " v" + strconv.Itoa(i)}
			switch rng.IntN(4) {
			case 0:
				mod.Kind = milter.AddHeader
			case 1:
				mod.Kind, mod.Index = milter.InsertHeader, rng.IntN(len(ref)+3)
			case 2:
				mod.Kind, mod.Index = milter.ChangeHeader, rng.IntN(6)
			default:
				mod.Kind, mod.Index, mod.Value = milter.ChangeHeader, rng.IntN(6), ""
			}
			mods = append(mods, mod)
			ref = refApply(ref, mod)
		}
		for len(mods) > 0 {
			n := min(len(mods), 1+rng.IntN(50))
			if refused := m.apply(mods[:n], nil); len(refused) != 0 {
				t.Fatalf("refused: %v", refused)
			}
			mods = mods[n:]
		}
		var want []string
		for _, f := range ref {
			want = append(want, strings.Split(f.text, "\n")...)
		}
		want = append(want, "", "body")
		if got := emitted(m); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("round %d:\n got %q\nwant %q", round, got, want)
		}
		if m.err() != nil {
			t.Fatal(m.err())
		}
		m.release()
	}
}

func replaced(t *testing.T, m *message, body string) []string {
	t.Helper()
	repl := m.newReplacement()
	if _, err := repl.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	m.apply([]milter.Modification{{Kind: milter.ReplaceBody}}, repl)
	return emitted(m)
}

// A new body always follows an empty line, even when the message had
// none: a header-only message, or one whose header ended at a line that
// is not a field. Otherwise smtpd refuses the message, and a new body
// starting with "X-Foo: bar" would become a header field.
func TestReplacedBodyGetsASeparator(t *testing.T) {
	for _, c := range []struct {
		lines []string
		want  []string
	}{
		{[]string{"Subject: s"}, []string{"Subject: s", "", "X-Foo: bar", "body"}},
		{[]string{"Subject: s", "not a field", "old"}, []string{"Subject: s", "", "X-Foo: bar", "body"}},
		{[]string{"Subject: s", "", "old"}, []string{"Subject: s", "", "X-Foo: bar", "body"}},
		{[]string{}, []string{"", "X-Foo: bar", "body"}},
	} {
		m := msgOf(c.lines...)
		if got := replaced(t, m, "X-Foo: bar\r\nbody\r\n"); strings.Join(got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("%q:\n got %q\nwant %q", c.lines, got, c.want)
		}
	}
}

// smtpd cuts a line at a NUL: a NUL in a new body never reaches it, and
// the message fails rather than be delivered altered.
func TestNULInReplacedBodyFailsTheMessage(t *testing.T) {
	m := msgOf("Subject: s", "", "old")
	got := replaced(t, m, "a\x00b\r\nc\r\n")
	for _, l := range got {
		if strings.IndexByte(l, 0) >= 0 {
			t.Errorf("NUL written to smtpd: %q", got)
		}
	}
	if m.err() == nil {
		t.Error("a NUL in the new body did not fail the message")
	}
}

// The store given to apply is the new body when the milter replaced it
// (with old-style chunks appended), and is released when it did not.
func TestApplyTakesTheReplacement(t *testing.T) {
	b := newBudget(1 << 30)
	m := newMessageIn(newLineStore(1<<20, b, t.TempDir()))
	for _, l := range []string{"Subject: s", "", "old"} {
		m.add(l)
	}
	m.parse()
	inMem := b.used.Load()
	repl := m.newReplacement()
	_, _ = repl.Write([]byte("unused\r\n"))
	m.apply([]milter.Modification{{Kind: milter.AddHeader, Name: "X-A", Value: " 1"}}, repl)
	if b.used.Load() != inMem {
		t.Errorf("a replacement without ReplaceBody was not released: %d bytes used, want %d", b.used.Load(), inMem)
	}
	repl.release() // the session's failure path may release it again
	repl = m.newReplacement()
	_, _ = repl.Write([]byte("new\r\n"))
	m.apply([]milter.Modification{{Kind: milter.ReplaceBody}, {Kind: milter.ReplaceBody, Body: []byte("more\r\n")}}, repl)
	if got := emitted(m); strings.Join(got, "\n") != "Subject: s\nX-A: 1\n\nnew\nmore" {
		t.Errorf("got %q", got)
	}
	m.release()
	repl.release()
	if b.used.Load() != 0 {
		t.Errorf("budget not returned: %d", b.used.Load())
	}
}

// A message with no field whose first line starts with white space: a
// field a milter adds must not swallow that line as its continuation.
func TestAddedFieldBeforeABlankFirstLine(t *testing.T) {
	m := msgOf(" x", "body")
	m.apply([]milter.Modification{{Kind: milter.AddHeader, Name: "X-A", Value: " v"}}, nil)
	if got := emitted(m); strings.Join(got, "\n") != "X-A: v\n\n x\nbody" {
		t.Errorf("got %q", got)
	}
}
