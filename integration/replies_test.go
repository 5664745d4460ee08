//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// TestReplies proves every milter answer and every modification through
// real OpenSMTPD, a real python3-milter milter (testdata/milters/
// actions_milter.py) and a real SMTP client (swaks, or the harness's raw
// client where the exact reply lines, several transactions in one session
// or the closing of the connection matter). Each scope is one table; each
// row is a subtest that checks what the client saw at which command, and
// the delivered message byte for byte (smtpd's Received header included,
// at its position) or that nothing was delivered.
//
// One smtpd per version with three listeners, reused by every row:
//
//	milter   filter-milter -milter <actions milter>            (default policies)
//	policy   ... -discard junk -quarantine reject -envelope-change ignore
//	leadspc  filter-milter -milter <actions milter --leadspc>  (SMFIP_HDR_LEADSPC)
//
// The tables of answers × stages and modifications in docs/replies.md are backed by these rows.
func TestReplies(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		t.Parallel()
		rig := startRepliesRig(t, v)
		t.Run("connect", rig.connectScope)
		t.Run("helo", rig.heloScope)
		t.Run("mail", rig.mailScope)
		t.Run("rcpt", rig.rcptScope)
		t.Run("stage", rig.stageScope)
		t.Run("eom", rig.eomScope)
		t.Run("modify", rig.modifyScope)
		t.Run("policy", rig.policyScope)
		t.Run("leadspc", rig.leadspcScope)
		rig.s.NoDeliveries(t, 200*time.Millisecond)
		rig.s.Healthy(t)
	})
}

// policyArgs are the non-default settings of the policy listener.
var policyArgs = []string{"-discard", "junk", "-quarantine", "reject", "-envelope-change", "ignore"}

// smtpdNoHelo is smtpd's own reply (6.8 and 7.4) to MAIL while no HELO or
// EHLO has succeeded, and to every command but QUIT after a refused
// connect; the filter is not asked.
const smtpdNoHelo = "503 5.5.1 Invalid command: Command not allowed at this point."

// The gateway's own replies (gateway/policy.go).
const (
	replyRejectDefault   = "550 5.7.1 Command rejected"
	replyTempfailDefault = "451 4.7.1 Service unavailable - try again later"
	replyDiscarded       = "550 5.7.1 Message discarded by content filter"
	replyEnvelope        = "451 4.7.1 Content filter asked for an envelope change that cannot be made - try again later"
	replyQuarantined     = "550 5.7.1 Message quarantined by content filter"
)

type repliesRig struct {
	v       harness.SMTPDVersion
	s       *harness.SMTPD
	m       *harness.PyMilter // actions milter
	lm      *harness.PyMilter // actions milter --leadspc
	started time.Time
}

func startRepliesRig(t *testing.T, v harness.SMTPDVersion) *repliesRig {
	start := time.Now()
	env := harness.NewEnv(t)
	m := harness.StartPyMilter(t, env, "actions-milter", harness.ActionsMilter(t), "inet")
	lm := harness.StartPyMilter(t, env, "actions-milter-leadspc", harness.ActionsMilter(t), "inet", "--leadspc")
	s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
		{Name: "milter", Filter: filterArgs(m.SpecHostPort())},
		{Name: "policy", Filter: append(filterArgs(m.SpecHostPort()), policyArgs...)},
		{Name: "leadspc", Filter: filterArgs(lm.SpecHostPort())},
	}})
	t.Logf("%s: milter :%d, policy :%d (%s), leadspc :%d; actions milter %s, --leadspc %s; up in %v",
		s.Version, s.Port("milter"), s.Port("policy"), strings.Join(policyArgs, " "), s.Port("leadspc"),
		m.SpecHostPort(), lm.SpecHostPort(), time.Since(start).Round(time.Millisecond))
	return &repliesRig{v: v, s: s, m: m, lm: lm, started: start}
}

// ---------------------------------------------------------------------------
// Messages and expected deliveries

// repliesMessage is the message every row sends: extra header fields go
// after Message-ID, before two X-Multi fields around an X-Delete-Me; the
// body has a leading-dot line, a lone "." line and pipes.
func repliesMessage(id string, extra ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Alice <alice@test.example>\nTo: Bob <bob@test.example>\nSubject: replies test %s\n", id)
	fmt.Fprintf(&b, "Date: Tue, 24 Nov 2026 11:00:00 +0000\nMessage-ID: <replies-%s@test.example>\n", id)
	for _, e := range extra {
		fmt.Fprintf(&b, "%s\n", e)
	}
	fmt.Fprintf(&b, "X-Multi: first\nX-Delete-Me: please\nX-Multi: second\nMIME-Version: 1.0\n")
	fmt.Fprintf(&b, "Content-Type: text/plain; charset=us-ascii\n\n")
	fmt.Fprintf(&b, "body of %s\n.leading dot line\n.\na line with | pipes |\nlast line\n", id)
	return b.Bytes()
}

// bigBody is a body of more than two 65535-byte milter chunks.
func bigBody() string {
	var b strings.Builder
	for i := range 2600 {
		fmt.Fprintf(&b, "line %05d of a body that spans three milter body chunks, padded to 72 bytes\n", i)
	}
	return b.String()
}

// withBody replaces the body of a message built by repliesMessage.
func withBody(msg []byte, body string) []byte {
	i := bytes.Index(msg, []byte("\n\n"))
	return append(append([]byte(nil), msg[:i+2]...), body...)
}

// wantMessage is the delivered message a row wants: header fields with a
// placeholder for smtpd's Received field (Raw nil) and the rest (empty
// line and body).
type wantMessage struct {
	fields []harness.Field
	rest   []byte
}

// msgEdit turns the sent message into what should be delivered.
type msgEdit func(e *wantMessage)

func receivedPlaceholder() harness.Field { return harness.Field{Name: "Received"} }

// unchangedExpected is the sent message with smtpd's Received field on top,
// where smtpd puts it (the filter and the milter see it as the first field).
func unchangedExpected(msg []byte) *wantMessage {
	fs, rest := harness.SplitMessage(harness.Normalize(msg))
	return &wantMessage{fields: append([]harness.Field{receivedPlaceholder()}, fs...), rest: rest}
}

func rawField(raw string) harness.Field {
	name, _, _ := strings.Cut(raw, ":")
	return harness.Field{Name: name, Raw: []byte(raw)}
}

