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
	echoed  bool // the reader has written it back already
}

// shutdown is the item that tells a session smtpd is gone (stdin closed)
// or that the session is to be freed: a line of no kind.
var shutdown = item{line: &protocol.Line{}}

// lineFor is the item as the parsed line it came from.
func (it *item) lineFor(session string) protocol.Line {
	if it.line != nil {
		return *it.line
	}
	return protocol.Line{Kind: protocol.KindRequest, Request: protocol.Request{
		Version: it.version, Subsystem: "smtp-in", Phase: "data-line", Session: session, Token: it.token, Param: it.param}}
}

// queue is a session's inbox: unbounded, so that the single reader of
// stdin never waits for a session that is busy with a slow milter (which
// would stall every other session), and FIFO, so that a session sees its
// reports and requests in the order smtpd sent them. It is a list of
// fixed blocks, recycled: a backlog costs no copying as it grows, and an
// idle session holds at most one block.
type queue struct {
	mu         sync.Mutex
	head, tail *itemBlock
	headPos    int // next item to pop in head
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

// push queues it and wakes the session.
func (q *queue) push(it item) {
	q.add(it)
	q.wake()
}

// popAll waits for items and moves every waiting one, up to cap(dst),
// into dst: a session takes what a read of stdin brought in one go, with
// one lock, instead of locking for each item and again to see if another
// is waiting.
func (q *queue) popAll(dst []item) []item {
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
		q.mu.Unlock()
		if len(dst) > 0 {
			return dst
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
