// Package dryrun runs one message through the configured milters as
// smtpd would, without smtpd: it plays smtpd's side of the filter
// protocol against the real gateway, in process, and records what each
// milter answered, the changes they asked for, the verdict and a diff of
// the message. It is the engine of `filter-milter test`.
package dryrun

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/filter-milter/filter-milter/compat"
	"github.com/filter-milter/filter-milter/config"
	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/smtpdplay"
)

// Session is the SMTP session smtpd reports and filters around the
// message.
type Session struct {
	From       string
	Rcpts      []string
	ClientIP   string
	ClientName string // the verified reverse DNS name; "": localhost for a loopback address, none otherwise
	Helo       string
	Auth       string // the user the client authenticated as; "": not authenticated
}

// Run runs m through the gateway configured by s with the milters given,
// in one session as sess describes. The gateway logs to log, and from
// info up into the result, where its warnings (a milter that failed, a
// refused header change) stand next to what they explain.
func Run(s *config.Settings, milters []milter.Config, sess Session, m *Message, log *zap.Logger) (*Result, error) {
	captured, logs := observer.New(zapcore.InfoLevel)
	log = zap.New(zapcore.NewTee(log.Core(), captured))
	defer func() { _ = log.Sync() }()

	res, err := play(s, milters, sess, m, log)
	if err != nil {
		return nil, err
	}
	res.Log = []string{}
	for _, e := range logs.All() {
		if e.Message == "registered with smtpd" {
			continue // every run says so
		}
		if e.Level < zapcore.InfoLevel {
			// A session of a trace_clients client writes its trace at
			// debug whatever the level: it goes to stderr, not the result.
			continue
		}
		res.Log = append(res.Log, formatEntry(e))
	}
	return res, nil
}

// play runs the message through the gateway, playing smtpd 7.4 on its
// stdin and stdout.
func play(s *config.Settings, milters []milter.Config, sess Session, m *Message, log *zap.Logger) (*Result, error) {
	host := s.Hostname
	if host == "" {
		host, _ = os.Hostname()
		if host == "" {
			host = "localhost"
		}
	}
	rec := newRecorder(milters)
	cfg := s.GatewayConfig(milters, log)
	cfg.Observer = rec
	g := gateway.New(cfg)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	runErr := make(chan error, 1)
	go func() {
		err := g.Run(inR, outW)
		_ = outW.Close()
		runErr <- err
	}()

	res := &Result{
		Message:  m.Name,
		Envelope: Envelope{ClientIP: sess.ClientIP, Helo: sess.Helo, Auth: sess.Auth, From: sess.From, Rcpts: sess.Rcpts},
		Commands: []Step{},
		before:   m.lines,
	}
	if m.mboxFrom != "" {
		res.notes = append(res.notes, fmt.Sprintf("dropped the mbox separator line %q", m.mboxFrom))
	}
	player, err := smtpdplay.Start(inW, outR, smtpdplay.Config{
		Protocol: compat.Version{Major: 0, Minor: 7}, SmtpdVersion: "7.4.0", AnnounceProtocol: true, Admd: host,
		// The longest the gateway may take to answer: a milter that
		// connects, then takes its whole time over a command.
		Wait: s.ConnectTimeout + s.CommandTimeout + s.ContentTimeout + 30*time.Second,
	})
	if err == nil {
		p := &smtpd{play: player.NewSession(), res: res}
		err = p.run(host, &sess, m)
		err = errors.Join(err, p.play.End())
		// Closing the gateway's stdin ends it, as smtpd closing the pipe
		// does; Close then checks that it wrote nothing unasked.
		err = errors.Join(err, player.Close())
	}
	_ = inW.Close()
	// Wait for the gateway: every milter answer has reached the recorder
	// once Run returns.
	select {
	case rerr := <-runErr:
		if err == nil && rerr != nil {
			err = rerr
		}
	case <-time.After(s.ShutdownTimeout + 5*time.Second):
		if err == nil {
			err = errors.New("the gateway did not stop")
		}
	}
	if err != nil {
		return nil, err
	}
	rec.mu.Lock()
	res.Milters = rec.milters
	rec.mu.Unlock()
	if res.delivered {
		res.Diff = unifiedDiff(res.before, res.after, m.Name+" (as sent)", m.Name+" (as the milters left it)")
		res.Changed = res.Diff != ""
	}
	return res, nil
}

// formatEntry writes a captured log entry on one line, without the
// session id (there is one session).
func formatEntry(e observer.LoggedEntry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-5s %s", e.Level, e.Message)
	for _, f := range e.Context {
		if f.Key == "session" {
			continue
		}
		enc := zapcore.NewMapObjectEncoder()
		f.AddTo(enc)
		fmt.Fprintf(&b, "; %s=%v", f.Key, enc.Fields[f.Key])
	}
	return b.String()
}
