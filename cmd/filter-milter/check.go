package main

import (
	"io"

	"github.com/filter-milter/filter-milter/config"
	"github.com/filter-milter/filter-milter/probe"
)

// runCheck is `filter-milter check`: it negotiates with every endpoint of
// every configured milter (package probe) and prints what each answered.
// It exits 1 when any endpoint failed, 2 on a usage or configuration
// error.
func runCheck(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	s := config.Defaults()
	f := checkFlags(&s)
	if code, done := f.parse(args, stdout, stderr); done {
		return code
	}
	if f.NArg() > 0 {
		return f.usageError(stderr, "check: unexpected arguments %q", f.Args())
	}
	if err := s.ApplyFile(f.FlagSet); err != nil {
		errorf(stderr, "%v", err)
		return exitUsage
	}
	milters, err := s.MilterConfigs()
	if err != nil {
		errorf(stderr, "%v", err)
		return exitUsage
	}
	if !probe.Milters(stdout, milters, s.DefaultAction) {
		return exitFailure
	}
	return exitOK
}

func checkFlags(s *config.Settings) *cmdFlags {
	f := newFlags("filter-milter check", checkUsage)
	s.AddFlags(f.FlagSet)
	return f
}

const checkUsage = `usage: filter-milter check [-config FILE] [flags]

Connects to each configured milter, negotiates as filter-milter does for a session,
prints what it asked for, and exits 1 when any milter endpoint cannot be used.

flags:
`
