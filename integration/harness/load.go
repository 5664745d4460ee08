package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A load run sends many messages through smtpd at once, one SMTP session
// each, straight from Go (swaks costs a perl start per message), with
// bounded concurrency: smtpd 6.8 listens with a small backlog. Every
// message has a unique Message-ID, which is how deliveries are matched to
// sessions. Each session records smtpd's reply at every stage, so a test
// can check that every session was answered as configured, and
// AnalyzeLoad counts what was lost (accepted with 250, never delivered) and
// what was altered (delivered different from what was sent, other than
// smtpd's Received field, the mda's lines and header fields a milter was
// configured to add).

// LoadConfig describes one load run.
type LoadConfig struct {
	Name        string // the scenario; part of every Message-ID and recipient
	Port        int
	Sessions    int           // messages to send, one SMTP session each (plus retries)
	Concurrency int           // sessions open at once; default 16
	Timeout     time.Duration // for connecting and for each reply; default 30 s
	// Retries is how many more sessions a message gets after a 4xx reply
	// or a broken connection, as a real client retries later; RetryDelay
	// is the pause before each (default 200 ms).
	Retries    int
	RetryDelay time.Duration
	// Sender is the envelope sender of message i; default alice@test.example.
	Sender func(i int) string
	// Message builds message i (LF line ends, no dot-stuffing) around its
	// Message-ID (without angle brackets); default LoadMessage.
	Message func(i int, name, msgid, from, rcpt string) []byte
}

// LoadAttempt is one SMTP session: smtpd's reply at each stage it reached
// (each reply's lines joined with "\n"; "" when the stage was not reached).
type LoadAttempt struct {
	Greeting, Ehlo, Mail, Rcpt, Data, End string
	Err                                   string // a transport error: refused, reset, timed out
	Start                                 time.Time
	Greeted                               time.Duration // from connecting to the greeting
	Duration                              time.Duration
}

// Accepted reports whether the end of DATA got 250.
func (a LoadAttempt) Accepted() bool { return strings.HasPrefix(a.End, "250") }

// Refusal is the stage and reply that ended the session early or refused
// the message ("" when the message was accepted). A session that broke
// without a refusal gets "transport: <error>".
func (a LoadAttempt) Refusal() (stage, reply string) {
	for _, st := range a.stages() {
		if st.reply == "" {
			break
		}
		if c := st.reply[0]; c != '2' && c != '3' {
			return st.name, st.reply
		}
	}
	if a.Err != "" {
		return "transport", a.Err
	}
	return "", ""
}

type loadStageReply struct{ name, reply string }

func (a LoadAttempt) stages() []loadStageReply {
	return []loadStageReply{{"greeting", a.Greeting}, {"EHLO", a.Ehlo}, {"MAIL", a.Mail}, {"RCPT", a.Rcpt}, {"DATA", a.Data}, {"end of DATA", a.End}}
}

// String is a one-line summary of the replies.
func (a LoadAttempt) String() string {
	var parts []string
	for _, st := range a.stages() {
		if st.reply == "" {
			break
		}
		r := st.reply
		if i := strings.LastIndexByte(r, '\n'); i >= 0 {
			r = r[i+1:] // the last line of a multi-line reply
		}
		parts = append(parts, fmt.Sprintf("%s %q", st.name, r))
	}
	if a.Err != "" {
		parts = append(parts, "error "+a.Err)
	}
	return strings.Join(parts, ", ") + fmt.Sprintf(" (%v)", a.Duration.Round(time.Millisecond))
}

// LoadSession is one message and the SMTP sessions that tried to send it.
type LoadSession struct {
	Index     int
	MessageID string // without angle brackets
	From      string
	Rcpt      string
	Data      []byte // the message as it should arrive (LF, not stuffed)
	Attempts  []LoadAttempt
}

// Last is the message's last attempt.
func (s *LoadSession) Last() LoadAttempt { return s.Attempts[len(s.Attempts)-1] }

