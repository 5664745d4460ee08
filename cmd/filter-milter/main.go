// Command filter-milter lets OpenSMTPD use milters (opendkim, rspamd,
// clamav-milter, ...). smtpd starts it as a filter process:
//
//	filter "milter" proc-exec "/usr/local/bin/filter-milter -milter inet:127.0.0.1:8891"
//	listen on 0.0.0.0 port 25 filter "milter"
//
// It speaks smtpd's filter protocol on stdin and stdout and the milter
// protocol to each milter. Logs go to stderr, which smtpd copies into its
// own log; stdout carries nothing but protocol lines.
package main

import (
	"flag"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/milter"
)

type specList []string

func (l *specList) String() string     { return strings.Join(*l, ",") }
func (l *specList) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("filter-milter", flag.ContinueOnError)
	var specs specList
	fs.Var(&specs, "milter", "a milter: unix:/path, inet:host:port, inet:port@host or inet6:[addr]:port; several endpoints of one role separated by commas form a pool; settings in braces: {default_action=accept, connect_timeout=10s, command_timeout=10s, content_timeout=5m, protocol=6}. Repeat for several milters, in order")
	defaultAction := fs.String("default-action", "tempfail", "what a session gets when a milter fails or times out: tempfail, accept or reject")
	connectTimeout := fs.Duration("connect-timeout", milter.DefaultOptions.ConnectTimeout, "time to connect to a milter and negotiate")
	commandTimeout := fs.Duration("command-timeout", milter.DefaultOptions.CommandTimeout, "time a milter has to answer CONNECT, HELO, MAIL, RCPT and DATA")
	contentTimeout := fs.Duration("content-timeout", milter.DefaultOptions.ContentTimeout, "time a milter has to answer each header, body chunk and end of message")
	var policy gateway.Policy
	fs.StringVar(&policy.Discard, "discard", gateway.DefaultPolicy.Discard, "a milter's DISCARD (OpenSMTPD has no silent drop): reject (550 5.7.1) or junk (deliver marked X-Spam: yes)")
	fs.StringVar(&policy.Quarantine, "quarantine", gateway.DefaultPolicy.Quarantine, "a milter's QUARANTINE: mark (deliver marked X-Spam: yes), reject or tempfail")
	fs.StringVar(&policy.Envelope, "envelope-change", gateway.DefaultPolicy.Envelope, "a milter's recipient or sender change at end of message (OpenSMTPD cannot make it): tempfail, reject or ignore")
	shutdownTimeout := fs.Duration("shutdown-timeout", 30*time.Second, "once smtpd closes the pipe (or on SIGTERM), how long sessions in flight may take to finish")
	hostname := fs.String("hostname", "", "the j macro (MTA host name); default: smtpd's own name")
	daemonName := fs.String("daemon-name", "", "the {daemon_name} macro; default: the host name")
	level := zapcore.InfoLevel
	fs.TextVar(&level, "log-level", zapcore.InfoLevel, "log level: debug, info, warn or error")
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := newLogger(level)
	defer func() { _ = log.Sync() }()

	if fs.NArg() > 0 {
		log.Error("unexpected arguments", zap.Strings("args", fs.Args()))
		return 2
	}
	if len(specs) == 0 {
		log.Error("no milter configured: give at least one -milter SPEC")
		return 2
	}
	action, err := gateway.ParseAction(*defaultAction)
	if err != nil {
		log.Error("bad -default-action", zap.Error(err))
		return 2
	}
	if err := policy.Check(); err != nil {
		log.Error("bad policy", zap.Error(err))
		return 2
	}
	opts := milter.DefaultOptions
	opts.ConnectTimeout, opts.CommandTimeout, opts.ContentTimeout = *connectTimeout, *commandTimeout, *contentTimeout
	var clients []*milter.Pool
	for _, s := range specs {
		c, err := milter.ParseConfig(s, opts)
		if err != nil {
			log.Error("bad -milter", zap.Error(err))
			return 2
		}
		clients = append(clients, milter.NewPool(c))
	}

	// A write to a closed stdout must be an error we can log, not a
	// SIGPIPE that kills the process silently.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	// SIGTERM ends the filter as smtpd closing the pipe does: sessions in
	// flight get ShutdownTimeout to finish. (smtpd itself shuts down when
	// its filter exits, so only a stopping smtpd should send it.)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-term
		log.Info("signal received; finishing the sessions in flight", zap.Stringer("signal", sig))
		_ = os.Stdin.Close()
	}()

	g := gateway.New(gateway.Config{
		Milters:         clients,
		DefaultAction:   action,
		Policy:          policy,
		Hostname:        *hostname,
		DaemonName:      *daemonName,
		Log:             log,
		ShutdownTimeout: *shutdownTimeout,
	})
	if err := g.Run(os.Stdin, os.Stdout); err != nil {
		log.Error("stopping", zap.Error(err))
		return 1
	}
	log.Info("smtpd closed the filter pipe; exiting")
	return 0
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
