package milter_test

import (
	"fmt"
	"strings"
	"testing"

	djmilter "github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
)

// packets is the trace's lines as "message packet size payload|header elided".
func packets(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.All() {
		m := e.ContextMap()
		l := fmt.Sprintf("%s %v size=%v", e.Message, m["packet"], m["size"])
		for _, k := range []string{"payload", "header", "elided", "truncated"} {
			if v, ok := m[k]; ok {
				l += fmt.Sprintf(" %s=\"%v\"", k, v)
			}
		}
		if e.Level != zap.DebugLevel || m["endpoint"] == nil {
			l += " (not a debug line with the endpoint)"
		}
		out = append(out, l)
	}
	return out
}

func TestTraceCommandsAndReplies(t *testing.T) {
	for _, content := range []bool{false, true} {
		t.Run(fmt.Sprintf("content=%v", content), func(t *testing.T) {
			ok := checker(t)
			srv := miltertest.Start(t, miltertest.Script{
				Rcpt: func(string) (*djmilter.Response, error) {
					return djmilter.RejectWithCodeAndReason(550, "5.1.1 no such user")
				},
				EOM: func(m djmilter.Modifier) (*djmilter.Response, error) {
					_ = m.ChangeHeader(1, "Subject", "new value")
					_ = m.ReplaceBodyRawChunk([]byte("new body\r\n"))
					return djmilter.RespAccept, nil
				},
			}, djmilter.WithActions(djmilter.OptChangeHeader|djmilter.OptChangeBody))
			core, logs := observer.New(zap.DebugLevel)
			macros := milter.NewMacros()
			s := open(t, srv.Spec, milter.DefaultOptions, macros)
			s.Trace(zap.New(core), content)
			s.Trace(zap.New(core), content) // a second call with another logger replaces, not doubles
			ok(s.Connect("client.example", milter.FamilyInet, 4242, "192.0.2.1"))
			ok(s.Helo("helo.example"))
			ok(s.Mail("a@test.example", nil))
			if v := ok(s.Rcpt("b@test.example", nil)); v.Kind != milter.Reject {
				t.Fatalf("rcpt: %v", v)
			}
			ok(s.Data())
			ok(s.Header("Subject", " old value"))
			ok(s.EndOfHeaders())
			ok(s.Body([]byte("old body\r\n")))
			var body strings.Builder
			if _, _, err := s.End(&body); err != nil {
				t.Fatal(err)
			}
			_ = s.Close()

			got := strings.Join(packets(logs), "\n")
			want := []string{
				`milter command SMFIC_CONNECT size=28 payload="client.example\x004\x10\x92192.0.2.1\x00"`,
				`milter reply SMFIR_CONTINUE size=0 payload=""`,
				`milter command SMFIC_MAIL size=17 payload="<a@test.example>\x00"`,
				`milter command SMFIC_RCPT size=17 payload="<b@test.example>\x00"`,
				`milter reply SMFIR_REPLYCODE size=23 payload="550 5.1.1 no such user\x00"`,
				`milter command SMFIC_DATA size=0 payload=""`,
				`milter command SMFIC_EOH size=0 payload=""`,
				`milter reply SMFIR_ACCEPT size=0 payload=""`,
				`milter command SMFIC_QUIT size=0 payload=""`,
			}
			if content {
				want = append(want,
					`milter command SMFIC_HEADER size=18 payload="Subject\x00old value\x00"`,
					`milter command SMFIC_BODY size=10 payload="old body\r\n"`,
					`milter reply SMFIR_CHGHEADER size=22 payload="\x00\x00\x00\x01Subject\x00new value\x00"`,
					`milter reply SMFIR_REPLBODY size=10 payload="new body\r\n"`)
			} else {
				want = append(want,
					`milter command SMFIC_HEADER size=18 header="Subject" elided="10"`,
					`milter command SMFIC_BODY size=10 elided="10"`,
					`milter reply SMFIR_CHGHEADER size=22 header="Subject" elided="10"`,
					`milter reply SMFIR_REPLBODY size=10 elided="10"`)
				for _, secret := range []string{"old value", "old body", "new value", "new body"} {
					if strings.Contains(got, secret) {
						t.Errorf("content %q in the trace:\n%s", secret, got)
					}
				}
			}
			for _, w := range want {
				if !strings.Contains(got, w+"\n") && !strings.HasSuffix(got, w) {
					t.Errorf("no trace line\n%s\nin\n%s", w, got)
				}
			}
			if n := strings.Count(got, "SMFIC_DATA"); n != 1 {
				t.Errorf("SMFIC_DATA traced %d times, want once", n)
			}
		})
	}
}

// A body chunk larger than conn's write buffer goes to the socket in
// pieces of go-milter's writes: it is traced as one packet of its whole
// size, its payload cut to what a log line takes, and the packets after
// it are still found.
func TestTraceLargeBodyChunk(t *testing.T) {
	ok := checker(t)
	srv := miltertest.Start(t, miltertest.Script{})
	core, logs := observer.New(zap.DebugLevel)
	s := open(t, srv.Spec, milter.DefaultOptions, milter.NewMacros())
	s.Trace(zap.New(core), true)
	ok(s.Connect("client.example", milter.FamilyInet, 4242, "192.0.2.1"))
	ok(s.Helo("helo.example"))
	ok(s.Mail("a@test.example", nil))
	ok(s.Rcpt("b@test.example", nil))
	ok(s.Data())
	ok(s.EndOfHeaders())
	chunk := []byte(strings.Repeat("x", milter.MaxChunk-2) + "\r\n")
	ok(s.Body(chunk))
	ok(s.Body(chunk))
	if n := logs.FilterField(zap.String("packet", "SMFIR_CONTINUE")).Len(); n != 8 {
		t.Errorf("%d SMFIR_CONTINUE lines, want one for each command", n)
	}
	bodies := logs.FilterField(zap.String("packet", "SMFIC_BODY")).All()
	if len(bodies) != 2 {
		t.Fatalf("%d SMFIC_BODY lines, want 2", len(bodies))
	}
	for _, b := range bodies {
		m := b.ContextMap()
		if m["size"] != int64(milter.MaxChunk) || m["payload"] != strings.Repeat("x", 4<<10) || m["truncated"] != true {
			t.Errorf("body chunk traced as size %v, %d bytes shown, truncated %v", m["size"], len(m["payload"].(string)), m["truncated"])
		}
	}
}
