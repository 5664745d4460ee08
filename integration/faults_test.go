//go:build integration

package integration

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// The fault scenarios: real OpenSMTPD, filter-milter, and milters that
// die, hang, talk garbage or are not there at all, a few hundred SMTP
// sessions each from harness.RunLoad. Each scenario asserts that every
// session was answered as configured (the default action when a milter
// fails, the milter's verdict otherwise), that no message accepted with
// 250 was lost, none was altered beyond what the milter was configured to
// add, none was delivered twice or delivered though refused, and that the
// filter process never exited (smtpd dies with its filter: no "lost
// processor" and no "exited abnormally" in smtpd's log).
//
// Where a timeout is the fault (a milter that hangs or sends half a
// packet), filter-milter runs with 2 s connect, command and content
// timeouts, so that hangs resolve fast. (Not 1 s: libmilter, under
// pymilter, runs callbacks on a worker pool that stalls every session for
// up to a second when all its workers are busy, which they are once
// callbacks hang; a 1 s timeout then also fires for calls that do not
// hang.) Where the fault is immediate (a milter that dies, is killed, is
// not there, closes), the timeouts are 10 s, so that a loaded machine
// cannot turn a slow answer into a spurious default action.

const (
	// faultShort is the timeout where a timeout is the fault.
	faultShort = 2 * time.Second
	// faultLong is the timeout everywhere else.
	faultLong = 10 * time.Second
	// faultMargin is how much longer than its timeout a session may take
	// before it counts as a hang beyond the configured timeouts (a
	// session meets at most one timeout: the failed milter is then out).
	faultMargin = 10 * time.Second
	// faultConcurrency is how many SMTP sessions are open at once.
	faultConcurrency = 16
	// faultTableEnv names a file the table of results is written to.
	faultTableEnv = "FILTER_MILTER_FAULTS_TABLE"
)

const fieldFaultMilter = "X-Fault-Milter"

// faultFilterArgs are filter-milter's arguments for the fault scenarios,
// with every timeout set to timeout.
func faultFilterArgs(timeout time.Duration, milters ...string) []string {
	var args []string
	for _, m := range milters {
		args = append(args, "-milter", m)
	}
	d := timeout.String()
	args = append(args, "-connect-timeout", d, "-command-timeout", d, "-content-timeout", d)
	level, ok := os.LookupEnv(logLevelEnv)
	if !ok {
		// info, not the suite's debug: at debug filter-milter traces every
		// line and packet of every session, and smtpd, which writes the
		// filter's stderr into its log, falls minutes behind under these
		// hundreds of sessions. The scenarios judge by lines from info up.
		level = "info"
	}
	if level != "" {
		args = append(args, "-log-level", level)
	}
	return args
}

// faultSMTPD starts an smtpd with one listener "milter" that runs
// filter-milter with args.
func faultSMTPD(t *testing.T, v harness.SMTPDVersion, env *harness.Env, args []string) *harness.SMTPD {
	t.Helper()
	s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
		{Name: "milter", Filter: args},
	}})
	t.Logf("%s: listener milter on 127.0.0.1:%d: filter-milter %s", s.Version, s.Port("milter"), strings.Join(args, " "))
	return s
}

// faultFilterAlive fails the test when the filter process went away: smtpd
// exits with its filter, and logs "lost processor" or "exited abnormally".
func faultFilterAlive(t *testing.T, s *harness.SMTPD) {
	t.Helper()
	log := s.Proc.Log()
	for _, bad := range []string{"exited abnormally", "lost processor", "lost filter"} {
		if strings.Contains(log, bad) {
			t.Errorf("smtpd's log has %q: the filter process exited", bad)
		}
	}
	if n := strings.Count(log, "registered with smtpd"); n != 1 {
		t.Errorf("filter-milter registered %d times in smtpd's log, want once", n)
	}
	s.Healthy(t)
}

// faultJudge runs AnalyzeLoad, logs the report and fails the test on any
// problem, listing them (the first 40).
func faultJudge(t *testing.T, l *harness.Load, ds []harness.LoadDelivery, check harness.LoadCheck) harness.LoadReport {
	t.Helper()
	rep := harness.AnalyzeLoad(l, ds, check)
	t.Logf("%s: %d messages, %d sessions: %d answered as configured, %d refused, %d accepted, %d delivered, %d lost, %d altered, %d duplicated, %d unexpected, in %v",
		rep.Scenario, rep.Messages, rep.Sessions, rep.AsConfigured, rep.Refused, rep.Accepted, rep.Delivered, rep.Lost,
		rep.Altered, rep.Duplicated, rep.Unexpected, rep.Duration.Round(time.Millisecond))
	if !rep.OK() {
		probs := rep.Problems
		if len(probs) > 40 {
			probs = append(probs[:40:40], fmt.Sprintf("... and %d more", len(rep.Problems)-40))
		}
		t.Errorf("%s: filter-milter did not handle the fault as configured:\n  %s", rep.Scenario, strings.Join(probs, "\n  "))
	}
	return rep
}

// faultAcceptedIDs are the Message-IDs of the messages some session accepted.
func faultAcceptedIDs(l *harness.Load) []string {
	var ids []string
	for _, s := range l.Sessions {
		if s.Accepted() {
			ids = append(ids, s.MessageID)
		}
	}
	return ids
}

// faultLoad sends a load and waits for the deliveries of what was accepted.
func faultLoad(t *testing.T, s *harness.SMTPD, cfg harness.LoadConfig) (*harness.Load, []harness.LoadDelivery) {
	t.Helper()
	cfg.Port = s.Port("milter")
	if testing.Short() {
		cfg.Sessions = max(cfg.Sessions/4, 30) // go test -short: a quarter of the load
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = faultConcurrency
	}
	l := harness.RunLoad(t, cfg)
	ds := s.WaitLoadDeliveries(t, faultAcceptedIDs(l), 60*time.Second, 500*time.Millisecond)
	return l, ds
}

// ---------------------------------------------------------------------------
// Expectations

var faultTempfailReply = regexp.MustCompile(`^451 4\.7\.1 `)

