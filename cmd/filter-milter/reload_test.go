package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	djmilter "github.com/d--j/go-milter"

	"github.com/filter-milter/filter-milter/milter/miltertest"
	"github.com/filter-milter/filter-milter/protocol"
	"github.com/filter-milter/filter-milter/smtpdplay"
)

// logLines is the filter's stderr in a test: it keeps every line and
// hands each to whoever waits for one (next).
type logLines struct {
	mu    sync.Mutex
	lines []string
	part  []byte
	added chan struct{}
}

func newLogLines() *logLines { return &logLines{added: make(chan struct{}, 1)} }

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.part[:i]))
		l.part = l.part[i+1:]
	}
	select {
	case l.added <- struct{}{}:
	default:
	}
	return len(p), nil
}

// count is the number of lines that contain text.
func (l *logLines) count(text string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, text) {
			n++
		}
	}
	return n
}

func (l *logLines) all() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// await waits for the n-th line that contains text, and returns it.
func (l *logLines) await(t *testing.T, text string, n int) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		seen := 0
		for _, line := range l.lines {
			if strings.Contains(line, text) {
				if seen++; seen == n {
					l.mu.Unlock()
					return line
				}
			}
		}
		all := strings.Join(l.lines, "\n")
		l.mu.Unlock()
		select {
		case <-l.added:
		case <-timeout:
			t.Fatalf("no log line %q (#%d) after 10s:\n%s", text, n, all)
		}
	}
}

// rejectsMail is a milter that rejects MAIL FROM with its name in the
// reply: which milter a session used shows in its answer.
func rejectsMail(t *testing.T, name string) *miltertest.Server {
	return miltertest.Start(t, miltertest.Script{Mail: func(string) (*djmilter.Response, error) {
		return djmilter.RejectWithCodeAndReason(550, "5.7.1 milter "+name)
	}})
}

// TestReloadOnSIGHUP runs the filter in process with a configuration
// file naming milter A, and sends it SIGHUP after the file has changed:
// to name milter B (new sessions use B, the session in flight keeps A),
// then to something broken (one error line naming file, line and key; B
// stays), counting both in config_reloads_total.
func TestReloadOnSIGHUP(t *testing.T) {
	a, b := rejectsMail(t, "A"), rejectsMail(t, "B")
	metricsAddr := freeAddr(t)
	path := writeFile(t, "fm.toml", "milters = [\""+a.Spec+"\"]\nmetrics_listen = \""+metricsAddr+"\"\n")
	stdinR, stdinW := io.Pipe()
	stdoutR, stdoutW := io.Pipe()
	logs := newLogLines()
	ran := make(chan int, 1)
	go func() {
		code := runFilter([]string{"-config", path, "-hostname", "mx.test.example"}, stdinR, stdoutW, logs)
		stdoutW.Close()
		ran <- code
	}()
	p, err := smtpdplay.Start(stdinW, stdoutR, smtpdplay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	greet := func() *smtpdplay.Session {
		t.Helper()
		s := p.NewSession()
		if err := s.Report("link-connect", "localhost", "pass", "127.0.0.1:47092", "127.0.0.1:25"); err != nil {
			t.Fatal(err)
		}
		if d, _, err := s.Ask("connect", "localhost|127.0.0.1"); err != nil || d != protocol.Proceed {
			t.Fatalf("connect: %v %v", d, err)
		}
		if d, _, err := s.Ask("helo", "client.example"); err != nil || d != protocol.Proceed {
			t.Fatalf("HELO: %v %v", d, err)
		}
		return s
	}
	mailAnswer := func(s *smtpdplay.Session, want string) {
		t.Helper()
		d, reply, err := s.Ask("mail-from", "alice@test.example")
		if err != nil || d != protocol.Reject || !strings.Contains(reply, want) {
			t.Errorf("MAIL FROM: %v %q %v, want a reject by %s; log:\n%s", d, reply, err, want, logs.all())
		}
	}
	hup := func() {
		t.Helper()
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	inFlight := greet()
	if err := os.WriteFile(path, []byte("milters = [\""+b.Spec+"\"]\nhostname = \"other\"\nmetrics_listen = \"127.0.0.1:1\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hup()
	line := logs.await(t, "configuration reloaded", 1)
	for _, want := range []string{`"milters_added": ["` + b.Spec + `"]`, `"milters_removed": ["` + a.Spec + `"]`,
		`"needs_restart": ["metrics-listen"]`, `"file": "` + path + `"`} {
		if !strings.Contains(line, want) {
			t.Errorf("the reload line lacks %s: %s", want, line)
		}
	}
	// -hostname on the command line still overrides the file.
	if strings.Contains(line, "settings_changed") {
		t.Errorf("a setting the command line gives changed: %s", line)
	}
	mailAnswer(greet(), "milter B")
	mailAnswer(inFlight, "milter A")

	if err := os.WriteFile(path, []byte("milters = [\""+a.Spec+"\"]\ncommand_timeout = \"soon\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hup()
	line = logs.await(t, "configuration reload failed", 1)
	if want := path + ":2: key command_timeout"; !strings.Contains(line, want) {
		t.Errorf("the error line does not name %q: %s", want, line)
	}
	mailAnswer(greet(), "milter B")

	// The file as the running configuration is: nothing changes, said so.
	if err := os.WriteFile(path, []byte("milters = [\""+b.Spec+"\"]\nmetrics_listen = \""+metricsAddr+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hup()
	logs.await(t, "configuration reloaded: nothing changed", 1)
	mailAnswer(greet(), "milter B")

	text := scrapeWhenUp(t, "http://"+metricsAddr+"/metrics")
	for _, want := range []string{`filter_milter_config_reloads_total{result="failed"} 1`, `filter_milter_config_reloads_total{result="ok"} 2`,
		`filter_milter_endpoint_up{endpoint="` + b.Spec + `",milter="` + b.Spec + `"} 1`} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(text, `filter_milter_endpoint_up{endpoint="`+a.Spec+`"`) {
		t.Errorf("the removed milter's endpoint_up is still reported")
	}

	if err := p.Close(); err != nil {
		t.Error(err)
	}
	if code := <-ran; code != exitOK {
		t.Errorf("exit %d", code)
	}
	if n := logs.count("configuration reload failed"); n != 1 {
		t.Errorf("%d error lines for one failed reload", n)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// scrapeWhenUp gets url once the metrics server listens (it starts in
// the background).
func scrapeWhenUp(t *testing.T, url string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
