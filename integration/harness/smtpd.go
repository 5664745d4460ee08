package harness

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// SMTPDVersion names an smtpd binary the tests run against.
type SMTPDVersion struct {
	Name string // subtest name: smtpd-6.8, smtpd-7.4, smtpd-7.6
	// Binary is smtpd's path on the host; StartSMTPD takes it in
	// SMTPDConfig.Binary and finds the version's Root from it.
	Binary string
	// Root, when set, is a Debian root of another release that smtpd
	// runs in (chroot Root /usr/sbin/smtpd); Binary is that file seen
	// from the host.
	Root string
	Hint string // how to install it
}

var (
	// SMTPD68 is Debian bookworm's opensmtpd 6.8.0p2 (filter protocol 0.6).
	SMTPD68 = SMTPDVersion{
		Name:   "smtpd-6.8",
		Binary: "/usr/sbin/smtpd",
		Hint:   installHint + "opensmtpd",
	}
	// SMTPD74 is bookworm-backports' opensmtpd 7.4.0p1 (protocol 0.7),
	// unpacked with dpkg -x beside 6.8 by .ci/install-deps. Its own
	// libexec directory is bind-mounted over /usr/libexec/opensmtpd in
	// smtpd's mount namespace (it runs mail.mda from there).
	SMTPD74 = SMTPDVersion{
		Name:   "smtpd-7.4",
		Binary: "/opt/opensmtpd-7.4/usr/sbin/smtpd",
		Hint: "run .ci/install-deps (`make deps`): it adds bookworm-backports to apt's sources, " +
			"`apt-get download opensmtpd/bookworm-backports` and `dpkg -x` it into /opt/opensmtpd-7.4",
	}
	// SMTPD76 is Debian 13 (trixie)'s opensmtpd 7.6.0p1 (protocol 0.7).
	// It needs trixie's glibc, so it runs with chroot in a minimal
	// trixie root that .ci/install-deps makes with debootstrap (see
	// chroot.go).
	SMTPD76 = SMTPDVersion{
		Name:   "smtpd-7.6",
		Binary: "/opt/opensmtpd-7.6-root" + chrootedBinary,
		Root:   "/opt/opensmtpd-7.6-root",
		Hint: "run .ci/install-deps (`make deps`): it makes the trixie root with " +
			"`debootstrap --variant=minbase --include=opensmtpd,python3-minimal,ca-certificates trixie /opt/opensmtpd-7.6-root " +
			"http://deb.debian.org/debian` (apt-get install debootstrap) and writes its stamp file " +
			"/opt/opensmtpd-7.6-root/" + rootStamp,
	}
)

// KnownSMTPDVersions returns every version the harness knows, oldest first.
func KnownSMTPDVersions() []SMTPDVersion {
	return []SMTPDVersion{SMTPD68, SMTPD74, SMTPD76}
}

// SMTPDVersionsEnv restricts the smtpd versions the tests run against, e.g.
// FILTER_MILTER_SMTPDS=smtpd-6.8. The default is every version; a version
// that is selected but not installed fails the test.
const SMTPDVersionsEnv = "FILTER_MILTER_SMTPDS"

// SMTPDVersions returns the smtpd versions to run the tests against.
func SMTPDVersions() []SMTPDVersion {
	all := KnownSMTPDVersions()
	sel := os.Getenv(SMTPDVersionsEnv)
	if sel == "" {
		return all
	}
	var out []SMTPDVersion
	for _, v := range all {
		for _, s := range strings.Split(sel, ",") {
			if strings.TrimSpace(s) == v.Name {
				out = append(out, v)
			}
		}
	}
	return out
}

// Require fails the test when the version's binary, or its root, is
// missing or incomplete.
func (v SMTPDVersion) Require(tb TB) {
	tb.Helper()
	if v.Root != "" {
		requireSMTPDRoot(tb, v.Root, v.Hint)
		return
	}
	if _, err := os.Stat(v.Binary); err != nil {
		tb.Fatalf("harness: %s is missing (%v); %s", v.Binary, err, v.Hint)
	}
}

