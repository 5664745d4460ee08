package integration

import (
	"bytes"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// SIGTERM ends filter-milter as smtpd closing the pipe does: it finishes,
// logs why, and exits 0 (smtpd treats any exit of its filter as fatal, so
// only a stopping smtpd's own shutdown should send it).
func TestSIGTERMEndsLikeEOF(t *testing.T) {
	bin := harness.BuildFilterMilter(t)
	cmd := exec.Command(bin, "-milter", "inet:127.0.0.1:1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	stderr := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	_, _ = io.WriteString(stdin, "config|smtpd-version|6.8.0p2\nconfig|ready\n")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(stderr.String(), "registered with smtpd") {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("filter-milter did not register: %s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("filter-milter did not exit after SIGTERM")
	}
	if !strings.Contains(stderr.String(), "signal received") {
		t.Errorf("no log line for the signal: %s", stderr.String())
	}
	if !strings.HasSuffix(stdout.String(), "register|ready\n") {
		t.Errorf("stdout must carry nothing but protocol lines: %q", stdout.String())
	}
}

// lockedBuffer is a bytes.Buffer that exec's copying goroutine can write
// while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