func (e *wantMessage) insert(i int, raw string) {
	e.fields = slices.Insert(e.fields, i, rawField(raw))
}

func (e *wantMessage) add(raw string) { e.fields = append(e.fields, rawField(raw)) }

// nth returns the index of the n-th (1-based) field named name, or -1.
func (e *wantMessage) nth(name string, n int) int {
	for i, f := range e.fields {
		if strings.EqualFold(f.Name, name) {
			if n--; n == 0 {
				return i
			}
		}
	}
	return -1
}

func (e *wantMessage) replace(name string, n int, raw string) {
	i := e.nth(name, n)
	if i < 0 {
		panic("no field " + name)
	}
	e.fields[i] = rawField(raw)
}

func (e *wantMessage) remove(name string, n int) {
	i := e.nth(name, n)
	if i < 0 {
		panic("no field " + name)
	}
	e.fields = slices.Delete(e.fields, i, i+1)
}

// The modifications the actions milter makes, as they must be delivered.
var (
	editAddHeader = func(e *wantMessage) { e.add("X-Added: added\n") }
	editInsHeader = func(e *wantMessage) {
		e.insert(0, "X-Inserted: at index 0\n")
		e.insert(2, "X-Inserted: at index 2\n")
	}
	editChgHeader = func(e *wantMessage) {
		i := e.nth("Subject", 1)
		old := strings.TrimPrefix(strings.TrimSuffix(string(e.fields[i].Raw), "\n"), "Subject: ")
		e.fields[i] = rawField("Subject: [changed] " + old + "\n")
	}
	editDelHeader  = func(e *wantMessage) { e.remove("X-Delete-Me", 1) }
	editChgHeader2 = func(e *wantMessage) { e.replace("X-Multi", 2, "X-Multi: second, changed\n") }
	editReplBody   = func(e *wantMessage) {
		e.rest = []byte("\nreplaced body, chunk one\n.leading dot line\nhalf of a line split over two chunks\n.\n" +
			"a line with | pipes | in it\n..two dots\nlast line\n")
	}
	editFolded = func(e *wantMessage) { e.add("X-Folded: a\n\tb\n") }
	editJunk   = func(e *wantMessage) { e.insert(0, "X-Spam: yes\n") }
)

// checkDelivery compares one delivery with the expected message byte for
// byte: the mda's Return-Path (the envelope sender) and Delivered-To are
// checked and stripped, smtpd's Received field must be where the
// placeholder is.
func checkDelivery(t *testing.T, d harness.Delivery, sender string, want *wantMessage) {
	t.Helper()
	if bytes.IndexByte(d.Data, '\r') >= 0 {
		t.Errorf("delivery %s has a CR: every line of the stored message must end in a plain LF", d.Path)
	}
	if rp := "Return-Path: <" + sender + ">\n"; !bytes.HasPrefix(d.Data, []byte(rp)) {
		first, _, _ := strings.Cut(string(d.Data), "\n")
		t.Errorf("delivery %s: first line %q, want %q (the envelope sender must not change)", d.Path, first, strings.TrimSuffix(rp, "\n"))
	}
	got := harness.StripMDAHeaders(d.Data)
	gf, _ := harness.SplitMessage(got)
	var recv []byte
	for _, f := range gf {
		if strings.EqualFold(f.Name, "Received") && bytes.Contains(f.Raw, []byte("(OpenSMTPD)")) {
			recv = f.Raw
			break
		}
	}
	if recv == nil || !bytes.HasPrefix(recv, []byte("Received: from ")) || !bytes.Contains(recv, []byte("\tby mx.test.example (OpenSMTPD) with ESMTP id ")) {
		t.Errorf("delivery %s: no Received field of smtpd's (got %q):\n%s", d.Path, recv, d.Data)
		return
	}
	fields := slices.Clone(want.fields)
	for i := range fields {
		if fields[i].Raw == nil {
			fields[i].Raw = recv
		}
	}
	if diff := harness.Diff(harness.JoinMessage(fields, want.rest), got); diff != "" {
		t.Errorf("delivery to %s (%s): %s\ndelivered:\n%s", d.Rcpt, d.Path, diff, d.Data)
	}
}

// ---------------------------------------------------------------------------
// The milter's log

// milterRec is one line of actions_milter.py's log.
type milterRec struct {
	T          float64  `json:"t"`
	Conn       int      `json:"conn"`
	CB         string   `json:"cb"`
	Answer     string   `json:"answer"`
	Name       string   `json:"name"`
	Value      string   `json:"value"`
	Addr       string   `json:"addr"`
	IP         string   `json:"ip"`
	N          int      `json:"n"`
	Size       int      `json:"size"`
	AfterSkip  bool     `json:"after_skip"`
	Skipped    bool     `json:"skipped"`
	BodyChunks int      `json:"bodychunks"`
	Actions    []string `json:"actions"`
	Verdict    string   `json:"verdict"`
	Leadspc    bool     `json:"leadspc"`
	Skip       bool     `json:"skip"`
	Protocol   string   `json:"protocol"`
	ActionBits string   `json:"action_bits"`
	raw        string
}

func (r milterRec) String() string { return r.raw }