// requireSMTPDBinary fails the test when binary, one of the known
// versions' or another, cannot run.
func requireSMTPDBinary(tb TB, binary string) {
	tb.Helper()
	for _, v := range KnownSMTPDVersions() {
		if filepath.Clean(binary) == v.Binary {
			v.Require(tb)
			return
		}
	}
	if _, err := os.Stat(binary); err != nil {
		tb.Fatalf("harness: smtpd binary %s: %v; %s", binary, err, installHint+"opensmtpd")
	}
}

// Listener is one `listen on 127.0.0.1 port N` line of smtpd.conf.
type Listener struct {
	// Name identifies the listener (Port(name)) and names its filter in
	// smtpd.conf, so the filter's stderr lines are logged as "<name>: ...".
	Name string
	// Filter, when not nil, are filter-milter's arguments: the listener
	// gets `filter "<name>" proc-exec "<filter-milter> <args>"`.
	Filter []string
	// FilterCommand, when set, is any other proc-exec command line (a
	// harness self-check filter); it wins over Filter.
	FilterCommand string
}

// SMTPDConfig describes one smtpd instance.
type SMTPDConfig struct {
	Binary    string     // default /usr/sbin/smtpd; SMTPD76.Binary runs chrooted in SMTPD76.Root
	Listeners []Listener // default: one listener "milter" without a filter
	Verbose   bool       // smtpd -v
	Trace     string     // smtpd -T <trace>, e.g. "filters"
}

// SMTPD is a running smtpd in its own mount namespace.
type SMTPD struct {
	env      *Env
	Proc     *Proc
	Binary   string
	Version  string // "OpenSMTPD 6.8.0p2"
	ConfPath string
	MailDir  string // one file per delivered message and recipient
	ports    map[string]int

	seenMu sync.Mutex
	seen   map[string]bool
	nsent  int
}

var mailsinkOnce sync.Mutex

// EnsureMailsink creates the system user mailsink (useradd -r -M -s
// /usr/sbin/nologin) that the mda runs as, unless it exists.
func EnsureMailsink(tb TB) *user.User {
	tb.Helper()
	mailsinkOnce.Lock()
	defer mailsinkOnce.Unlock()
	if u, err := user.Lookup("mailsink"); err == nil {
		return u
	}
	out, err := run("useradd", "-r", "-M", "-s", "/usr/sbin/nologin", "mailsink")
	if err != nil && exitCode(err) != 9 { // 9: the user exists
		tb.Fatalf("harness: useradd mailsink: %v\n%s", err, out)
	}
	u, err := user.Lookup("mailsink")
	if err != nil {
		tb.Fatalf("harness: user mailsink after useradd: %v", err)
	}
	tb.Logf("harness: created system user mailsink (uid %s)", u.Uid)
	return u
}

