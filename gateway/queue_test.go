package gateway

import (
	"fmt"
	"testing"
)

// The inbox keeps order across its blocks, however adds and pops
// interleave, and the items come back whole.
func TestQueueOrderAcrossBlocks(t *testing.T) {
	q := newQueue()
	next, popped := 0, 0
	for _, burst := range []int{1, blockItems - 1, blockItems, blockItems + 1, 3*blockItems + 7, 2} {
		for i := 0; i < burst; i++ {
			q.add(item{token: fmt.Sprint(next), param: "line"})
			next++
		}
		q.wake()
		var got []item
		for i := 0; i < burst; i++ {
			if len(got) == 0 {
				got, _ = q.popAll(make([]item, 0, 5)) // smaller than a block
			}
			it := got[0]
			got = got[1:]
			if it.token != fmt.Sprint(popped) || it.param != "line" {
				t.Fatalf("popped %q %q, want %d", it.token, it.param, popped)
			}
			popped++
			if i == burst/2 { // adds while half consumed
				q.add(item{token: fmt.Sprint(next), param: "line"})
				next++
				burst++
			}
		}
		if !q.empty() {
			t.Fatalf("queue not empty after %d pops", popped)
		}
	}
}

// A closed queue gives what was queued before it was closed, then the
// reason, once and again; a later close does not change the reason.
func TestQueueCloseAfterItems(t *testing.T) {
	q := newQueue()
	q.add(item{param: "a"})
	q.add(item{param: "b"})
	q.close(endReaped)
	q.close(endShutdown)
	got, why := q.popAll(make([]item, 0, blockItems))
	if why != running || len(got) != 2 || got[0].param != "a" || got[1].param != "b" {
		t.Fatalf("popAll = %+v, %v; want a and b, running", got, why)
	}
	for range 2 {
		if got, why := q.popAll(got); why != endReaped || len(got) != 0 {
			t.Fatalf("popAll after the items = %+v, %v; want nothing, %v", got, why, endReaped)
		}
	}
}

// A session waiting on an empty queue is woken by close.
func TestQueueCloseWakesWaiter(t *testing.T) {
	q := newQueue()
	done := make(chan endReason)
	go func() {
		_, why := q.popAll(make([]item, 0, 1))
		done <- why
	}()
	q.close(endSmtpdGone)
	if why := <-done; why != endSmtpdGone {
		t.Fatalf("popAll = %v, want %v", why, endSmtpdGone)
	}
}

func TestQueueLineForDataLine(t *testing.T) {
	it := item{token: "fedcba9876543210", param: ".hello"}
	l := it.lineFor("0123456789abcdef")
	r := l.Request
	if r.Phase != "data-line" || r.Session != "0123456789abcdef" || r.Token != it.token || r.Param != ".hello" {
		t.Fatalf("lineFor: %+v", r)
	}
}
