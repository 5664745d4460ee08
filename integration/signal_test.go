//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// Every signal an administrator, a script or a terminal commonly sends,
// but the two that mean "stop", leaves filter-milter running under real
// smtpd: smtpd treats any exit of its filter as fatal. After each, smtpd
// is alive, the filter has the same pid, a message still goes through the
// milter, and the filter logged the signal (all but SIGPROF, which the Go
// runtime keeps to itself; see cmd/filter-milter/signals.go).
func TestSignals(t *testing.T) {
	const ignored = "signal ignored: only SIGTERM or SIGINT stop filter-milter, and smtpd stops with it"
	signals := []struct {
		name string
		sig  syscall.Signal
		log  string // what the filter logs for it; "" for none
	}{
		// SIGHUP reloads (TestReload); with no -config file nothing changes.
		{"SIGHUP", syscall.SIGHUP, `configuration reloaded: nothing changed`},
		{"SIGUSR1", syscall.SIGUSR1, ignored + ` {"signal": "SIGUSR1"}`},
		{"SIGUSR2", syscall.SIGUSR2, ignored + ` {"signal": "SIGUSR2"}`},
		{"SIGQUIT", syscall.SIGQUIT, ignored + ` {"signal": "SIGQUIT"}`},
		{"SIGALRM", syscall.SIGALRM, ignored + ` {"signal": "SIGALRM"}`},
		{"SIGPIPE", syscall.SIGPIPE, `SIGPIPE received: a peer closed its end; the write that failed reports it {"signal": "SIGPIPE"}`},
		{"SIGTSTP", syscall.SIGTSTP, ignored + ` {"signal": "SIGTSTP"}`},
		{"SIGTTIN", syscall.SIGTTIN, ignored + ` {"signal": "SIGTTIN"}`},
		{"SIGTTOU", syscall.SIGTTOU, ignored + ` {"signal": "SIGTTOU"}`},
		{"SIGVTALRM", syscall.SIGVTALRM, ignored + ` {"signal": "SIGVTALRM"}`},
		{"SIGPROF", syscall.SIGPROF, ""},
		{"SIGWINCH", syscall.SIGWINCH, ignored + ` {"signal": "SIGWINCH"}`},
		{"SIGXCPU", syscall.SIGXCPU, ignored + ` {"signal": "SIGXCPU"}`},
		{"SIGXFSZ", syscall.SIGXFSZ, ignored + ` {"signal": "SIGXFSZ"}`},
	}
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		m := harness.StartFaultMilter(t, env, "fault-ok", "ok")
		bin := harness.BuildFilterMilter(t)
		// debug: SIGPIPE is logged at debug level.
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "milter", Filter: []string{"-milter", m.SpecHostPort(), "-log-level", "debug"}},
		}})
		pid := filterPID(t, s, bin)
		waitLog(t, s, "registered with smtpd", 1)
		sendThrough := func(what string, n int) {
			t.Helper()
			r := s.Swaks(t, "milter", "--from", "alice@test.example", "--to", fmt.Sprintf("sig%02d@test.example", n))
			if !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
				t.Fatalf("%s: the message was not accepted: %s\n%s", what, r.Summary(), r.Output)
			}
			d := s.WaitDeliveries(t, 1, 10*time.Second)[0]
			if !bytes.Contains(d.Data, []byte(fieldFaultMilter+": seen")) {
				t.Errorf("%s: delivered without the milter's field:\n%s", what, d.Data)
			}
		}
		sendThrough("before any signal", 0)
		for i, c := range signals {
			name := c.name
			before := strings.Count(s.Proc.Log(), c.log)
			if err := syscall.Kill(pid, c.sig); err != nil {
				t.Fatalf("kill -%s %d: %v", name, pid, err)
			}
			if c.log != "" {
				waitLog(t, s, c.log, before+1)
			}
			s.Healthy(t)
			if now := filterPID(t, s, bin); now != pid {
				t.Fatalf("after %s the filter is pid %d, not %d: it was restarted", name, now, pid)
			}
			if st := procState(pid); st == "T" || st == "t" {
				t.Fatalf("after %s the filter is stopped (state %s)", name, st)
			}
			sendThrough("after "+name, i+1)
			t.Logf("%s: smtpd alive, filter pid %d unchanged, a message went through", name, pid)
		}
		s.Healthy(t)
	})
}

// filterPID finds the filter-milter process smtpd started: the process
// running bin (seen from the host, or from inside smtpd's root) whose
// ancestors include smtpd's. It waits for it, since
// smtpd starts its filters after it listens.
func filterPID(t *testing.T, s *harness.SMTPD, bin string) int {
	t.Helper()
	root := s.Proc.Cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		var found []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			// Under smtpd 7.6, chrooted in its trixie root, the kernel
			// shows the binary's path with the root in front.
			if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err != nil || !strings.HasSuffix(exe, bin) {
				continue
			}
			if descends(pid, root) {
				found = append(found, pid)
			}
		}
		if len(found) == 1 {
			return found[0]
		}
		if len(found) > 1 {
			t.Fatalf("%d filter-milter processes under smtpd pid %d: %v", len(found), root, found)
		}
		if time.Now().After(deadline) {
			var all []string
			for _, e := range ents {
				exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
				cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
				if strings.Contains(exe, "filter-milter") || bytes.Contains(cmdline, []byte(bin)) {
					pid, _ := strconv.Atoi(e.Name())
					all = append(all, fmt.Sprintf("%d (exe %s, parent %d)", pid, exe, procField(pid, 4)))
				}
			}
			t.Fatalf("no filter-milter process (%s) under smtpd pid %d after 10s; candidates: %v", bin, root, all)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// descends reports whether pid has root among its ancestors.
func descends(pid, root int) bool {
	for i := 0; i < 64 && pid > 1; i++ {
		ppid := procField(pid, 4)
		if ppid == root {
			return true
		}
		pid = ppid
	}
	return false
}

// procField is a numeric field of /proc/PID/stat (1-based, as proc(5)
// counts them), read after the command name, which may hold spaces.
func procField(pid, n int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:])) // from field 3 on
	if n-3 >= len(f) {
		return 0
	}
	v, _ := strconv.Atoi(f[n-3])
	return v
}

// procState is the state letter of /proc/PID/stat (R, S, T for stopped...).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if i := bytes.LastIndexByte(b, ')'); err == nil && i >= 0 && i+2 < len(b) {
		return string(b[i+2])
	}
	return ""
}

// waitLog waits until smtpd's log (which has the filter's stderr) holds
// text n times.
func waitLog(t *testing.T, s *harness.SMTPD, text string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(s.Proc.Log(), text) < n {
		if time.Now().After(deadline) {
			t.Fatalf("smtpd's log does not show %q (%d times) after 10s:\n%s", text, n, harness.Tail(s.LogPath(), 30))
		}
		s.Healthy(t)
		time.Sleep(20 * time.Millisecond)
	}
}
