package harness

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Delivery is one message the mda wrote, for one recipient.
type Delivery struct {
	Path string
	Rcpt string // from the mda's Delivered-To: line
	Data []byte // exactly as delivered, LF line ends
}

// WaitDeliveries waits until n messages have been delivered since the
// previous call (or since smtpd started) and returns them sorted by
// delivery time. It fails the test on timeout, and when more than n arrive
// (it waits 100 ms after the n-th for stragglers).
func (s *SMTPD) WaitDeliveries(tb TB, n int, timeout time.Duration) []Delivery {
	tb.Helper()
	start := time.Now()
	for {
		fresh := s.fresh(tb)
		if len(fresh) >= n {
			time.Sleep(100 * time.Millisecond)
			fresh = s.fresh(tb)
			if len(fresh) > n {
				tb.Fatalf("harness: %d new deliveries, want %d: %s", len(fresh), n, strings.Join(fresh, ", "))
			}
			var out []Delivery
			s.seenMu.Lock()
			for _, name := range fresh {
				s.seen[name] = true
			}
			s.seenMu.Unlock()
			for _, name := range fresh {
				p := filepath.Join(s.MailDir, name)
				b, err := os.ReadFile(p)
				if err != nil {
					tb.Fatalf("harness: read %s: %v", p, err)
				}
				out = append(out, Delivery{Path: p, Rcpt: deliveredTo(b), Data: b})
			}
			return out
		}
		if time.Since(start) > timeout {
			tb.Fatalf("harness: %d of %d deliveries after %v in %s; smtpd log %s:\n%s",
				len(fresh), n, timeout, s.MailDir, s.LogPath(), Tail(s.LogPath(), 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// NoDeliveries fails the test when anything is delivered within wait.
func (s *SMTPD) NoDeliveries(tb TB, wait time.Duration) {
	tb.Helper()
	time.Sleep(wait)
	if fresh := s.fresh(tb); len(fresh) > 0 {
		tb.Fatalf("harness: unexpected deliveries: %s", strings.Join(fresh, ", "))
	}
}

func (s *SMTPD) fresh(tb TB) []string {
	tb.Helper()
	ents, err := os.ReadDir(s.MailDir)
	if err != nil {
		tb.Fatalf("harness: read %s: %v", s.MailDir, err)
	}
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	var out []string
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".eml") || s.seen[name] {
			continue
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func deliveredTo(b []byte) string {
	lines := strings.SplitN(string(b), "\n", 4)
	for _, l := range lines[:min(3, len(lines))] {
		if v, ok := strings.CutPrefix(l, "Delivered-To: "); ok {
			return v
		}
	}
	return ""
}

// ---------------------------------------------------------------------------
// Header fields

// Field is one header field, as raw bytes: name, colon, value and every
// continuation line, each with its line end.
type Field struct {
	Name string // as written, without the colon
	Raw  []byte
}

// Value is the field's raw value: everything after the colon, folding
// kept, without the final line end.
func (f Field) Value() string {
	_, v, _ := strings.Cut(string(f.Raw), ":")
	return strings.TrimRight(v, "\r\n")
}

// SplitMessage splits a message (LF or CRLF) into its header fields and
// the rest: the empty separator line and the body (nil when the message has
// no separator line).
func SplitMessage(msg []byte) (fields []Field, rest []byte) {
	i := 0
	for i < len(msg) {
		end := bytes.IndexByte(msg[i:], '\n')
		var line []byte
		if end < 0 {
			line = msg[i:]
		} else {
			line = msg[i : i+end+1]
		}
		trim := bytes.TrimRight(line, "\r\n")
		if len(trim) == 0 {
			return fields, msg[i:]
		}
		if (trim[0] == ' ' || trim[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1].Raw = append(fields[len(fields)-1].Raw, line...)
		} else {
			name, _, _ := bytes.Cut(trim, []byte(":"))
			fields = append(fields, Field{Name: string(name), Raw: append([]byte(nil), line...)})
		}
		i += len(line)
	}
	return fields, nil
}

// JoinMessage is the inverse of SplitMessage.
func JoinMessage(fields []Field, rest []byte) []byte {
	var b bytes.Buffer
	for _, f := range fields {
		b.Write(f.Raw)
	}
	b.Write(rest)
	return b.Bytes()
}

// StripMDAHeaders removes the Return-Path: and Delivered-To: lines that
// smtpd's mda delivery puts at the top of every delivered message.
func StripMDAHeaders(msg []byte) []byte {
	for _, prefix := range []string{"Return-Path:", "Delivered-To:"} {
		if bytes.HasPrefix(msg, []byte(prefix)) {
			if i := bytes.IndexByte(msg, '\n'); i >= 0 {
				msg = msg[i+1:]
			}
		}
	}
	return msg
}

// StripSMTPDReceived removes smtpd's own Received: header, the first
// Received: field that says "(OpenSMTPD)" (folded over 3 or 4 lines; it is
// normally the first field, but a milter may have inserted fields above
// it).
func StripSMTPDReceived(msg []byte) []byte {
	fields, rest := SplitMessage(msg)
	for i, f := range fields {
		if strings.EqualFold(f.Name, "Received") && bytes.Contains(f.Raw, []byte("(OpenSMTPD)")) {
			fields = append(fields[:i:i], fields[i+1:]...)
			return JoinMessage(fields, rest)
		}
	}
	return msg
}

// StripDelivered removes both the mda's lines and smtpd's Received: field:
// what remains is what the client sent plus whatever the filter changed.
func StripDelivered(msg []byte) []byte {
	return StripSMTPDReceived(StripMDAHeaders(msg))
}

// RemoveFields removes every header field with one of the names (case
// insensitive) and returns the removed fields too.
func RemoveFields(msg []byte, names ...string) (rest []byte, removed []Field) {
	fields, body := SplitMessage(msg)
	var keep []Field
	for _, f := range fields {
		drop := false
		for _, n := range names {
			if strings.EqualFold(f.Name, n) {
				drop = true
			}
		}
		if drop {
			removed = append(removed, f)
		} else {
			keep = append(keep, f)
		}
	}
	return JoinMessage(keep, body), removed
}

// Diff describes the first difference between two messages, line by line,
// with a little context, for failure messages. It returns "" when they are
// equal.
func Diff(want, got []byte) string {
	if bytes.Equal(want, got) {
		return ""
	}
	wl := strings.SplitAfter(string(want), "\n")
	gl := strings.SplitAfter(string(got), "\n")
	i := 0
	for i < len(wl) && i < len(gl) && wl[i] == gl[i] {
		i++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "messages differ (want %d bytes/%d lines, got %d bytes/%d lines), first at line %d:\n",
		len(want), len(wl), len(got), len(gl), i+1)
	for j := max(0, i-2); j < i; j++ {
		fmt.Fprintf(&b, "   %4d  %s\n", j+1, clip(wl[j]))
	}
	for j := i; j < min(i+3, len(wl)); j++ {
		fmt.Fprintf(&b, " - %4d  %s\n", j+1, clip(wl[j]))
	}
	for j := i; j < min(i+3, len(gl)); j++ {
		fmt.Fprintf(&b, " + %4d  %s\n", j+1, clip(gl[j]))
	}
	return b.String()
}

func clip(s string) string {
	q := fmt.Sprintf("%q", s)
	if len(q) > 200 {
		q = q[:150] + fmt.Sprintf("...(%d bytes)...", len(s)) + q[len(q)-40:]
	}
	return q
}

// LoadMessages reads every *.eml under testdata/messages of the module.
func LoadMessages(tb TB) []Message {
	tb.Helper()
	dir := filepath.Join(RepoRoot(tb), "testdata", "messages")
	paths, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil || len(paths) == 0 {
		tb.Fatalf("harness: no sample messages in %s (%v)", dir, err)
	}
	sort.Strings(paths)
	var out []Message
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatalf("harness: read %s: %v", p, err)
		}
		out = append(out, Message{Name: strings.TrimSuffix(filepath.Base(p), ".eml"), Data: b})
	}
	return out
}
