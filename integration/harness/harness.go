// Package harness runs filter-milter's real peers for the integration tests
// and the demo: OpenSMTPD (which starts filter-milter as a proc-exec filter),
// opendkim, python3-milter scripts and swaks. There are no mocks.
//
// Every server listens on 127.0.0.1 or on a unix socket in the test's own
// directory. Every process is started in its own process group and the
// whole group is killed on cleanup. Every Env has its own temporary
// directory, mode 0755 all the way down, because the opensmtpd, mailsink and
// opendkim users must read it.
//
// The harness needs root and the Debian packages that .ci/install-deps
// installs. When something is missing it fails the test with a message that
// says what is missing and how to install it; it never skips.
package harness

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TB is the part of testing.TB the harness uses, so that the demo program
// can use the harness without a testing.T.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	Failed() bool
}

// KeepEnv is the environment variable that keeps test directories after
// the run (set it to 1), for looking at configs, logs and deliveries.
const KeepEnv = "FILTER_MILTER_KEEP"

// Env is one test's temporary directory and the processes started in it.
type Env struct {
	tb  TB
	Dir string // 0755; removed on cleanup unless FILTER_MILTER_KEEP=1 or the test failed
}

// NewEnv creates a fresh directory for one test (or one subtest). The
// directory and everything the harness creates in it are world-readable
// (0755/0644); private keys are the exception (owned by opendkim, 0600).
func NewEnv(tb TB) *Env {
	tb.Helper()
	RequireRoot(tb)
	dir, err := os.MkdirTemp(TempBase(), "filter-milter-it-")
	if err != nil {
		tb.Fatalf("harness: create test dir: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatalf("harness: chmod test dir: %v", err)
	}
	e := &Env{tb: tb, Dir: dir}
	tb.Cleanup(func() {
		if os.Getenv(KeepEnv) == "1" || tb.Failed() {
			tb.Logf("harness: test dir kept: %s", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			tb.Logf("harness: remove %s: %v", dir, err)
		}
	})
	return e
}

// TempBase is where test directories go: os.TempDir() when every user can
// traverse it (the opensmtpd, mailsink and opendkim users must reach the
// files), /tmp otherwise.
func TempBase() string {
	base := os.TempDir()
	for d := base; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == filepath.Dir(d) {
			return base
		}
	}
}

// Path returns a path inside the test directory.
func (e *Env) Path(elem ...string) string {
	return filepath.Join(append([]string{e.Dir}, elem...)...)
}

// Mkdir creates a 0755 directory (and its parents) inside the test directory.
func (e *Env) Mkdir(elem ...string) string {
	e.tb.Helper()
	p := e.Path(elem...)
	if err := os.MkdirAll(p, 0o755); err != nil {
		e.tb.Fatalf("harness: mkdir %s: %v", p, err)
	}
	// MkdirAll honours the umask; make sure every level is 0755.
	for d := p; strings.HasPrefix(d, e.Dir) && d != e.Dir; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			e.tb.Fatalf("harness: chmod %s: %v", d, err)
		}
	}
	return p
}