// faultExpect judges one SMTP session.
type faultExpect = func(*harness.LoadSession, harness.LoadAttempt) error

// faultExpectDelivered: every session gets 250 at the end of DATA, within
// the timeout plus margin.
func faultExpectDelivered(timeout time.Duration) faultExpect {
	return func(_ *harness.LoadSession, a harness.LoadAttempt) error {
		if !a.Accepted() {
			stage, reply := a.Refusal()
			return fmt.Errorf("want 250 at the end of DATA, got %q at %s", reply, stage)
		}
		return faultBounded(a, timeout)
	}
}

// faultExpectAcceptedOrTempfail: 250 at the end of DATA, or the default
// action's 451 4.7.1 at some stage (the client retries).
func faultExpectAcceptedOrTempfail(timeout time.Duration) faultExpect {
	return func(_ *harness.LoadSession, a harness.LoadAttempt) error {
		if a.Accepted() {
			return faultBounded(a, timeout)
		}
		stage, reply := a.Refusal()
		if !faultTempfailReply.MatchString(reply) {
			return fmt.Errorf("want 250 or the default action's 451 4.7.1, got %q at %s", reply, stage)
		}
		return faultBounded(a, timeout)
	}
}

// faultExpectTempfail: the default action's 451 4.7.1 at some stage,
// never 250.
func faultExpectTempfail(timeout time.Duration) faultExpect {
	return func(_ *harness.LoadSession, a harness.LoadAttempt) error {
		stage, reply := a.Refusal()
		if a.Accepted() || !faultTempfailReply.MatchString(reply) {
			if a.Accepted() {
				reply, stage = a.End, "end of DATA"
			}
			return fmt.Errorf("want the default action's 451 4.7.1, got %q at %s", reply, stage)
		}
		return faultBounded(a, timeout)
	}
}

// faultBounded fails a session that took longer than the timeout plus
// faultMargin: filter-milter must not hang beyond its timeouts.
func faultBounded(a harness.LoadAttempt, timeout time.Duration) error {
	if limit := timeout + faultMargin; a.Duration > limit {
		return fmt.Errorf("the session took %v, longer than the configured %v timeout allows (%v)", a.Duration.Round(time.Millisecond), timeout, limit)
	}
	return nil
}

// faultSeenOnce: the milter's one "X-Fault-Milter: seen" field.
func faultSeenOnce(_ *harness.LoadSession, added []harness.Field) error {
	if len(added) != 1 || strings.TrimSpace(added[0].Value()) != "seen" {
		return fmt.Errorf("want exactly one %q added by the milter, got %s", fieldFaultMilter+": seen", faultFields(added))
	}
	return nil
}

func faultFields(fs []harness.Field) string {
	if len(fs) == 0 {
		return "none"
	}
	var out []string
	for _, f := range fs {
		out = append(out, fmt.Sprintf("%q", strings.TrimRight(string(f.Raw), "\n")))
	}
	return strings.Join(out, ", ")
}

// ---------------------------------------------------------------------------
// smtpd's log

// faultFilterLine is one line filter-milter wrote to stderr, as smtpd logged it:
// "<filter name>: <level> <message> {json fields}".
type faultFilterLine struct {
	Level, Msg, Session, Raw string
}

var (
	faultFilterLineRe = regexp.MustCompile(`^milter: (debug|info|warn|error|dpanic|panic|fatal) ([^{]*?)(?: (\{.*\}))?$`)
	faultSessionRe    = regexp.MustCompile(`"session": "([0-9a-f]+)"`)
	faultConnectedRe  = regexp.MustCompile(`^([0-9a-f]{16}) smtp connected `)
)

// faultFilterLines parses filter-milter's lines of the listener "milter".
func faultFilterLines(log string) []faultFilterLine {
	var out []faultFilterLine
	for _, l := range strings.Split(log, "\n") {
		// The scenarios judge by filter-milter's lines from info up; its
		// debug lines (a trace of every line and packet of every session)
		// are most of the log and are skipped before the regexp.
		if !strings.HasPrefix(l, "milter: ") || strings.HasPrefix(l, "milter: debug ") {
			continue
		}
		m := faultFilterLineRe.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		fl := faultFilterLine{Level: m[1], Msg: m[2], Raw: l}
		if sm := faultSessionRe.FindStringSubmatch(m[3]); sm != nil {
			fl.Session = sm[1]
		}
		out = append(out, fl)
	}
	return out
}

// faultSMTPSessions are the ids of smtpd's SMTP sessions, in order.
func faultSMTPSessions(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "smtp connected") {
			continue // most lines: skipped before the regexp
		}
		if m := faultConnectedRe.FindStringSubmatch(l); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

var faultEnvelopeRe = regexp.MustCompile(`^([0-9a-f]{16}) smtp envelope .* to=<([^>]*)>`)

// faultLog is what smtpd's log says about a load's sessions.
type faultLog struct {
	session map[string]string   // recipient → smtpd session that accepted it
	failed  map[string][]string // smtpd session → filter-milter's "milter failed" lines
}

func parseFaultLog(log string) faultLog {
	fl := faultLog{session: map[string]string{}, failed: map[string][]string{}}
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, " smtp envelope ") {
			continue // most lines: skipped before the regexp
		}
		if m := faultEnvelopeRe.FindStringSubmatch(l); m != nil {
			fl.session[m[2]] = m[1]
		}
	}
	for _, l := range faultFilterLines(log) {
		if l.Msg == "milter failed; applying the default action" && l.Session != "" {
			fl.failed[l.Session] = append(fl.failed[l.Session], l.Raw)
		}
	}
	return fl
}

// failure is filter-milter's "milter failed" line for the session that
// accepted the message, "" when there is none.
func (fl faultLog) failure(s *harness.LoadSession) string {
	if ls := fl.failed[fl.session[s.Rcpt]]; len(ls) > 0 {
		return ls[0]
	}
	return ""
}

