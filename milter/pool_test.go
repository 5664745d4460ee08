package milter

import (
	"net"
	"testing"
	"time"
)

func TestPoolBackoff(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there any more
	c, err := ParseConfig("inet:"+dead+",inet:"+dead, DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	p := NewPool(c, nil)
	if _, err := p.Open(nil); err == nil {
		t.Fatal("Open succeeded with no endpoint listening")
	}
	for _, ep := range p.eps {
		if ep.backoff != minBackoff || !time.Now().Before(ep.downUntil) {
			t.Errorf("endpoint not marked down for %v: backoff %v until %v", minBackoff, ep.backoff, ep.downUntil)
		}
	}
	// Sessions in flight that fail on an endpoint already down do not
	// lengthen its backoff.
	for i := 0; i < 5; i++ {
		p.markDown(p.eps[0].client)
	}
	if p.eps[0].backoff != minBackoff {
		t.Errorf("backoff grew to %v while the endpoint was down", p.eps[0].backoff)
	}
	// Once the backoff has passed, a new failure doubles it.
	p.eps[0].downUntil = time.Now().Add(-time.Millisecond)
	p.markDown(p.eps[0].client)
	if p.eps[0].backoff != 2*minBackoff {
		t.Errorf("backoff %v after a second failure, want %v", p.eps[0].backoff, 2*minBackoff)
	}
}
