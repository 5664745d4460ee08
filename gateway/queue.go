package gateway

import "sync"

// queue is a session's inbox: unbounded, so that the single reader of
// stdin never waits for a session that is busy with a slow milter (which
// would stall every other session), and FIFO, so that a session sees its
// reports and requests in the order smtpd sent them.
type queue struct {
	mu     sync.Mutex
	items  []any
	head   int
	signal chan struct{}
}

func newQueue() *queue { return &queue{signal: make(chan struct{}, 1)} }

func (q *queue) push(v any) {
	q.mu.Lock()
	q.items = append(q.items, v)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// pop waits for the next item.
func (q *queue) pop() any {
	for {
		q.mu.Lock()
		if q.head < len(q.items) {
			v := q.items[q.head]
			q.items[q.head] = nil
			q.head++
			if q.head == len(q.items) {
				q.items, q.head = q.items[:0], 0
			}
			q.mu.Unlock()
			return v
		}
		q.mu.Unlock()
		<-q.signal
	}
}

// empty reports whether nothing is waiting.
func (q *queue) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.head == len(q.items)
}