// fieldIffMilterOK checks a message accepted under default_action=accept:
// it has the milter's field exactly when filter-milter did not log that
// the milter failed in its session.
func (fl faultLog) fieldIffMilterOK(s *harness.LoadSession, added []harness.Field) error {
	if fl.session[s.Rcpt] == "" {
		return fmt.Errorf("no \"smtp envelope\" line for %s in smtpd's log", s.Rcpt)
	}
	failure := fl.failure(s)
	switch {
	case len(added) == 0 && failure == "":
		return fmt.Errorf("delivered without the milter's field, yet filter-milter logged no milter failure for its session %s", fl.session[s.Rcpt])
	case len(added) > 0 && failure != "":
		return fmt.Errorf("delivered with %s, yet filter-milter logged a milter failure for its session: %s", faultFields(added), failure)
	case len(added) > 0:
		return faultSeenOnce(s, added)
	}
	return nil
}

// seenAndOK checks a message delivered under default_action=tempfail:
// it has the milter's field, and filter-milter logged no milter failure
// for its session (a failure there means 451, never delivery).
func (fl faultLog) seenAndOK(s *harness.LoadSession, added []harness.Field) error {
	if err := faultSeenOnce(s, added); err != nil {
		return err
	}
	return fl.fieldIffMilterOK(s, added)
}

// faultOneLinePerSession checks that filter-milter logged, for every SMTP
// session smtpd logged, exactly one warning or error, and that it is msg.
func faultOneLinePerSession(t *testing.T, s *harness.SMTPD, msg string) {
	t.Helper()
	log := s.Proc.Log()
	per := map[string][]faultFilterLine{}
	var unattached []string
	for _, fl := range faultFilterLines(log) {
		if fl.Level == "debug" || fl.Level == "info" {
			continue
		}
		if fl.Session == "" {
			unattached = append(unattached, fl.Raw)
			continue
		}
		per[fl.Session] = append(per[fl.Session], fl)
	}
	sessions := faultSMTPSessions(log)
	bad := 0
	var example string
	for _, id := range sessions {
		ls := per[id]
		if len(ls) != 1 || ls[0].Msg != msg {
			bad++
			if bad <= 10 {
				var raw []string
				for _, l := range ls {
					raw = append(raw, l.Raw)
				}
				t.Errorf("session %s: want one filter line %q, got %d:\n  %s", id, msg, len(ls), strings.Join(raw, "\n  "))
			}
			continue
		}
		if example == "" {
			example = ls[0].Raw
		}
		delete(per, id)
	}
	for id, ls := range per {
		t.Errorf("filter lines for session %s, which smtpd did not log as connected: %v", id, ls)
	}
	if len(unattached) > 0 {
		t.Errorf("%d filter warnings without a session, e.g. %s", len(unattached), unattached[0])
	}
	t.Logf("%d SMTP sessions in smtpd's log, %d with exactly one filter line %q; e.g.\n  %s", len(sessions), len(sessions)-bad, msg, example)
}

// ---------------------------------------------------------------------------
// The scenarios

// faultReports collects every scenario's report for the table.
type faultReports struct {
	mu   sync.Mutex
	rows []string
}

func (r *faultReports) add(smtpd string, rep harness.LoadReport) {
	r.mu.Lock()
	r.rows = append(r.rows, rep.Row(smtpd))
	r.mu.Unlock()
}

// TestFaults runs every fault scenario against every smtpd version and
// prints (and, with FILTER_MILTER_FAULTS_TABLE=file, writes) the table:
// scenario | sessions sent | answered as configured | delivered | lost |
// altered.
func TestFaults(t *testing.T) {
	reports := &faultReports{}
	start := time.Now()
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		for _, sc := range faultScenarios {
			t.Run(sc.name, func(t *testing.T) {
				env := harness.NewEnv(t)
				rep := sc.run(t, v, env)
				rep.Scenario = sc.name
				reports.add(v.Name, rep)
			})
		}
	})
	table := harness.LoadTableHeader + strings.Join(reports.rows, "")
	t.Logf("fault scenarios in %v:\n%s", time.Since(start).Round(time.Second), table)
	if path := os.Getenv(faultTableEnv); path != "" {
		if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
			t.Errorf("write %s: %v", path, err)
		}
	}
}

var faultScenarios = []struct {
	name string
	run  func(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport
}{
	{"control: milter ok", scenarioControl},
	{"die-mid at eom, tempfail", scenarioDieTempfail},
	{"die-mid at body, accept", scenarioDieAccept},
	{"killed from outside, tempfail", scenarioKilled},
	{"hang at MAIL/eom, tempfail", scenarioHangTempfail},
	{"hang at eom, accept", scenarioHangAccept},
	{"garbage replies, tempfail", scenarioGarbageTempfail},
	{"garbage replies, accept", scenarioGarbageAccept},
	{"pool: one endpoint refused", scenarioPoolRefused},
	{"pool: one endpoint closes", scenarioPoolClosing},
	{"pool: one endpoint dies mid-session", scenarioPoolDies},
}

// scenarioControl: a milter that works, the baseline for the others.
func scenarioControl(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	m := harness.StartFaultMilter(t, env, "fault-ok", "ok")
	s := faultSMTPD(t, v, env, faultFilterArgs(faultLong, m.SpecHostPort()))
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "control", Sessions: 300})
	fl := parseFaultLog(s.Proc.Log())
	rep := faultJudge(t, l, ds, harness.LoadCheck{Expect: faultExpectDelivered(faultLong), AddedNames: []string{fieldFaultMilter}, Added: fl.fieldIffMilterOK})
	faultFilterAlive(t, s)
	return rep
}

// faultDied are the Message-IDs the milter died on.
func faultDied(m *harness.FaultMilter) map[string]bool {
	out := map[string]bool{}
	for _, l := range m.Lines(" DIE ") {
		if _, id, ok := strings.Cut(l, "msgid=<"); ok {
			out[strings.TrimSuffix(strings.TrimSpace(id), ">")] = true
		}
	}
	return out
}

