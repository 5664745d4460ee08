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
var commands = map[string]func(args []string, stdin io.Reader, stdout, stderr io.Writer) int{
	"check": runCheck,
	"test":  runTest,
	"help": func(_ []string, _ io.Reader, stdout, _ io.Writer) int {
		usage(stdout)
		return exitOK
	},
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

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  filter-milter [-config FILE] [flags]          the filter, as smtpd's proc-exec runs it
  filter-milter check [-config FILE] [flags]    negotiate with each milter and print what it asked for
  filter-milter test [-config FILE] [flags] [--from ADDR] [--rcpt ADDR]... [--client-ip IP]
                     [--helo NAME] [--auth USER] [--json] [-o FILE] MESSAGE.eml
                                                run a message through the milters as smtpd would

Run "filter-milter -h", "filter-milter check -h" or "filter-milter test -h" for the flags;
filter-milter(8) has the rest.
`)
}

// parseSettings parses the shared flags (and the command's own, which the
// caller registered on fs), then applies the configuration file.
func parseSettings(fs *flag.FlagSet, s *config.Settings, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err // the flag package has printed it
	}
	if err := s.ApplyFile(fs); err != nil {
		return configError{err}
	}
	return nil
}

// configError is an error of the configuration file.
type configError struct{ error }

// reportParseError prints what the flag package has not printed, and
// returns the exit status.
func reportParseError(err error, stderr io.Writer) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	var ce configError
	if errors.As(err, &ce) {
		fmt.Fprintf(stderr, "filter-milter: %v\n", ce.error)
	}
	return exitUsage
}

// runFilter is filter-milter as smtpd runs it.
func runFilter(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("filter-milter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	s := config.Defaults()
	s.AddFlags(fs)
	fs.Usage = func() {
		usage(stderr)
		fmt.Fprintf(stderr, "\nflags (the configuration file has a key for each, with '_' for '-'; a -milter is a [[milter]] table):\n")
		fs.PrintDefaults()
	}
	if err := parseSettings(fs, &s, args); err != nil {
		return reportParseError(err, stderr)
	}
	log := newLogger(s.LogLevel)
	defer func() { _ = log.Sync() }()
	if fs.NArg() > 0 {
		log.Error("unexpected arguments (subcommands are check and test)", zap.Strings("args", fs.Args()))
		return exitUsage
	}
	milters, err := s.MilterConfigs()
	if err != nil {
		log.Error("bad configuration", zap.Error(err))
		return exitUsage
	}
	cfg := s.GatewayConfig(milters, log)
	if s.MetricsListen != "" {
		obs := metrics.New()
		cfg.Observer = obs
		srv := obs.Serve(s.MetricsListen, log)
		defer func() { _ = srv.Close() }()
	}

	// SIGTERM and SIGINT end the filter as smtpd closing the pipe does:
	// sessions in flight get ShutdownTimeout to finish. (smtpd itself shuts
	// down when its filter exits, so only a stopping smtpd should send
	// them.) Every other common signal is logged and ignored, SIGPIPE
	// included: a write to a closed stdout must be an error we can log,
	// not a signal that kills the process silently.
	term, stopWatching := watchSignals(log)
	defer stopWatching()

	setMemoryLimit(cfg.MemoryBudget)

	g := gateway.New(cfg)
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
// copies each line into its log prefixed with the filter's name.
func newLogger(level zapcore.Level) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "" // smtpd and syslog stamp the time
	enc.EncodeLevel = zapcore.LowercaseLevelEncoder
	enc.ConsoleSeparator = " "
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), level)
	return zap.New(core)
}
