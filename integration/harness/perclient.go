package harness

import (
	"strings"
	"time"
)

// Helpers for the tests of milters per client and evaluation mode.

// FilterLines are the lines of smtpd's log (where smtpd writes its
// filters' stderr, each line prefixed with the filter's name) that contain
// every one of subs.
func (s *SMTPD) FilterLines(subs ...string) []string {
	return faultGrepFile(s.Proc.LogPath, subs...)
}

// WaitFilterLines waits until smtpd's log has at least n lines with every
// one of subs, and returns them. smtpd copies a filter's stderr to its log
// in its own time, after the SMTP answer the line came before.
func (s *SMTPD) WaitFilterLines(tb TB, n int, timeout time.Duration, subs ...string) []string {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := s.FilterLines(subs...)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			tb.Fatalf("harness: after %v smtpd's log has %d lines with %q, want %d; last lines:\n%s",
				timeout, len(got), strings.Join(subs, "…"), n, Tail(s.Proc.LogPath, 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitLines waits until the milter's log has at least n lines with every
// one of subs, and returns them.
func (f *FaultMilter) WaitLines(tb TB, n int, timeout time.Duration, subs ...string) []string {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := f.Lines(subs...)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			tb.Fatalf("harness: after %v %s's log has %d lines with %q, want %d; last lines:\n%s",
				timeout, f.Name, len(got), strings.Join(subs, "…"), n, Tail(f.Log, 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Connections are the connections the milter was given: its connect
// callbacks (an MTA that never connects leaves none).
func (f *FaultMilter) Connections() []string { return f.Lines(" connect ") }