// StartSMTPD writes smtpd.conf and starts `smtpd -d -f smtpd.conf` inside
// `unshare --mount --propagation private` with private tmpfs mounts over
// /var/spool/smtpd (0711) and /run, and a private /etc/resolv.conf that
// points at 127.0.0.9, where nothing answers, so that smtpd's PTR lookups
// fail at once instead of stalling. Every recipient is delivered by an mda
// script into MailDir. smtpd's stderr (which carries the filter's stderr)
// goes to <dir>/smtpd.log. The process group is killed on cleanup.
//
// Without listeners, the config has one listener "milter" with no filter.
func StartSMTPD(tb TB, e *Env, cfg SMTPDConfig) *SMTPD {
	tb.Helper()
	RequireBaseTools(tb)
	if cfg.Binary == "" {
		cfg.Binary = SMTPD68.Binary
	}
	requireSMTPDBinary(tb, cfg.Binary)
	if len(cfg.Listeners) == 0 {
		cfg.Listeners = []Listener{{Name: "milter"}}
	}
	requireOnce(tb, "unshare", func() string {
		if out, err := run("unshare", "--mount", "--propagation", "private", "true"); err != nil {
			return "harness: `unshare --mount --propagation private true` failed (" + strings.TrimSpace(out) +
				"): smtpd runs in a private mount namespace, which needs root with CAP_SYS_ADMIN " +
				"(in a container: --privileged or --cap-add SYS_ADMIN; in a chroot, unshare says \"cannot change " +
				"root filesystem propagation\" unless / is a mount point: mount --bind the chroot onto itself first)"
		}
		return ""
	})
	ms := EnsureMailsink(tb)
	uid, _ := strconv.Atoi(ms.Uid)
	gid, _ := strconv.Atoi(ms.Gid)

	s := &SMTPD{env: e, Binary: cfg.Binary, ports: map[string]int{}, seen: map[string]bool{}}
	s.MailDir = e.Mkdir("mail")
	if err := os.Chown(s.MailDir, uid, gid); err != nil {
		tb.Fatalf("harness: chown %s: %v", s.MailDir, err)
	}
	e.Mkdir("sent")

	// The mda runs as mailsink, with the recipient as $1. It writes the
	// message to a temporary name, then renames it, so a reader never sees
	// half a file. Names sort by delivery time.
	mda := e.WriteFile("mda.sh", []byte(`#!/bin/sh
# mda for filter-milter's integration tests: one file per delivery
umask 022
dir='`+s.MailDir+`'
name="$(date +%s%N).$$.$(printf '%s' "$1" | tr -c 'A-Za-z0-9@._+-' '_')"
cat > "$dir/.tmp.$name" || exit 75
mv "$dir/.tmp.$name" "$dir/$name.eml" || exit 75
`), 0o755)
	vusers := e.WriteFile("vusers", []byte("@\tmailsink\n"), 0o644)
	resolv := e.WriteFile("resolv.conf", []byte("# nothing listens here: lookups fail at once\nnameserver 127.0.0.9\noptions timeout:1 attempts:1\n"), 0o644)

	var conf strings.Builder
	fmt.Fprintf(&conf, "# smtpd.conf written by filter-milter's integration harness\n")
	fmt.Fprintf(&conf, "table vusers file:%s\n\n", vusers)
	for _, l := range cfg.Listeners {
		cmdline := l.FilterCommand
		if cmdline == "" && l.Filter != nil {
			bin := BuildFilterMilter(tb)
			parts := []string{shellQuote(bin)}
			for _, a := range l.Filter {
				parts = append(parts, shellQuote(a))
			}
			cmdline = strings.Join(parts, " ")
		}
		if strings.ContainsAny(cmdline, "\"\n\\") {
			tb.Fatalf("harness: filter command for %s cannot be put in smtpd.conf: %q", l.Name, cmdline)
		}
		port := FreePort(tb)
		s.ports[l.Name] = port
		if cmdline != "" {
			fmt.Fprintf(&conf, "filter %q proc-exec \"%s\"\n", l.Name, cmdline)
			fmt.Fprintf(&conf, "listen on 127.0.0.1 port %d hostname mx.test.example filter %q\n\n", port, l.Name)
		} else {
			fmt.Fprintf(&conf, "# %s: no filter\nlisten on 127.0.0.1 port %d hostname mx.test.example\n\n", l.Name, port)
		}
	}
	fmt.Fprintf(&conf, "action \"save\" mda \"%s %%{rcpt}\" virtual <vusers> user mailsink\n", mda)
	fmt.Fprintf(&conf, "match from any for any action \"save\"\n")
	s.ConfPath = e.WriteFile("smtpd.conf", []byte(conf.String()), 0o644)

	flags := "-d"
	if cfg.Verbose {
		flags += " -v"
	}
	if cfg.Trace != "" {
		flags += " -T " + shellQuote(cfg.Trace)
	}
	s.launch(tb, e, cfg.Binary, flags, conf.String(), resolv)
	tb.Logf("harness: %s (%s), config %s:\n%s", s.Version, cfg.Binary, s.ConfPath, conf.String())
	for _, l := range cfg.Listeners {
		WaitTCP(tb, s.Proc, s.ports[l.Name], 10*time.Second)
	}
	tb.Cleanup(func() { s.checkLog(tb) })
	return s
}

