package harness

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
)

// A Debian release's smtpd built against a newer glibc than the machine's
// (trixie's 7.6.0p1 needs glibc 2.38; bookworm has 2.36) cannot run from a
// dpkg -x directory like 7.4's. .ci/install-deps makes a minimal root of
// that release with debootstrap instead, and the harness runs smtpd in it
// with chroot, inside the test's private mount namespace, where the
// namespace's own /tmp, /run, spool and resolv.conf are bound into the
// root. Everything else stays on the host: filter-milter (built here),
// its configuration, the mda script and the test directory are under
// /tmp (or TempBase, bound at the same path), and the milters listen on
// loopback or on unix sockets in the test directory, which the chrooted
// filter reaches as the host does (same network namespace, same paths).
// The binds live and die with the namespace: a second start makes fresh
// ones and finds no stale bind of a test directory removed since.
//
// smtpd inside the root resolves users in the root's /etc/passwd: the
// filter proc runs as its opensmtpd, the mda as its mailsink. syncRootUsers
// gives them the host's uids and gids, so that files the harness chowns on
// the host belong to the same users inside.

// rootStamp is the file .ci/install-deps writes last into a root it built
// (`opensmtpd <version>`): a root without it is incomplete.
const rootStamp = ".filter-milter-root"

// chrootedBinary is the path of smtpd inside a root.
const chrootedBinary = "/usr/sbin/smtpd"

// smtpdRoot returns the root that binary must run in ("" for a binary
// that runs on the host): the Root of the known version whose Binary it is.
func smtpdRoot(binary string) string {
	for _, v := range KnownSMTPDVersions() {
		if v.Root != "" && filepath.Clean(binary) == v.Binary {
			return v.Root
		}
	}
	return ""
}

// requireSMTPDRoot fails the test unless root is complete (has smtpd and the
// stamp file).
func requireSMTPDRoot(tb TB, root, hint string) {
	tb.Helper()
	if _, err := os.Stat(filepath.Join(root, chrootedBinary)); err != nil {
		tb.Fatalf("harness: %s has no %s (%v); %s", root, chrootedBinary, err, hint)
	}
	if _, err := os.Stat(filepath.Join(root, rootStamp)); err != nil {
		tb.Fatalf("harness: %s is incomplete: no %s (%v); %s", root, rootStamp, err, hint)
	}
}

// rootUsers are the users that must have the same ids in a root as on the
// host: smtpd's own two (filter procs run as opensmtpd) and the mda's.
var rootUsers = []string{"opensmtpd", "opensmtpq", "mailsink"}

var (
	rootUsersMu   sync.Mutex
	rootUsersDone = map[string]string{} // root -> failure message ("" when done)
)

// syncRootUsers gives each of rootUsers in root the uid and gid it has on
// the host, creating it there when it is missing (with the root's own
// groupadd/useradd/groupmod/usermod, which keep shadow files consistent).
// It runs once per root and process; the host users must exist.
func syncRootUsers(tb TB, root string) {
	tb.Helper()
	rootUsersMu.Lock()
	msg, done := rootUsersDone[root]
	if !done {
		msg = syncRootUsersOnce(tb, root)
		rootUsersDone[root] = msg
	}
	rootUsersMu.Unlock()
	if msg != "" {
		tb.Fatalf("%s", msg)
	}
}

func syncRootUsersOnce(tb TB, root string) string {
	chroot := func(args ...string) (string, error) {
		return run("chroot", append([]string{root}, args...)...)
	}
	for _, name := range rootUsers {
		hu, err := user.Lookup(name)
		if err != nil {
			return fmt.Sprintf("harness: host user %s: %v", name, err)
		}
		hg, err := user.LookupGroupId(hu.Gid)
		if err != nil {
			return fmt.Sprintf("harness: host group %s of user %s: %v", hu.Gid, name, err)
		}
		// The group first: useradd -g needs it.
		var steps [][]string
		if out, err := chroot("getent", "group", hg.Name); err != nil {
			steps = append(steps, []string{"groupadd", "-o", "-g", hg.Gid, hg.Name})
		} else if f := strings.Split(strings.TrimSpace(out), ":"); len(f) < 3 || f[2] != hg.Gid {
			steps = append(steps, []string{"groupmod", "-o", "-g", hg.Gid, hg.Name})
		}
		if out, err := chroot("getent", "passwd", name); err != nil {
			steps = append(steps, []string{"useradd", "-o", "-r", "-M", "-u", hu.Uid, "-g", hg.Gid,
				"-d", hu.HomeDir, "-s", "/usr/sbin/nologin", name})
		} else if f := strings.Split(strings.TrimSpace(out), ":"); len(f) < 4 || f[2] != hu.Uid || f[3] != hu.Gid {
			steps = append(steps, []string{"usermod", "-o", "-u", hu.Uid, "-g", hg.Gid, name})
		}
		for _, s := range steps {
			if out, err := chroot(s...); err != nil {
				return fmt.Sprintf("harness: chroot %s %s: %v\n%s", root, strings.Join(s, " "), err, out)
			}
			tb.Logf("harness: chroot %s %s (as on the host)", root, strings.Join(s, " "))
		}
	}
	return ""
}

// rootBinds returns the shell lines, run inside the test's private mount
// namespace after its own /var/spool/smtpd, /run and resolv.conf are
// mounted, that make root see them, /tmp, TempBase (when it is elsewhere),
// proc and /dev.
func rootBinds(root, resolv string) string {
	var b strings.Builder
	bind := func(src, dst string) {
		fmt.Fprintf(&b, "mount --bind %s %s\n", shellQuote(src), shellQuote(filepath.Join(root, dst)))
	}
	bind("/tmp", "/tmp")
	bind("/run", "/run")
	fmt.Fprintf(&b, "mkdir -p %s\n", shellQuote(filepath.Join(root, "/var/spool/smtpd")))
	bind("/var/spool/smtpd", "/var/spool/smtpd")
	fmt.Fprintf(&b, "[ -e %[1]s ] || : > %[1]s\n", shellQuote(filepath.Join(root, "/etc/resolv.conf")))
	bind(resolv, "/etc/resolv.conf")
	fmt.Fprintf(&b, "mount -t proc proc %s\n", shellQuote(filepath.Join(root, "/proc")))
	fmt.Fprintf(&b, "mount --rbind /dev %s\n", shellQuote(filepath.Join(root, "/dev")))
	if base := TempBase(); base != "/tmp" && !strings.HasPrefix(base, "/tmp/") {
		fmt.Fprintf(&b, "mkdir -p %s\n", shellQuote(filepath.Join(root, base)))
		bind(base, base)
	}
	return b.String()
}
