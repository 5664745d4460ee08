package main

import (
	"encoding/json"
	"flag"
	"fmt"
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
	fs := flag.NewFlagSet("filter-milter test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	s := config.Defaults()
	s.LogLevel = zapcore.ErrorLevel // the gateway's log from info up is part of the result
	s.AddFlags(fs)
	var sess dryrun.Session
	var asJSON bool
	var output string
	fs.StringVar(&sess.From, "from", "", "envelope sender; default: the address in the message's From: header")
	fs.Var((*config.StringList)(&sess.Rcpts), "rcpt", "envelope recipient, repeat for several; default: the addresses in To: and Cc:")
	fs.StringVar(&sess.ClientIP, "client-ip", "127.0.0.1", "the SMTP client's address")
	fs.StringVar(&sess.ClientName, "client-name", "", "the client's verified reverse DNS name; default: localhost for a loopback address, none otherwise")
	fs.StringVar(&sess.Helo, "helo", "localhost", "the client's EHLO name")
	fs.StringVar(&sess.Auth, "auth", "", "the user the client authenticated as (AUTH PLAIN); default: not authenticated")
	fs.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	fs.StringVar(&output, "o", "", "write the message as the milters left it to this file")
	fs.Usage = func() { fmt.Fprint(stderr, testUsage); fs.PrintDefaults() }
	// Flags may come before and after the message's name.
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return reportParseError(err, stderr)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if err := s.ApplyFile(fs); err != nil {
		fmt.Fprintf(stderr, "filter-milter: %v\n", err)
		return exitUsage
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitUsage
	}
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "filter-milter test: %v\n", err)
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
	res, err := dryrun.Run(&s, milters, sess, msg, newLogger(s.LogLevel))
	if err != nil {
		return fail(exitFailure, err)
	}
	switch {
	case output != "" && res.Delivered():
		if err := os.WriteFile(output, res.After(), 0o644); err != nil {
			return fail(exitUsage, err)
		}
	case output != "":
		fmt.Fprintf(stderr, "filter-milter test: %s not written: the message would not be queued\n", output)
	}
	if asJSON {
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

const testUsage = `usage: filter-milter test [-config FILE] [flags] [--from ADDR] [--rcpt ADDR]... [--client-ip IP]
                          [--helo NAME] [--auth USER] [--json] [-o FILE] MESSAGE.eml

Runs MESSAGE.eml ("-": standard input) through the configured milters as smtpd would, without smtpd,
and prints each milter's answers, the changes they asked for, the verdict and a diff of the message.
Exit status: 0 accepted, 1 refused, 2 usage or configuration error.

flags:
`