// launch checks the configuration written to s.ConfPath (text, for the
// error message), reads smtpd's version and starts binary with flags in a
// private mount namespace: its own queue, control socket and resolver
// (resolv), so that it shares nothing with other instances. A binary
// unpacked under a root of its own (bookworm-backports' 7.4) gets that
// root's libexec directory, for mail.mda and friends. A binary that runs
// in a root of another release (SMTPDVersion.Root, trixie's 7.6) is run
// with chroot, the namespace's mounts bound into the root (chroot.go); its
// config check runs the same way, because the config and the files it
// names are under /tmp.
func (s *SMTPD) launch(tb TB, e *Env, binary, flags, text, resolv string) {
	tb.Helper()
	root := smtpdRoot(binary)
	if root != "" {
		EnsureMailsink(tb)
		syncRootUsers(tb, root)
	}
	// /var/spool/smtpd must exist on the host as a mount point.
	if err := os.MkdirAll("/var/spool/smtpd", 0o711); err != nil {
		tb.Fatalf("harness: mkdir /var/spool/smtpd: %v", err)
	}
	var extra string
	if root != "" {
		extra = rootBinds(root, resolv)
	} else if dir := strings.TrimSuffix(binary, "/usr/sbin/smtpd"); dir != binary && dir != "" {
		libexec := filepath.Join(dir, "usr/libexec/opensmtpd")
		if st, err := os.Stat(libexec); err == nil && st.IsDir() {
			if err := os.MkdirAll("/usr/libexec/opensmtpd", 0o755); err != nil {
				tb.Fatalf("harness: mkdir /usr/libexec/opensmtpd: %v", err)
			}
			extra = fmt.Sprintf("mount --bind '%s' /usr/libexec/opensmtpd\n", libexec)
		}
	}
	// smtpd -d logs every line of every one of its processes (and each
	// stderr line of a filter, which its lka process relays) with
	// vfprintf to the stderr they share, which stdio leaves unbuffered.
	// glibc 2.37 and later (trixie's, 7.6's root) write such output in
	// 128-byte pieces, so two processes' lines longer than that get
	// mixed up in smtpd.log, and a test that looks for a session's filter
	// line misses it; bookworm's glibc writes each line at once. Line
	// buffering (coreutils' stdbuf, an LD_PRELOAD that the children
	// smtpd forks and execs inherit) makes every line one write again on
	// every version.
	exe, daemon := shellQuote(binary), "stdbuf -eL "+shellQuote(binary)
	if root != "" {
		chroot := "chroot " + shellQuote(root) + " "
		exe, daemon = chroot+chrootedBinary, chroot+"/usr/bin/stdbuf -eL "+chrootedBinary
	}
	prelude := fmt.Sprintf(`#!/bin/sh
# Runs inside "unshare --mount --propagation private".
set -e
resolv=/etc/resolv.conf
if [ -L "$resolv" ]; then resolv=$(readlink -f "$resolv"); fi
mount -t tmpfs -o mode=0711 tmpfs /var/spool/smtpd
mount -t tmpfs -o mode=0755 tmpfs /run
case "$resolv" in
/run/*) mkdir -p "$(dirname "$resolv")"; : > "$resolv" ;;
esac
if [ -e "$resolv" ]; then mount --bind '%s' "$resolv"; fi
%s`, resolv, extra)
	check := e.WriteFile("smtpd-check.sh", []byte(prelude+fmt.Sprintf("exec %s -n -f '%s'\n", exe, s.ConfPath)), 0o755)
	if out, err := run("unshare", "--mount", "--propagation", "private", "/bin/sh", check); err != nil {
		tb.Fatalf("harness: `%s -n -f %s` (%s) failed: %v\n%s\nconfig:\n%s", exe, s.ConfPath, check, err, out, text)
	}
	version := []string{binary, "-h"}
	if root != "" {
		version = []string{"chroot", root, chrootedBinary, "-h"}
	}
	if out, err := run(version[0], version[1:]...); strings.Contains(out, "version:") {
		s.Version = strings.TrimSpace(strings.TrimPrefix(strings.SplitN(out, "\n", 2)[0], "version:"))
	} else {
		tb.Logf("harness: %s: %v %s", strings.Join(version, " "), err, out)
	}
	launcher := e.WriteFile("smtpd-launch.sh", []byte(prelude+fmt.Sprintf("exec %s %s -f '%s'\n", daemon, flags, s.ConfPath)), 0o755)
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	s.Proc = e.Start("smtpd", env, "unshare", "--mount", "--propagation", "private", "/bin/sh", launcher)
}

