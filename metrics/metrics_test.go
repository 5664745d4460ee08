package metrics

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/filter-milter/filter-milter/milter"
)

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

func wantLines(t *testing.T, text string, lines ...string) {
	t.Helper()
	have := map[string]bool{}
	for _, l := range strings.Split(text, "\n") {
		have[l] = true
	}
	for _, l := range lines {
		if !have[l] {
			t.Errorf("metrics lack the line %q", l)
		}
	}
}

func TestObserverCounts(t *testing.T) {
	o := New()
	// Two sessions side by side, as the gateway's goroutines call it.
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprint("s", i)
			o.SessionOpened(id)
			o.MilterReply(id, "dkim", "connect", milter.Verdict{Kind: milter.Continue}, 2*time.Millisecond)
			o.MilterReply(id, "dkim", "eom", milter.Verdict{Kind: milter.Accept}, 30*time.Millisecond)
			o.Modifications(id, "dkim", []milter.Modification{{Kind: milter.InsertHeader, Name: "DKIM-Signature"}})
			o.MessageDone(id, "q", "proceed", "", 1000)
		}()
	}
	wg.Wait()
	o.SessionOpened("s3")
	o.MilterReply("s3", "spam", "eom", milter.Verdict{Kind: milter.Reject, Code: 554, Reply: "554 5.7.1 no"}, 3*time.Second)
	o.MessageDone("s3", "q", "reject", "554 5.7.1 no", 500)
	o.MessageDone("s3", "q", "reject", "451 4.7.1 later", 0)
	o.MilterError("s3", "spam", "eom", fmt.Errorf("milter spam: eom: %w", os.ErrDeadlineExceeded))
	o.MilterError("s3", "spam", "connect", fmt.Errorf("dial: %w", &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}))
	o.MilterError("s3", "spam", "body", errors.New("milter: body chunk: unexpected response"))
	o.MilterError("s3", "spam", "eom", fmt.Errorf("x: %w", io.EOF))
	o.SessionClosed("s0")
	o.SessionClosed("s1")

	srv := o.Serve("127.0.0.1:0", zaptest.NewLogger(t))
	t.Cleanup(func() { _ = srv.Close() })
	addr := waitAddr(t, srv)
	text := scrape(t, "http://"+addr+"/metrics")
	wantLines(t, text,
		`filter_milter_sessions_open 1`,
		`filter_milter_sessions_total 3`,
		`filter_milter_messages_total{verdict="accept"} 2`,
		`filter_milter_messages_total{verdict="reject"} 1`,
		`filter_milter_messages_total{verdict="tempfail"} 1`,
		`filter_milter_message_bytes_total 2500`,
		`filter_milter_milter_replies_total{milter="dkim",stage="connect",verdict="continue"} 2`,
		`filter_milter_milter_replies_total{milter="dkim",stage="eom",verdict="accept"} 2`,
		`filter_milter_milter_replies_total{milter="spam",stage="eom",verdict="reject"} 1`,
		`filter_milter_milter_reply_seconds_count{milter="dkim",stage="eom"} 2`,
		`filter_milter_milter_reply_seconds_bucket{milter="dkim",stage="eom",le="0.025"} 0`,
		`filter_milter_milter_reply_seconds_bucket{milter="dkim",stage="eom",le="0.05"} 2`,
		`filter_milter_milter_reply_seconds_bucket{milter="spam",stage="eom",le="2.5"} 0`,
		`filter_milter_milter_reply_seconds_bucket{milter="spam",stage="eom",le="5"} 1`,
		`filter_milter_milter_errors_total{kind="timeout",milter="spam"} 1`,
		`filter_milter_milter_errors_total{kind="refused",milter="spam"} 1`,
		`filter_milter_milter_errors_total{kind="protocol",milter="spam"} 1`,
		`filter_milter_milter_errors_total{kind="other",milter="spam"} 1`,
		`filter_milter_milter_modifications_total{kind="insheader",milter="dkim"} 2`,
	)
	if !strings.Contains(text, "go_goroutines ") || !strings.Contains(text, "process_open_fds ") {
		t.Errorf("no Go runtime or process metrics")
	}
	if !strings.Contains(scrape(t, "http://"+addr+"/"), "filter_milter_sessions_open 1") {
		t.Errorf("/ does not serve the metrics")
	}
}

func waitAddr(t *testing.T, s *Server) string {
	t.Helper()
	select {
	case <-s.Listening():
	case <-time.After(5 * time.Second):
		t.Fatal("metrics server does not listen")
	}
	return s.Addr().String()
}

// TestServeWaitsForABusyAddress: a filter-milter of a restarting smtpd may
// still hold the port; the new one must not exit but take it over later.
func TestServeWaitsForABusyAddress(t *testing.T) {
	old := RetryInterval
	RetryInterval = 50 * time.Millisecond
	t.Cleanup(func() { RetryInterval = old })
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := busy.Addr().String()
	// The server's own log line says its first try failed.
	refused := make(chan struct{})
	var once sync.Once
	log := zaptest.NewLogger(t, zaptest.WrapOptions(zap.Hooks(func(e zapcore.Entry) error {
		if strings.HasPrefix(e.Message, "cannot listen for metrics") {
			once.Do(func() { close(refused) })
		}
		return nil
	})))
	srv := New().Serve(addr, log)
	t.Cleanup(func() { _ = srv.Close() })
	select {
	case <-refused:
	case <-time.After(5 * time.Second):
		t.Fatal("no log line for the busy address")
	}
	if srv.Addr() != nil {
		t.Fatalf("listening on a busy address?")
	}
	busy.Close()
	if got := waitAddr(t, srv); got != addr {
		t.Errorf("listening on %s, want %s", got, addr)
	}
	scrape(t, "http://"+addr+"/metrics")
	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := http.Get("http://" + addr + "/metrics"); err == nil {
		t.Errorf("still serving after Close")
	}
}

func TestCloseBeforeListening(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	srv := New().Serve(busy.Addr().String(), zaptest.NewLogger(t))
	done := make(chan struct{})
	go func() { _ = srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Close hangs while the server waits for its address")
	}
}

func TestVerdict(t *testing.T) {
	for _, c := range [][3]string{
		{"proceed", "", "accept"}, {"reject", "550 5.7.1 x", "reject"}, {"reject", "451 4.7.1 x", "tempfail"},
		{"disconnect", "421 4.7.0 x", "disconnect"},
	} {
		if got := Verdict(c[0], c[1]); got != c[2] {
			t.Errorf("Verdict(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
}

func TestBufferedAndSpilled(t *testing.T) {
	o := New()
	o.MessageBuffered("s1", 1000, false)
	o.MessageBuffered("s2", 5000, true)
	srv := httptest.NewServer(o.Handler())
	defer srv.Close()
	text := scrape(t, srv.URL)
	for _, want := range []string{
		"filter_milter_buffered_bytes_total 6000\n",
		"filter_milter_spilled_bytes_total 5000\n",
		"filter_milter_messages_spilled_total 1\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestEvaluationVerdicts(t *testing.T) {
	o := New()
	o.Evaluated("s1", "rspamd-trial", "reject")
	o.Evaluated("s2", "rspamd-trial", "reject")
	o.Evaluated("s2", "rspamd-trial", "accept")
	srv := httptest.NewServer(o.Handler())
	defer srv.Close()
	wantLines(t, scrape(t, srv.URL),
		`filter_milter_evaluation_verdicts_total{milter="rspamd-trial",verdict="reject"} 2`,
		`filter_milter_evaluation_verdicts_total{milter="rspamd-trial",verdict="accept"} 1`)
}
