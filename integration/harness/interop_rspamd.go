package harness

import (
	"fmt"
	"os"
	"time"
)

// RspamdCacheDir is rspamd's DBDIR for the interop tests. It is kept
// between runs: the hyperscan cache compiled there on the first start
// (about 8 s) makes later starts take half a second.
const RspamdCacheDir = "/var/cache/filter-milter-rspamd"

// Rspamd is a running rspamd proxy worker in milter mode (self_scan).
type Rspamd struct {
	Proc    *Proc
	Spec    string // inet:PORT@127.0.0.1
	Startup time.Duration
}

// StartRspamd runs Debian's rspamd with the stock /etc/rspamd/rspamd.conf
// and LOCAL_CONFDIR = a copy of testdata/interop/rspamd (proxy worker as a
// self-scanning milter on a free port, normal and controller workers off,
// no outside DNS, milter_headers for local mail too, a local rule that
// forces the "add header" action). Nothing under /etc is changed.
func StartRspamd(tb TB, e *Env) *Rspamd {
	tb.Helper()
	RequireInterop(tb, InteropPackage{"rspamd", "/usr/bin/rspamd"})
	requireUser(tb, "_rspamd", "rspamd")
	port := FreePort(tb)
	local := CopyInteropData(tb, e, "rspamd", "rspamd-local", map[string]string{"@PORT@": fmt.Sprint(port)})
	rundir := e.Mkdir("rspamd-run")
	logdir := e.Mkdir("rspamd-log")
	if err := os.MkdirAll(RspamdCacheDir, 0o755); err != nil {
		tb.Fatalf("harness: %v", err)
	}
	for _, d := range []string{rundir, logdir, RspamdCacheDir} {
		ChownTo(tb, d, "_rspamd")
	}
	args := []string{"rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", "/etc/rspamd/rspamd.conf",
		"--var=LOCAL_CONFDIR=" + local, "--var=DBDIR=" + RspamdCacheDir,
		"--var=RUNDIR=" + rundir, "--var=LOGDIR=" + logdir}
	r := &Rspamd{Spec: fmt.Sprintf("inet:%d@127.0.0.1", port)}
	r.Proc = e.Start("rspamd", nil, args...)
	r.Proc.StopGrace = 2 * time.Second
	r.Startup = WaitTCP(tb, r.Proc, port, 60*time.Second)
	tb.Logf("harness: rspamd %s (proxy, milter, self_scan) on %s, started in %v", PackageVersion("rspamd"), r.Spec, r.Startup.Round(time.Millisecond))
	return r
}
