package gateway

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	djmilter "github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
)

// The secrets are message content: the trace shows them only with
// Trace.Content.
const (
	secretSubject = "subject-secret-4711"
	secretBody    = "body-secret-0815"
	secretAdded   = "added-secret-1234"
)

// traceRun plays one session from 127.0.0.1 (or src) with one message
// through a milter that adds a header, on a gateway logging to an
// observer at level, with trace; it returns the logs and the session id.
func traceRun(t *testing.T, level zapcore.Level, trace Trace, src string) (*observer.ObservedLogs, string, string) {
	t.Helper()
	srv := miltertest.Start(t, miltertest.Script{
		EOM: func(m djmilter.Modifier) (*djmilter.Response, error) {
			_ = m.AddHeader("X-Added", secretAdded)
			return djmilter.RespAccept, nil
		},
	})
	core, logs := observer.New(level)
	opts := milter.DefaultOptions
	opts.ConnectTimeout, opts.CommandTimeout, opts.ContentTimeout = 2*time.Second, 2*time.Second, 2*time.Second
	p := startGatewayWith(t, Tempfail, opts, zap.New(core), srv.Spec)
	p.g.cfg.Load().Trace = trace
	p.handshake()
	p.send(rep("link-connect", "localhost", "pass", src+":47092", "127.0.0.1:2525"), req("connect", "localhost|"+src))
	p.expect(result("proceed"))
	p.send(rep("link-greeting", "mx.test.example"), rep("protocol-client", "ehlo client.example"), req("ehlo", "client.example"))
	p.expect(result("proceed"))
	p.send(rep("protocol-client", "MAIL FROM:<a@test.example>"), req("mail-from", "a@test.example"))
	p.expect(result("proceed"))
	p.send(rep("tx-begin", "2a4946c4"))
	for _, r := range []string{"b@test.example", "c@test.example"} {
		p.send(rep("protocol-client", "RCPT TO:<"+r+">"), req("rcpt-to", r))
		p.expect(result("proceed"))
	}
	msg := []string{"Subject: " + secretSubject, "", secretBody}
	p.sendMessage(msg)
	p.expect(dataline("Subject: "+secretSubject), dataline("X-Added: "+secretAdded), dataline(""), dataline(secretBody), dataline("."))
	p.send(req("commit", ""))
	p.expect(result("proceed"))
	p.send(rep("link-disconnect"))
	p.finish()
	p.waitSessions(0)
	return logs, p.s.ID(), srv.Spec
}

// traced is the trace lines of the log, as "message field=value ...".
func traced(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.All() {
		switch e.Message {
		case "filter line in", "filter line out", "milter command", "milter reply":
			out = append(out, describe(e))
		}
	}
	return out
}

func describe(e observer.LoggedEntry) string {
	var b strings.Builder
	b.WriteString(e.Message)
	for _, f := range e.Context {
		fmt.Fprintf(&b, " %s=", f.Key)
		switch f.Type {
		case zapcore.ByteStringType:
			fmt.Fprintf(&b, "%q", f.Interface)
		case zapcore.StringType:
			fmt.Fprintf(&b, "\"%s\"", f.String) // the trace's fields are escaped already
		case zapcore.Int64Type:
			fmt.Fprint(&b, f.Integer)
		default:
			fmt.Fprint(&b, f.Interface)
		}
	}
	return b.String()
}

