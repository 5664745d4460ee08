package gateway

import (
	"io"
	"sync"
	"sync/atomic"
)

// writer owns stdout. A session writes its batch of lines itself, under a
// lock, so lines of different sessions never interleave and each
// session's lines keep their order.
//
// There used to be a writer goroutine fed by a channel. Handing every
// batch to it cost a goroutine switch, and with more than one processor
// usually a thread wake-up and a context switch, per batch. When smtpd
// relays a message line by line, as it does, a batch is often a single
// line. A direct write costs one system call, and the lock is held only
// for it: stdout is served by the runtime poller (see
// cmd/filter-milter), so a session that waits for smtpd to read parks
// its goroutine, not a thread.
type writer struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
	err    error       // the first write error
	dead   atomic.Bool // a write failed
}

func newWriter(w io.Writer) *writer { return &writer{w: w} }

// send writes b, which must be one or more complete lines, and recycles it
// (putBuf): the caller must not use b again. After a write error, or after
// close (a session that outlived the shutdown bound), b is dropped.
func (w *writer) send(b []byte) {
	w.mu.Lock()
	if !w.closed && w.err == nil {
		if _, err := w.w.Write(b); err != nil {
			w.err = err
			w.dead.Store(true)
		}
	}
	w.mu.Unlock()
	putBuf(b)
}

// failed reports whether writing to smtpd has failed.
func (w *writer) failed() bool { return w.dead.Load() }

// close stops all later writes and returns the first write error.
func (w *writer) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	return w.err
}
