package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/mail"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/metrics"
	"github.com/filter-milter/filter-milter/milter"
)

// testOptions are the test command's own flags: the SMTP session to play.
type testOptions struct {
	From       string
	Rcpts      []string
	ClientIP   string
	ClientName string
	Helo       string
	Auth       string
	JSON       bool
	Output     string
	Message    string
}

// runTest plays smtpd against the real gateway, in process: the filter
// protocol handshake, the reports and requests smtpd sends for one SMTP
// session, the message as data lines, commit. The milters are the
// configured ones, for real. It prints each milter's answers per stage,
// the changes they asked for, the verdict and a diff of the message.
// It exits 0 when the message would be accepted, 1 when it would be
// refused, 2 on a usage or configuration error.
func runTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("filter-milter test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	s := defaultSettings()
	s.LogLevel = zapcore.ErrorLevel // the gateway's log from info up is part of the result
	addFlags(fs, &s)
	var t testOptions
	fs.StringVar(&t.From, "from", "", "envelope sender; default: the address in the message's From: header")
	fs.Var((*specList)(&t.Rcpts), "rcpt", "envelope recipient, repeat for several; default: the addresses in To: and Cc:")
	fs.StringVar(&t.ClientIP, "client-ip", "127.0.0.1", "the SMTP client's address")
	fs.StringVar(&t.ClientName, "client-name", "", "the client's verified reverse DNS name; default: localhost for a loopback address, none otherwise")
	fs.StringVar(&t.Helo, "helo", "localhost", "the client's EHLO name")
	fs.StringVar(&t.Auth, "auth", "", "the user the client authenticated as (AUTH PLAIN); default: not authenticated")
	fs.BoolVar(&t.JSON, "json", false, "print the result as one JSON object")
	fs.StringVar(&t.Output, "o", "", "write the message as the milters left it to this file")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: filter-milter test [-config FILE] [flags] [--from ADDR] [--rcpt ADDR]... [--client-ip IP]\n"+
			"                          [--helo NAME] [--auth USER] [--json] [-o FILE] MESSAGE.eml\n\n"+
			"Runs MESSAGE.eml (\"-\": standard input) through the configured milters as smtpd would, without smtpd,\n"+
			"and prints each milter's answers, the changes they asked for, the verdict and a diff of the message.\n"+
			"Exit status: 0 accepted, 1 refused, 2 usage or configuration error.\n\nflags:\n")
		fs.PrintDefaults()
	}
	// Flags may come before and after the message's name.
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return reportParseError(err, stderr)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if err := s.applyConfig(fs); err != nil {
		fmt.Fprintf(stderr, "filter-milter: %v\n", err)
		return exitUsage
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitUsage
	}
	t.Message = pos[0]
	milters, err := s.milterConfigs()
	if err != nil {
		fmt.Fprintf(stderr, "filter-milter test: %v\n", err)
		return exitUsage
	}
	msg, err := readMessage(t.Message)
	if err != nil {
		fmt.Fprintf(stderr, "filter-milter test: %v\n", err)
		return exitUsage
	}
	if err := t.envelope(msg); err != nil {
		fmt.Fprintf(stderr, "filter-milter test: %v\n", err)
		return exitUsage
	}
	// The gateway logs to stderr at -log-level, and from info up into the
	// result, where its warnings (a milter that failed, a refused header
	// change) stand next to what they explain.
	captured, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(zapcore.NewTee(newLogger(s.LogLevel).Core(), captured))
	defer func() { _ = log.Sync() }()

	res, err := playSession(&s, milters, &t, msg, log)
	if res != nil {
		res.Log = []string{}
		for _, e := range logs.All() {
			if e.Message == "registered with smtpd" {
				continue // every run says so
			}
			res.Log = append(res.Log, formatEntry(e))
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "filter-milter test: %v\n", err)
		return exitFailure
	}
	switch {
	case t.Output != "" && res.delivered:
		if err := os.WriteFile(t.Output, joinLines(res.after), 0o644); err != nil {
			fmt.Fprintf(stderr, "filter-milter test: %v\n", err)
			return exitUsage
		}
	case t.Output != "":
		fmt.Fprintf(stderr, "filter-milter test: %s not written: the message would not be queued\n", t.Output)
	}
	if t.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(res); err != nil {
			fmt.Fprintf(stderr, "filter-milter test: %v\n", err)
			return exitFailure
		}
	} else {
		res.print(stdout)
	}
	if res.Verdict.Decision != "accept" {
		return exitFailure
	}
	return exitOK
}

