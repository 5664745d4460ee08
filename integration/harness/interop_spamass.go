package harness

import (
	"fmt"
	"os/exec"
	"time"
)

// SpamAss is a running spamd + spamass-milter pair.
type SpamAss struct {
	Spamd, Milter *Proc
	Spec          string
	RejectScore   int
	RejectText    string
}

// StartSpamAss runs Debian's spamd (shipped rules, --local: no network
// tests) on a free port and spamass-milter on another, calling spamc
// against it, rejecting at score 15 with "Blocked by SpamAssassin (test)".
func StartSpamAss(tb TB, e *Env) *SpamAss {
	tb.Helper()
	RequireInterop(tb, InteropPackage{"spamd", "/usr/sbin/spamd"}, InteropPackage{"spamc", "/usr/bin/spamc"},
		InteropPackage{"spamass-milter", "/usr/sbin/spamass-milter"})
	requireUser(tb, "debian-spamd", "spamd")
	sp := FreePort(tb)
	mp := FreePort(tb)
	s := &SpamAss{Spec: fmt.Sprintf("inet:%d@127.0.0.1", mp), RejectScore: 15, RejectText: "Blocked by SpamAssassin (test)"}
	s.Spamd = e.Start("spamd", nil, "spamd", fmt.Sprintf("--listen=127.0.0.1:%d", sp), "--allowed-ips=127.0.0.1",
		"--max-children=2", "--min-children=1", "--local", "--username=debian-spamd", "--groupname=debian-spamd",
		"--nouser-config", "--helper-home-dir=/var/lib/spamassassin", "--syslog=stderr")
	s.Spamd.StopGrace = 2 * time.Second
	start := time.Now()
	WaitTCP(tb, s.Spamd, sp, 60*time.Second)
	for {
		out, err := exec.Command("spamc", "-d", "127.0.0.1", "-p", fmt.Sprint(sp), "-K").CombinedOutput()
		if err == nil {
			break
		}
		if time.Since(start) > 60*time.Second {
			tb.Fatalf("harness: spamd does not answer spamc -K: %v %s\n%s", err, out, Tail(s.Spamd.LogPath, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Logf("harness: spamd %s answers spamc -K after %v", PackageVersion("spamd"), time.Since(start).Round(time.Millisecond))
	s.Milter = e.Start("spamass-milter", nil, "spamass-milter", "-p", s.Spec, "-r", fmt.Sprint(s.RejectScore),
		"-R", s.RejectText, "--", "-d", "127.0.0.1", "-p", fmt.Sprint(sp))
	s.Milter.StopGrace = time.Second
	WaitTCP(tb, s.Milter, mp, 15*time.Second)
	tb.Logf("harness: spamass-milter %s on %s (-r %d)", PackageVersion("spamass-milter"), s.Spec, s.RejectScore)
	return s
}