// scenarioDieTempfail: the milter exits (os._exit) inside its eom
// callback on every 10th message and is started again at once; with the
// default action tempfail the sessions it was serving get 451 and retry,
// every other message is delivered with the milter's field. Every message
// must end up delivered exactly once, and none without the milter having
// seen it.
func scenarioDieTempfail(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	m := harness.StartFaultMilter(t, env, "fault-die", "die-mid", "every=10", "stage=eom")
	s := faultSMTPD(t, v, env, faultFilterArgs(faultLong, m.SpecHostPort()))
	stop := m.KeepAlive(0)
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "die-tempfail", Sessions: 300, Retries: 20, RetryDelay: 100 * time.Millisecond})
	stop()
	died := faultDied(m)
	t.Logf("the milter was started %d times and died inside eom on %d messages", m.Starts(), len(died))
	if len(died) == 0 {
		t.Errorf("the milter never died: the scenario tested nothing")
	}
	fl := parseFaultLog(s.Proc.Log())
	rep := faultJudge(t, l, ds, harness.LoadCheck{Expect: faultExpectAcceptedOrTempfail(faultLong), AddedNames: []string{fieldFaultMilter}, Added: fl.seenAndOK})
	if rep.Refused == 0 {
		t.Errorf("no session got 451 although the milter died %d times", len(died))
	}
	// A message the milter died on got 451 then and was delivered only
	// by a later session, with the field of a milter that saw it whole.
	for _, sess := range l.Sessions {
		if died[sess.MessageID] && sess.Attempts[0].Accepted() && len(sess.Attempts) == 1 {
			t.Errorf("message <%s>: the milter died in its eom, yet its only session was accepted: %s", sess.MessageID, sess.Attempts[0])
		}
	}
	faultLogRefusals(t, l)
	faultFilterAlive(t, s)
	return rep
}

// scenarioDieAccept: as above at the body stage, with the per-milter
// setting default_action=accept: every session is accepted; the messages
// the milter died on (and those in flight with it) are delivered
// unmodified, without the milter's field.
func scenarioDieAccept(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	m := harness.StartFaultMilter(t, env, "fault-die", "die-mid", "every=10", "stage=body")
	s := faultSMTPD(t, v, env, faultFilterArgs(faultLong, m.SpecHostPort()+"{default_action=accept}"))
	stop := m.KeepAlive(0)
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "die-accept", Sessions: 300})
	stop()
	died := faultDied(m)
	t.Logf("the milter was started %d times and died inside body on %d messages", m.Starts(), len(died))
	if len(died) == 0 {
		t.Errorf("the milter never died: the scenario tested nothing")
	}
	without := 0
	fl := parseFaultLog(s.Proc.Log())
	rep := faultJudge(t, l, ds, harness.LoadCheck{
		Expect:     faultExpectDelivered(faultLong),
		AddedNames: []string{fieldFaultMilter},
		Added: func(sess *harness.LoadSession, added []harness.Field) error {
			if len(added) == 0 {
				without++
			}
			if died[sess.MessageID] && len(added) > 0 {
				return fmt.Errorf("the milter died on this message, yet it has %s", faultFields(added))
			}
			return fl.fieldIffMilterOK(sess, added)
		},
	})
	t.Logf("%d messages delivered without the milter (default_action=accept), %d with its field", without, rep.Delivered-without)
	if without < len(died) {
		t.Errorf("%d messages delivered without the milter's field, but it died on %d", without, len(died))
	}
	faultFilterAlive(t, s)
	return rep
}

// scenarioKilled: while the load runs, the test kills the milter
// (SIGKILL) 400 ms into each of its lives, at whatever stage its sessions
// are, and starts it again 100 ms later. Default action tempfail: 250 or 451 at any stage; the
// client retries until every message is delivered, each exactly once and
// seen whole by the milter.
func scenarioKilled(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	m := harness.StartFaultMilter(t, env, "fault-killed", "ok")
	s := faultSMTPD(t, v, env, faultFilterArgs(faultLong, m.SpecHostPort()))
	stop := m.KeepAlive(100 * time.Millisecond)
	done := make(chan struct{})
	var kills int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Each incarnation lives 400 ms from when the killer first sees
		// it, however slowly a loaded machine starts it.
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		var current *harness.Proc
		var since time.Time
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				p := m.Proc()
				if p != current {
					current, since = p, time.Now()
				}
				if exited, _ := p.Exited(); !exited && time.Since(since) >= 400*time.Millisecond {
					_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
					kills++
				}
			}
		}
	}()
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "killed", Sessions: 300, Retries: 30, RetryDelay: 100 * time.Millisecond})
	close(done)
	wg.Wait()
	stop()
	t.Logf("the milter was killed %d times and started %d times", kills, m.Starts())
	if kills == 0 {
		t.Errorf("the milter was never killed: the scenario tested nothing")
	}
	fl := parseFaultLog(s.Proc.Log())
	rep := faultJudge(t, l, ds, harness.LoadCheck{Expect: faultExpectAcceptedOrTempfail(faultLong), AddedNames: []string{fieldFaultMilter}, Added: fl.seenAndOK})
	faultLogRefusals(t, l)
	faultFilterAlive(t, s)
	return rep
}

// faultLogRefusals logs how many sessions were refused at each stage, with
// which reply.
func faultLogRefusals(t *testing.T, l *harness.Load) map[string]int {
	t.Helper()
	count := map[string]int{}
	for _, s := range l.Sessions {
		for _, a := range s.Attempts {
			if stage, reply := a.Refusal(); stage != "" {
				count[stage+": "+reply]++
			}
		}
	}
	var keys []string
	for k := range count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %4d × %s", count[k], k)
	}
	t.Logf("refusals by stage:%s", b.String())
	return count
}

// faultHangSender makes the milter in mode hang stage=auto hang at MAIL (i%3
// == 0), at end of message (i%3 == 1) or not at all.
func faultHangSender(i int) string {
	switch i % 3 {
	case 0:
		return fmt.Sprintf("hang-envfrom-%d@test.example", i)
	case 1:
		return fmt.Sprintf("hang-eom-%d@test.example", i)
	}
	return fmt.Sprintf("alice-%d@test.example", i)
}

