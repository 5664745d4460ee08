package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/filter-milter/filter-milter/config"
	"github.com/filter-milter/filter-milter/probe"
)

// runCheck is `filter-milter check`: it negotiates with every endpoint of
// every configured milter (package probe) and prints what each answered.
// It exits 1 when any endpoint failed, 2 on a usage or configuration
// error.
func runCheck(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("filter-milter check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	s := config.Defaults()
	s.AddFlags(fs)
	fs.Usage = func() { fmt.Fprint(stderr, checkUsage); fs.PrintDefaults() }
	if err := parseSettings(fs, &s, args); err != nil {
		return reportParseError(err, stderr)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "filter-milter check: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	milters, err := s.MilterConfigs()
	if err != nil {
		fmt.Fprintf(stderr, "filter-milter check: %v\n", err)
		return exitUsage
	}
	if !probe.Milters(stdout, milters, s.DefaultAction) {
		return exitFailure
	}
	return exitOK
}

const checkUsage = `usage: filter-milter check [-config FILE] [flags]

Connects to each configured milter, negotiates as filter-milter does for a session,
prints what it asked for, and exits 1 when any milter endpoint cannot be used.

flags:
`
