// Command filter-milter lets OpenSMTPD use milters (opendkim, rspamd,
// clamav-milter, ...). smtpd starts it as a filter process:
//
//	filter "milter" proc-exec "/usr/local/libexec/smtpd/filter-milter -milter inet:127.0.0.1:8891"
//	listen on 0.0.0.0 port 25 filter "milter"
//
// It speaks smtpd's filter protocol on stdin and stdout and the milter
// protocol to each milter. Logs go to stderr, which smtpd copies into its
// own log; stdout carries nothing but protocol lines.
//
// Two subcommands are for the postmaster, and need no smtpd:
//
//	filter-milter check [flags]             negotiate with each milter and show what it asked for
//	filter-milter test [flags] MESSAGE.eml  run a message through the milters as smtpd would
//
// Settings come from flags, or from a TOML file given with -config, which
// flags override. See filter-milter(8).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/filter-milter/filter-milter/config"
	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/metrics"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // the filter stopped on an error; check: a milter failed; test: the message was refused
	exitUsage   = 2 // bad flags or configuration
)

// commands are the subcommands, each with the filter's stdin, stdout and
// stderr; any other first argument is a flag of the filter itself.
var commands map[string]func(args []string, stdin io.Reader, stdout, stderr io.Writer) int

func init() {
	commands = map[string]func(args []string, stdin io.Reader, stdout, stderr io.Writer) int{
		"check":   runCheck,
		"test":    runTest,
		"help":    runHelp,
		"version": func(_ []string, _ io.Reader, stdout, _ io.Writer) int { return printVersion(stdout) },
	}
}

func main() {
	// The postmaster's commands run on a terminal, which must stay as it
	// is; only the filter's pipes from smtpd go non-blocking.
	if len(os.Args) > 1 && commands[os.Args[1]] != nil {
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	stdin, stdout := pollableStdio()
	os.Exit(run(os.Args[1:], stdin, stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if command := commands[args[0]]; command != nil {
			return command(args[1:], stdin, stdout, stderr)
		}
	}
	return runFilter(args, stdin, stdout, stderr)
}

const usage = `usage:
  filter-milter [-config FILE] [flags]          the filter, as smtpd's proc-exec runs it
  filter-milter check [-config FILE] [flags]    negotiate with each milter and print what it asked for
  filter-milter test [-config FILE] [flags] [--from ADDR] [--rcpt ADDR]... [--client-ip IP]
                     [--helo NAME] [--auth USER] [--json] [-o FILE] MESSAGE.eml
                                                run a message through the milters as smtpd would
  filter-milter -version                        print the version (also: filter-milter version)
  filter-milter help [check | test]             print this, or a command's usage, with its flags

filter-milter(8) has the rest.
`

// errorf prints an error the way every error filter-milter prints itself
// is printed (its logs aside): one line, "filter-milter: ...".
func errorf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "filter-milter: "+format+"\n", args...)
}

// cmdFlags are a command's flags and the usage that comes before them.
// The flag package prints nothing itself: -h prints the usage on stdout,
// a usage error goes to stderr with the usage (see parse).
type cmdFlags struct {
	*flag.FlagSet
	head string
}

func newFlags(name, head string) *cmdFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &cmdFlags{FlagSet: fs, head: head}
}

func (f *cmdFlags) printUsage(w io.Writer) {
	fmt.Fprint(w, f.head)
	f.SetOutput(w)
	f.PrintDefaults()
	f.SetOutput(io.Discard)
}

// parse parses args. done says the command ends here, with code: after
// -h or -help (the usage on stdout, exit 0) or a bad flag (the error and
// the usage on stderr, exit 2).
func (f *cmdFlags) parse(args []string, stdout, stderr io.Writer) (code int, done bool) {
	err := f.Parse(args)
	switch {
	case err == nil:
		return exitOK, false
	case errors.Is(err, flag.ErrHelp):
		f.printUsage(stdout)
		return exitOK, true
	}
	return f.usageError(stderr, "%v", err), true
}

// usageError prints a usage error and the usage on stderr.
func (f *cmdFlags) usageError(stderr io.Writer, format string, args ...any) int {
	errorf(stderr, format, args...)
	f.printUsage(stderr)
	return exitUsage
}