// Accepted reports whether an attempt got 250 at the end of DATA.
func (s *LoadSession) Accepted() bool {
	for _, a := range s.Attempts {
		if a.Accepted() {
			return true
		}
	}
	return false
}

// Load is the result of RunLoad.
type Load struct {
	Config   LoadConfig
	Sessions []*LoadSession
	Duration time.Duration
}

// Attempts is the number of SMTP sessions opened.
func (l *Load) Attempts() int {
	n := 0
	for _, s := range l.Sessions {
		n += len(s.Attempts)
	}
	return n
}

// loadPendingGreetings is how many connections may wait for their
// greeting at once (smtpd 6.8 lost none with up to 6 in a burst).
const loadPendingGreetings = 4

// RunLoad sends cfg.Sessions messages to 127.0.0.1:cfg.Port, each in its
// own SMTP session, at most cfg.Concurrency at a time, and returns every
// session's replies. It never fails the test: the caller judges.
func RunLoad(tb TB, cfg LoadConfig) *Load {
	tb.Helper()
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 16
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = 200 * time.Millisecond
	}
	if cfg.Sender == nil {
		cfg.Sender = func(int) string { return "alice@test.example" }
	}
	if cfg.Message == nil {
		cfg.Message = LoadMessage
	}
	stamp := strconv.FormatInt(time.Now().UnixNano()%1e12, 36)
	l := &Load{Config: cfg}
	for i := range cfg.Sessions {
		s := &LoadSession{
			Index:     i,
			MessageID: fmt.Sprintf("%s.%04d.%s@load.test.example", cfg.Name, i, stamp),
			From:      cfg.Sender(i),
			Rcpt:      fmt.Sprintf("bob+%s-%04d@test.example", cfg.Name, i),
		}
		s.Data = Normalize(cfg.Message(i, cfg.Name, s.MessageID, s.From, s.Rcpt))
		l.Sessions = append(l.Sessions, s)
	}
	start := time.Now()
	// At most a few connections wait for their greeting at a time: smtpd
	// 6.8 listens with a backlog of a few connections, and a burst of
	// connects overflows it (the kernel then drops the handshake's last
	// ACK and the client waits for a greeting that comes many seconds
	// later, or never), with or without a filter.
	gate := make(chan struct{}, loadPendingGreetings)
	work := make(chan *LoadSession)
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				for try := 0; try <= cfg.Retries; try++ {
					if try > 0 {
						time.Sleep(cfg.RetryDelay)
					}
					a := loadSendOne(cfg, s, gate)
					s.Attempts = append(s.Attempts, a)
					if a.Accepted() {
						break
					}
					if stage, reply := a.Refusal(); stage != "transport" && !strings.HasPrefix(reply, "4") {
						break // a permanent refusal is not retried
					}
				}
			}
		}()
	}
	for _, s := range l.Sessions {
		work <- s
	}
	close(work)
	wg.Wait()
	l.Duration = time.Since(start)
	tb.Logf("harness: load %s: %d messages in %d SMTP sessions to 127.0.0.1:%d, %d at a time, in %v",
		cfg.Name, len(l.Sessions), l.Attempts(), cfg.Port, cfg.Concurrency, l.Duration.Round(time.Millisecond))
	return l
}