// message is the file, as the lines an SMTP client sends (line ends
// removed, not dot-stuffed).
type message struct {
	lines    [][]byte
	mboxFrom string // an mbox "From " line dropped from the top
}

func readMessage(path string) (*message, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	m := &message{}
	if len(data) > 0 {
		data = bytes.TrimSuffix(data, []byte("\n"))
		for _, l := range bytes.Split(data, []byte("\n")) {
			m.lines = append(m.lines, bytes.TrimSuffix(l, []byte("\r")))
		}
	}
	if len(m.lines) > 0 && bytes.HasPrefix(m.lines[0], []byte("From ")) {
		m.mboxFrom = string(m.lines[0])
		m.lines = m.lines[1:]
	}
	return m, nil
}

// header returns the unfolded values of the header fields named name.
func (m *message) header(name string) []string {
	var out []string
	cur := -1
	for _, l := range m.lines {
		if len(l) == 0 {
			break
		}
		if (l[0] == ' ' || l[0] == '\t') && cur >= 0 {
			out[cur] += " " + strings.TrimSpace(string(l))
			continue
		}
		cur = -1
		if n, v, ok := strings.Cut(string(l), ":"); ok && strings.EqualFold(strings.TrimSpace(n), name) {
			out = append(out, strings.TrimSpace(v))
			cur = len(out) - 1
		}
	}
	return out
}