// milterConn returns the log records of the milter connection (the last
// one) that has a record for which match is true. The milter's log lines
// are flushed at once, but filter-milter may still be closing the milter
// connection when the client is done, so it waits up to 2 s for the
// connection's "close".
func milterConn(t *testing.T, m *harness.PyMilter, match func(milterRec) bool) []milterRec {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		var all []milterRec
		f, err := os.Open(m.Proc.LogPath)
		if err != nil {
			t.Fatalf("milter log: %v", err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var r milterRec
			if json.Unmarshal(sc.Bytes(), &r) == nil && r.CB != "" {
				r.raw = sc.Text()
				all = append(all, r)
			}
		}
		f.Close()
		conn := -1
		for _, r := range all {
			if match(r) {
				conn = r.Conn
			}
		}
		var recs []milterRec
		closed := false
		for _, r := range all {
			if r.Conn == conn {
				recs = append(recs, r)
				closed = closed || r.CB == "close"
			}
		}
		if conn >= 0 && closed || time.Now().After(deadline) {
			if conn < 0 {
				t.Errorf("no connection in the milter log %s matches", m.Proc.LogPath)
			}
			return recs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fmtRecs(recs []milterRec) string {
	var b strings.Builder
	for _, r := range recs {
		b.WriteString("    " + r.raw + "\n")
	}
	return b.String()
}

// recsAfter returns the records after the first one for which match is
// true; there must be one.
func recsAfter(t *testing.T, recs []milterRec, match func(milterRec) bool) []milterRec {
	t.Helper()
	for i, r := range recs {
		if match(r) {
			return recs[i+1:]
		}
	}
	t.Errorf("the milter log of the connection lacks the record the check starts from")
	return nil
}

// noCallbacks fails when recs has a record of one of the callbacks.
func noCallbacks(t *testing.T, what string, recs []milterRec, cbs ...string) {
	t.Helper()
	for _, r := range recs {
		if slices.Contains(cbs, r.CB) {
			t.Errorf("%s: the milter still got callback %q: %s", what, r.CB, r.raw)
		}
	}
}

var messageCallbacks = []string{"mail", "rcpt", "data", "header", "eoh", "body", "eom"}

func isMail(addr string) func(milterRec) bool {
	return func(r milterRec) bool { return r.CB == "mail" && strings.Trim(r.Addr, "<>") == addr }
}

// ---------------------------------------------------------------------------
// Rows that are one message (swaks, or the raw client)

type msgRow struct {
	name      string
	listener  string   // default "milter"
	raw       bool     // the raw client instead of swaks
	from      string   // default alice+<scope>-<name>@test.example
	rcpts     []string // default bob+<scope>-<name>@test.example
	headers   []string // extra header fields
	body      string   // replaces the default body
	rcptReply map[string]string
	dataReply string    // exact reply to DATA when it is not 354
	end       string    // exact reply at the end of DATA; "" means any 250
	closed    bool      // (raw) the server closes the connection after the refusal
	delivered []string  // recipients that get the message; nil: nothing is delivered
	edits     []msgEdit // the delivered message is the sent one with these changes
	log       func(t *testing.T, recs []milterRec)
	minTime   time.Duration // the session takes at least this long
}

// sessionReplies is what the client saw in one transaction.
type sessionReplies struct {
	ehlo, mail, data, end string
	rcpt                  map[string]string
	closedAfter           string // raw client: the command after which the server closed
	transcript            string
	duration              time.Duration
}

func (rig *repliesRig) runMsgRows(t *testing.T, scope string, rows []msgRow) {
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) { rig.runMsgRow(t, scope, row) })
	}
}

func (rig *repliesRig) runMsgRow(t *testing.T, scope string, row msgRow) {
	id := scope + "-" + row.name
	if row.listener == "" {
		row.listener = "milter"
	}
	if row.from == "" {
		row.from = "alice+" + id + "@test.example"
	}
	if row.rcpts == nil {
		row.rcpts = []string{"bob+" + id + "@test.example"}
	}
	data := repliesMessage(id, row.headers...)
	if row.body != "" {
		data = withBody(data, row.body)
	}
	msg := harness.Message{Name: id, From: row.from, To: row.rcpts, Data: data}

	var got sessionReplies
	if row.raw {
		got = rig.rawSession(t, row.listener, harness.ClientHelo, msg)
	} else {
		r := rig.s.Send(t, row.listener, msg)
		got = sessionReplies{ehlo: r.Reply("EHLO"), mail: r.Reply("MAIL FROM:"), data: r.Reply("DATA"),
			end: r.EndOfDataReply(), rcpt: map[string]string{}, transcript: r.Output, duration: r.Duration}
		for _, rc := range row.rcpts {
			got.rcpt[rc] = r.Reply("RCPT TO:<" + rc + ">")
		}
	}
	t.Logf("%s via %s (%s client, %v): MAIL %q; RCPT %v; DATA %q; end of DATA %q%s", id, row.listener,
		map[bool]string{true: "raw", false: "swaks"}[row.raw], got.duration.Round(time.Millisecond), got.mail,
		got.rcpt, got.data, got.end, map[bool]string{true: "; closed after " + got.closedAfter, false: ""}[got.closedAfter != ""])

	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf(format+"\nclient transcript:\n%s", append(args, got.transcript)...)
	}
	if !strings.HasPrefix(got.mail, "250 ") {
		fail("MAIL FROM:<%s>: got %q, want 250", row.from, got.mail)
	}
	accepted := 0
	for _, rc := range row.rcpts {
		want, refused := row.rcptReply[rc]
		switch {
		case got.rcpt[rc] == "" && got.closedAfter != "" && !refused:
			// not sent: the server had closed the connection
		case refused && got.rcpt[rc] != want:
			fail("RCPT TO:<%s>: got %q, want %q", rc, got.rcpt[rc], want)
		case !refused && !strings.HasPrefix(got.rcpt[rc], "250 "):
			fail("RCPT TO:<%s>: got %q, want 250", rc, got.rcpt[rc])
		case !refused:
			accepted++
		}
	}
	if accepted > 0 && (got.closedAfter == "" || got.closedAfter == "end of DATA") {
		if row.dataReply != "" {
			if got.data != row.dataReply {
				fail("DATA: got %q, want %q", got.data, row.dataReply)
			}
		} else if !strings.HasPrefix(got.data, "354 ") {
			fail("DATA: got %q, want 354", got.data)
		} else if row.end != "" && got.end != row.end {
			fail("end of DATA: got %q, want %q", got.end, row.end)
		} else if row.end == "" && !strings.HasPrefix(got.end, "250 ") {
			fail("end of DATA: got %q, want 250", got.end)
		}
	}
	if row.closed && got.closedAfter == "" {
		fail("the server did not close the connection after the 421")
	} else if !row.closed && got.closedAfter != "" {
		fail("the server closed the connection after %s", got.closedAfter)
	}
	if row.minTime > 0 && got.duration < row.minTime {
		t.Errorf("the session took %v, want at least %v", got.duration, row.minTime)
	}

	if row.delivered == nil {
		rig.s.NoDeliveries(t, 300*time.Millisecond)
	} else {
		want := unchangedExpected(data)
		for _, e := range row.edits {
			e(want)
		}
		ds := rig.s.WaitDeliveries(t, len(row.delivered), 10*time.Second)
		var to []string
		for _, d := range ds {
			to = append(to, d.Rcpt)
			checkDelivery(t, d, row.from, want)
		}
		slices.Sort(to)
		wantTo := slices.Sorted(slices.Values(row.delivered))
		if !slices.Equal(to, wantTo) {
			t.Errorf("delivered to %v, want %v", to, wantTo)
		} else if !t.Failed() {
			t.Logf("delivered to %v, byte for byte as expected", to)
		}
	}
	if row.log != nil {
		m := rig.m
		if row.listener == "leadspc" {
			m = rig.lm
		}
		recs := milterConn(t, m, isMail(row.from))
		row.log(t, recs)
		if t.Failed() {
			t.Logf("milter log of the connection:\n%s", fmtRecs(recs))
		}
	}
}