// scenarioHangTempfail: the milter sleeps for ever in envfrom for a third
// of the messages and in eom for another third. The command timeout (2 s)
// gives 451 at MAIL, the content timeout (2 s) 451 at the end of DATA;
// the other third is delivered with the milter's field meanwhile. After
// the load, a message sent with swaks is still delivered.
func scenarioHangTempfail(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	m := harness.StartFaultMilter(t, env, "fault-hang", "hang", "stage=auto")
	s := faultSMTPD(t, v, env, faultFilterArgs(faultShort, m.SpecHostPort()))
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "hang-tempfail", Sessions: 180, Concurrency: 30, Sender: faultHangSender})
	fl := parseFaultLog(s.Proc.Log())
	late := 0
	rep := faultJudge(t, l, ds, harness.LoadCheck{
		Expect: func(sess *harness.LoadSession, a harness.LoadAttempt) error {
			if err := faultBounded(a, faultShort); err != nil {
				return err
			}
			stage, reply := a.Refusal()
			want := map[int]string{0: "MAIL", 1: "end of DATA", 2: ""}[sess.Index%3]
			switch {
			case stage == want && want == "":
				return nil // 250 where the milter does not hang
			case stage == want && faultTempfailReply.MatchString(reply):
				if a.Duration < faultShort {
					return fmt.Errorf("451 at %s after %v, before the %v timeout", stage, a.Duration.Round(time.Millisecond), faultShort)
				}
				return nil // 451 where the milter hangs, after the timeout
			case faultTempfailReply.MatchString(reply) && a.Duration >= faultShort:
				// The default action, after a timeout, at a call
				// that does not hang: the milter was late there too
				// (libmilter's worker pool stalls once its workers
				// hang). As configured.
				late++
				return nil
			case want == "":
				return fmt.Errorf("the milter does not hang on this message: want 250, or 451 4.7.1 after the %v timeout; got %q at %s", faultShort, reply, stage)
			}
			return fmt.Errorf("the milter hangs at %s: want 451 4.7.1 there after the %v timeout, got %q at %s", want, faultShort, reply, stage)
		},
		AddedNames: []string{fieldFaultMilter}, Added: fl.seenAndOK,
	})
	t.Logf("the milter hung %d times; %d sessions got the default action after a timeout at a call that does not hang (the milter was late)",
		len(m.Lines(" HANG ")), late)
	faultLogDurations(t, l)
	faultAfter(t, s, true)
	faultFilterAlive(t, s)
	return rep
}

// scenarioHangAccept: the milter hangs in eom for two thirds of the
// messages; with default_action=accept set for it they are delivered
// unmodified after the content timeout.
func scenarioHangAccept(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	m := harness.StartFaultMilter(t, env, "fault-hang", "hang", "stage=eom", "match=hang")
	s := faultSMTPD(t, v, env, faultFilterArgs(faultShort, m.SpecHostPort()+"{default_action=accept}"))
	sender := func(i int) string {
		if i%3 == 2 {
			return fmt.Sprintf("alice-%d@test.example", i)
		}
		return fmt.Sprintf("hang-%d@test.example", i)
	}
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "hang-accept", Sessions: 120, Concurrency: 30, Sender: sender})
	fl := parseFaultLog(s.Proc.Log())
	late := 0
	rep := faultJudge(t, l, ds, harness.LoadCheck{
		Expect:     faultExpectDelivered(faultShort),
		AddedNames: []string{fieldFaultMilter},
		Added: func(sess *harness.LoadSession, added []harness.Field) error {
			if sess.Index%3 != 2 && len(added) > 0 {
				return fmt.Errorf("the milter hung on this message, yet it has %s", faultFields(added))
			}
			if sess.Index%3 == 2 && len(added) == 0 {
				// See scenarioHangTempfail: a late milter.
				if d := sess.Last().Duration; d < faultShort {
					return fmt.Errorf("the milter does not hang on this message and the session took %v, less than the timeout, yet it lacks the milter's field", d)
				}
				late++
			}
			return fl.fieldIffMilterOK(sess, added)
		},
	})
	t.Logf("%d sessions that should not hang were delivered without the milter after the timeout because the milter was late", late)
	faultLogDurations(t, l)
	faultAfter(t, s, true)
	faultFilterAlive(t, s)
	return rep
}

// faultLogDurations logs the slowest sessions.
func faultLogDurations(t *testing.T, l *harness.Load) {
	t.Helper()
	var all []harness.LoadAttempt
	for _, s := range l.Sessions {
		all = append(all, s.Attempts...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Duration > all[j].Duration })
	var b strings.Builder
	for _, a := range all[:min(3, len(all))] {
		fmt.Fprintf(&b, "\n  %s", a)
	}
	slow := map[string]int{}
	for _, a := range all {
		if a.Duration >= time.Second {
			stage, _ := a.Refusal()
			slow[stage]++
		}
	}
	var greet, total time.Duration
	for _, a := range all {
		greet += a.Greeted
		total += a.Duration
	}
	if n := time.Duration(len(all)); n > 0 {
		t.Logf("mean session %v, of which %v until the greeting", (total / n).Round(time.Millisecond), (greet / n).Round(time.Millisecond))
	}
	t.Logf("sessions that took a second or more, by the stage that refused them (\"\": accepted): %v; slowest:%s", slow, b.String())
}

// faultAfter sends one more message with swaks after a scenario: smtpd
// and filter-milter still serve. With seen, the milter must have added
// its field.
func faultAfter(t *testing.T, s *harness.SMTPD, seen bool) {
	t.Helper()
	msg := scriptedMessage("after-fault")
	msg.From = "alice@test.example"
	r := s.Send(t, "milter", msg)
	if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
		t.Errorf("a message after the fault scenario: %s, want 250; swaks said:\n%s", r.Summary(), r.Output)
		return
	}
	d := s.WaitDeliveries(t, 1, 10*time.Second)[0]
	rest, added := harness.RemoveFields(harness.StripDelivered(d.Data), fieldFaultMilter)
	if diff := harness.Diff(harness.Normalize(msg.Data), rest); diff != "" {
		t.Errorf("the message after the fault scenario was altered: %s", diff)
	}
	if seen && len(added) != 1 {
		t.Errorf("the message after the fault scenario has %s, want the milter's field", faultFields(added))
	}
	t.Logf("after the scenario: %s, delivered with %s", r.Summary(), faultFields(added))
}

