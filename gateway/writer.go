package gateway

import (
	"bufio"
	"io"
	"sync"
	"sync/atomic"
)

// writer owns stdout: sessions hand it whole lines (or batches of lines)
// and one goroutine writes them, so lines of different sessions never
// interleave and no session blocks on another's output. It flushes when
// nothing more is queued, which batches lines under load and keeps
// latency low when idle.
type writer struct {
	mu     sync.RWMutex // send holds it shared; close exclusively
	closed bool
	ch     chan []byte
	done   chan struct{}
	err    error       // the first write error; read only after done closes
	dead   atomic.Bool // a write failed
	once   sync.Once
}

func newWriter(w io.Writer) *writer {
	wr := &writer{ch: make(chan []byte, 1024), done: make(chan struct{})}
	go wr.run(bufio.NewWriterSize(w, 64<<10))
	return wr
}

func (w *writer) run(bw *bufio.Writer) {
	defer close(w.done)
	for b := range w.ch {
		if w.err != nil {
			putBuf(b)
			continue // drain so that senders never block on a dead stdout
		}
		_, err := bw.Write(b)
		putBuf(b)
		if err != nil {
			w.err = err
			w.dead.Store(true)
			continue
		}
		if len(w.ch) == 0 {
			if err := bw.Flush(); err != nil {
				w.err = err
				w.dead.Store(true)
			}
		}
	}
	if w.err == nil {
		w.err = bw.Flush()
	}
}

// send queues b, which must be one or more complete lines; the writer owns b
// afterwards. After close (a session that outlived the shutdown bound) it
// drops b.
func (w *writer) send(b []byte) {
	w.mu.RLock()
	if !w.closed {
		w.ch <- b
	}
	w.mu.RUnlock()
}

// failed reports whether writing to smtpd has failed.
func (w *writer) failed() bool { return w.dead.Load() }

// close flushes what is queued and returns the first write error.
func (w *writer) close() error {
	w.once.Do(func() {
		w.mu.Lock()
		w.closed = true
		close(w.ch)
		w.mu.Unlock()
	})
	<-w.done
	return w.err
}
