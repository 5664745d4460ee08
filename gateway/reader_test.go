package gateway

import (
	"io"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/protocol"
)

// Only a line smtpd waits on wakes its session: a request, whose answer is
// due, and link-disconnect. A report before a request stays queued for the
// session to take with the request, without a wake-up of its own.
func TestOnlyLinesSmtpdWaitsOnWakeASession(t *testing.T) {
	g := New(Config{Log: zap.NewNop()})
	g.out = newWriter(io.Discard)
	r := g.newReader(strings.NewReader(""))
	feed := func(raw string) {
		t.Helper()
		var l protocol.Line
		if err := protocol.ParseLine(raw, &l); err != nil {
			t.Fatal(err)
		}
		id := l.Report.Session
		if l.Kind == protocol.KindRequest {
			id = l.Request.Session
		}
		r.dispatch(id, []byte(raw), &l, l.Kind == protocol.KindReport && l.Report.Event == protocol.EventLinkDisconnect)
	}
	for _, raw := range []string{
		"report|0.7|1|smtp-in|link-connect|5e55101d|localhost|pass|192.0.2.1:1234|127.0.0.1:25",
		"report|0.7|1|smtp-in|tx-begin|5e55101d|0a1b2c3d",
		"report|0.7|1|smtp-in|protocol-client|5e55101d|MAIL FROM:<a@example.org>",
	} {
		feed(raw)
		if len(r.toWake) != 0 {
			t.Fatalf("after %q the session is to be woken; a report must wait for the next request", raw)
		}
	}
	feed("filter|0.7|1|smtp-in|mail-from|5e55101d|70ce11|a@example.org")
	if len(r.toWake) != 1 {
		t.Fatalf("after a request %d sessions are to be woken, want 1", len(r.toWake))
	}
	r.wakeQueued()
	feed("report|0.7|1|smtp-in|link-disconnect|5e55101d")
	if len(r.toWake) != 1 {
		t.Fatalf("after link-disconnect %d sessions are to be woken, want 1", len(r.toWake))
	}
	r.wakeQueued()
	g.wg.Wait() // the session ends at link-disconnect
}