// rawSession runs EHLO, MAIL, RCPT..., DATA and the message with the raw
// client, stopping where the server refuses or closes.
func (rig *repliesRig) rawSession(t *testing.T, listener, helo string, msg harness.Message) sessionReplies {
	start := time.Now()
	sc := harness.DialSMTP(t, rig.s.Port(listener))
	defer sc.Close()
	got := sessionReplies{rcpt: map[string]string{}}
	done := func(cmd string, r harness.SMTPReply) bool {
		if r.Code() == 421 || r.Err != nil {
			if closed, _ := sc.ClosedByServer(2 * time.Second); closed {
				got.closedAfter = cmd
			}
			return true
		}
		if r.Bare {
			t.Errorf("reply to %s ends in a bare LF: %q", cmd, r.Lines)
		}
		return false
	}
	finish := func() sessionReplies {
		got.transcript = sc.Transcript.String()
		got.duration = time.Since(start)
		return got
	}
	r := sc.Command("EHLO " + helo)
	if got.ehlo = r.String(); done("EHLO", r) {
		return finish()
	}
	r = sc.Command("MAIL FROM:<" + msg.From + ">")
	if got.mail = r.String(); done("MAIL", r) {
		return finish()
	}
	for _, rc := range msg.To {
		r = sc.Command("RCPT TO:<" + rc + ">")
		if got.rcpt[rc] = r.String(); done("RCPT TO:<"+rc+">", r) {
			return finish()
		}
	}
	r = sc.Command("DATA")
	if got.data = r.String(); done("DATA", r) || r.Code() != 354 {
		return finish()
	}
	r = sc.SendData(msg.Data)
	if got.end = r.String(); done("end of DATA", r) {
		return finish()
	}
	sc.Command("QUIT")
	return finish()
}

// ---------------------------------------------------------------------------
// Rows that are a scripted session (raw client): HELO, several transactions

type sessionStep struct {
	cmd    string // an SMTP command, or "" to send data (after a 354)
	data   []byte
	want   string // the exact reply (lines joined with "\n"); ending in "*": a prefix
	closed bool   // the server then closes the connection
}

type sessionDelivery struct {
	rcpt, sender string
	data         []byte
	edits        []msgEdit
}

type sessionRow struct {
	name      string
	src       string // the client's address: 127.0.0.1 unless set
	greeting  string // the reply to the connection; "" means a 220
	closed    bool   // the server closes the connection after the greeting
	steps     []sessionStep
	delivered []sessionDelivery
	conn      func(milterRec) bool // finds the milter connection
	log       func(t *testing.T, recs []milterRec)
}

func replyMatches(want, got string) bool {
	if p, ok := strings.CutSuffix(want, "*"); ok {
		return strings.HasPrefix(got, p)
	}
	return got == want
}

func (rig *repliesRig) runSessionRows(t *testing.T, rows []sessionRow) {
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			start := time.Now()
			sc := harness.DialSMTPFrom(t, rig.s.Port("milter"), row.src)
			defer sc.Close()
			greeting := row.greeting
			if greeting == "" {
				greeting = "220 *"
			}
			seen := []string{fmt.Sprintf("connect from %s → %q", cmp.Or(row.src, "127.0.0.1"), sc.Greeting.String())}
			if !replyMatches(greeting, sc.Greeting.String()) || sc.Greeting.Bare {
				t.Errorf("greeting: got %q (bare LF: %v), want %q", sc.Greeting.String(), sc.Greeting.Bare, greeting)
			}
			if row.closed {
				if closed, extra := sc.ClosedByServer(2 * time.Second); !closed {
					t.Errorf("after the greeting the server did not close the connection (it sent %q)", extra)
				} else {
					seen = append(seen, "connection closed by the server")
				}
			}
			for _, st := range row.steps {
				var r harness.SMTPReply
				what := st.cmd
				if st.cmd == "" {
					what = "end of DATA"
					r = sc.SendData(st.data)
				} else {
					r = sc.Command(st.cmd)
				}
				seen = append(seen, fmt.Sprintf("%s → %q", what, r.String()))
				if !replyMatches(st.want, r.String()) || r.Bare {
					t.Errorf("%s: got %q (bare LF: %v), want %q", what, r.String(), r.Bare, st.want)
				}
				if st.closed {
					if closed, extra := sc.ClosedByServer(2 * time.Second); !closed {
						t.Errorf("after %s the server did not close the connection (it sent %q)", what, extra)
					} else {
						seen = append(seen, "connection closed by the server")
					}
					break
				}
			}
			t.Logf("session (%v): %s", time.Since(start).Round(time.Millisecond), strings.Join(seen, "; "))
			if t.Failed() {
				t.Logf("client transcript:\n%s", sc.Transcript.String())
			}
			if len(row.delivered) == 0 {
				rig.s.NoDeliveries(t, 300*time.Millisecond)
			} else {
				ds := rig.s.WaitDeliveries(t, len(row.delivered), 10*time.Second)
				for _, d := range ds {
					i := slices.IndexFunc(row.delivered, func(w sessionDelivery) bool { return w.rcpt == d.Rcpt })
					if i < 0 {
						t.Errorf("unexpected delivery to %s: %s", d.Rcpt, d.Path)
						continue
					}
					w := row.delivered[i]
					want := unchangedExpected(w.data)
					for _, e := range w.edits {
						e(want)
					}
					checkDelivery(t, d, w.sender, want)
				}
				if !t.Failed() {
					t.Logf("%d deliveries, byte for byte as expected", len(ds))
				}
			}
			if row.log != nil {
				recs := milterConn(t, rig.m, row.conn)
				row.log(t, recs)
				if t.Failed() {
					t.Logf("milter log of the connection:\n%s", fmtRecs(recs))
				}
			}
		})
	}
}

