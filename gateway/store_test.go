package gateway

import (
	"bufio"
	"math/rand/v2"
	"os"
	"strconv"
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
	b := newBudget(1 << 30)
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
	b := newBudget(100)
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
	b := newBudget(1 << 30)
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
	b := newBudget(0)
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

// Lines read back from the file in any order (forward, backward, far
// jumps, lines longer than the read window) are the lines written.
func TestSpilledLinesInAnyOrder(t *testing.T) {
	st := newLineStore(1000, newBudget(1<<30), t.TempDir())
	defer st.release()
	rng := rand.New(rand.NewPCG(3, 4))
	var lines []string
	for i := 0; i < 5000; i++ {
		var l string
		switch rng.IntN(50) {
		case 0:
			l = strings.Repeat("L", winSize+rng.IntN(3*winSize))
		case 1:
			l = ""
		default:
			l = strconv.Itoa(i) + strings.Repeat("s", rng.IntN(200))
		}
		lines = append(lines, l)
		st.add(l)
	}
	if !st.spilled() {
		t.Fatal("did not spill")
	}
	check := func(i int) {
		if got := st.line(i); string(got) != lines[i] {
			t.Fatalf("line %d: got %d bytes, want %d", i, len(got), len(lines[i]))
		}
	}
	for i := range lines {
		check(i)
	}
	for i := len(lines) - 1; i >= 0; i -= 1 + rng.IntN(3) {
		check(i)
	}
	for range 5000 {
		check(rng.IntN(len(lines)))
	}
	if st.err != nil {
		t.Fatal(st.err)
	}
	if idx := 8 * len(st.marks); idx > st.fileLines/4 {
		t.Errorf("the index of %d lines takes %d bytes", st.fileLines, idx)
	}
}

// A new body past the limit goes to an unlinked file, is read back whole
// (in chunks of MaxChunk for the milters, as lines for smtpd), and its
// memory and file are freed with the message.
func TestSpilledReplacementBody(t *testing.T) {
	dir := t.TempDir()
	b := newBudget(1 << 30)
	before := openFDs(t)
	m := newMessageIn(newLineStore(4096, b, dir))
	for _, l := range []string{"Subject: s", "", "old"} {
		m.add(l)
	}
	m.parse()
	repl := m.newReplacement()
	var want []string
	var body strings.Builder
	for i := 0; i < 20000; i++ {
		l := strconv.Itoa(i) + strings.Repeat("x", i%100)
		if i%7 == 0 {
			l = "." + l
		}
		want = append(want, l)
		body.WriteString(l + "\r\n")
		if _, err := repl.Write([]byte(l + "\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	if repl.file == nil || b.used.Load() > 4096 {
		t.Fatalf("replacement not spilled: file %v, %d bytes in memory", repl.file, b.used.Load())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the temporary file must be unlinked at once, found %v", entries)
	}
	m.apply([]milter.Modification{{Kind: milter.ReplaceBody}}, repl)
	var got []byte
	chunks := 0
	m.body(nil, func(c []byte) bool {
		if len(c) > milter.MaxChunk {
			t.Fatalf("chunk of %d bytes", len(c))
		}
		chunks++
		got = append(got, c...)
		return true
	})
	if string(got) != body.String() || chunks != (len(got)+milter.MaxChunk-1)/milter.MaxChunk {
		t.Errorf("body for the milters differs: %d bytes in %d chunks, want %d", len(got), chunks, body.Len())
	}
	lines := emitted(m)
	for i, l := range want {
		if strings.HasPrefix(l, ".") {
			want[i] = "." + l
		}
	}
	if strings.Join(lines, "\n") != "Subject: s\n\n"+strings.Join(want, "\n") || m.err() != nil {
		t.Errorf("spilled new body not written back as sent (err %v)", m.err())
	}
	m.release()
	m.release()
	if b.used.Load() != 0 {
		t.Errorf("budget not returned: %d", b.used.Load())
	}
	if after := openFDs(t); after != before {
		t.Errorf("open files %d -> %d", before, after)
	}
}

// The global budget sends a new body to disk too.
func TestReplacementBodyBudget(t *testing.T) {
	b := newBudget(100)
	m := newMessageIn(newLineStore(1<<20, b, t.TempDir()))
	repl := m.newReplacement()
	for range 10 {
		_, _ = repl.Write([]byte(strings.Repeat("y", 30)))
	}
	if repl.file == nil || b.used.Load() > 100 {
		t.Errorf("file %v, %d bytes used", repl.file, b.used.Load())
	}
	repl.release()
	repl.release()
	if _, err := repl.Write([]byte("late")); err == nil {
		t.Error("a write after release succeeded")
	}
	m.release()
	if b.used.Load() != 0 {
		t.Errorf("budget not returned: %d", b.used.Load())
	}
}

// A new body that cannot be kept whole fails the message, even when the
// session has already released the store (as it does when End fails).
func TestReplacementWriteErrorFailsTheMessage(t *testing.T) {
	t.Run("no temporary file", func(t *testing.T) {
		m := newMessageIn(newLineStore(10, newBudget(1<<30), "/nonexistent/dir"))
		repl := m.newReplacement()
		if _, err := repl.Write([]byte(strings.Repeat("z", 100))); err == nil {
			t.Error("write past the limit without a temporary file succeeded")
		}
		repl.release()
		if m.err() == nil {
			t.Error("the message did not fail")
		}
		m.release()
	})
	t.Run("write error", func(t *testing.T) {
		full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
		if err != nil {
			t.Fatalf("this test needs /dev/full: %v", err)
		}
		defer full.Close()
		m := newMessageIn(newLineStore(10, newBudget(1<<30), t.TempDir()))
		for _, l := range []string{"Subject: s", "", "old"} {
			m.add(l)
		}
		m.parse()
		repl := m.newReplacement()
		_, _ = repl.Write([]byte(strings.Repeat("z", 100)))
		repl.w = bufio.NewWriterSize(full, 16) // the disk is full from now on
		if _, err := repl.Write([]byte(strings.Repeat("z", 100))); err == nil {
			t.Error("a failed write reported success")
		}
		m.apply([]milter.Modification{{Kind: milter.ReplaceBody}}, repl)
		if m.err() == nil {
			t.Error("a new body cut by a write error did not fail the message")
		}
		m.release()
	})
}

// A header of short fields that went to disk is read a bounded number of
// times, in window-sized pieces, whatever its size: parse, the header
// values for a milter, the body and emit each read the file once (reading
// it from its start for every line made 3 MB of header never finish).
func TestSpilledHeaderIsReadOncePerPass(t *testing.T) {
	m := newMessageIn(newLineStore(1<<10, newBudget(1<<30), t.TempDir()))
	n := 0
	for ; n < 100000; n++ {
		m.add("X-H: abcdefghijklmnop")
	}
	m.add("")
	m.add("body")
	m.parse()
	fields := 0
	for range m.headers() {
		fields++
	}
	m.body(nil, func([]byte) bool { return true })
	lines := len(emitted(m))
	if fields != n || lines != n+2 || m.err() != nil {
		t.Fatalf("%d fields, %d lines, err %v", fields, lines, m.err())
	}
	passes := float64(m.st.fills) / float64(m.st.fileSize/winSize+1)
	if passes > 4.5 {
		t.Errorf("the spilled header was read %.1f times over for parse, headers, body and emit", passes)
	}
	m.release()
}