// runHelp is `filter-milter help [check | test]`.
func runHelp(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	s := config.Defaults()
	switch {
	case len(args) == 0:
		f, _ := filterFlags(&s)
		f.printUsage(stdout)
	case len(args) == 1 && args[0] == "check":
		checkFlags(&s).printUsage(stdout)
	case len(args) == 1 && args[0] == "test":
		(&testArgs{s: s}).flags().printUsage(stdout)
	default:
		errorf(stderr, "help %s: want help, help check or help test", strings.Join(args, " "))
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	return exitOK
}

// printVersion prints the module version and the VCS revision the binary
// was built from, as the Go toolchain recorded them.
func printVersion(stdout io.Writer) int {
	bi, ok := debug.ReadBuildInfo()
	fmt.Fprintln(stdout, versionLine(bi, ok))
	return exitOK
}

// versionLine is "filter-milter VERSION (REVISION[, modified])": the
// module version ("(devel)" for a build from a work tree, "v1.2.3" for
// go install ...@v1.2.3), and the commit with whether the tree had
// uncommitted changes, when the build recorded them (go build in a git
// checkout does; go install ...@version and -buildvcs=false do not).
func versionLine(bi *debug.BuildInfo, ok bool) string {
	version, revision, modified := "(unknown)", "", false
	if ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	line := "filter-milter " + version
	switch {
	case revision != "" && modified:
		line += " (" + revision + ", modified)"
	case revision != "":
		line += " (" + revision + ")"
	}
	return line
}

// filterFlags are the filter's flags: the shared ones and -version.
func filterFlags(s *config.Settings) (f *cmdFlags, version *bool) {
	f = newFlags("filter-milter", usage+"\nflags (the configuration file has a key for each, with '_' for '-'; a -milter is a [[milter]] table):\n")
	s.AddFlags(f.FlagSet)
	version = f.Bool("version", false, "print the version and exit")
	return f, version
}

// runFilter is filter-milter as smtpd runs it.
func runFilter(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	s := config.Defaults()
	f, version := filterFlags(&s)
	if code, done := f.parse(args, stdout, stderr); done {
		return code
	}
	if *version {
		return printVersion(stdout)
	}
	if f.NArg() > 0 {
		return f.usageError(stderr, "unexpected arguments %q (the commands are check, test, help and version)", f.Args())
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
	level := zap.NewAtomicLevelAt(s.LogLevel)
	log := newLogger(level, stderr)
	defer func() { _ = log.Sync() }()
	cfg := s.GatewayConfig(milters, log)
	var obs *metrics.Observer
	if s.MetricsListen != "" {
		obs = metrics.New()
		obs.Watch(cfg.Milters)
		cfg.Observer = obs
		srv := obs.Serve(s.MetricsListen, log)
		defer func() { _ = srv.Close() }()
	}

	setMemoryLimit(cfg.MemoryBudget)

	g := gateway.New(cfg)
	r := &reloader{args: args, log: log, level: level, g: g, obs: obs, running: s, pools: cfg.Milters}

	// SIGTERM and SIGINT end the filter as smtpd closing the pipe does:
	// sessions in flight get ShutdownTimeout to finish. (smtpd itself shuts
	// down when its filter exits, so only a stopping smtpd should send
	// them.) SIGHUP reloads the configuration (reload.go). Every other
	// common signal is logged and ignored, SIGPIPE included: a write to a
	// closed stdout must be an error we can log, not a signal that kills
	// the process silently.
	term, stopWatching := watchSignals(log, r.reload)
	defer stopWatching()

	ran := make(chan error, 1)
	go func() { ran <- g.Run(stdin, stdout) }()
	select {
	case err = <-ran:
		if err == nil {
			log.Info("smtpd closed the filter pipe; exiting")
		}
	case sig := <-term:
		log.Info("signal received; finishing the sessions in flight", zap.Stringer("signal", sig))
		err = g.Shutdown()
	}
	if err != nil {
		log.Error("stopping", zap.Error(err))
		return exitFailure
	}
	return exitOK
}

// setMemoryLimit gives the Go runtime a soft memory limit of three times
// the message budget (at least 192 MiB), unless GOMEMLIMIT is set: without
// one the heap grows to twice what is live before the collector runs, and
// under many large messages most of what is live is garbage already.
func setMemoryLimit(budget int64) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	if budget <= 0 {
		budget = 64 << 20
	}
	debug.SetMemoryLimit(max(3*budget, 192<<20))
}

// newLogger logs to stderr, one line per entry, without colour: smtpd
// copies each line into its log prefixed with the filter's name. level
// may change while it runs (a reload).
func newLogger(level zapcore.LevelEnabler, stderr io.Writer) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "" // smtpd and syslog stamp the time
	enc.EncodeLevel = zapcore.LowercaseLevelEncoder
	enc.ConsoleSeparator = " "
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(zapcore.AddSync(stderr)), level)
	return zap.New(core)
}