// txSteps is MAIL, RCPT, DATA, the message and its 250.
func txSteps(from, rcpt string, data []byte) []sessionStep {
	return []sessionStep{
		{cmd: "MAIL FROM:<" + from + ">", want: "250 *"},
		{cmd: "RCPT TO:<" + rcpt + ">", want: "250 *"},
		{cmd: "DATA", want: "354 *"},
		{data: data, want: "250 *"},
	}
}

func concatSteps(parts ...[]sessionStep) []sessionStep { return slices.Concat(parts...) }

// ---------------------------------------------------------------------------
// Scopes

// connectScope: answers at connect. The actions milter decides by the
// client's address, so the client connects from 127.0.0.2 to 127.0.0.6.
func (rig *repliesRig) connectScope(t *testing.T) {
	conn := func(ip string) func(milterRec) bool {
		return func(r milterRec) bool { return r.CB == "connect" && r.IP == ip }
	}
	refused := func(name, ip, reply string) sessionRow {
		return sessionRow{
			name:     name,
			src:      ip,
			greeting: reply,
			// The refusal replaces the greeting. smtpd then keeps the
			// connection open and answers every command but QUIT itself
			// with 503 (RFC 5321 §3.1), without asking the filter again.
			steps: []sessionStep{
				{cmd: "EHLO " + harness.ClientHelo, want: smtpdNoHelo},
				{cmd: "MAIL FROM:<alice+connect-" + name + "@test.example>", want: smtpdNoHelo},
				{cmd: "QUIT", want: "221 *"},
			},
			conn: conn(ip),
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after a refusal at connect", recs, append([]string{"helo"}, messageCallbacks...)...)
			},
		}
	}
	acceptMsg := repliesMessage("connect-accept", "X-Test-Actions: addheader", "X-Test-Verdict: reject")
	discardMsg := repliesMessage("connect-discard")
	rig.runSessionRows(t, []sessionRow{
		refused("reject", "127.0.0.2", "550 5.7.1 connection rejected by actions milter"),
		refused("tempfail", "127.0.0.3", "451 4.7.1 connection temporarily rejected by actions milter"),
		{
			name: "421", src: "127.0.0.4", greeting: "421 4.7.0 connection refused by actions milter, closing", closed: true,
			conn: conn("127.0.0.4"),
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after 421 at connect", recs, append([]string{"helo"}, messageCallbacks...)...)
			},
		},
		{
			name: "accept", src: "127.0.0.5",
			steps: concatSteps(
				[]sessionStep{{cmd: "EHLO " + harness.ClientHelo, want: "250-*"}},
				txSteps("alice+connect-accept@test.example", "bob+connect-accept@test.example", acceptMsg),
				[]sessionStep{{cmd: "QUIT", want: "221 *"}},
			),
			delivered: []sessionDelivery{{rcpt: "bob+connect-accept@test.example", sender: "alice+connect-accept@test.example", data: acceptMsg}},
			conn:      conn("127.0.0.5"),
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after ACCEPT at connect", recs, append([]string{"helo"}, messageCallbacks...)...)
			},
		},
		{
			name: "discard", src: "127.0.0.6",
			steps: concatSteps(
				[]sessionStep{{cmd: "EHLO " + harness.ClientHelo, want: "250-*"}},
				txSteps("alice+connect-discard@test.example", "bob+connect-discard@test.example", discardMsg),
				[]sessionStep{{cmd: "QUIT", want: "221 *"}},
			),
			delivered: []sessionDelivery{{rcpt: "bob+connect-discard@test.example", sender: "alice+connect-discard@test.example", data: discardMsg}},
		},
	})
}

// heloScope: connection-scoped answers, given at HELO (the actions milter
// cannot know the HELO name at connect).
func (rig *repliesRig) heloScope(t *testing.T) {
	refused := func(name, helo, reply string) sessionRow {
		return sessionRow{
			name: name,
			steps: []sessionStep{
				{cmd: "EHLO " + helo, want: reply},
				// Every later command smtpd asks the filter about gets the
				// same reply: another EHLO, a HELO.
				{cmd: "EHLO " + harness.ClientHelo, want: reply},
				{cmd: "HELO " + harness.ClientHelo, want: reply},
				// MAIL never reaches the filter: smtpd refuses it itself
				// while no HELO/EHLO has succeeded (smtp_session.c,
				// smtp_check_mail_from: s->helo is empty). The client is
				// refused all the same, but not with the milter's reply.
				{cmd: "MAIL FROM:<alice+helo-" + name + "@test.example>", want: smtpdNoHelo},
				{cmd: "QUIT", want: "221 *"},
			},
			conn: func(r milterRec) bool { return r.CB == "helo" && r.Name == helo },
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after a refusal at HELO", recs, messageCallbacks...)
			},
		}
	}
	acceptMsg := repliesMessage("helo-accept", "X-Test-Actions: addheader", "X-Test-Verdict: reject")
	discardMsg := repliesMessage("helo-discard")
	rig.runSessionRows(t, []sessionRow{
		refused("reject", "helo-reject.example", "550 5.7.1 HELO rejected by actions milter"),
		refused("tempfail", "helo-tempfail.example", "451 4.7.1 HELO temporarily rejected by actions milter"),
		{
			name:  "421",
			steps: []sessionStep{{cmd: "EHLO helo-421.example", want: "421 4.7.0 HELO refused by actions milter, closing", closed: true}},
			conn:  func(r milterRec) bool { return r.CB == "helo" && r.Name == "helo-421.example" },
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after 421 at HELO", recs, messageCallbacks...)
			},
		},
		{
			// ACCEPT at HELO: the milter is done for the connection; the
			// message asks for a header and a reject, and must come through
			// unchanged.
			name: "accept",
			steps: concatSteps(
				[]sessionStep{{cmd: "EHLO helo-accept.example", want: "250-mx.test.example Hello helo-accept.example*"}},
				txSteps("alice+helo-accept@test.example", "bob+helo-accept@test.example", acceptMsg),
				[]sessionStep{{cmd: "QUIT", want: "221 *"}},
			),
			delivered: []sessionDelivery{{rcpt: "bob+helo-accept@test.example", sender: "alice+helo-accept@test.example", data: acceptMsg}},
			conn:      func(r milterRec) bool { return r.CB == "helo" && r.Name == "helo-accept.example" },
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after ACCEPT at HELO", recs, messageCallbacks...)
			},
		},
		{
			// DISCARD is not a HELO answer: it is ignored, and the message
			// of the session is delivered.
			name: "discard",
			steps: concatSteps(
				[]sessionStep{{cmd: "EHLO helo-discard.example", want: "250-mx.test.example Hello helo-discard.example*"}},
				txSteps("alice+helo-discard@test.example", "bob+helo-discard@test.example", discardMsg),
				[]sessionStep{{cmd: "QUIT", want: "221 *"}},
			),
			delivered: []sessionDelivery{{rcpt: "bob+helo-discard@test.example", sender: "alice+helo-discard@test.example", data: discardMsg}},
		},
	})
}

