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
				got = q.popAll(make([]item, 0, 5)) // smaller than a block
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
	// A shutdown is a line of no kind.
	q.push(shutdown)
	if it := q.popAll(make([]item, 0, 1))[0]; it.line == nil || it.line.Kind != 0 {
		t.Fatalf("shutdown item: %+v", it)
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