// has reports whether some line contains every one of parts.
func has(lines []string, parts ...string) bool {
	for _, l := range lines {
		all := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

func TestTraceAtDebug(t *testing.T) {
	logs, id, spec := traceRun(t, zap.DebugLevel, Trace{}, "127.0.0.1")
	lines := traced(logs)
	for _, want := range [][]string{
		// smtpd's lines as it sent them, data lines with the text elided
		{"filter line in", "|link-connect|" + id + "|localhost|pass|127.0.0.1:47092|127.0.0.1:2525\"", "size="},
		{"filter line in", "|mail-from|" + id + "|", "|a@test.example\""},
		{"filter line in", "|data-line|" + id + "|", fmt.Sprintf("elided=%d", len("Subject: "+secretSubject))},
		{"filter line in", "|data-line|" + id + "|", "|.\" size="},
		// the gateway's lines as written
		{"filter line out", "\"filter-result|" + id + "|", "|proceed\""},
		{"filter line out", "\"filter-dataline|" + id + "|", fmt.Sprintf("elided=%d", len("X-Added: "+secretAdded))},
		{"filter line out", "\"filter-dataline|" + id + "|", "|.\" size="},
		// the milter's packets, both ways
		{"milter command", "endpoint=\"" + spec + "\"", "packet=\"SMFIC_MAIL\"", "payload=\"<a@test.example>\\x00\""},
		{"milter command", "packet=\"SMFIC_RCPT\"", "<c@test.example>"},
		{"milter command", "packet=\"SMFIC_MACRO\"", "{client_addr}"},
		{"milter command", "packet=\"SMFIC_HEADER\"", "header=\"Subject\"", fmt.Sprintf("elided=%d", len(secretSubject)+1)},
		{"milter command", "packet=\"SMFIC_BODY\"", fmt.Sprintf("size=%d elided=%d", len(secretBody)+2, len(secretBody)+2)},
		{"milter command", "packet=\"SMFIC_BODYEOB\""},
		{"milter reply", "packet=\"SMFIR_CONTINUE\"", "size=0"},
		{"milter reply", "packet=\"SMFIR_ADDHEADER\"", "header=\"X-Added\"", fmt.Sprintf("elided=%d", len(secretAdded)+1)},
		{"milter reply", "packet=\"SMFIR_ACCEPT\""},
		{"milter command", "packet=\"SMFIC_QUIT\""},
	} {
		if !has(lines, want...) {
			t.Errorf("no trace line with %q in\n%s", want, strings.Join(lines, "\n"))
		}
	}
	// Content is elided everywhere, in every log line.
	for _, e := range logs.All() {
		if d := describe(e); strings.Contains(d, secretSubject) || strings.Contains(d, secretBody) || strings.Contains(d, secretAdded) {
			t.Errorf("message content in the log: %s", d)
		}
		if e.Message == "filter line in" || strings.HasPrefix(e.Message, "milter ") || e.Message == "filter line out" {
			if e.Level != zap.DebugLevel || e.ContextMap()["session"] != id {
				t.Errorf("trace line at %v for session %v, want debug for %s: %s", e.Level, e.ContextMap()["session"], id, describe(e))
			}
		}
	}
}

func TestTraceContent(t *testing.T) {
	logs, id, _ := traceRun(t, zap.DebugLevel, Trace{Content: true}, "127.0.0.1")
	lines := traced(logs)
	for _, want := range [][]string{
		{"filter line in", "|data-line|" + id + "|", "|Subject: " + secretSubject + "\""},
		{"filter line out", "\"filter-dataline|" + id + "|", "|X-Added: " + secretAdded + "\""},
		{"milter command", "packet=\"SMFIC_HEADER\"", "payload=\"Subject\\x00" + secretSubject + "\\x00\""},
		{"milter command", "packet=\"SMFIC_BODY\"", "payload=\"" + secretBody + "\\r\\n\""},
		{"milter reply", "packet=\"SMFIR_ADDHEADER\"", "payload=\"X-Added\\x00" + secretAdded + "\\x00\""},
	} {
		if !has(lines, want...) {
			t.Errorf("no trace line with %q in\n%s", want, strings.Join(lines, "\n"))
		}
	}
}

// At -log-level info nothing is traced but the sessions of trace_clients,
// whose trace lines are forced through as debug lines; the rest of their
// log keeps the level.
func TestTraceClients(t *testing.T) {
	clients := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("127.0.0.1/32")}
	t.Run("traced", func(t *testing.T) {
		logs, id, _ := traceRun(t, zap.InfoLevel, Trace{Clients: clients}, "127.0.0.1")
		lines := traced(logs)
		for _, want := range [][]string{
			{"filter line in", "|link-connect|" + id + "|"},
			{"filter line out", "|proceed\""},
			{"milter command", "packet=\"SMFIC_CONNECT\""},
			{"milter reply", "packet=\"SMFIR_ACCEPT\""},
		} {
			if !has(lines, want...) {
				t.Errorf("no trace line with %q in\n%s", want, strings.Join(lines, "\n"))
			}
		}
		for _, e := range logs.All() {
			if e.Level == zap.DebugLevel && e.Message == "session ends" {
				t.Errorf("a debug line that is no trace line was forced through: %s", describe(e))
			}
			if e.Level == zap.DebugLevel && e.ContextMap()["session"] != id {
				t.Errorf("a trace line of no session: %s", describe(e))
			}
		}
	})
	t.Run("not traced", func(t *testing.T) {
		logs, _, _ := traceRun(t, zap.InfoLevel, Trace{Clients: clients}, "198.51.100.7")
		if lines := traced(logs); len(lines) > 0 {
			t.Errorf("a client not in trace_clients is traced:\n%s", strings.Join(lines, "\n"))
		}
	})
	t.Run("no trace at info", func(t *testing.T) {
		logs, _, _ := traceRun(t, zap.InfoLevel, Trace{}, "127.0.0.1")
		if lines := traced(logs); len(lines) > 0 {
			t.Errorf("traced at info without trace_clients:\n%s", strings.Join(lines, "\n"))
		}
	})
}

func TestTraceIPv4MappedClient(t *testing.T) {
	tr := Trace{Clients: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
	if !tr.traces(netip.MustParseAddr("::ffff:192.0.2.7")) || tr.traces(netip.MustParseAddr("192.0.3.1")) {
		t.Error("an IPv4-mapped address is matched as its IPv4 address, and only that")
	}
}

// The message line: who sent it, its size, the answer in the metrics'
// words and each milter's verdict and time.
func TestMessageLine(t *testing.T) {
	logs, _, spec := traceRun(t, zap.InfoLevel, Trace{}, "127.0.0.1")
	msgs := logs.FilterMessage("message").All()
	if len(msgs) != 1 {
		t.Fatalf("%d message lines, want 1", len(msgs))
	}
	got := msgs[0].ContextMap()
	size := len("Subject: "+secretSubject) + 2 + 2 + len(secretBody) + 2
	for k, want := range map[string]any{
		"queue_id": "2a4946c4", "client": "127.0.0.1", "helo": "client.example", "sender": "a@test.example",
		"recipients": int64(2), "size": int64(size), "verdict": "accept", "reply": "",
	} {
		if got[k] != want {
			t.Errorf("message line %s = %#v, want %#v (%v)", k, got[k], want, got)
		}
	}
	ms, ok := got["milters"].([]any)
	if !ok || len(ms) != 1 {
		t.Fatalf("milters = %#v, want one", got["milters"])
	}
	m := ms[0].(map[string]any)
	if m["milter"] != spec || m["verdict"] != "accept" {
		t.Errorf("milter in the message line: %v", m)
	}
	if took, _ := m["took"].(time.Duration); took <= 0 {
		t.Errorf("milter time %v, want the sum of its calls", m["took"])
	}
}

func TestMessageLineVerdicts(t *testing.T) {
	for _, c := range []struct {
		name    string
		eom     func(djmilter.Modifier) (*djmilter.Response, error)
		result  string
		verdict string
		milter  string
	}{
		{"reject", func(djmilter.Modifier) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(554, "5.7.1 no")
		}, "reject|554 5.7.1 no", "reject", "reject"},
		{"tempfail", func(djmilter.Modifier) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(451, "4.7.1 later")
		}, "reject|451 4.7.1 later", "tempfail", "tempfail"},
		{"discard", func(djmilter.Modifier) (*djmilter.Response, error) {
			return djmilter.RespDiscard, nil
		}, "reject|550 5.7.1 Message discarded by content filter", "discard", "discard"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := miltertest.Start(t, miltertest.Script{EOM: c.eom})
			core, logs := observer.New(zap.InfoLevel)
			opts := milter.DefaultOptions
			opts.ConnectTimeout, opts.CommandTimeout, opts.ContentTimeout = 2*time.Second, 2*time.Second, 2*time.Second
			p := startGatewayWith(t, Tempfail, opts, zap.New(core), srv.Spec)
			p.handshake()
			p.openSession("b@test.example")
			p.sendMessage([]string{"Subject: x", "", "body"})
			p.expect(dataline("Subject: x"), dataline(""), dataline("body"), dataline("."))
			p.send(req("commit", ""))
			p.expect(result(c.result))
			p.finish()
			msgs := logs.FilterMessage("message").All()
			if len(msgs) != 1 {
				t.Fatalf("%d message lines, want 1", len(msgs))
			}
			got := msgs[0].ContextMap()
			if got["verdict"] != c.verdict {
				t.Errorf("verdict %v, want %s", got["verdict"], c.verdict)
			}
			if ms, _ := got["milters"].([]any); len(ms) != 1 || ms[0].(map[string]any)["verdict"] != c.milter {
				t.Errorf("milters %v, want one with verdict %s", got["milters"], c.milter)
			}
		})
	}
}
