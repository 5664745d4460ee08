package harness

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// ClamAV is a running clamd + clamav-milter pair.
type ClamAV struct {
	Clamd, Milter *Proc
	Spec          string
	Dir           string
}

// StartClamAV runs Debian's clamd with the local signatures of
// testdata/interop/clamav/db only (freshclam never runs) on a unix socket,
// then clamav-milter on a free port.
func StartClamAV(tb TB, e *Env) *ClamAV {
	tb.Helper()
	RequireInterop(tb, InteropPackage{"clamav-daemon", "/usr/sbin/clamd"}, InteropPackage{"clamav-milter", "/usr/sbin/clamav-milter"})
	requireUser(tb, "clamav", "clamav-base")
	port := FreePort(tb)
	dir := e.Path("clamav")
	CopyInteropData(tb, e, "clamav", "clamav", map[string]string{"@PORT@": fmt.Sprint(port), "@DIR@": dir})
	ChownTo(tb, dir, "clamav")
	c := &ClamAV{Spec: fmt.Sprintf("inet:%d@127.0.0.1", port), Dir: dir}
	c.Clamd = e.Start("clamd", nil, "clamd", "-c", dir+"/clamd.conf", "--foreground")
	c.Clamd.StopGrace = time.Second
	d := WaitUnix(tb, c.Clamd, dir+"/clamd.sock", 30*time.Second)
	if b, _ := os.ReadFile(dir + "/clamd.log"); !strings.Contains(string(b), "signatures") {
		tb.Logf("harness: clamd.log:\n%s", b)
	}
	c.Milter = e.Start("clamav-milter", nil, "clamav-milter", "-c", dir+"/clamav-milter.conf")
	c.Milter.StopGrace = time.Second
	WaitTCP(tb, c.Milter, port, 15*time.Second)
	tb.Logf("harness: clamd %s up in %v; clamav-milter %s on %s", PackageVersion("clamav-daemon"), d.Round(time.Millisecond), PackageVersion("clamav-milter"), c.Spec)
	return c
}