// ---------------------------------------------------------------------------
// A milter that breaks the protocol

// Milter wire codes (libmilter's mfdef.h).
const (
	smfiOptNeg = 'O'
	smfiMacro  = 'D'
	smfiAbort  = 'A'
	smfiQuit   = 'Q'
	smfiQuitNC = 'K'
)

// Commands a milter must answer when it negotiated no protocol flags.
var rawAnswered = map[byte]string{
	'C': "connect", 'H': "helo", 'M': "mail", 'R': "rcpt", 'T': "data",
	'L': "header", 'N': "eoh", 'B': "body", 'E': "eom", 'U': "unknown",
}

// rawFault is how a rawMilter connection breaks: Kind at the command
// Stage (a milter command code; 'O' is the negotiation).
type rawFault struct {
	Kind  string // random, oversized, zero-length, unknown-code, close-mid-reply, close-at-once
	Stage byte
}

var rawFaultKinds = []string{"random", "oversized", "zero-length", "unknown-code", "close-mid-reply"}

// rawFaultStages are the commands a fault is injected at, and the SMTP
// stage where the client sees the default action.
var rawFaultStages = []struct {
	code byte
	smtp string
}{
	{'O', "greeting"}, {'C', "greeting"}, {'H', "EHLO"}, {'M', "MAIL"}, {'R', "RCPT"},
	{'T', "DATA"}, {'L', "end of DATA"}, {'N', "end of DATA"}, {'B', "end of DATA"}, {'E', "end of DATA"},
}

// rawMilter is a milter written by hand on a TCP listener of 127.0.0.1:
// it negotiates version 6 with no protocol flags (so every command is
// answered), answers "continue" until its connection's fault stage, then
// breaks the protocol. Connection k gets faults[k % len(faults)].
type rawMilter struct {
	t      *testing.T
	ln     net.Listener
	Port   int
	faults []rawFault

	mu    sync.Mutex
	n     int
	conns map[net.Conn]bool
	fired map[rawFault]int // faults injected
	// peers maps the gateway's end of each connection (its local
	// address, which filter-milter's error lines show) to the fault.
	peers map[string]rawFault
	// mayTimeOut are the connections (by the gateway's address) whose
	// random fault announces a length the gateway accepts (1 byte to
	// 64 MiB): the rest of such a "packet" may never come, and the
	// gateway rightly waits for its timeout. Every other fault is a
	// complete invalid packet or a close, which must be noticed at once.
	mayTimeOut map[string]bool
	wg         sync.WaitGroup
}

func startRawMilter(t *testing.T, faults []rawFault) *rawMilter {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("raw milter: %v", err)
	}
	r := &rawMilter{t: t, ln: ln, Port: ln.Addr().(*net.TCPAddr).Port, faults: faults,
		conns: map[net.Conn]bool{}, fired: map[rawFault]int{}, peers: map[string]rawFault{}, mayTimeOut: map[string]bool{}}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(r.Stop)
	t.Logf("raw milter on 127.0.0.1:%d with %d fault patterns", r.Port, len(faults))
	return r
}

func (r *rawMilter) Spec() string { return fmt.Sprintf("inet:127.0.0.1:%d", r.Port) }

// Stop closes the listener and every connection and waits for them.
func (r *rawMilter) Stop() {
	_ = r.ln.Close()
	r.mu.Lock()
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// Connections is how many connections the milter accepted.
func (r *rawMilter) Connections() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// Fired is how many times each fault was injected.
func (r *rawMilter) Fired() map[rawFault]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[rawFault]int{}
	for k, v := range r.fired {
		out[k] = v
	}
	return out
}

func (r *rawMilter) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		k := r.n
		r.n++
		r.conns[c] = true
		r.peers[c.RemoteAddr().String()] = r.faults[k%len(r.faults)]
		r.mu.Unlock()
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer func() {
				_ = c.Close()
				r.mu.Lock()
				delete(r.conns, c)
				r.mu.Unlock()
			}()
			r.handle(c, k, r.faults[k%len(r.faults)])
		}()
	}
}

func (r *rawMilter) handle(c net.Conn, k int, f rawFault) {
	if f.Kind == "close-at-once" {
		r.fire(f)
		return
	}
	hdr := make([]byte, 4)
	for {
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr)
		if n == 0 || n > 1<<20 {
			return // the gateway never sends that
		}
		pkt := make([]byte, n)
		if _, err := io.ReadFull(c, pkt); err != nil {
			return
		}
		code := pkt[0]
		switch {
		case code == f.Stage:
			r.fire(f)
			r.breakProtocol(c, k, f)
			if f.Kind != "close-mid-reply" {
				// Say nothing more; the gateway must give up and close.
				_, _ = io.Copy(io.Discard, c)
			}
			return
		case code == smfiOptNeg:
			reply := make([]byte, 13)
			reply[0] = smfiOptNeg
			binary.BigEndian.PutUint32(reply[1:], 6) // version
			binary.BigEndian.PutUint32(reply[5:], 1) // SMFIF_ADDHDRS
			binary.BigEndian.PutUint32(reply[9:], 0) // no protocol flags: answer everything
			if !rawWritePacket(c, reply) {
				return
			}
		case code == smfiQuit:
			return
		case code == smfiMacro || code == smfiAbort || code == smfiQuitNC:
		case rawAnswered[code] != "":
			if !rawWritePacket(c, []byte{'c'}) {
				return
			}
		}
	}
}

func (r *rawMilter) fire(f rawFault) {
	r.mu.Lock()
	r.fired[f]++
	r.mu.Unlock()
}

func rawWritePacket(c net.Conn, p []byte) bool {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(p)))
	_, err := c.Write(append(b, p...))
	return err == nil
}