// mailScope: answers at MAIL FROM. After each, a second transaction in the
// same session must work (the milter is asked again: it adds X-Added).
func (rig *repliesRig) mailScope(t *testing.T) {
	second := func(name string) ([]sessionStep, sessionDelivery) {
		from, rcpt := "alice+mail-"+name+"@test.example", "bob+mail-"+name+"@test.example"
		msg := repliesMessage("mail-"+name+"-second", "X-Test-Actions: addheader")
		return txSteps(from, rcpt, msg), sessionDelivery{rcpt: rcpt, sender: from, data: msg, edits: []msgEdit{editAddHeader}}
	}
	ehlo := []sessionStep{{cmd: "EHLO " + harness.ClientHelo, want: "250-*"}}
	quit := []sessionStep{{cmd: "QUIT", want: "221 *"}}
	refused := func(name, reply string) sessionRow {
		sender := "mail-" + name + "@test.example"
		tx, d := second(name)
		return sessionRow{
			name:      name,
			steps:     concatSteps(ehlo, []sessionStep{{cmd: "MAIL FROM:<" + sender + ">", want: reply}}, tx, quit),
			delivered: []sessionDelivery{d},
			conn:      isMail(sender),
			log: func(t *testing.T, recs []milterRec) {
				rest := recsAfter(t, recs, isMail(sender))
				noCallbacks(t, "before the second MAIL", rest[:slices.IndexFunc(rest, func(r milterRec) bool { return r.CB == "mail" })+1], "rcpt", "data", "header", "eom")
				if slices.IndexFunc(rest, isMail(d.sender)) < 0 {
					t.Errorf("the milter did not get the second MAIL")
				}
			},
		}
	}
	acceptMsg := repliesMessage("mail-accept", "X-Test-Actions: addheader", "X-Test-Verdict: reject")
	discardMsg := repliesMessage("mail-discard")
	txA, dA := second("accept")
	txD, dD := second("discard")
	onlyMail := func(sender string) func(t *testing.T, recs []milterRec) {
		return func(t *testing.T, recs []milterRec) {
			rest := recsAfter(t, recs, isMail(sender))
			next := slices.IndexFunc(rest, func(r milterRec) bool { return r.CB == "mail" })
			if next < 0 {
				t.Errorf("the milter did not get the second MAIL")
				next = len(rest)
			}
			noCallbacks(t, "for the message it was done with at MAIL", rest[:next], "rcpt", "data", "header", "eoh", "body", "eom")
		}
	}
	rig.runSessionRows(t, []sessionRow{
		refused("reject", "550 5.7.1 sender rejected by actions milter"),
		refused("tempfail", "451 4.7.1 sender temporarily rejected by actions milter"),
		{
			name:  "421",
			steps: concatSteps(ehlo, []sessionStep{{cmd: "MAIL FROM:<mail-421@test.example>", want: "421 4.7.0 sender refused by actions milter, closing", closed: true}}),
			conn:  isMail("mail-421@test.example"),
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after 421 at MAIL", recsAfter(t, recs, isMail("mail-421@test.example")), messageCallbacks...)
			},
		},
		{
			// ACCEPT at MAIL: no more callbacks for this message (it asks
			// for a header and a reject, and comes through unchanged); the
			// next message of the session is the milter's again.
			name:      "accept",
			steps:     concatSteps(ehlo, txSteps("mail-accept@test.example", "bob+mail-accept-first@test.example", acceptMsg), txA, quit),
			delivered: []sessionDelivery{{rcpt: "bob+mail-accept-first@test.example", sender: "mail-accept@test.example", data: acceptMsg}, dA},
			conn:      isMail("mail-accept@test.example"),
			log:       onlyMail("mail-accept@test.example"),
		},
		{
			name: "discard",
			steps: concatSteps(ehlo, []sessionStep{
				{cmd: "MAIL FROM:<mail-discard@test.example>", want: "250 *"},
				{cmd: "RCPT TO:<bob+mail-discard-first@test.example>", want: "250 *"},
				{cmd: "DATA", want: "354 *"},
				{data: discardMsg, want: replyDiscarded},
			}, txD, quit),
			delivered: []sessionDelivery{dD},
			conn:      isMail("mail-discard@test.example"),
			log:       onlyMail("mail-discard@test.example"),
		},
	})
}

