package gateway

import (
	"bytes"
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
	if len(m.fields) != 3 || m.fields[0].last != 1 || !m.separator || m.bodyStart != 5 {
		t.Fatalf("parse: %+v separator=%v bodyStart=%d", m.fields, m.separator, m.bodyStart)
	}
	if n, v := m.headerValue(&m.fields[1]); n != "B" || v != "2" {
		t.Errorf("B field = %q %q", n, v)
	}
	// Postfix's rule: a line that is neither a field nor a continuation
	// starts the body, without a separator.
	m = msgOf("A: 1", "no colon here", "B: 2")
	if len(m.fields) != 1 || m.separator || m.bodyStart != 1 {
		t.Errorf("parse of a header without separator: %+v %v %d", m.fields, m.separator, m.bodyStart)
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
		if refused := m.apply(c.mods); len(refused) != 0 {
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
		if refused := m.apply([]milter.Modification{mod}); len(refused) != 1 {
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
			m.apply([]milter.Modification{{Kind: k, Name: name, Value: value, Index: index, Body: []byte(value)}})
		}
		for _, l := range emitted(m) {
			if l == "." {
				t.Fatalf("a lone \".\" would end the message early: %q", emitted(m))
			}
		}
	})
}