// breakProtocol writes what the fault says instead of a reply.
func (r *rawMilter) breakProtocol(c net.Conn, k int, f rawFault) {
	var b []byte
	switch f.Kind {
	case "random":
		rng := rand.New(rand.NewPCG(uint64(k), 0x6d696c746572))
		b = make([]byte, 4096)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if n := binary.BigEndian.Uint32(b); n >= 1 && n <= 64<<20 {
			r.mu.Lock()
			r.mayTimeOut[c.RemoteAddr().String()] = true
			r.mu.Unlock()
		}
	case "oversized":
		b = []byte{0xff, 0xff, 0xff, 0xf0, 'c'} // a 4 GiB packet announced
	case "zero-length":
		b = []byte{0, 0, 0, 0}
	case "unknown-code":
		b = []byte{0, 0, 0, 1, 'Z'}
	case "close-mid-reply":
		b = []byte{0, 0, 0, 0x20, 'y', '4', '5', '1', ' '} // 32 bytes announced, 5 sent, then close
	}
	_, _ = c.Write(b)
}

// rawGarbageFaults is every fault kind at every stage.
func rawGarbageFaults() []rawFault {
	var fs []rawFault
	for _, st := range rawFaultStages {
		for _, k := range rawFaultKinds {
			fs = append(fs, rawFault{Kind: k, Stage: st.code})
		}
	}
	return fs
}

// rawSMTPStage is where a client sees a fault at milter command code.
func rawSMTPStage(code byte) string {
	for _, st := range rawFaultStages {
		if st.code == code {
			return st.smtp
		}
	}
	return "?"
}

// scenarioGarbageTempfail: every milter connection breaks the protocol at
// some stage (random bytes, a 4 GiB length, a zero length, an unknown
// reply code, or a reply cut off by close), 4 times each of 50 patterns.
// Default action tempfail: every session gets 451 4.7.1 at the SMTP stage
// of the fault, nothing is delivered, and filter-milter logs exactly one
// line per session.
func scenarioGarbageTempfail(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	faults := rawGarbageFaults()
	raw := startRawMilter(t, faults)
	s := faultSMTPD(t, v, env, faultFilterArgs(faultShort, raw.Spec()))
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "garbage-tempfail", Sessions: 4 * len(faults)})
	rep := faultJudge(t, l, ds, harness.LoadCheck{Expect: faultExpectTempfail(faultShort)})
	raw.Stop()
	faultLogDurations(t, l)
	faultGarbageStages(t, l, raw)
	faultGarbageNoWait(t, s, raw)
	faultOneLinePerSession(t, s, "milter failed; applying the default action")
	faultAfterRefused(t, s)
	faultFilterAlive(t, s)
	return rep
}

// faultGarbageStages compares, per SMTP stage, how many sessions were
// refused there with how many faults the milter injected at the milter
// commands of that stage.
func faultGarbageStages(t *testing.T, l *harness.Load, raw *rawMilter) {
	t.Helper()
	want := map[string]int{}
	for f, n := range raw.Fired() {
		want[rawSMTPStage(f.Stage)] += n
	}
	got := map[string]int{}
	for _, s := range l.Sessions {
		for _, a := range s.Attempts {
			stage, _ := a.Refusal()
			got[stage] += 1
		}
	}
	t.Logf("raw milter: %d connections; faults injected per SMTP stage %v; sessions refused per stage %v", raw.Connections(), want, got)
	for st, n := range want {
		if got[st] != n {
			t.Errorf("%d faults injected at milter commands of SMTP stage %s, but %d sessions refused there", n, st, got[st])
		}
	}
	faultLogRefusals(t, l)
}

// faultGarbageNoWait checks that filter-milter noticed each broken reply
// at once: only a random fault whose first 4 bytes announce an acceptable
// length may leave it waiting for its timeout. A complete invalid packet
// (zero length, 4 GiB, unknown code) or a close must not cost a timeout
// (30 s by default) per session.
func faultGarbageNoWait(t *testing.T, s *harness.SMTPD, raw *rawMilter) {
	t.Helper()
	raw.mu.Lock()
	defer raw.mu.Unlock()
	var waited, wrong []string
	for _, fl := range faultFilterLines(s.Proc.Log()) {
		if fl.Msg != "milter failed; applying the default action" || !strings.Contains(fl.Raw, "i/o timeout") {
			continue
		}
		m := faultReadTCPRe.FindStringSubmatch(fl.Raw)
		if m == nil {
			wrong = append(wrong, "(no address) "+fl.Raw)
			continue
		}
		f, ok := raw.peers[m[1]]
		waited = append(waited, fmt.Sprintf("%s at %c", f.Kind, f.Stage))
		if !ok || !raw.mayTimeOut[m[1]] {
			wrong = append(wrong, fmt.Sprintf("the milter sent %s at command %q, complete: %s", f.Kind, f.Stage, fl.Raw))
		}
	}
	t.Logf("sessions where filter-milter waited for its timeout: %d %v (random faults that announce a plausible length: %d)", len(waited), waited, len(raw.mayTimeOut))
	if len(wrong) > 0 {
		t.Errorf("filter-milter waited for its %v timeout in %d sessions although the milter's broken reply was complete (or the connection closed): it did not notice the broken reply at once:%s",
			faultShort, len(wrong), faultFirstLines(wrong, 6))
	}
}

var faultReadTCPRe = regexp.MustCompile(`read tcp4? (127\.0\.0\.1:[0-9]+)->`)

// faultAfterRefused sends one more message after a garbage scenario: the
// milter is gone now (stopped), so the default action answers it, and
// smtpd is still there to say so.
func faultAfterRefused(t *testing.T, s *harness.SMTPD) {
	t.Helper()
	msg := scriptedMessage("after-garbage")
	r := s.Send(t, "milter", msg)
	var got []string
	for _, l := range strings.Split(r.Output, "\n") {
		if strings.Contains(l, " 451 ") || strings.HasPrefix(strings.TrimSpace(strings.TrimLeft(l, "<-*")), "451") {
			got = append(got, strings.TrimSpace(l))
		}
	}
	t.Logf("after the scenario, with the milter stopped: swaks exit %d; %s", r.ExitCode, strings.Join(got, " | "))
	if r.ExitCode == 0 || !strings.Contains(r.Output, "451 4.7.1") {
		t.Errorf("a message after the scenario, milter stopped: want 451 4.7.1; swaks said:\n%s", r.Output)
	}
}