// envelope fills in the sender and recipients from the message when they
// were not given, and checks the client's address.
func (t *testOptions) envelope(m *message) error {
	if _, err := netip.ParseAddr(t.ClientIP); err != nil {
		return fmt.Errorf("--client-ip %q: %v", t.ClientIP, err)
	}
	if t.From == "" {
		for _, v := range m.header("From") {
			if a, err := mail.ParseAddress(v); err == nil {
				t.From = a.Address
				break
			}
		}
	}
	if len(t.Rcpts) == 0 {
		for _, h := range []string{"To", "Cc"} {
			for _, v := range m.header(h) {
				if as, err := mail.ParseAddressList(v); err == nil {
					for _, a := range as {
						t.Rcpts = append(t.Rcpts, a.Address)
					}
				}
			}
		}
	}
	if len(t.Rcpts) == 0 {
		return errors.New("no recipient: give --rcpt ADDRESS (the message has no To: or Cc: address)")
	}
	for _, a := range append([]string{t.From}, t.Rcpts...) {
		if strings.ContainsAny(a, "<>|\r\n ") {
			return fmt.Errorf("address %q: give it bare, without <>, spaces or '|'", a)
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// The result

// testResult is what test prints, and its JSON form.
type testResult struct {
	Message  string        `json:"message"`
	Envelope testEnvelope  `json:"envelope"`
	Commands []commandStep `json:"commands"`
	Milters  []*milterLog  `json:"milters"`
	Verdict  verdict       `json:"verdict"`
	Changed  bool          `json:"changed"`
	Diff     string        `json:"diff"`
	Log      []string      `json:"log"` // the gateway's log lines, info and up

	delivered bool
	before    [][]byte
	after     [][]byte
	notes     []string
}

type testEnvelope struct {
	ClientIP   string   `json:"client_ip"`
	ClientName string   `json:"client_name,omitempty"`
	Helo       string   `json:"helo"`
	Auth       string   `json:"auth,omitempty"`
	From       string   `json:"from"`
	Rcpts      []string `json:"rcpts"`
}

// commandStep is one filter request smtpd would send and the gateway's
// answer to it.
type commandStep struct {
	Command  string `json:"command"`
	Decision string `json:"decision"` // proceed, reject, disconnect
	Reply    string `json:"reply,omitempty"`
}

// verdict is what becomes of the message.
type verdict struct {
	Decision string `json:"decision"` // accept, reject, tempfail, disconnect
	Reply    string `json:"reply,omitempty"`
	Stage    string `json:"stage"` // the command that decided: commit for the message itself
}

type milterLog struct {
	Name          string     `json:"name"`
	Replies       []stageLog `json:"replies"`
	Errors        []errorLog `json:"errors,omitempty"`
	Modifications []modLog   `json:"modifications,omitempty"`
}

// stageLog is a run of identical answers at one stage (one per body
// chunk; the header stage is one answer for all its fields).
type stageLog struct {
	Stage   string  `json:"stage"`
	Verdict string  `json:"verdict"`
	Code    int     `json:"code,omitempty"`
	Reply   string  `json:"reply,omitempty"`
	Count   int     `json:"count"`
	TookMS  float64 `json:"took_ms"`
}

type errorLog struct {
	Stage string `json:"stage"`
	Kind  string `json:"kind"`
	Error string `json:"error"`
}

type modLog struct {
	Kind   string `json:"kind"`
	Name   string `json:"name,omitempty"`
	Value  string `json:"value,omitempty"`
	Index  int    `json:"index,omitempty"`
	Addr   string `json:"addr,omitempty"`
	Args   string `json:"args,omitempty"`
	Reason string `json:"reason,omitempty"`
	Bytes  int    `json:"bytes,omitempty"`
}

// recorder is the gateway observer of the test command.
type recorder struct {
	mu      sync.Mutex
	milters []*milterLog
	byName  map[string]*milterLog
}

func newRecorder(ms []milter.Config) *recorder {
	r := &recorder{byName: map[string]*milterLog{}}
	for _, m := range ms {
		if r.byName[m.Name] == nil {
			l := &milterLog{Name: m.Name, Replies: []stageLog{}}
			r.milters = append(r.milters, l)
			r.byName[m.Name] = l
		}
	}
	return r
}

func (r *recorder) milter(name string) *milterLog {
	l := r.byName[name]
	if l == nil {
		l = &milterLog{Name: name, Replies: []stageLog{}}
		r.milters = append(r.milters, l)
		r.byName[name] = l
	}
	return l
}

func (r *recorder) SessionOpened(string) {}
func (r *recorder) SessionClosed(string) {}

func (r *recorder) MilterReply(_, name, stage string, v milter.Verdict, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.milter(name)
	e := stageLog{Stage: stage, Verdict: v.Kind.String(), Code: v.Code, Reply: v.Reply, Count: 1, TookMS: float64(took) / float64(time.Millisecond)}
	if n := len(l.Replies); n > 0 {
		last := &l.Replies[n-1]
		if last.Stage == e.Stage && last.Verdict == e.Verdict && last.Reply == e.Reply {
			last.Count++
			last.TookMS += e.TookMS
			return
		}
	}
	l.Replies = append(l.Replies, e)
}

func (r *recorder) MilterError(_, name, stage string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.milter(name)
	l.Errors = append(l.Errors, errorLog{Stage: stage, Kind: milter.ErrorKind(err), Error: err.Error()})
}

func (r *recorder) Modifications(_, name string, mods []milter.Modification) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.milter(name)
	for _, m := range mods {
		l.Modifications = append(l.Modifications, modLog{Kind: m.Kind.String(), Name: m.Name, Value: m.Value, Index: m.Index,
			Addr: m.Addr, Args: m.Args, Reason: m.Reason, Bytes: len(m.Body)})
	}
}

func (r *recorder) MessageDone(string, string, string, string, int) {}
func (r *recorder) MessageBuffered(string, int64, bool)             {}

var _ gateway.Observer = (*recorder)(nil)

// ---------------------------------------------------------------------------
// Playing smtpd

// player is smtpd's side of the filter protocol, version 0.7 (OpenSMTPD
// 7.4 and later), for one SMTP session.
type player struct {
	in      io.Writer
	lines   chan string
	readErr chan error
	sid     string
	wait    time.Duration // the longest the gateway may take to answer
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (p *player) send(line string) error {
	_, err := io.WriteString(p.in, line+"\n")
	return err
}

func stamp() string {
	now := time.Now()
	return fmt.Sprintf("%d.%06d", now.Unix(), now.Nanosecond()/1000)
}

func (p *player) report(event string, fields ...string) error {
	return p.send(strings.Join(append([]string{"report", "0.7", stamp(), "smtp-in", event, p.sid}, fields...), "|"))
}

func (p *player) filterLine(phase, token, param string) string {
	return strings.Join([]string{"filter", "0.7", stamp(), "smtp-in", phase, p.sid, token, param}, "|")
}

// read returns the gateway's next line.
func (p *player) read() (string, error) {
	select {
	case l, ok := <-p.lines:
		if !ok {
			err := <-p.readErr
			if err == nil {
				err = io.EOF
			}
			return "", fmt.Errorf("the gateway stopped writing: %w", err)
		}
		return l, nil
	case <-time.After(p.wait):
		return "", fmt.Errorf("no answer from the gateway within %v", p.wait)
	}
}

// request sends one filter request and returns the gateway's decision.
func (p *player) request(phase, param string) (string, string, error) {
	token := randomID()
	if err := p.send(p.filterLine(phase, token, param)); err != nil {
		return "", "", err
	}
	l, err := p.read()
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", phase, err)
	}
	rest, ok := strings.CutPrefix(l, "filter-result|"+p.sid+"|"+token+"|")
	if !ok {
		return "", "", fmt.Errorf("%s: unexpected line from the gateway: %q", phase, l)
	}
	decision, reply, _ := strings.Cut(rest, "|")
	return decision, reply, nil
}

// playSession runs the message through the gateway.
func playSession(s *settings, milters []milter.Config, t *testOptions, m *message, log *zap.Logger) (*testResult, error) {
	rec := newRecorder(milters)
	cfg := s.gatewayConfig(milters, log)
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
	p := &player{in: inW, lines: make(chan string, 1024), readErr: make(chan error, 1), sid: randomID(),
		wait: s.ConnectTimeout + s.CommandTimeout + s.ContentTimeout + 30*time.Second}
	go func() {
		br := bufio.NewReaderSize(outR, 1<<20)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				p.readErr <- err
				close(p.lines)
				return
			}
			p.lines <- strings.TrimSuffix(l, "\n")
		}
	}()

	res := &testResult{
		Message:  t.Message,
		Envelope: testEnvelope{ClientIP: t.ClientIP, Helo: t.Helo, Auth: t.Auth, From: t.From, Rcpts: t.Rcpts},
		Commands: []commandStep{},
		before:   m.lines,
	}
	if m.mboxFrom != "" {
		res.notes = append(res.notes, fmt.Sprintf("dropped the mbox separator line %q", m.mboxFrom))
	}
	err := p.session(s, t, m, res)
	_ = inW.Close()
	// Drain what is left so that the gateway can finish, then wait for it:
	// every milter answer has reached the recorder once Run returns.
	go func() {
		for range p.lines {
		}
	}()
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
		res.Diff = unifiedDiff(res.before, res.after, t.Message+" (as sent)", t.Message+" (as the milters left it)")
		res.Changed = res.Diff != ""
	}
	return res, nil
}