// Port returns the port of the named listener.
func (s *SMTPD) Port(listener string) int {
	p, ok := s.ports[listener]
	if !ok {
		panic("harness: no smtpd listener named " + listener)
	}
	return p
}

// LogPath is smtpd's log (stderr with -d), which also has the filter's
// stderr lines, prefixed with the filter's name.
func (s *SMTPD) LogPath() string { return s.Proc.LogPath }

var badLog = regexp.MustCompile(`(?m)^.*(WARNING: DATA RACE|lost processor|fatal|panic:|Exiting).*$`)

// Healthy fails the test when smtpd has exited, or when its log shows a
// lost filter proc, a fatal error or a race report from filter-milter.
func (s *SMTPD) Healthy(tb TB) {
	tb.Helper()
	if exited, err := s.Proc.Exited(); exited {
		tb.Fatalf("harness: smtpd exited (%v); log %s:\n%s", err, s.LogPath(), Tail(s.LogPath(), 60))
	}
	if m := badLog.FindAllString(s.Proc.Log(), 10); len(m) > 0 {
		tb.Fatalf("harness: smtpd's log %s shows trouble:\n%s\n--- tail:\n%s", s.LogPath(), strings.Join(m, "\n"), Tail(s.LogPath(), 60))
	}
}

// checkLog runs after smtpd is stopped: a race report from a -race build
// of filter-milter only shows in the log.
func (s *SMTPD) checkLog(tb TB) {
	s.Proc.Stop()
	log := s.Proc.Log()
	if strings.Contains(log, "WARNING: DATA RACE") {
		i := strings.Index(log, "WARNING: DATA RACE")
		end := min(len(log), i+6000)
		tb.Logf("harness: filter-milter race report in %s:\n%s", s.LogPath(), log[max(0, i-200):end])
		tb.Fatalf("harness: data race in filter-milter (see the log above)")
	}
}

// Swaks runs swaks against the named listener with extra arguments. It
// never fails the test on swaks' exit status: rejection tests expect one.
func (s *SMTPD) Swaks(tb TB, listener string, args ...string) SwaksResult {
	tb.Helper()
	return RunSwaks(tb, s.Port(listener), args...)
}

// Send sends one message to the named listener with swaks (see SendMessage).
func (s *SMTPD) Send(tb TB, listener string, m Message) SwaksResult {
	tb.Helper()
	s.seenMu.Lock()
	s.nsent++
	n := s.nsent
	s.seenMu.Unlock()
	name := fmt.Sprintf("%03d-%s.wire", n, sanitize(m.Name))
	return SendMessage(tb, s.env, s.Port(listener), name, m)
}

func sanitize(s string) string {
	if s == "" {
		return "msg"
	}
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// EchoFilterCommand copies testdata/echo_filter.py (a filter that echoes
// every data-line unchanged) into the test directory, where user opensmtpd
// can read it wherever the checkout is, and returns a proc-exec command
// line for Listener.FilterCommand.
func EchoFilterCommand(tb TB, e *Env) string {
	tb.Helper()
	src := filepath.Join(RepoRoot(tb), "integration", "harness", "testdata", "echo_filter.py")
	b, err := os.ReadFile(src)
	if err != nil {
		tb.Fatalf("harness: %v", err)
	}
	return "/usr/bin/python3 " + e.WriteFile("echo_filter.py", b, 0o755)
}