// WriteFile writes a file inside the test directory with the given mode.
func (e *Env) WriteFile(name string, data []byte, mode os.FileMode) string {
	e.tb.Helper()
	p := e.Path(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.tb.Fatalf("harness: mkdir for %s: %v", p, err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		e.tb.Fatalf("harness: write %s: %v", p, err)
	}
	if err := os.Chmod(p, mode); err != nil { // WriteFile honours the umask
		e.tb.Fatalf("harness: chmod %s: %v", p, err)
	}
	return p
}

// ---------------------------------------------------------------------------
// Processes

// Proc is a started process, the leader of its own process group.
type Proc struct {
	Name    string
	LogPath string // stdout and stderr of the process
	Cmd     *exec.Cmd
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL
	// (default 5 s). libmilter-based milters take up to 5 s to notice
	// SIGTERM, so the harness gives them less.
	StopGrace time.Duration

	done    chan struct{}
	waitErr error
	stopped bool
	mu      sync.Mutex
	tb      TB
}

// Start runs argv in its own process group with stdout and stderr appended
// to <dir>/<name>.log. The process group is killed on cleanup (SIGTERM, then
// SIGKILL after 5 s), and when the test failed the tail of the log is
// printed with Logf.
func (e *Env) Start(name string, env []string, argv ...string) *Proc {
	e.tb.Helper()
	logPath := e.Path(name + ".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.tb.Fatalf("harness: open %s: %v", logPath, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = e.Dir
	cmd.Stdout = lf
	cmd.Stderr = lf
	if env != nil {
		cmd.Env = env
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		e.tb.Fatalf("harness: start %s (%s): %v", name, strings.Join(argv, " "), err)
	}
	lf.Close()
	p := &Proc{Name: name, LogPath: logPath, Cmd: cmd, done: make(chan struct{}), tb: e.tb}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	e.tb.Logf("harness: started %s pid %d: %s", name, cmd.Process.Pid, strings.Join(argv, " "))
	e.tb.Cleanup(func() {
		p.Stop()
		if e.tb.Failed() {
			e.tb.Logf("harness: last lines of %s:\n%s", logPath, Tail(logPath, 60))
		}
	})
	return p
}

// Exited reports whether the process has exited, and its wait error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop kills the process group: SIGTERM, then SIGKILL after StopGrace. It waits
// for the leader to exit. It is safe to call more than once.
func (p *Proc) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	p.stopped = true
	pgid := p.Cmd.Process.Pid
	grace := p.StopGrace
	if grace == 0 {
		grace = 5 * time.Second
	}
	start := time.Now()
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Members of the group that outlived the leader (a filter proc that
	// ignores SIGTERM, for instance) get SIGKILL.
	deadline := time.Now().Add(2 * time.Second)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			time.Sleep(50 * time.Millisecond)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Since(start); d > time.Second {
		p.tb.Logf("harness: stopping %s took %v", p.Name, d.Round(time.Millisecond))
	}
}

// Log returns the process's log so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Tail returns the last n lines of a file.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}

// ---------------------------------------------------------------------------
// Ports and readiness

var (
	portMu   sync.Mutex
	usedPort = map[int]bool{}
)

// FreePort returns a free TCP port on 127.0.0.1 that this process has not
// handed out before. It is picked below the kernel's ephemeral range
// (32768+), so that an outgoing connection (swaks, the filter's milter
// connections) cannot take it between the check and the server's bind.
func FreePort(tb TB) int {
	tb.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for range 1000 {
		p := 20000 + rand.IntN(12000)
		if usedPort[p] {
			continue
		}
		l, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		l.Close()
		if listening(p) {
			continue
		}
		usedPort[p] = true
		return p
	}
	tb.Fatalf("harness: no free port found on 127.0.0.1")
	return 0
}

// listening asks ss(8) whether something listens on TCP port p. No
// connection is made: a probe connection to smtpd would be a real SMTP
// session that the filter sees.
func listening(port int) bool {
	out, err := exec.Command("ss", "-Hltn", fmt.Sprintf("sport = :%d", port)).Output()
	return err == nil && len(bytes.TrimSpace(out)) > 0
}

// unixListening asks ss(8) whether a unix stream socket listens at path.
func unixListening(path string) bool {
	out, err := exec.Command("ss", "-Hlx", "src", path).Output()
	return err == nil && bytes.Contains(out, []byte(path))
}

// WaitTCP waits until something listens on port while p is alive.
func WaitTCP(tb TB, p *Proc, port int, timeout time.Duration) time.Duration {
	tb.Helper()
	return waitReady(tb, p, fmt.Sprintf("TCP 127.0.0.1:%d", port), timeout, func() bool { return listening(port) })
}

// WaitUnix waits until something listens on the unix socket path while p is
// alive.
func WaitUnix(tb TB, p *Proc, path string, timeout time.Duration) time.Duration {
	tb.Helper()
	return waitReady(tb, p, "unix socket "+path, timeout, func() bool { return unixListening(path) })
}

func waitReady(tb TB, p *Proc, what string, timeout time.Duration, ready func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for {
		if exited, err := p.Exited(); exited {
			tb.Fatalf("harness: %s exited (%v) before %s listened; log %s:\n%s", p.Name, err, what, p.LogPath, Tail(p.LogPath, 40))
		}
		if ready() {
			// Still alive after the port appeared? (A stale listener of
			// another process would fool the check, the process would then
			// die on its bind error.)
			time.Sleep(30 * time.Millisecond)
			if exited, err := p.Exited(); exited {
				tb.Fatalf("harness: %s exited (%v) right after %s appeared; log %s:\n%s", p.Name, err, what, p.LogPath, Tail(p.LogPath, 40))
			}
			d := time.Since(start)
			tb.Logf("harness: %s listens on %s after %v", p.Name, what, d.Round(time.Millisecond))
			return d
		}
		if time.Since(start) > timeout {
			tb.Fatalf("harness: %s does not listen on %s after %v; log %s:\n%s", p.Name, what, timeout, p.LogPath, Tail(p.LogPath, 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Small helpers

// run runs a command to completion and returns its combined output.
func run(name string, args ...string) (string, error) {
	var buf bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err := cmd.Run()
	return buf.String(), err
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// chownR changes the owner of path and everything below it.
func chownR(path string, uid, gid int) error {
	return filepath.Walk(path, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// shellQuote quotes s for /bin/sh when it contains anything but safe
// characters. smtpd runs proc-exec commands through /bin/sh -c.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./_-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
