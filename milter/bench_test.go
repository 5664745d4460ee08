package milter_test

// Benchmarks of the MTA side of one milter conversation, as the gateway
// drives it for one SMTP session with one 2 KB message:
//
//	go test -run XXX -bench . -benchmem ./milter
//
// BenchmarkTransaction: per operation, dial and negotiate, CONNECT, HELO,
// MAIL, RCPT, DATA, 10 headers, end of headers, the body, end of message,
// QUIT (the gateway opens one milter session per SMTP session).
// BenchmarkMessage: MAIL to end of message on a session kept open.
//
// milter=null is a hand-written null milter on a unix socket that
// allocates nothing per packet, so allocs/op and B/op are the client's;
// milter=miltertest is milter/miltertest (go-milter's server side on TCP),
// whose own allocations, and its copy of everything it records, count too.

import (
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
)

var benchHeaders = [][2]string{
	{"Received", " from client.bench.example (localhost [127.0.0.1])\n\tby mx.bench.example (OpenSMTPD) with ESMTP id 2a4946c4;\n\tTue, 24 Nov 2026 07:22:03 +0000 (UTC)"},
	{"From", " Sender <sender@bench.example>"},
	{"To", " Recipient <rcpt@bench.example>"},
	{"Subject", " benchmark message"},
	{"Date", " Tue, 24 Nov 2026 07:22:03 +0000"},
	{"Message-ID", " <20261124072203.2a4946c4@client.bench.example>"},
	{"MIME-Version", " 1.0"},
	{"Content-Type", " text/plain; charset=us-ascii"},
	{"X-Mailer", " bench"},
	{"X-Bench", " yes"},
}

// benchBody is about 2 KB of CRLF-terminated lines of 76 characters.
var benchBody = func() []byte {
	line := strings.Repeat("x", 76) + "\r\n"
	return []byte(strings.Repeat(line, 2048/len(line)+1))
}()

func benchServers(b *testing.B) []struct{ name, spec string } {
	return []struct{ name, spec string }{
		{"null", miltertest.StartNull(b, 0)},
		{"miltertest", miltertest.Start(b, miltertest.Script{}).Spec},
	}
}

func benchOpen(b *testing.B, spec string, macros *milter.Macros) *milter.Session {
	sp, err := milter.ParseSpec(spec)
	if err != nil {
		b.Fatal(err)
	}
	s, err := milter.NewClient(spec, sp, milter.DefaultOptions, nil).Open(macros)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchMacros() *milter.Macros {
	m := milter.NewMacros()
	for k, v := range map[string]string{
		milter.MacroMTAName: "mx.bench.example", milter.MacroDaemonName: "mx.bench.example",
		milter.MacroClientAddr: "127.0.0.1", milter.MacroClientPort: "50230", milter.MacroClientName: "localhost",
		milter.MacroDaemonAddr: "127.0.0.1", milter.MacroDaemonPort: "2525", milter.MacroMTAVersion: "OpenSMTPD 6.8.0p2",
	} {
		m.Set(k, v)
	}
	return m
}

func mustContinue(b *testing.B, stage string, v milter.Verdict, err error) {
	if err != nil {
		b.Fatalf("%s: %v", stage, err)
	}
	if v.Kind != milter.Continue {
		b.Fatalf("%s: %v, want continue", stage, v)
	}
}

// message sends one transaction, MAIL to end of message.
func benchMessage(b *testing.B, s *milter.Session, macros *milter.Macros) {
	macros.Set(milter.MacroMailAddr, "sender@bench.example")
	v, err := s.Mail("sender@bench.example", []string{"SIZE=3137"})
	mustContinue(b, "mail", v, err)
	macros.Set(milter.MacroQueueID, "2a4946c4")
	macros.Set(milter.MacroRcptAddr, "rcpt@bench.example")
	v, err = s.Rcpt("rcpt@bench.example", nil)
	mustContinue(b, "rcpt", v, err)
	v, err = s.Data()
	mustContinue(b, "data", v, err)
	for _, h := range benchHeaders {
		v, err = s.Header(h[0], h[1])
		mustContinue(b, "header", v, err)
	}
	v, err = s.EndOfHeaders()
	mustContinue(b, "eoh", v, err)
	v, err = s.Body(benchBody)
	mustContinue(b, "body", v, err)
	v, mods, err := s.End(nil)
	if err != nil || v.Kind != milter.Accept || len(mods) != 0 {
		b.Fatalf("end of message: %v %v %v", v, mods, err)
	}
}

func BenchmarkTransaction(b *testing.B) {
	for _, srv := range benchServers(b) {
		b.Run("milter="+srv.name, func(b *testing.B) {
			macros := benchMacros()
			b.ReportAllocs()
			for b.Loop() {
				s := benchOpen(b, srv.spec, macros)
				v, err := s.Connect("localhost", milter.FamilyInet, 50230, "127.0.0.1")
				mustContinue(b, "connect", v, err)
				v, err = s.Helo("client.bench.example")
				mustContinue(b, "helo", v, err)
				benchMessage(b, s, macros)
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "transactions/s")
		})
	}
}

func BenchmarkMessage(b *testing.B) {
	for _, srv := range benchServers(b) {
		b.Run("milter="+srv.name, func(b *testing.B) {
			macros := benchMacros()
			s := benchOpen(b, srv.spec, macros)
			defer func() { _ = s.Close() }()
			v, err := s.Connect("localhost", milter.FamilyInet, 50230, "127.0.0.1")
			mustContinue(b, "connect", v, err)
			v, err = s.Helo("client.bench.example")
			mustContinue(b, "helo", v, err)
			b.ReportAllocs()
			for b.Loop() {
				benchMessage(b, s, macros)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