// session plays one SMTP session as smtpd 7.4 reports and filters it. It
// stops where smtpd would: a refused connect, HELO, MAIL or DATA, no
// recipient accepted.
func (p *player) session(s *settings, t *testOptions, m *message, res *testResult) error {
	host := s.Hostname
	if host == "" {
		host, _ = os.Hostname()
		if host == "" {
			host = "localhost"
		}
	}
	for _, l := range []string{"config|smtpd-version|7.4.0", "config|protocol|0.7", "config|smtp-session-timeout|300",
		"config|subsystem|smtp-in", "config|admd|" + host, "config|ready"} {
		if err := p.send(l); err != nil {
			return err
		}
	}
	for {
		l, err := p.read()
		if err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
		if l == "register|ready" {
			break
		}
	}

	ip, _ := netip.ParseAddr(t.ClientIP)
	ip = ip.Unmap()
	rdns, fcrdns := "<unknown>", "error"
	switch {
	case t.ClientName != "":
		rdns, fcrdns = t.ClientName, "pass"
	case ip.IsLoopback():
		rdns, fcrdns = "localhost", "pass"
	}
	if rdns != "<unknown>" {
		res.Envelope.ClientName = rdns
	}
	src := netip.AddrPortFrom(ip, 40000).String()
	dest := "127.0.0.1:25"
	connectAddr := ip.String()
	if ip.Is6() {
		dest = "[::1]:25"
		connectAddr = "[" + ip.String() + "]"
	}
	msgid := randomID()[:8]

	step := func(command, phase, param string) (bool, error) {
		d, reply, err := p.request(phase, param)
		if err != nil {
			return false, err
		}
		res.Commands = append(res.Commands, commandStep{Command: command, Decision: d, Reply: reply})
		if d != "proceed" {
			res.Verdict = verdict{Decision: metrics.Verdict(d, reply), Reply: reply, Stage: command}
			return false, nil
		}
		return true, nil
	}
	end := func(events ...[]string) error {
		for _, e := range events {
			if err := p.report(e[0], e[1:]...); err != nil {
				return err
			}
		}
		return p.report("link-disconnect")
	}

	if err := p.report("link-connect", rdns, fcrdns, src, dest); err != nil {
		return err
	}
	if ok, err := step(fmt.Sprintf("connect from %s [%s]", rdns, ip), "connect", rdns+"|"+connectAddr); !ok {
		if err != nil {
			return err
		}
		return end()
	}
	if err := p.report("link-greeting", host); err != nil {
		return err
	}
	if err := p.report("protocol-client", "EHLO "+t.Helo); err != nil {
		return err
	}
	if ok, err := step("EHLO "+t.Helo, "ehlo", t.Helo); !ok {
		if err != nil {
			return err
		}
		return end()
	}
	if err := p.report("link-identify", "EHLO", t.Helo); err != nil {
		return err
	}
	if t.Auth != "" {
		if err := p.report("protocol-client", "AUTH PLAIN ********"); err != nil {
			return err
		}
		if err := p.report("link-auth", "pass", t.Auth); err != nil {
			return err
		}
	}
	mailCmd := "MAIL FROM:<" + t.From + ">"
	if err := p.report("protocol-client", mailCmd); err != nil {
		return err
	}
	if ok, err := step(mailCmd, "mail-from", t.From); !ok {
		if err != nil {
			return err
		}
		return end()
	}
	if err := p.report("tx-begin", msgid); err != nil {
		return err
	}
	if err := p.report("tx-mail", msgid, "ok", t.From); err != nil {
		return err
	}
	accepted := 0
	for _, r := range t.Rcpts {
		cmd := "RCPT TO:<" + r + ">"
		if err := p.report("protocol-client", cmd); err != nil {
			return err
		}
		d, reply, err := p.request("rcpt-to", r)
		if err != nil {
			return err
		}
		res.Commands = append(res.Commands, commandStep{Command: cmd, Decision: d, Reply: reply})
		switch d {
		case "proceed":
			accepted++
			if err := p.report("tx-rcpt", msgid, "ok", r); err != nil {
				return err
			}
		case "disconnect":
			res.Verdict = verdict{Decision: metrics.Verdict(d, reply), Reply: reply, Stage: cmd}
			return end([]string{"tx-rollback", msgid}, []string{"tx-reset", msgid})
		default:
			if err := p.report("tx-rcpt", msgid, "permfail", r); err != nil {
				return err
			}
			res.Verdict = verdict{Decision: metrics.Verdict(d, reply), Reply: reply, Stage: cmd}
		}
	}
	if accepted == 0 {
		return end([]string{"tx-rollback", msgid}, []string{"tx-reset", msgid})
	}
	if err := p.report("protocol-client", "DATA"); err != nil {
		return err
	}
	if ok, err := step("DATA", "data", ""); !ok {
		if err != nil {
			return err
		}
		return end([]string{"tx-rollback", msgid}, []string{"tx-reset", msgid})
	}
	if err := p.report("tx-data", msgid, "ok"); err != nil {
		return err
	}

	// The message, dot-stuffed as the client sends it and smtpd passes it
	// on, all lines under one token, then ".".
	token := randomID()
	size := 0
	var batch bytes.Buffer
	for _, l := range m.lines {
		batch.WriteString(p.filterLine("data-line", token, ""))
		if len(l) > 0 && l[0] == '.' {
			batch.WriteByte('.')
		}
		batch.Write(l)
		batch.WriteByte('\n')
		size += len(l) + 2
		if batch.Len() > 64<<10 {
			if _, err := p.in.Write(batch.Bytes()); err != nil {
				return err
			}
			batch.Reset()
		}
	}
	batch.WriteString(p.filterLine("data-line", token, ".") + "\n")
	if _, err := p.in.Write(batch.Bytes()); err != nil {
		return err
	}
	prefix := "filter-dataline|" + p.sid + "|" + token + "|"
	var after [][]byte
	for {
		l, err := p.read()
		if err != nil {
			return fmt.Errorf("data: %w", err)
		}
		line, ok := strings.CutPrefix(l, prefix)
		if !ok {
			return fmt.Errorf("data: unexpected line from the gateway: %q", l)
		}
		if line == "." {
			break
		}
		after = append(after, []byte(strings.TrimPrefix(line, ".")))
	}
	if err := p.report("protocol-client", "."); err != nil {
		return err
	}
	ok, err := step("end of DATA", "commit", "")
	if err != nil {
		return err
	}
	if !ok {
		return end([]string{"tx-rollback", msgid}, []string{"tx-reset", msgid})
	}
	res.Verdict = verdict{Decision: "accept", Stage: "end of DATA"}
	res.delivered = true
	res.after = after
	return end([]string{"tx-commit", msgid, fmt.Sprint(size)}, []string{"tx-reset", msgid})
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

func joinLines(lines [][]byte) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// ---------------------------------------------------------------------------
// Printing

func (r *testResult) print(w io.Writer) {
	e := r.Envelope
	fmt.Fprintf(w, "message %s: %d lines\n", r.Message, len(r.before))
	for _, n := range r.notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	client := e.ClientIP
	if e.ClientName != "" {
		client = e.ClientName + " [" + e.ClientIP + "]"
	}
	fmt.Fprintf(w, "session: client %s, EHLO %s", client, e.Helo)
	if e.Auth != "" {
		fmt.Fprintf(w, ", authenticated as %s", e.Auth)
	}
	fmt.Fprintf(w, ", MAIL FROM:<%s>, RCPT TO:<%s>\n", e.From, strings.Join(e.Rcpts, ">, <"))

	fmt.Fprintf(w, "\nsmtpd's requests and filter-milter's answers:\n")
	for _, c := range r.Commands {
		fmt.Fprintf(w, "  %-40s %s", c.Command, c.Decision)
		if c.Reply != "" {
			fmt.Fprintf(w, " %q", c.Reply)
		}
		fmt.Fprintln(w)
	}

	for _, m := range r.Milters {
		fmt.Fprintf(w, "\nmilter %s:\n", m.Name)
		if len(m.Replies) == 0 && len(m.Errors) == 0 {
			fmt.Fprintf(w, "  no answer recorded: not reached, or it could not be opened (see the gateway's log below)\n")
		}
		for _, st := range m.Replies {
			label := st.Stage
			if st.Count > 1 {
				label = fmt.Sprintf("%s ×%d", st.Stage, st.Count)
			}
			fmt.Fprintf(w, "  %-12s %-9s %9.3fms", label, st.Verdict, st.TookMS)
			if st.Reply != "" {
				fmt.Fprintf(w, "  %q", st.Reply)
			}
			fmt.Fprintln(w)
		}
		for _, e := range m.Errors {
			fmt.Fprintf(w, "  %-12s ERROR (%s): %s\n", e.Stage, e.Kind, e.Error)
		}
		if len(m.Modifications) > 0 {
			fmt.Fprintf(w, "  modifications:\n")
			for _, mod := range m.Modifications {
				fmt.Fprintf(w, "    %s\n", mod.describe())
			}
		}
	}

	if len(r.Log) > 0 {
		fmt.Fprintf(w, "\ngateway log:\n")
		for _, l := range r.Log {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}

	fmt.Fprintf(w, "\nverdict: %s", strings.ToUpper(r.Verdict.Decision))
	if r.Verdict.Reply != "" {
		fmt.Fprintf(w, " %s", r.Verdict.Reply)
	}
	if r.Verdict.Stage != "" {
		fmt.Fprintf(w, " (at %s)", r.Verdict.Stage)
	}
	fmt.Fprintln(w)
	switch {
	case !r.delivered:
		fmt.Fprintf(w, "the message would not be queued; nothing to compare\n")
	case !r.Changed:
		fmt.Fprintf(w, "the message is unchanged\n")
	default:
		fmt.Fprintf(w, "\n%s", r.Diff)
	}
}

func (m modLog) describe() string {
	hv := func() string { return strings.ReplaceAll(m.Value, "\n", "\n        ") }
	switch m.Kind {
	case "addheader":
		return fmt.Sprintf("add header      %s:%s", m.Name, hv())
	case "insheader":
		return fmt.Sprintf("insert header   at %d: %s:%s", m.Index, m.Name, hv())
	case "chgheader":
		if m.Value == "" {
			return fmt.Sprintf("delete header   %s #%d", m.Name, m.Index)
		}
		return fmt.Sprintf("change header   %s #%d to:%s", m.Name, m.Index, hv())
	case "replbody":
		return fmt.Sprintf("replace body    (%d bytes)", m.Bytes)
	case "addrcpt":
		return strings.TrimSpace(fmt.Sprintf("add recipient   %s %s", m.Addr, m.Args))
	case "delrcpt":
		return fmt.Sprintf("remove recipient %s", m.Addr)
	case "chgfrom":
		return strings.TrimSpace(fmt.Sprintf("change sender   %s %s", m.Addr, m.Args))
	case "quarantine":
		return fmt.Sprintf("quarantine      %q", m.Reason)
	}
	return m.Kind
}
