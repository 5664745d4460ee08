package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// FaultMilterScript is the path of testdata/milters/fault_milter.py.
func FaultMilterScript(tb TB) string {
	tb.Helper()
	return filepath.Join(RepoRoot(tb), "testdata", "milters", "fault_milter.py")
}

// FaultMilter is testdata/milters/fault_milter.py on a fixed TCP port of
// 127.0.0.1, which it keeps across restarts: a test can let it die (mode
// die-mid) and start it again on the same port while filter-milter keeps
// its configuration.
type FaultMilter struct {
	Name string
	Port int
	Mode string
	Opts []string // key=value options after the mode
	Log  string   // <dir>/<name>.log, shared by every incarnation

	env    *Env
	tb     TB
	script string

	mu       sync.Mutex
	proc     *Proc
	starts   int
	stop     chan struct{}
	stopOnce sync.Once
	watching sync.WaitGroup
}

// StartFaultMilter runs fault_milter.py in mode with options (key=value)
// on a free port of 127.0.0.1 and waits until it listens.
func StartFaultMilter(tb TB, e *Env, name, mode string, opts ...string) *FaultMilter {
	tb.Helper()
	RequirePythonMilter(tb)
	f := &FaultMilter{Name: name, Port: FreePort(tb), Mode: mode, Opts: opts, env: e, tb: tb, script: FaultMilterScript(tb)}
	f.Log = e.Path(name + ".log")
	p, err := f.start()
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if f.stop != nil {
			f.stopWatch()
		}
		f.Proc().Stop()
		if tb.Failed() {
			tb.Logf("harness: last lines of %s:\n%s", f.Log, Tail(f.Log, 60))
		}
	})
	WaitTCP(tb, p, f.Port, 10*time.Second)
	return f
}

// Spec is the socket in libmilter's notation (what the script gets).
func (f *FaultMilter) Spec() string { return fmt.Sprintf("inet:%d@127.0.0.1", f.Port) }

// SpecHostPort is the socket as inet:127.0.0.1:PORT.
func (f *FaultMilter) SpecHostPort() string { return fmt.Sprintf("inet:127.0.0.1:%d", f.Port) }

func (f *FaultMilter) start() (*Proc, error) {
	argv := append([]string{"/usr/bin/python3", f.script, f.Spec(), f.Mode}, f.Opts...)
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", "PYTHONUNBUFFERED=1"}
	p, err := faultStartProc(f.tb, f.env, f.Name, env, argv...)
	if err != nil {
		return nil, err
	}
	p.StopGrace = 300 * time.Millisecond
	f.mu.Lock()
	f.proc = p
	f.starts++
	f.mu.Unlock()
	return p, nil
}

// Proc is the current incarnation.
func (f *FaultMilter) Proc() *Proc {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.proc
}

// Starts is how many times the milter was started (1 + restarts).
func (f *FaultMilter) Starts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts
}

// Kill stops the current incarnation (SIGTERM, SIGKILL after 300 ms).
func (f *FaultMilter) Kill() { f.Proc().Stop() }

// Restart starts a new incarnation on the same port (the current one must
// have exited) and does not wait for it to listen: until it does,
// filter-milter's connections are refused, which is part of the fault.
func (f *FaultMilter) Restart() {
	f.tb.Helper()
	if _, err := f.start(); err != nil {
		f.tb.Fatalf("%v", err)
	}
}

// KeepAlive restarts the milter whenever it exits, after delay, until the
// returned function is called (which waits for the watcher to end). It
// must be stopped before the test ends.
func (f *FaultMilter) KeepAlive(delay time.Duration) (stop func()) {
	f.stop = make(chan struct{})
	f.watching.Add(1)
	go func() {
		defer f.watching.Done()
		for {
			p := f.Proc()
			select {
			case <-f.stop:
				return
			case <-p.done:
			}
			select {
			case <-f.stop:
				return
			case <-time.After(delay):
			}
			if _, err := f.start(); err != nil {
				// Not Fatalf: this is not the test's goroutine. The
				// scenario then sees a milter that stays down.
				f.tb.Logf("harness: cannot restart %s: %v", f.Name, err)
				return
			}
		}
	}()
	return f.stopWatch
}

func (f *FaultMilter) stopWatch() {
	f.stopOnce.Do(func() {
		close(f.stop)
		f.watching.Wait()
	})
}

// faultStartProc is Env.Start without a cleanup of its own (the caller stops
// the process) and without failing the test (it may run on another
// goroutine), for processes a test starts again and again.
func faultStartProc(tb TB, e *Env, name string, env []string, argv ...string) (*Proc, error) {
	logPath := e.Path(name + ".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("harness: open %s: %v", logPath, err)
	}
	defer lf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = e.Dir
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("harness: start %s (%s): %v", name, strings.Join(argv, " "), err)
	}
	p := &Proc{Name: name, LogPath: logPath, Cmd: cmd, done: make(chan struct{}), tb: tb}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	tb.Logf("harness: started %s pid %d: %s", name, cmd.Process.Pid, strings.Join(argv, " "))
	return p, nil
}

// Lines returns the log lines (of every incarnation) that contain every
// one of the given substrings.
func (f *FaultMilter) Lines(subs ...string) []string {
	return faultGrepFile(f.Log, subs...)
}

func faultGrepFile(path string, subs ...string) []string {
	p := &Proc{LogPath: path}
	var out []string
	for _, l := range strings.Split(p.Log(), "\n") {
		ok := l != ""
		for _, s := range subs {
			ok = ok && strings.Contains(l, s)
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}