// scenarioGarbageAccept: the same milter with default_action=accept:
// every message is delivered unmodified.
func scenarioGarbageAccept(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	faults := rawGarbageFaults()
	raw := startRawMilter(t, faults)
	s := faultSMTPD(t, v, env, faultFilterArgs(faultShort, raw.Spec()+"{default_action=accept}"))
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "garbage-accept", Sessions: 4 * len(faults)})
	rep := faultJudge(t, l, ds, harness.LoadCheck{Expect: faultExpectDelivered(faultShort)})
	raw.Stop()
	faultLogDurations(t, l)
	faultGarbageNoWait(t, s, raw)
	faultOneLinePerSession(t, s, "milter failed; applying the default action")
	faultFilterAlive(t, s)
	return rep
}

// scenarioPoolRefused: a pool of a port where nothing listens and a
// working milter. Every session is delivered through the live one.
func scenarioPoolRefused(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	live := harness.StartFaultMilter(t, env, "fault-live", "ok")
	dead := harness.FreePort(t)
	s := faultSMTPD(t, v, env, faultFilterArgs(faultLong, fmt.Sprintf("inet:127.0.0.1:%d,%s", dead, live.SpecHostPort())))
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "pool-refused", Sessions: 300})
	fl := parseFaultLog(s.Proc.Log())
	rep := faultJudge(t, l, ds, harness.LoadCheck{Expect: faultExpectDelivered(faultLong), AddedNames: []string{fieldFaultMilter}, Added: fl.seenAndOK})
	faultPoolLines(t, s, fmt.Sprintf("127.0.0.1:%d", dead))
	faultFilterAlive(t, s)
	return rep
}

// faultPoolLines logs what filter-milter said about the dead endpoint.
func faultPoolLines(t *testing.T, s *harness.SMTPD, dead string) int {
	t.Helper()
	var lines []string
	for _, fl := range faultFilterLines(s.Proc.Log()) {
		if strings.Contains(fl.Raw, dead) && fl.Level != "debug" {
			lines = append(lines, fl.Raw)
		}
	}
	t.Logf("filter-milter's lines (info and above) that name the dead endpoint %s: %d%s", dead, len(lines), faultFirstLines(lines, 3))
	if len(lines) == 0 {
		t.Errorf("filter-milter logged nothing about the pool endpoint %s that failed and was marked down: a postmaster cannot tell that half the pool is gone", dead)
	}
	return len(lines)
}

func faultFirstLines(ls []string, n int) string {
	if len(ls) == 0 {
		return ""
	}
	return "\n  " + strings.Join(ls[:min(n, len(ls))], "\n  ")
}

// scenarioPoolClosing: a pool of an endpoint that accepts and closes at
// once (a milter that is up but broken) and a working milter. Every
// session is delivered through the live one, and the broken endpoint is
// marked down: it sees a few connections (backoff from 1 s doubling), not
// one for every other session.
func scenarioPoolClosing(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	live := harness.StartFaultMilter(t, env, "fault-live", "ok")
	raw := startRawMilter(t, []rawFault{{Kind: "close-at-once"}})
	s := faultSMTPD(t, v, env, faultFilterArgs(faultLong, raw.Spec()+","+live.SpecHostPort()))
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "pool-closing", Sessions: 300})
	fl := parseFaultLog(s.Proc.Log())
	rep := faultJudge(t, l, ds, harness.LoadCheck{Expect: faultExpectDelivered(faultLong), AddedNames: []string{fieldFaultMilter}, Added: fl.seenAndOK})
	n := raw.Connections()
	secs := l.Duration.Seconds()
	t.Logf("the broken endpoint got %d connections in %.1fs for %d sessions (round robin without marking down would give ~%d)",
		n, secs, rep.Sessions, rep.Sessions/2)
	// Backoff 1 s, 2 s, 4 s ...: at most about log2(secs)+2 tries, plus
	// sessions that raced on the first failure.
	if limit := faultConcurrency + 8; n > limit {
		t.Errorf("the broken endpoint of the pool got %d connections (limit %d): it is not marked down", n, limit)
	}
	faultPoolLines(t, s, raw.Spec()[len("inet:"):])
	raw.Stop()
	faultFilterAlive(t, s)
	return rep
}

// scenarioPoolDies: a pool of a milter that dies inside eom on every 3rd
// message (and is started again) and one that works. A session whose
// endpoint dies moves to the other (the conversation replayed): every
// session is delivered, with the field of the milter that finished.
func scenarioPoolDies(t *testing.T, v harness.SMTPDVersion, env *harness.Env) harness.LoadReport {
	flaky := harness.StartFaultMilter(t, env, "fault-die", "die-mid", "every=3", "stage=eom")
	live := harness.StartFaultMilter(t, env, "fault-live", "ok")
	s := faultSMTPD(t, v, env, faultFilterArgs(faultLong, flaky.SpecHostPort()+","+live.SpecHostPort()))
	stop := flaky.KeepAlive(0)
	l, ds := faultLoad(t, s, harness.LoadConfig{Name: "pool-dies", Sessions: 300})
	stop()
	died := faultDied(flaky)
	t.Logf("the flaky endpoint was started %d times and died inside eom on %d messages", flaky.Starts(), len(died))
	if len(died) == 0 {
		t.Errorf("the flaky endpoint never died: the scenario tested nothing")
	}
	fl := parseFaultLog(s.Proc.Log())
	rep := faultJudge(t, l, ds, harness.LoadCheck{Expect: faultExpectDelivered(faultLong), AddedNames: []string{fieldFaultMilter}, Added: fl.seenAndOK})
	var moved int
	for _, fl := range faultFilterLines(s.Proc.Log()) {
		if fl.Msg == "milter endpoint failed; moving the session to another endpoint" {
			moved++
		}
	}
	t.Logf("filter-milter moved %d sessions to the other endpoint", moved)
	if len(died) > 0 && moved == 0 {
		t.Errorf("the flaky endpoint died %d times, but filter-milter never logged moving a session to the other endpoint", len(died))
	}
	faultLogRefusals(t, l)
	faultFilterAlive(t, s)
	return rep
}
