package harness

import (
	"fmt"
	"os"
	"time"
)

// DKIMPyMilter is a running dkimpy-milter.
type DKIMPyMilter struct {
	Proc *Proc
	Spec string
}

// StartDKIMPyMilter runs Debian's dkimpy-milter in signing mode for
// test.example with key (a copy owned by dkimpy-milter) on a free port.
func StartDKIMPyMilter(tb TB, e *Env, key *DKIMKey) *DKIMPyMilter {
	tb.Helper()
	RequireInterop(tb, InteropPackage{"dkimpy-milter", "/usr/bin/dkimpy-milter"})
	requireUser(tb, "dkimpy-milter", "dkimpy-milter")
	port := FreePort(tb)
	dir := e.Path("dkimpy-milter")
	CopyInteropData(tb, e, "dkimpy-milter", "dkimpy-milter", map[string]string{"@PORT@": fmt.Sprint(port), "@DIR@": dir})
	b, err := os.ReadFile(key.PrivatePath)
	if err != nil {
		tb.Fatalf("harness: %v", err)
	}
	if err := os.WriteFile(dir+"/sel1.private", b, 0o600); err != nil {
		tb.Fatalf("harness: %v", err)
	}
	ChownTo(tb, dir, "dkimpy-milter")
	m := &DKIMPyMilter{Spec: fmt.Sprintf("inet:%d@127.0.0.1", port)}
	m.Proc = e.Start("dkimpy-milter", nil, "/usr/bin/dkimpy-milter", dir+"/dkimpy-milter.conf")
	m.Proc.StopGrace = time.Second
	WaitTCP(tb, m.Proc, port, 20*time.Second)
	tb.Logf("harness: dkimpy-milter %s (sign) on %s", PackageVersion("dkimpy-milter"), m.Spec)
	return m
}

// PySPFMilter is a running pyspf-milter.
type PySPFMilter struct {
	Proc *Proc
	Spec string
}

// StartPySPFMilter runs pyspf-milter's code on a free port, rejecting SPF
// Fail at MAIL FROM, with /etc/resolv.conf pointing at dns.
//
// Debian's pyspf-milter package cannot be installed beside opensmtpd: it
// Depends on "postfix | sendmail" (installing it replaces opensmtpd with
// postfix). /usr/bin/pyspf-milter is three lines that call
// spf_engine.milter_spf.main(), which python3-spf-engine (no MTA
// dependency) ships, so the harness runs exactly that with Debian's
// /usr/bin/python3.
func StartPySPFMilter(tb TB, e *Env, dns *TestDNS) *PySPFMilter {
	tb.Helper()
	RequireInterop(tb, InteropPackage{"python3-spf-engine", "/usr/lib/python3/dist-packages/spf_engine/milter_spf.py"})
	port := FreePort(tb)
	dir := e.Path("pyspf-milter")
	CopyInteropData(tb, e, "pyspf-milter", "pyspf-milter", map[string]string{"@PORT@": fmt.Sprint(port), "@DIR@": dir})
	ChownTo(tb, dir, "nobody")
	m := &PySPFMilter{Spec: fmt.Sprintf("inet:%d@127.0.0.1", port)}
	m.Proc = e.Start("pyspf-milter", nil, WithResolv(tb, e, "pyspf-milter", dns.Resolv, "/usr/bin/python3", "-c",
		"import sys; sys.argv[0] = 'pyspf-milter'; from spf_engine.milter_spf import main; sys.exit(main())", dir+"/pyspf-milter.conf")...)
	m.Proc.StopGrace = time.Second
	WaitTCP(tb, m.Proc, port, 20*time.Second)
	tb.Logf("harness: pyspf-milter %s on %s", PackageVersion("python3-spf-engine"), m.Spec)
	return m
}
