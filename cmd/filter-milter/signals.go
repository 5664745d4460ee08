package main

import (
	"os"
	"os/signal"
	"sync"
	"syscall"

	"go.uber.org/zap"
)

// smtpd treats the exit of a filter process, for any reason, as fatal: it
// shuts down with it. So no signal that an administrator, a log rotation
// script or a terminal commonly sends may end or stop filter-milter, except
// the two that mean "stop": SIGTERM and SIGINT, which end it as smtpd
// closing the pipe does (see runFilter), and SIGHUP, which reloads the
// configuration (reload.go), as milter-manager and most daemons do.
//
// Left alone, the Go runtime exits on SIGHUP, exits with a goroutine dump
// on SIGQUIT, and lets SIGTSTP, SIGTTIN and SIGTTOU stop the process (which
// stalls every session of smtpd). It catches and drops the others listed
// here, but silently; they are logged here so that the postmaster sees the
// signal arrived and did nothing. SIGPIPE also comes from the kernel on
// every write to a socket whose peer is gone (a milter that died), which
// the write reports as an error of its own: it is logged at debug level.
// SIGPROF is not listed: the runtime handles it itself (CPU profiling) and
// drops it when no profile runs, without telling os/signal.
var (
	stopSignals   = []os.Signal{syscall.SIGTERM, syscall.SIGINT}
	reloadSignals = []os.Signal{syscall.SIGHUP}
	// ignoredSignals, by the name the postmaster knows them by (Go's
	// String is "hangup", "stopped"...).
	ignoredSignals = map[syscall.Signal]string{
		syscall.SIGQUIT: "SIGQUIT", syscall.SIGUSR1: "SIGUSR1", syscall.SIGUSR2: "SIGUSR2",
		syscall.SIGALRM: "SIGALRM", syscall.SIGVTALRM: "SIGVTALRM", syscall.SIGTSTP: "SIGTSTP", syscall.SIGTTIN: "SIGTTIN",
		syscall.SIGTTOU: "SIGTTOU", syscall.SIGWINCH: "SIGWINCH", syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ",
		syscall.SIGPIPE: "SIGPIPE",
	}
)

// watchSignals takes over the signals above. The stop signals come out
// of the returned channel; SIGHUP calls reload; the others are logged and
// ignored, until stop is called. Reloads run one after the other, on
// their own goroutine: a burst of SIGHUPs while one runs makes one more.
func watchSignals(log *zap.Logger, reload func()) (stopping <-chan os.Signal, stop func()) {
	term := make(chan os.Signal, 1)
	signal.Notify(term, stopSignals...)
	// One pending SIGHUP is enough: the reload after it reads the file
	// as it is then.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, reloadSignals...)
	// os/signal drops a signal when the channel is full: room for a
	// burst of every kind (a script that sends several at once).
	other := make(chan os.Signal, 4*len(ignoredSignals))
	for sig := range ignoredSignals {
		signal.Notify(other, sig)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for sig := range other {
			logIgnoredSignal(log, sig)
		}
	}()
	go func() {
		defer wg.Done()
		for range hup {
			reload()
		}
	}()
	return term, func() {
		signal.Stop(term)
		signal.Stop(hup) // no more sends once Stop returns
		signal.Stop(other)
		close(hup)
		close(other)
		wg.Wait()
	}
}

func logIgnoredSignal(log *zap.Logger, sig os.Signal) {
	name := ignoredSignals[sig.(syscall.Signal)]
	switch sig {
	case syscall.SIGPIPE:
		log.Debug("SIGPIPE received: a peer closed its end; the write that failed reports it", zap.String("signal", name))
	default:
		log.Info("signal ignored: only SIGTERM or SIGINT stop filter-milter, and smtpd stops with it",
			zap.String("signal", name))
	}
}
