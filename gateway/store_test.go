package gateway

import (
	"os"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/milter"
)

func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// A message past the memory limit goes to an unlinked temporary file and
// comes back byte for byte; the file is gone once the message is released.
func TestSpilledMessage(t *testing.T) {
	dir := t.TempDir()
	b := &budget{max: 1 << 30}
	before := openFDs(t)
	lines := append([]string{}, tricky...)
	for i := 0; i < 2000; i++ {
		lines = append(lines, strings.Repeat("b", i%300), "..dotted", "")
	}
	m := newMessageIn(newLineStore(4096, b, dir))
	for _, l := range lines {
		m.add(l)
	}
	m.parse()
	if !m.st.spilled() {
		t.Fatal("a message over the limit did not spill")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the temporary file must be unlinked at once, found %v", entries)
	}
	if b.used.Load() > 4096 {
		t.Errorf("%d bytes in memory, limit 4096", b.used.Load())
	}
	if got := emitted(m); strings.Join(got, "\n") != strings.Join(lines, "\n") {
		t.Error("spilled message not written back byte for byte")
	}
	var body []byte
	m.body(nil, func(c []byte) bool { body = append(body, c...); return true })
	var want strings.Builder
	for _, l := range lines[m.bodyStart:] {
		want.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
	}
	if string(body) != want.String() {
		t.Error("spilled body differs from the one milters should see")
	}
	m.apply(nil, nil)
	if m.err() != nil {
		t.Fatal(m.err())
	}
	m.release()
	m.release()
	if b.used.Load() != 0 {
		t.Errorf("budget not returned: %d", b.used.Load())
	}
	if after := openFDs(t); after != before {
		t.Errorf("open files %d -> %d: the temporary file was not closed", before, after)
	}
}

// The global budget makes a message spill even below its own limit.
func TestBudgetSpills(t *testing.T) {
	b := &budget{max: 100}
	m := newMessageIn(newLineStore(1<<20, b, t.TempDir()))
	for i := 0; i < 10; i++ {
		m.add(strings.Repeat("x", 30))
	}
	if !m.st.spilled() || b.used.Load() > 100 {
		t.Errorf("spilled=%v used=%d", m.st.spilled(), b.used.Load())
	}
	m.release()
}

func TestSpillFailureKeepsTheMessage(t *testing.T) {
	b := &budget{max: 1 << 30}
	m := newMessageIn(newLineStore(10, b, "/nonexistent/dir"))
	lines := []string{"Subject: s", "", strings.Repeat("z", 100)}
	for _, l := range lines {
		m.add(l)
	}
	m.parse()
	if m.st.spilled() || m.st.spillFailed == nil {
		t.Fatal("expected the spill to fail")
	}
	if got := emitted(m); strings.Join(got, "\n") != strings.Join(lines, "\n") || m.err() != nil {
		t.Errorf("message kept in memory must come back whole: %q %v", got, m.err())
	}
	m.release()
}

// With the budget used up by other sessions, even the header goes to the
// file: it is still parsed, filtered and written back byte for byte.
func TestSpilledFromTheFirstLine(t *testing.T) {
	b := &budget{max: 0}
	m := newMessageIn(newLineStore(1<<20, b, t.TempDir()))
	lines := append([]string{}, tricky...)
	lines = append(lines, strings.Repeat("q", 100000), "end")
	for _, l := range lines {
		m.add(l)
	}
	m.parse()
	if !m.st.spilled() || len(m.st.memEnds) != 0 {
		t.Fatalf("spilled=%v, %d lines in memory", m.st.spilled(), len(m.st.memEnds))
	}
	fs := fieldsOf(m)
	if len(fs) != 6 {
		t.Fatalf("header parsed from the file: %+v", fs)
	}
	if n, _ := m.headerValue(&fs[0]); n != "Received" {
		t.Fatalf("first field parsed from the file: %q", n)
	}
	m.apply([]milter.Modification{{Kind: milter.InsertHeader, Index: 0, Name: "X-Top", Value: " 1"}}, nil)
	want := append([]string{"X-Top: 1"}, lines...)
	if got := emitted(m); strings.Join(got, "\n") != strings.Join(want, "\n") || m.err() != nil {
		t.Errorf("spilled message differs (err %v)", m.err())
	}
	m.release()
}
