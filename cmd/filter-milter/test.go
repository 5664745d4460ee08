package main

import (
	"encoding/json"
	"io"
	"os"

	"go.uber.org/zap/zapcore"

	"github.com/filter-milter/filter-milter/config"
	"github.com/filter-milter/filter-milter/dryrun"
)

// runTest is `filter-milter test`: it runs a message through the
// configured milters as smtpd would (package dryrun) and prints each
// milter's answers per stage, the changes they asked for, the verdict and
// a diff of the message. It exits 0 when the message would be accepted,
// 1 when it would be refused, 2 on a usage or configuration error.
func runTest(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := testArgs{s: config.Defaults()}
	a.s.LogLevel = zapcore.ErrorLevel // the gateway's log from info up is part of the result
	f := a.flags()
	// Flags may come before and after the message's name.
	var pos []string
	for rest := args; ; {
		if code, done := f.parse(rest, stdout, stderr); done {
			return code
		}
		if f.NArg() == 0 {
			break
		}
		pos = append(pos, f.Arg(0))
		rest = f.Args()[1:]
	}
	if len(pos) != 1 {
		return f.usageError(stderr, "test: want one MESSAGE.eml, got %d", len(pos))
	}
	s, sess := &a.s, a.sess
	if err := s.ApplyFile(f.FlagSet); err != nil {
		errorf(stderr, "%v", err)
		return exitUsage
	}
	fail := func(code int, err error) int {
		errorf(stderr, "%v", err)
		return code
	}
	milters, err := s.MilterConfigs()
	if err != nil {
		return fail(exitUsage, err)
	}
	msg, err := dryrun.ReadMessage(pos[0], stdin)
	if err != nil {
		return fail(exitUsage, err)
	}
	if err := sess.Complete(msg); err != nil {
		return fail(exitUsage, err)
	}
	res, err := dryrun.Run(s, milters, sess, msg, newLogger(s.LogLevel, os.Stderr))
	if err != nil {
		return fail(exitFailure, err)
	}
	switch {
	case a.output != "" && res.Delivered():
		if err := os.WriteFile(a.output, res.After(), 0o644); err != nil {
			return fail(exitUsage, err)
		}
	case a.output != "":
		errorf(stderr, "%s not written: the message would not be queued", a.output)
	}
	if a.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(res); err != nil {
			return fail(exitFailure, err)
		}
	} else {
		res.Print(stdout)
	}
	if !res.Accepted() {
		return exitFailure
	}
	return exitOK
}

// testArgs are the test command's settings and flags.
type testArgs struct {
	s      config.Settings
	sess   dryrun.Session
	asJSON bool
	output string
}

func (a *testArgs) flags() *cmdFlags {
	f := newFlags("filter-milter test", testUsage)
	a.s.AddFlags(f.FlagSet)
	f.StringVar(&a.sess.From, "from", "", "envelope sender; default: the address in the message's From: header")
	f.Var((*config.StringList)(&a.sess.Rcpts), "rcpt", "envelope recipient, repeat for several; default: the addresses in To: and Cc:")
	f.StringVar(&a.sess.ClientIP, "client-ip", "127.0.0.1", "the SMTP client's address")
	f.StringVar(&a.sess.ClientName, "client-name", "", "the client's verified reverse DNS name; default: localhost for a loopback address, none otherwise")
	f.StringVar(&a.sess.Helo, "helo", "localhost", "the client's EHLO name")
	f.StringVar(&a.sess.Auth, "auth", "", "the user the client authenticated as (AUTH PLAIN); default: not authenticated")
	f.BoolVar(&a.asJSON, "json", false, "print the result as one JSON object")
	f.StringVar(&a.output, "o", "", "write the message as the milters left it to this file")
	return f
}

const testUsage = `usage: filter-milter test [-config FILE] [flags] [--from ADDR] [--rcpt ADDR]... [--client-ip IP]
                          [--helo NAME] [--auth USER] [--json] [-o FILE] MESSAGE.eml

Runs MESSAGE.eml ("-": standard input) through the configured milters as smtpd would, without smtpd,
and prints each milter's answers, the changes they asked for, the verdict and a diff of the message.
Exit status: 0 accepted, 1 refused, 2 usage or configuration error.

flags:
`