// rcptScope: answers at RCPT TO, for one recipient of two.
func (rig *repliesRig) rcptScope(t *testing.T) {
	ok := func(name string) string { return "bob+rcpt-" + name + "@test.example" }
	doneAfter := func(addr string) func(t *testing.T, recs []milterRec) {
		return func(t *testing.T, recs []milterRec) {
			noCallbacks(t, "after "+addr, recsAfter(t, recs, func(r milterRec) bool { return r.CB == "rcpt" && strings.Contains(r.Addr, addr) }),
				"rcpt", "data", "header", "eoh", "body", "eom")
		}
	}
	rig.runMsgRows(t, "rcpt", []msgRow{
		{
			name:      "reject",
			rcpts:     []string{"rcpt-reject@test.example", ok("reject")},
			rcptReply: map[string]string{"rcpt-reject@test.example": "550 5.7.1 recipient rejected by actions milter"},
			delivered: []string{ok("reject")},
		},
		{
			// REJECT without a reply of the milter's: the gateway's text.
			name:      "reject-plain",
			rcpts:     []string{"rcpt-reject-plain@test.example", ok("reject-plain")},
			rcptReply: map[string]string{"rcpt-reject-plain@test.example": replyRejectDefault},
			delivered: []string{ok("reject-plain")},
		},
		{
			name:      "tempfail",
			rcpts:     []string{ok("tempfail"), "rcpt-tempfail@test.example"},
			rcptReply: map[string]string{"rcpt-tempfail@test.example": "451 4.7.1 recipient temporarily rejected by actions milter"},
			delivered: []string{ok("tempfail")},
		},
		{
			name:      "421",
			raw:       true,
			rcpts:     []string{"rcpt-421@test.example", ok("421")},
			rcptReply: map[string]string{"rcpt-421@test.example": "421 4.7.0 recipient refused by actions milter, closing"},
			closed:    true,
		},
		{
			// ACCEPT at RCPT accepts the message for the milter: no more
			// callbacks (not even the next RCPT); its header and reject
			// requests are never read.
			name:      "accept",
			rcpts:     []string{"rcpt-accept@test.example", ok("accept")},
			headers:   []string{"X-Test-Actions: addheader", "X-Test-Verdict: reject"},
			delivered: []string{"rcpt-accept@test.example", ok("accept")},
			log:       doneAfter("rcpt-accept@"),
		},
		{
			// DISCARD at RCPT drops the whole message.
			name:  "discard",
			rcpts: []string{"rcpt-discard@test.example", ok("discard")},
			end:   replyDiscarded,
			log:   doneAfter("rcpt-discard@"),
		},
	})
}

// stageScope: refusals and ACCEPT from DATA, a header, end of headers and
// the body.
func (rig *repliesRig) stageScope(t *testing.T) {
	rig.runMsgRows(t, "stage", []msgRow{
		{name: "data-reject", from: "data-reject@test.example", dataReply: "550 5.7.1 DATA rejected by actions milter"},
		{name: "header-reject", headers: []string{"X-Test-Stage-Reject: header"}, end: "550 5.7.1 message rejected at header by actions milter",
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after REJECT from a header", recsAfter(t, recs, func(r milterRec) bool { return r.Answer == "REJECT 550 5.7.1" }),
					"header", "eoh", "body", "eom")
			}},
		{name: "eoh-reject", headers: []string{"X-Test-Stage-Reject: eoh"}, end: "550 5.7.1 message rejected at end of headers by actions milter",
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after REJECT from eoh", recsAfter(t, recs, func(r milterRec) bool { return r.CB == "eoh" }), "body", "eom")
			}},
		{name: "body-reject", headers: []string{"X-Test-Stage-Reject: body"}, end: "550 5.7.1 message rejected at body by actions milter",
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after REJECT from the body", recsAfter(t, recs, func(r milterRec) bool { return r.CB == "body" }), "body", "eom")
			}},
		{
			// ACCEPT from a header: the rest of the message is not sent,
			// the reject and the header it would have asked for never come.
			name:      "header-accept",
			headers:   []string{"X-Test-Stage-Accept: header", "X-Test-Actions: addheader", "X-Test-Verdict: reject"},
			delivered: []string{"bob+stage-header-accept@test.example"},
			log: func(t *testing.T, recs []milterRec) {
				noCallbacks(t, "after ACCEPT from a header", recsAfter(t, recs, func(r milterRec) bool { return r.Answer == "ACCEPT" }),
					"header", "eoh", "body", "eom")
			},
		},
	})
}

// eomScope: the verdicts at end of message.
func (rig *repliesRig) eomScope(t *testing.T) {
	verdict := func(v string) []string { return []string{"X-Test-Verdict: " + v} }
	rig.runMsgRows(t, "eom", []msgRow{
		{name: "continue", headers: verdict("continue"), delivered: []string{"bob+eom-continue@test.example"}},
		{name: "accept", headers: verdict("accept"), delivered: []string{"bob+eom-accept@test.example"}},
		{name: "reject", headers: verdict("reject"), end: "554 5.7.1 message rejected by actions milter"},
		{name: "tempfail", headers: verdict("tempfail"), end: "451 4.7.1 message temporarily rejected by actions milter"},
		{name: "reject-plain", headers: verdict("reject-plain"), end: replyRejectDefault},
		{name: "tempfail-plain", headers: verdict("tempfail-plain"), end: replyTempfailDefault},
		{name: "discard", headers: verdict("discard"), end: replyDiscarded},
		// The filter protocol carries one reply line: the three lines are
		// joined, and the client must get exactly this one line.
		{name: "reply-multi", raw: true, headers: verdict("reply-multi"), end: "550 5.7.1 line1 line2 line3"},
		{name: "reply-421", raw: true, headers: verdict("reply-421"), end: "421 4.7.0 closing connection by actions milter", closed: true},
		{name: "reply-noxcode", headers: verdict("reply-noxcode"), end: "550 plain text"},
	})
}