// loadSendOne runs one SMTP session for s.
func loadSendOne(cfg LoadConfig, s *LoadSession, gate chan struct{}) (a LoadAttempt) {
	gate <- struct{}{}
	gated := true
	ungate := func() {
		if gated {
			gated = false
			<-gate
		}
	}
	defer ungate()
	a.Start = time.Now()
	defer func() { a.Duration = time.Since(a.Start) }()
	c, err := net.DialTimeout("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.Port)), cfg.Timeout)
	if err != nil {
		a.Err = err.Error()
		return a
	}
	defer c.Close()
	r := bufio.NewReader(c)
	read := func(dst *string) bool {
		_ = c.SetReadDeadline(time.Now().Add(cfg.Timeout))
		reply, err := loadReadReply(r)
		*dst = reply
		if err != nil {
			a.Err = err.Error()
			return false
		}
		return true
	}
	send := func(line string) bool {
		_ = c.SetWriteDeadline(time.Now().Add(cfg.Timeout))
		if _, err := c.Write([]byte(line + "\r\n")); err != nil {
			a.Err = err.Error()
			return false
		}
		return true
	}
	quit := func() {
		if send("QUIT") {
			var bye string
			_ = c.SetReadDeadline(time.Now().Add(cfg.Timeout))
			bye, _ = loadReadReply(r)
			_ = bye
		}
	}
	ok := func(reply, prefix string) bool { return strings.HasPrefix(reply, prefix) }
	greeted := read(&a.Greeting)
	a.Greeted = time.Since(a.Start)
	ungate()
	if !greeted || !ok(a.Greeting, "220") {
		return a
	}
	if !send("EHLO "+ClientHelo) || !read(&a.Ehlo) {
		return a
	}
	if !ok(a.Ehlo, "250") {
		quit()
		return a
	}
	if !send("MAIL FROM:<"+s.From+">") || !read(&a.Mail) {
		return a
	}
	if !ok(a.Mail, "250") {
		quit()
		return a
	}
	if !send("RCPT TO:<"+s.Rcpt+">") || !read(&a.Rcpt) {
		return a
	}
	if !ok(a.Rcpt, "250") {
		quit()
		return a
	}
	if !send("DATA") || !read(&a.Data) {
		return a
	}
	if !ok(a.Data, "354") {
		quit()
		return a
	}
	_ = c.SetWriteDeadline(time.Now().Add(cfg.Timeout))
	if _, err := c.Write(append(WireData(s.Data), '\r', '\n')); err != nil {
		a.Err = err.Error()
		return a
	}
	if !read(&a.End) {
		return a
	}
	quit()
	return a
}

// loadReadReply reads one SMTP reply, every line of a multi-line one, and
// returns its lines joined with "\n", without line ends.
func loadReadReply(r *bufio.Reader) (string, error) {
	var lines []string
	for {
		line, err := r.ReadString('\n')
		line = strings.TrimRight(line, "\r\n")
		if err != nil {
			if line != "" {
				lines = append(lines, line)
			}
			return strings.Join(lines, "\n"), err
		}
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "\n"), nil
		}
	}
}

// LoadMessage is the default message of a load run: a few header fields
// (one folded), a body with a leading dot, an empty line, trailing white
// space and UTF-8; every 10th message has a body over 64 KiB, so that it
// goes to milters in more than one chunk.
func LoadMessage(i int, name, msgid, from, rcpt string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Load Tester <%s>\n", from)
	fmt.Fprintf(&b, "To: <%s>\n", rcpt)
	fmt.Fprintf(&b, "Subject: load %s message %d\n", name, i)
	fmt.Fprintf(&b, "Date: Tue, 24 Nov 2026 11:00:00 +0000\n")
	fmt.Fprintf(&b, "Message-ID: <%s>\n", msgid)
	fmt.Fprintf(&b, "X-Load-Seq: %d\n", i)
	fmt.Fprintf(&b, "X-Load-Folded: a header field\n\tfolded over two lines\n")
	fmt.Fprintf(&b, "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n")
	fmt.Fprintf(&b, "Message %d of load run %s.\n.a line that starts with a dot\n\ntrailing space \nGrüße, ½ € ✓\n", i, name)
	lines := 5 + i%7*20
	if i%10 == 9 {
		lines = 1100 // ~ 80 KiB
	}
	for j := range lines {
		fmt.Fprintf(&b, "%04d-%04d the quick brown fox jumps over the lazy dog %s\n", i, j, strings.Repeat("x", j%13))
	}
	b.WriteString("-- \nend\n")
	return b.Bytes()
}

