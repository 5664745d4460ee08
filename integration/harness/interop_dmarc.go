package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// TestDNS is a dnsmasq serving testdata/interop/dnsmasq's zone on port 53
// of a 127/8 address of its own, and a resolv.conf that points at it.
type TestDNS struct {
	Proc   *Proc
	IP     string
	Resolv string
}

var (
	dnsMu sync.Mutex
	dnsN  int
)

// StartTestDNS runs `dnsmasq -k` with the test zone (_dmarc and SPF records
// of test.example; everything else NXDOMAIN). extra are more dnsmasq.conf
// lines (e.g. txt-record=...).
func StartTestDNS(tb TB, e *Env, extra ...string) *TestDNS {
	tb.Helper()
	RequireInterop(tb, InteropPackage{"dnsmasq-base", "/usr/sbin/dnsmasq"})
	dnsMu.Lock()
	dnsN++
	ip := fmt.Sprintf("127.53.%d.%d", os.Getpid()%250+1, dnsN%250+1)
	dnsMu.Unlock()
	dir := CopyInteropData(tb, e, "dnsmasq", "dnsmasq", map[string]string{"@IP@": ip, "@EXTRA@": strings.Join(extra, "\n")})
	d := &TestDNS{IP: ip}
	d.Resolv = e.WriteFile("dnsmasq/resolv.conf", []byte("nameserver "+ip+"\noptions timeout:1 attempts:1\n"), 0o644)
	d.Proc = e.Start("dnsmasq", nil, "dnsmasq", "-k", "-C", dir+"/dnsmasq.conf")
	d.Proc.StopGrace = time.Second
	start := time.Now()
	for {
		out, err := exec.Command("ss", "-Hlun", "src", ip+":53").Output()
		if err == nil && strings.Contains(string(out), ip) {
			break
		}
		if exited, err := d.Proc.Exited(); exited {
			tb.Fatalf("harness: dnsmasq exited (%v):\n%s", err, Tail(d.Proc.LogPath, 40))
		}
		if time.Since(start) > 10*time.Second {
			tb.Fatalf("harness: dnsmasq does not listen on %s:53:\n%s", ip, Tail(d.Proc.LogPath, 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
	tb.Logf("harness: dnsmasq %s serves the test zone on %s:53", PackageVersion("dnsmasq-base"), ip)
	return d
}

// WithResolv returns argv wrapped so that it runs in a private mount
// namespace whose /etc/resolv.conf is resolv (for daemons that have no
// name server option and read resolv.conf: opendmarc, libspf2).
func WithResolv(tb TB, e *Env, name, resolv string, argv ...string) []string {
	tb.Helper()
	var q []string
	for _, a := range argv {
		q = append(q, shellQuote(a))
	}
	script := e.WriteFile(name+"-launch.sh", []byte(fmt.Sprintf(`#!/bin/sh
set -e
r=/etc/resolv.conf
if [ -L "$r" ]; then r=$(readlink -f "$r"); fi
if [ ! -e "$r" ]; then mkdir -p "$(dirname "$r")"; : > "$r"; fi
mount --bind '%s' "$r"
exec %s
`, resolv, strings.Join(q, " "))), 0o755)
	return []string{"unshare", "--mount", "--propagation", "private", "/bin/sh", script}
}

// OpenDMARC is a running opendmarc.
type OpenDMARC struct {
	Proc *Proc
	Spec string
}

// StartOpenDMARC runs `opendmarc -f -c conf` (testdata/interop/opendmarc)
// on a free port, with /etc/resolv.conf pointing at dns.
func StartOpenDMARC(tb TB, e *Env, dns *TestDNS) *OpenDMARC {
	tb.Helper()
	RequireInterop(tb, InteropPackage{"opendmarc", "/usr/sbin/opendmarc"})
	requireUser(tb, "opendmarc", "opendmarc")
	port := FreePort(tb)
	dir := e.Path("opendmarc")
	CopyInteropData(tb, e, "opendmarc", "opendmarc", map[string]string{"@PORT@": fmt.Sprint(port), "@DIR@": dir})
	ChownTo(tb, dir, "opendmarc")
	conf := dir + "/opendmarc.conf"
	if out, err := run("opendmarc", "-n", "-c", conf); err != nil {
		tb.Fatalf("harness: opendmarc -n -c %s: %v\n%s", conf, err, out)
	}
	o := &OpenDMARC{Spec: fmt.Sprintf("inet:%d@127.0.0.1", port)}
	o.Proc = e.Start("opendmarc", nil, WithResolv(tb, e, "opendmarc", dns.Resolv, "opendmarc", "-f", "-c", conf)...)
	o.Proc.StopGrace = 500 * time.Millisecond
	WaitTCP(tb, o.Proc, port, 10*time.Second)
	tb.Logf("harness: opendmarc %s on %s", PackageVersion("opendmarc"), o.Spec)
	return o
}
