package gateway

import (
	"fmt"
	"strings"
	"testing"

	djmilter "github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
	"github.com/filter-milter/filter-milter/protocol"
)

// The case: 30 lines of smfi_setmlreply, about 27 KB once joined,
// which smtpd 7.4 and 7.6 die on. The answer keeps the code and the
// enhanced code, fits smtpd, and the cut is logged once, with the milter's
// name and the reply as an escaped field.
func TestLongMilterReplyIsCutAndLoggedOnce(t *testing.T) {
	var lines []string
	for i := 0; i < 30; i++ {
		lines = append(lines, fmt.Sprintf("5.7.1 line %02d %s", i, strings.Repeat("blah ", 180)))
	}
	srv := miltertest.Start(t, miltertest.Script{
		Mail: func(string) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(550, strings.Join(lines, "\n"))
		},
	})
	logs, seen := observer.New(zap.InfoLevel)
	opts := milter.DefaultOptions
	p := startGatewayWith(t, Tempfail, opts, zap.New(logs), srv.Spec)
	p.handshake()
	p.send(rep("link-connect", "localhost", "pass", "127.0.0.1:47092", "127.0.0.1:2525"), req("connect", "localhost|127.0.0.1"))
	p.expect(result("proceed"))
	p.send(rep("protocol-client", "ehlo client.example"), req("ehlo", "client.example"))
	p.expect(result("proceed"))
	p.send(rep("protocol-client", "MAIL FROM:<a@test.example>"), req("mail-from", "a@test.example"))
	a := p.next()
	reply := a.Param
	if a.Token != p.tok || a.Decision != protocol.Reject || len(reply) > protocol.MaxParam ||
		!strings.HasPrefix(reply, "550 5.7.1 line 00 blah") || strings.HasSuffix(reply, " ") {
		t.Fatalf("gateway answered %d bytes: %q", len(a.Line), a.Line)
	}
	cuts := seen.FilterMessage("reply too long for smtpd; cut at a word boundary").All()
	if len(cuts) != 1 {
		t.Fatalf("%d log lines for the cut, want 1", len(cuts))
	}
	f := cuts[0].ContextMap()
	if f["milter"] != srv.Spec || f["length"].(int64) < 25000 || len(f["reply"].(string)) > 1100 || !strings.HasPrefix(f["reply"].(string), "550 5.7.1 line 00") {
		t.Errorf("log fields: milter %v, length %v, reply of %d bytes", f["milter"], f["length"], len(f["reply"].(string)))
	}
	p.send(rep("link-disconnect"))
	p.waitSessions(0)
}
