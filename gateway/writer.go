package gateway

import (
	"io"
	"sync"
	"sync/atomic"
)

// writer owns stdout. Sessions hand it whole lines; lines of different sessions never
// interleave and each session's lines keep their order.
//
// It is a group commit, with no goroutine of its own: the first sender to
// find no write in progress writes, and keeps writing what others queued
// meanwhile; a sender that finds a write in progress only queues its
// lines and goes on. Under load many sessions' lines go out in one system
// call; when idle a line goes out at once, with no goroutine switch (a
// writer goroutine fed by a channel cost a switch, and often a thread
// wake-up and a context switch, per batch). stdout is served by the
// runtime poller (see cmd/filter-milter), so a writer that waits for smtpd
// to read parks its goroutine, not a thread.
type writer struct {
	w io.Writer

	mu      sync.Mutex
	room    sync.Cond // signalled when pending has been taken for writing
	pending []byte    // lines queued while a write is in progress
	spare   []byte    // the buffer the last write used, for reuse
	writing bool
	closed  bool
	err     error       // the first write error
	dead    atomic.Bool // a write failed
}

// maxPending bounds the lines queued behind a write in progress; a sender
// past it waits, as smtpd is then not reading.
const maxPending = 4 << 20

func newWriter(w io.Writer) *writer {
	wr := &writer{w: w}
	wr.room.L = &wr.mu
	return wr
}

// send writes b, which must be one or more complete lines, or copies it
// behind the write in progress; either way b is the caller's again when
// send returns. After a write error, or after close (a session that
// outlived the shutdown bound), b is dropped.
func (w *writer) send(b []byte) {
	if len(b) == 0 {
		return
	}
	w.mu.Lock()
	for w.writing && len(w.pending) > maxPending && !w.closed && w.err == nil {
		w.room.Wait()
	}
	if w.closed || w.err != nil {
		w.mu.Unlock()
		return
	}
	if w.writing {
		w.pending = append(w.pending, b...)
		w.mu.Unlock()
		return
	}
	// This sender writes, until nothing is queued.
	w.writing = true
	buf, own := b, true
	for {
		w.mu.Unlock()
		_, err := w.w.Write(buf)
		w.mu.Lock()
		if err != nil && w.err == nil {
			w.err = err
			w.dead.Store(true)
		}
		if own {
			own = false // b, the caller's
		} else {
			w.spare = buf[:0]
		}
		if len(w.pending) == 0 || w.err != nil {
			break
		}
		buf, w.pending, w.spare = w.pending, w.spare, nil
		w.room.Broadcast()
	}
	w.writing = false
	w.room.Broadcast()
	w.mu.Unlock()
}

// failed reports whether writing to smtpd has failed.
func (w *writer) failed() bool { return w.dead.Load() }

// close stops all later writes, waits for the write in progress (which
// also writes what was queued before) and returns the first write error.
func (w *writer) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for w.writing {
		w.room.Wait()
	}
	w.room.Broadcast()
	return w.err
}
