package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// slowWriter records what it is given and takes its time, so that senders
// pile up behind a write in progress.
type slowWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(50 * time.Microsecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

// Lines from many senders all arrive, each sender's in order, and senders
// that find a write in progress have theirs written with it.
func TestWriterGroupCommit(t *testing.T) {
	sw := &slowWriter{}
	w := newWriter(sw)
	const senders, lines = 8, 300
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < lines; i++ {
				var b []byte
				b = fmt.Appendf(b, "s%d|%d\n", s, i)
				w.send(b)
			}
		}()
	}
	wg.Wait()
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	next := make([]int, senders)
	for _, l := range strings.Split(strings.TrimSuffix(sw.buf.String(), "\n"), "\n") {
		var s, i int
		if _, err := fmt.Sscanf(l, "s%d|%d", &s, &i); err != nil {
			t.Fatalf("bad line %q", l)
		}
		if i != next[s] {
			t.Fatalf("sender %d: line %d after %d", s, i, next[s]-1)
		}
		next[s]++
	}
	for s, n := range next {
		if n != lines {
			t.Errorf("sender %d: %d lines written, want %d", s, n, lines)
		}
	}
	if sw.writes >= senders*lines {
		t.Errorf("%d writes for %d sends: nothing was written together", sw.writes, senders*lines)
	}
	w.send([]byte("late\n")) // after close: dropped
	if strings.Contains(sw.buf.String(), "late") {
		t.Error("a line sent after close was written")
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestWriterFailure(t *testing.T) {
	w := newWriter(failingWriter{})
	w.send([]byte("a\n"))
	if !w.failed() {
		t.Fatal("a failed write is not reported")
	}
	w.send([]byte("b\n")) // dropped, no panic
	if err := w.close(); err == nil {
		t.Fatal("close does not return the write error")
	}
}
