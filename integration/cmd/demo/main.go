// Command demo shows filter-milter at work between real peers, on
// loopback only: it builds filter-milter, generates a DKIM key, starts
// opendkim (signing, relaxed/simple) and OpenSMTPD with filter-milter as a
// proc-exec filter, sends one message with swaks, prints the delivered
// message with its DKIM-Signature and go-msgauth's verdict, then stops
// everything. Run it as root with the test dependencies installed
// (`make deps`):
//
//	go run ./integration/cmd/demo [-smtpd /usr/sbin/smtpd] [-message FILE] [-keep]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// demoTB implements harness.TB for a program: Fatalf prints the message
// and unwinds to main, which runs the cleanups (stopping every process).
type demoTB struct {
	cleanups []func()
	failed   bool
	verbose  bool
}

type fatal struct{}

func (d *demoTB) Helper() {}
func (d *demoTB) Logf(format string, args ...any) {
	if d.verbose {
		fmt.Fprintf(os.Stderr, "  | "+format+"\n", args...)
	}
}
func (d *demoTB) Errorf(format string, args ...any) {
	d.failed = true
	fmt.Fprintf(os.Stderr, "ERROR: "+format+"\n", args...)
}
func (d *demoTB) Fatalf(format string, args ...any) {
	d.Errorf(format, args...)
	panic(fatal{})
}
func (d *demoTB) Cleanup(f func()) { d.cleanups = append(d.cleanups, f) }
func (d *demoTB) Failed() bool     { return d.failed }

func (d *demoTB) runCleanups() {
	for len(d.cleanups) > 0 {
		f := d.cleanups[len(d.cleanups)-1]
		d.cleanups = d.cleanups[:len(d.cleanups)-1]
		func() {
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(fatal); !ok {
						panic(r)
					}
				}
			}()
			f()
		}()
	}
}

func main() {
	smtpdBin := flag.String("smtpd", harness.SMTPD68.Binary, "smtpd binary (e.g. "+harness.SMTPD74.Binary+", or "+harness.SMTPD76.Binary+", which runs chrooted in its trixie root)")
	msgFile := flag.String("message", "", "message to send (default: a built-in one); its From: must be @test.example")
	keep := flag.Bool("keep", false, "keep the demo directory (configs, logs, deliveries)")
	verbose := flag.Bool("v", false, "show the harness's log lines")
	flag.Parse()

	tb := &demoTB{verbose: *verbose}
	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(fatal); !ok {
					panic(r)
				}
				code = 1
			}
		}()
		defer tb.runCleanups()
		if *keep {
			os.Setenv(harness.KeepEnv, "1")
		}
		run(tb, *smtpdBin, *msgFile)
	}()
	harness.RemoveBuild()
	if tb.failed {
		code = 1
	}
	os.Exit(code)
}

const builtin = `From: Alice <alice@test.example>
To: Bob <bob@test.example>
Subject: filter-milter demo: signed by opendkim through OpenSMTPD
Date: Tue, 24 Nov 2026 12:00:00 +0000
Message-ID: <demo@test.example>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Hello Bob,

this message went swaks -> OpenSMTPD -> filter-milter -> opendkim,
and back. Grüße!
.a line that starts with a dot
`

func step(format string, args ...any) {
	fmt.Printf("==> "+format+"\n", args...)
}

func run(tb *demoTB, smtpdBin, msgFile string) {
	harness.RequireRoot(tb)
	start := time.Now()

	step("building filter-milter")
	bin := harness.BuildFilterMilter(tb)
	fmt.Printf("    %s\n", bin)

	env := harness.NewEnv(tb)
	step("working directory %s", env.Dir)

	step("generating a 2048-bit DKIM key (opendkim-genkey, d=test.example s=sel1)")
	key := harness.GenerateDKIMKey(tb, env, "keys")
	fmt.Printf("    %s TXT \"%s...\"\n", key.RecordName(), key.TXT[:min(60, len(key.TXT))])

	step("starting opendkim (signing, relaxed/simple)")
	dk := harness.StartOpenDKIM(tb, env, harness.OpenDKIMConfig{Mode: harness.DKIMSign, Canonicalization: "relaxed/simple", Key: key})
	fmt.Printf("    listening on %s (pid %d)\n", dk.Spec, dk.Proc.Cmd.Process.Pid)

	step("starting OpenSMTPD with filter-milter -milter %s", dk.Spec)
	s := harness.StartSMTPD(tb, env, harness.SMTPDConfig{Binary: smtpdBin, Listeners: []harness.Listener{
		{Name: "milter", Filter: []string{"-milter", dk.Spec, "-log-level", "info"}},
	}})
	fmt.Printf("    %s on 127.0.0.1:%d (pid %d), log %s\n", s.Version, s.Port("milter"), s.Proc.Cmd.Process.Pid, s.LogPath())

	msg := harness.Message{Name: "demo", From: "alice@test.example", To: []string{"bob@test.example"}, Data: []byte(builtin)}
	if msgFile != "" {
		b, err := os.ReadFile(msgFile)
		if err != nil {
			tb.Fatalf("%v", err)
		}
		msg.Data = b
	}
	step("sending one message with swaks")
	r := s.Send(tb, "milter", msg)
	for _, e := range r.Exchanges() {
		if len(e.Reply) > 0 {
			fmt.Printf("    C: %-40s S: %s\n", e.Command, e.Reply[len(e.Reply)-1])
		}
	}
	if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
		tb.Fatalf("the message was not accepted: %s\n%s", r.Summary(), r.Output)
	}

	step("waiting for the delivery")
	d := s.WaitDeliveries(tb, 1, 15*time.Second)[0]
	fmt.Printf("    %s\n\n", d.Path)
	fmt.Printf("%s\n", strings.TrimRight(string(d.Data), "\n"))
	fmt.Println()

	step("verifying with github.com/emersion/go-msgauth/dkim (key from the generated record, no DNS)")
	res, err := harness.VerifyDKIM(d.Data, key.Records())
	if err != nil {
		tb.Fatalf("DKIM verification: %v", err)
	}
	if len(res) == 0 {
		tb.Fatalf("the delivered message has no DKIM-Signature")
	}
	for i, v := range res {
		fmt.Printf("    signature %d: %s\n", i+1, v)
		if !v.Pass() {
			tb.Errorf("signature %d does not verify", i+1)
		}
	}

	step("filter-milter's lines in smtpd's log")
	for _, l := range strings.Split(s.Proc.Log(), "\n") {
		if strings.HasPrefix(l, "milter: ") {
			fmt.Printf("    %s\n", l)
		}
	}
	s.Healthy(tb)
	step("stopping smtpd, filter-milter and opendkim (%v in all)", time.Since(start).Round(time.Millisecond))
}