// modifyScope: the end-of-message modifications, default policies.
func (rig *repliesRig) modifyScope(t *testing.T) {
	actions := func(a string) []string { return []string{"X-Test-Actions: " + a} }
	to := func(name string) []string { return []string{"bob+modify-" + name + "@test.example"} }
	rig.runMsgRows(t, "modify", []msgRow{
		{name: "addheader", headers: actions("addheader"), delivered: to("addheader"), edits: []msgEdit{editAddHeader}},
		{name: "insheader", headers: actions("insheader"), delivered: to("insheader"), edits: []msgEdit{editInsHeader}},
		{name: "chgheader", headers: actions("chgheader"), delivered: to("chgheader"), edits: []msgEdit{editChgHeader}},
		{name: "delheader", headers: actions("delheader"), delivered: to("delheader"), edits: []msgEdit{editDelHeader}},
		{name: "chgheader2", headers: actions("chgheader2"), delivered: to("chgheader2"), edits: []msgEdit{editChgHeader2}},
		{name: "replbody", headers: actions("replbody"), delivered: to("replbody"), edits: []msgEdit{editReplBody}},
		{name: "folded", headers: actions("folded"), delivered: to("folded"), edits: []msgEdit{editFolded}},
		{
			name:      "all",
			headers:   actions("addheader,insheader,chgheader,delheader,chgheader2,replbody,folded"),
			delivered: to("all"),
			edits:     []msgEdit{editAddHeader, editInsHeader, editChgHeader, editDelHeader, editChgHeader2, editReplBody, editFolded},
		},
		{
			name: "progress", headers: actions("progress"), delivered: to("progress"), minTime: time.Second,
			log: func(t *testing.T, recs []milterRec) {
				if i := slices.IndexFunc(recs, func(r milterRec) bool { return r.CB == "eom" }); i < 0 || !slices.Contains(recs[i].Actions, "progress") {
					t.Errorf("the milter's EOM did not run its progress action")
				}
			},
		},
		{
			name: "skip", headers: actions("skip"), body: bigBody(), delivered: to("skip"),
			log: func(t *testing.T, recs []milterRec) {
				var bodies []milterRec
				eom := -1
				for i, r := range recs {
					switch r.CB {
					case "body":
						bodies = append(bodies, r)
					case "eom":
						eom = i
					}
				}
				for _, b := range bodies {
					if b.AfterSkip {
						t.Errorf("a body chunk came after SKIP: %s", b)
					}
				}
				if len(bodies) != 1 || bodies[0].Answer != "SKIP" || bodies[0].Size != 65535 {
					t.Errorf("want exactly one body chunk of 65535 bytes, answered SKIP; got %d body callbacks", len(bodies))
				}
				if eom < 0 || !recs[eom].Skipped || recs[eom].BodyChunks != 1 {
					t.Errorf("want the EOM after the SKIP (bodychunks=1, skipped); eom index %d", eom)
				}
			},
		},
		{name: "quarantine", headers: actions("quarantine"), delivered: to("quarantine"), edits: []msgEdit{editJunk}},
		{name: "chgfrom", headers: actions("chgfrom"), end: replyEnvelope},
		{name: "addrcpt", headers: actions("addrcpt"), end: replyEnvelope},
		{name: "addrcpt_par", headers: actions("addrcpt_par"), end: replyEnvelope},
		{name: "delrcpt", headers: actions("delrcpt"), rcpts: []string{"bob+modify-delrcpt@test.example", "carol+modify-delrcpt@test.example"}, end: replyEnvelope},
	})
}

// policyScope: the policy listener, -discard junk -quarantine reject
// -envelope-change ignore.
func (rig *repliesRig) policyScope(t *testing.T) {
	to := func(name string) []string { return []string{"bob+policy-" + name + "@test.example"} }
	rows := []msgRow{
		{
			name: "rcpt-discard-junk", rcpts: []string{"rcpt-discard@test.example", "bob+policy-rcpt-discard-junk@test.example"},
			delivered: []string{"rcpt-discard@test.example", "bob+policy-rcpt-discard-junk@test.example"}, edits: []msgEdit{editJunk},
		},
		{name: "mail-discard-junk", from: "mail-discard@test.example", delivered: to("mail-discard-junk"), edits: []msgEdit{editJunk}},
		{name: "eom-discard-junk", headers: []string{"X-Test-Verdict: discard"}, delivered: to("eom-discard-junk"), edits: []msgEdit{editJunk}},
		{name: "quarantine-reject", headers: []string{"X-Test-Actions: quarantine"}, end: replyQuarantined},
		{name: "chgfrom-ignore", headers: []string{"X-Test-Actions: chgfrom"}, delivered: to("chgfrom-ignore")},
		{name: "addrcpt-ignore", headers: []string{"X-Test-Actions: addrcpt"}, delivered: to("addrcpt-ignore")},
		{name: "addrcpt_par-ignore", headers: []string{"X-Test-Actions: addrcpt_par"}, delivered: to("addrcpt_par-ignore")},
		{
			name: "delrcpt-ignore", headers: []string{"X-Test-Actions: delrcpt"},
			rcpts:     []string{"bob+policy-delrcpt-ignore@test.example", "carol+policy-delrcpt-ignore@test.example"},
			delivered: []string{"bob+policy-delrcpt-ignore@test.example", "carol+policy-delrcpt-ignore@test.example"},
		},
	}
	for i := range rows {
		rows[i].listener = "policy"
	}
	rig.runMsgRows(t, "policy", rows)
}

// leadspcScope: the same message and changes through a milter without and
// with SMFIP_HDR_LEADSPC. The values the milter receives differ by the one
// leading space; the delivered messages are the same, because the milter in
// --leadspc mode supplies its values with their own leading space.
func (rig *repliesRig) leadspcScope(t *testing.T) {
	headers := []string{
		"X-Space: one space", "X-Two:  two spaces", "X-NoSpace:none", "X-Tab:\ttab", "X-Fold: a\n b",
		"X-Test-Actions: addheader,insheader,chgheader,chgheader2,folded",
	}
	edits := []msgEdit{editAddHeader, editInsHeader, editChgHeader, editChgHeader2, editFolded}
	values := func(leadspc bool) map[string]string {
		if leadspc {
			return map[string]string{"X-Space": " one space", "X-Two": "  two spaces", "X-NoSpace": "none", "X-Tab": "\ttab", "X-Fold": " a\n b"}
		}
		return map[string]string{"X-Space": "one space", "X-Two": " two spaces", "X-NoSpace": "none", "X-Tab": "\ttab", "X-Fold": "a\n b"}
	}
	check := func(leadspc bool) func(t *testing.T, recs []milterRec) {
		return func(t *testing.T, recs []milterRec) {
			neg := slices.IndexFunc(recs, func(r milterRec) bool { return r.CB == "negotiate" })
			if neg < 0 || recs[neg].Leadspc != leadspc || !recs[neg].Skip {
				t.Errorf("negotiation: want HDR_LEADSPC %v and SKIP", leadspc)
			}
			want := values(leadspc)
			for _, r := range recs {
				if w, ok := want[r.Name]; ok && r.CB == "header" {
					if r.Value != w {
						t.Errorf("the milter got %s %q, want %q", r.Name, r.Value, w)
					}
					delete(want, r.Name)
				}
			}
			if len(want) > 0 {
				t.Errorf("the milter never got %v", want)
			}
		}
	}
	rig.runMsgRows(t, "leadspc", []msgRow{
		{name: "without", headers: headers, delivered: []string{"bob+leadspc-without@test.example"}, edits: edits, log: check(false)},
		{name: "with", listener: "leadspc", headers: headers, delivered: []string{"bob+leadspc-with@test.example"}, edits: edits, log: check(true)},
	})
}
