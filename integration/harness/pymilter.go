package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// PyMilter is a running python3-milter script.
type PyMilter struct {
	Proc *Proc
	// Spec is the socket in the notation given to the script (libmilter:
	// inet:PORT@127.0.0.1 or unix:/path).
	Spec string
	Port int    // 0 for a unix socket
	Path string // "" for TCP
}

// SpecHostPort returns the TCP socket as inet:127.0.0.1:PORT, the other
// notation filter-milter accepts.
func (m *PyMilter) SpecHostPort() string {
	if m.Port == 0 {
		return m.Spec
	}
	return fmt.Sprintf("inet:127.0.0.1:%d", m.Port)
}

// ScriptedMilter is the path of testdata/milters/scripted_milter.py.
func ScriptedMilter(tb TB) string {
	tb.Helper()
	return filepath.Join(RepoRoot(tb), "testdata", "milters", "scripted_milter.py")
}

// StartPyMilter runs a python3-milter script with Debian's /usr/bin/python3
// (python3 on PATH may be another interpreter that cannot import Milter),
// listening on spec: "" or "inet" for a free port of 127.0.0.1, "unix" for a
// socket in the test directory, or an explicit libmilter spec. The script
// gets the spec as its first argument, then extra; its stderr goes to
// <name>.log. A unix socket is made mode 0666 once it listens, so that
// filter-milter (user opensmtpd) can connect.
func StartPyMilter(tb TB, e *Env, name, script, spec string, extra ...string) *PyMilter {
	tb.Helper()
	RequirePythonMilter(tb)
	if _, err := os.Stat(script); err != nil {
		tb.Fatalf("harness: milter script: %v", err)
	}
	m := &PyMilter{}
	switch {
	case spec == "" || spec == "inet":
		m.Port = FreePort(tb)
		m.Spec = fmt.Sprintf("inet:%d@127.0.0.1", m.Port)
	case spec == "unix":
		m.Path = e.Mkdir(name+"-sock") + "/milter.sock"
		m.Spec = "unix:" + m.Path
	case strings.HasPrefix(spec, "unix:"):
		m.Path = strings.TrimPrefix(spec, "unix:")
		m.Spec = spec
	default:
		tb.Fatalf("harness: StartPyMilter: unsupported spec %q (want \"\", inet, unix or unix:/path)", spec)
	}
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", "PYTHONUNBUFFERED=1"}
	m.Proc = e.Start(name, env, append([]string{"/usr/bin/python3", script, m.Spec}, extra...)...)
	m.Proc.StopGrace = 300 * time.Millisecond
	if m.Path != "" {
		WaitUnix(tb, m.Proc, m.Path, 10*time.Second)
		if err := os.Chmod(m.Path, 0o666); err != nil {
			tb.Fatalf("harness: chmod %s: %v", m.Path, err)
		}
	} else {
		WaitTCP(tb, m.Proc, m.Port, 10*time.Second)
	}
	return m
}