// ---------------------------------------------------------------------------
// Deliveries

// LoadDelivery is a delivered message with its Message-ID.
type LoadDelivery struct {
	Delivery
	MessageID string // without angle brackets; "" when it has none
}

// WaitLoadDeliveries waits until every Message-ID in want has been
// delivered (or timeout), then waits settle more for stragglers and
// duplicates, and returns every new delivery since the previous call
// (marking them seen for WaitDeliveries too). It does not fail the test
// on timeout: a missing message is what AnalyzeLoad counts as lost.
func (s *SMTPD) WaitLoadDeliveries(tb TB, want []string, timeout, settle time.Duration) []LoadDelivery {
	tb.Helper()
	need := map[string]bool{}
	for _, id := range want {
		need[id] = true
	}
	parsed := map[string]LoadDelivery{}
	scan := func() {
		for _, name := range s.fresh(tb) {
			if _, ok := parsed[name]; ok {
				continue
			}
			p := filepath.Join(s.MailDir, name)
			b, err := os.ReadFile(p)
			if err != nil {
				tb.Fatalf("harness: read %s: %v", p, err)
			}
			d := LoadDelivery{Delivery: Delivery{Path: p, Rcpt: deliveredTo(b), Data: b}, MessageID: loadMessageID(b)}
			parsed[name] = d
			delete(need, d.MessageID)
		}
	}
	start := time.Now()
	for {
		scan()
		if len(need) == 0 || time.Since(start) > timeout {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(need) > 0 {
		tb.Logf("harness: %d accepted messages not delivered after %v", len(need), timeout)
	}
	time.Sleep(settle)
	scan()
	names := make([]string, 0, len(parsed))
	for n := range parsed {
		names = append(names, n)
	}
	sort.Strings(names)
	s.seenMu.Lock()
	for _, n := range names {
		s.seen[n] = true
	}
	s.seenMu.Unlock()
	out := make([]LoadDelivery, 0, len(names))
	for _, n := range names {
		out = append(out, parsed[n])
	}
	return out
}

// loadMessageID is the value of the first Message-ID field, without angle
// brackets and white space.
func loadMessageID(msg []byte) string {
	fields, _ := SplitMessage(msg)
	for _, f := range fields {
		if strings.EqualFold(f.Name, "Message-ID") {
			return strings.Trim(strings.TrimSpace(f.Value()), "<>")
		}
	}
	return ""
}

// ---------------------------------------------------------------------------
// Analysis

// LoadCheck is what a scenario expects.
type LoadCheck struct {
	// Expect judges one SMTP session: nil when it was answered as
	// configured.
	Expect func(s *LoadSession, a LoadAttempt) error
	// AddedNames are header fields the configured milters may add; they
	// are taken out of a delivered message before it is compared with
	// what was sent.
	AddedNames []string
	// Added judges the fields taken out (nil: anything with those names
	// is fine): nil when the message got what the configuration says.
	Added func(s *LoadSession, added []Field) error
}

// LoadReport counts what happened to a load run.
type LoadReport struct {
	Scenario     string
	Sessions     int // SMTP sessions opened, retries included
	Messages     int
	AsConfigured int // sessions answered as configured
	Refused      int // sessions that ended with a 4xx/5xx reply or a broken connection
	Accepted     int // messages accepted with 250 at the end of DATA
	Delivered    int // messages delivered (distinct Message-IDs of this run)
	Lost         int // accepted but not delivered
	Altered      int // delivered, but not as sent plus what the milters may add
	Duplicated   int // delivered more than once
	Unexpected   int // delivered though never accepted, or a delivery of no message of this run
	Duration     time.Duration
	Problems     []string // one line per problem, for the failure message
}

// OK reports whether nothing went wrong.
func (r LoadReport) OK() bool {
	return r.AsConfigured == r.Sessions && r.Lost == 0 && r.Altered == 0 && r.Duplicated == 0 && r.Unexpected == 0
}

// AnalyzeLoad pairs deliveries with sessions by Message-ID and counts.
func AnalyzeLoad(l *Load, ds []LoadDelivery, check LoadCheck) LoadReport {
	rep := LoadReport{Scenario: l.Config.Name, Messages: len(l.Sessions), Duration: l.Duration}
	problem := func(format string, args ...any) {
		rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
	}
	byID := map[string]*LoadSession{}
	for _, s := range l.Sessions {
		byID[s.MessageID] = s
	}
	delivered := map[string][]LoadDelivery{}
	for _, d := range ds {
		if byID[d.MessageID] == nil {
			rep.Unexpected++
			problem("delivery %s has Message-ID %q, which no session of %s sent", d.Path, d.MessageID, l.Config.Name)
			continue
		}
		delivered[d.MessageID] = append(delivered[d.MessageID], d)
	}
	for _, s := range l.Sessions {
		for n, a := range s.Attempts {
			rep.Sessions++
			if !a.Accepted() {
				rep.Refused++
			}
			err := error(nil)
			if check.Expect != nil {
				err = check.Expect(s, a)
			}
			if err != nil {
				problem("message %d <%s> session %d of %d not answered as configured: %v; replies: %s", s.Index, s.MessageID, n+1, len(s.Attempts), err, a)
			} else {
				rep.AsConfigured++
			}
		}
		got := delivered[s.MessageID]
		if s.Accepted() {
			rep.Accepted++
		}
		switch {
		case len(got) == 0 && s.Accepted():
			rep.Lost++
			problem("message %d <%s> LOST: accepted (%s) but never delivered", s.Index, s.MessageID, s.Last())
			continue
		case len(got) == 0:
			continue
		case !s.Accepted():
			rep.Unexpected++
			problem("message %d <%s> delivered (%s) though no session accepted it: %s", s.Index, s.MessageID, got[0].Path, s.Last())
		}
		rep.Delivered++
		if len(got) > 1 {
			rep.Duplicated++
			var paths []string
			for _, d := range got {
				paths = append(paths, d.Path)
			}
			problem("message %d <%s> delivered %d times: %s", s.Index, s.MessageID, len(got), strings.Join(paths, ", "))
		}
		for _, d := range got {
			if why := loadAlteration(s, d, check); why != "" {
				rep.Altered++
				problem("message %d <%s> ALTERED (%s): %s", s.Index, s.MessageID, d.Path, why)
				break
			}
		}
	}
	return rep
}

// loadAlteration says how a delivery differs from what was sent, "" when it
// does not (beyond smtpd's Received, the mda's lines and allowed fields).
func loadAlteration(s *LoadSession, d LoadDelivery, check LoadCheck) string {
	got := StripDelivered(d.Data)
	var added []Field
	if len(check.AddedNames) > 0 {
		got, added = RemoveFields(got, check.AddedNames...)
	}
	if diff := Diff(s.Data, got); diff != "" {
		return diff
	}
	if check.Added != nil {
		if err := check.Added(s, added); err != nil {
			return err.Error()
		}
	} else if len(added) > 0 && len(check.AddedNames) == 0 {
		return "fields added"
	}
	return ""
}

// LoadTableHeader and Row format reports as a Markdown table.
const LoadTableHeader = "| scenario | smtpd | sessions sent | answered as configured | refused (4xx/5xx) | delivered | lost | altered | duplicated | unexpected | time |\n" +
	"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"

// Row is one line of the table.
func (r LoadReport) Row(smtpd string) string {
	return fmt.Sprintf("| %s | %s | %d | %d | %d | %d | %d | %d | %d | %d | %.1fs |\n", r.Scenario, smtpd, r.Sessions, r.AsConfigured,
		r.Refused, r.Delivered, r.Lost, r.Altered, r.Duplicated, r.Unexpected, r.Duration.Seconds())
}
