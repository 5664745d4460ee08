package harness

import (
	"os"
	"os/exec"
	"os/user"
	"strings"
	"sync"
)

// installHint is appended to every "missing" failure.
const installHint = "install the test dependencies with `make deps` (runs .ci/install-deps as root), or by hand: " +
	"apt-get install -y --no-install-recommends "

// RequireRoot fails the test unless it runs as root: smtpd, unshare, mount,
// useradd and chown need it.
func RequireRoot(tb TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatalf("harness: the integration tests must run as root (smtpd, unshare --mount, useradd, chown); euid is %d", os.Geteuid())
	}
}

// tool is an executable the harness runs and the Debian package that has it.
type tool struct {
	path string // absolute, or a name looked up in PATH
	pkg  string
}

var (
	toolSMTPD    = tool{"/usr/sbin/smtpd", "opensmtpd"}
	toolSwaks    = tool{"swaks", "swaks libnet-ssleay-perl libio-socket-ssl-perl"}
	toolOpenDKIM = tool{"/usr/sbin/opendkim", "opendkim"}
	toolGenKey   = tool{"opendkim-genkey", "opendkim-tools"}
	toolUnshare  = tool{"unshare", "util-linux"}
	toolMount    = tool{"mount", "mount"}
	toolSS       = tool{"ss", "iproute2"}
	toolUseradd  = tool{"useradd", "passwd"}
	toolPython   = tool{"/usr/bin/python3", "python3-milter"}
	requireMu    sync.Mutex
)

func requireTools(tb TB, tools ...tool) {
	tb.Helper()
	var missing []string
	pkgs := map[string]bool{}
	for _, t := range tools {
		if _, err := exec.LookPath(t.path); err != nil {
			missing = append(missing, t.path)
			pkgs[t.pkg] = true
		}
	}
	if len(missing) > 0 {
		var p []string
		for k := range pkgs {
			p = append(p, k)
		}
		tb.Fatalf("harness: missing %s; %s%s", strings.Join(missing, ", "), installHint, strings.Join(p, " "))
	}
}

// RequireBaseTools fails the test when a tool the harness always needs is
// missing (smtpd, swaks, unshare, mount, ss, useradd).
func RequireBaseTools(tb TB) {
	tb.Helper()
	RequireRoot(tb)
	requireTools(tb, toolSMTPD, toolSwaks, toolUnshare, toolMount, toolSS, toolUseradd)
	requireUser(tb, "opensmtpd", "opensmtpd")
}

// RequirePythonMilter fails the test unless Debian's /usr/bin/python3 can
// import Milter (python3-milter). python3 on PATH may be another
// interpreter (pyenv) that cannot.
func RequirePythonMilter(tb TB) {
	tb.Helper()
	requireTools(tb, toolPython)
	requireOnce(tb, "python3-milter", func() string {
		out, err := exec.Command("/usr/bin/python3", "-c", "import Milter").CombinedOutput()
		if err != nil {
			return "harness: /usr/bin/python3 cannot import Milter (" + strings.TrimSpace(string(out)) + "); " + installHint + "python3-milter"
		}
		return ""
	})
}

// RequireOpenDKIM fails the test unless opendkim, opendkim-genkey and the
// opendkim user exist.
func RequireOpenDKIM(tb TB) {
	tb.Helper()
	requireTools(tb, toolOpenDKIM, toolGenKey)
	requireUser(tb, "opendkim", "opendkim")
}

func requireUser(tb TB, name, pkg string) {
	tb.Helper()
	if _, err := user.Lookup(name); err != nil {
		tb.Fatalf("harness: system user %q is missing (created by the %s package); %s%s", name, pkg, installHint, pkg)
	}
}

// requireOnce runs check once per process; a non-empty result is a failure
// message, repeated for every later caller.
func requireOnce(tb TB, key string, check func() string) {
	tb.Helper()
	requireMu.Lock()
	msg, done := requireMsgs[key]
	if !done {
		msg = check()
		requireMsgs[key] = msg
	}
	requireMu.Unlock()
	if msg != "" {
		tb.Fatalf("%s", msg)
	}
}

var requireMsgs = map[string]string{}
