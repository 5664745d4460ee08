package gateway

import (
	"sync"

	"github.com/filter-milter/filter-milter/compat"
	"github.com/filter-milter/filter-milter/protocol"
)

// item is one entry of a session's inbox. Data lines are most of what a
// session gets and are held in place, in a few words; any other line is
// held through a pointer to its parsed form.
type item struct {
	line *protocol.Line // nil for a data line

	// A data line.
	version compat.Version
	token   string
	param   string
}

// lineFor is the item as the parsed line it came from.
func (it *item) lineFor(session string) protocol.Line {
	if it.line != nil {
		return *it.line
	}
	return protocol.Line{Kind: protocol.KindRequest, Request: protocol.Request{
		Version: it.version, Subsystem: "smtp-in", Phase: protocol.PhaseDataLine, Session: session, Token: it.token, Param: it.param}}
}

// endReason is why a session ends.
type endReason int

const (
	running       endReason = iota
	endDisconnect           // link-disconnect: smtpd ended the SMTP session
	endReaped               // smtpd sent nothing for it for longer than its session timeout
	endSmtpdGone            // smtpd closed the pipe
	endShutdown             // Shutdown (SIGTERM)
)

func (r endReason) String() string {
	switch r {
	case running:
		return "running"
	case endDisconnect:
		return string(protocol.EventLinkDisconnect)
	case endReaped:
		return "reaped"
	case endSmtpdGone:
		return "smtpd gone"
	case endShutdown:
		return "shutdown"
	}
	return "unknown"
}

// queue is a session's inbox: unbounded, so that the single reader of
// stdin never waits for a session that is busy with a slow milter (which
// would stall every other session), and FIFO, so that a session sees its
// reports and requests in the order smtpd sent them. It is a list of
// fixed blocks, recycled: a backlog costs no copying as it grows, and an
// idle session holds at most one block. Closing it ends the session once
// the items queued before are handled.
type queue struct {
	mu         sync.Mutex
	head, tail *itemBlock
	headPos    int // next item to pop in head
	closed     endReason
	signal     chan struct{}
}

const blockItems = 64

type itemBlock struct {
	items [blockItems]item
	n     int
	next  *itemBlock
}

var blockPool = sync.Pool{New: func() any { return new(itemBlock) }}

func newQueue() *queue { return &queue{signal: make(chan struct{}, 1)} }

// add queues it without waking the session: the reader of stdin adds the
// lines of a whole read and wakes each session once (wake), rather than
// once per line.
func (q *queue) add(it item) {
	q.mu.Lock()
	if q.tail == nil || q.tail.n == blockItems {
		b := blockPool.Get().(*itemBlock)
		if q.tail == nil {
			q.head = b
		} else {
			q.tail.next = b
		}
		q.tail = b
	}
	q.tail.items[q.tail.n] = it
	q.tail.n++
	q.mu.Unlock()
}

// wake tells the session that items are waiting.
func (q *queue) wake() {
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// close tells the session to end, for reason, once it has handled what is
// queued. The first reason stands.
func (q *queue) close(reason endReason) {
	q.mu.Lock()
	if q.closed == running {
		q.closed = reason
	}
	q.mu.Unlock()
	q.wake()
}

// popAll waits for items and moves every waiting one, up to cap(dst),
// into dst: a session takes what a read of stdin brought in one go, with
// one lock, instead of locking for each item and again to see if another
// is waiting. Once the queue is closed and empty it returns no items and
// the reason it was closed for.
func (q *queue) popAll(dst []item) ([]item, endReason) {
	dst = dst[:0]
	for {
		q.mu.Lock()
		for h := q.head; h != nil && q.headPos < h.n && len(dst) < cap(dst); h = q.head {
			k := min(h.n-q.headPos, cap(dst)-len(dst))
			dst = append(dst, h.items[q.headPos:q.headPos+k]...)
			clear(h.items[q.headPos : q.headPos+k]) // drop the strings they hold
			q.headPos += k
			if q.headPos < h.n {
				break // dst is full
			}
			q.headPos = 0
			if h.next == nil {
				h.n = 0
				break
			}
			q.head = h.next
			h.n, h.next = 0, nil
			blockPool.Put(h)
		}
		closed := q.closed
		q.mu.Unlock()
		if len(dst) > 0 {
			return dst, running
		}
		if closed != running {
			return dst, closed
		}
		<-q.signal
	}
}

// empty reports whether nothing is waiting.
func (q *queue) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.head == nil || q.headPos == q.head.n
}
