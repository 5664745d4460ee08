package harness

import (
	"fmt"
	"os"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// DKIM test key parameters.
const (
	DKIMDomain   = "test.example"
	DKIMSelector = "sel1"
)

// DKIMKey is a key pair made by opendkim-genkey.
type DKIMKey struct {
	Domain, Selector string
	PrivatePath      string // owned by opendkim, 0600
	// TXT is the public key record's value, the quoted chunks of
	// opendkim-genkey's zone snippet joined: "v=DKIM1; h=sha256; k=rsa; ...".
	TXT string
}

// RecordName is the DNS name of the key record: sel1._domainkey.test.example.
func (k *DKIMKey) RecordName() string {
	return k.Selector + "._domainkey." + k.Domain
}

// Records maps the record name to its value, for VerifyDKIM.
func (k *DKIMKey) Records() map[string]string {
	return map[string]string{k.RecordName(): k.TXT}
}

var quoted = regexp.MustCompile(`"([^"]*)"`)

// GenerateDKIMKey runs `opendkim-genkey -b 2048 -d test.example -s sel1 -r`
// into <dir>/<name>/ and chowns the key to opendkim.
func GenerateDKIMKey(tb TB, e *Env, name string) *DKIMKey {
	tb.Helper()
	RequireOpenDKIM(tb)
	dir := e.Mkdir(name)
	start := time.Now()
	if out, err := run("opendkim-genkey", "-b", "2048", "-d", DKIMDomain, "-s", DKIMSelector, "-r", "-D", dir); err != nil {
		tb.Fatalf("harness: opendkim-genkey: %v\n%s", err, out)
	}
	txt, err := os.ReadFile(dir + "/" + DKIMSelector + ".txt")
	if err != nil {
		tb.Fatalf("harness: %v", err)
	}
	var value strings.Builder
	for _, m := range quoted.FindAllStringSubmatch(string(txt), -1) {
		value.WriteString(m[1])
	}
	if !strings.Contains(value.String(), "p=") {
		tb.Fatalf("harness: no public key in %s/%s.txt:\n%s", dir, DKIMSelector, txt)
	}
	u, err := user.Lookup("opendkim")
	if err != nil {
		tb.Fatalf("harness: user opendkim: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := chownR(dir, uid, gid); err != nil {
		tb.Fatalf("harness: chown %s: %v", dir, err)
	}
	k := &DKIMKey{Domain: DKIMDomain, Selector: DKIMSelector, PrivatePath: dir + "/" + DKIMSelector + ".private", TXT: value.String()}
	tb.Logf("harness: generated 2048-bit DKIM key %s in %v", k.RecordName(), time.Since(start).Round(time.Millisecond))
	return k
}

// DKIM modes for OpenDKIMConfig.
const (
	DKIMSign   = "s"
	DKIMVerify = "v"
)

// OpenDKIMConfig describes one opendkim instance.
type OpenDKIMConfig struct {
	Name             string   // file and log names; default "opendkim-<mode>"
	Mode             string   // DKIMSign or DKIMVerify
	Canonicalization string   // e.g. "relaxed/simple" (sign mode); default relaxed/simple
	Key              *DKIMKey // nil: generate one
	Unix             bool     // listen on a unix socket in the test dir instead of TCP
	Extra            []string // more config lines
}

// OpenDKIM is a running opendkim.
type OpenDKIM struct {
	Proc     *Proc
	Spec     string // milter socket, e.g. inet:PORT@127.0.0.1
	Key      *DKIMKey
	ConfPath string
}

// StartOpenDKIM writes a config (Background no, Syslog no, RequireSafeKeys
// no, InternalHosts 127.0.0.1 and ::1 for signing, UserID opendkim) and runs
// `opendkim -f -x conf` on a free port of 127.0.0.1 (the socket spec is
// inet:PORT@127.0.0.1, the libmilter notation). In verify mode the key's
// record is served by TestDNSData, so no DNS is used. There is no syslog
// daemon here: opendkim's own log lines are lost, only start-up errors
// printed to stderr are in <name>.log.
func StartOpenDKIM(tb TB, e *Env, cfg OpenDKIMConfig) *OpenDKIM {
	tb.Helper()
	RequireOpenDKIM(tb)
	if cfg.Mode == "" {
		cfg.Mode = DKIMSign
	}
	if cfg.Name == "" {
		cfg.Name = "opendkim-" + cfg.Mode
	}
	if cfg.Canonicalization == "" {
		cfg.Canonicalization = "relaxed/simple"
	}
	if cfg.Key == nil {
		cfg.Key = GenerateDKIMKey(tb, e, cfg.Name+"-keys")
	}
	d := &OpenDKIM{Key: cfg.Key}
	var port int
	if cfg.Unix {
		sockDir := e.Mkdir(cfg.Name + "-sock")
		u, _ := user.Lookup("opendkim")
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(sockDir, uid, gid); err != nil {
			tb.Fatalf("harness: chown %s: %v", sockDir, err)
		}
		d.Spec = "unix:" + sockDir + "/milter.sock"
	} else {
		port = FreePort(tb)
		d.Spec = fmt.Sprintf("inet:%d@127.0.0.1", port)
	}
	var c strings.Builder
	fmt.Fprintf(&c, "# opendkim.conf written by filter-milter's integration harness\n")
	fmt.Fprintf(&c, "Syslog no\nBackground no\nSocket %s\nUserID opendkim:opendkim\nUMask 000\n", d.Spec)
	switch cfg.Mode {
	case DKIMSign:
		fmt.Fprintf(&c, "Mode s\nDomain %s\nSelector %s\nKeyFile %s\nRequireSafeKeys no\nCanonicalization %s\n",
			cfg.Key.Domain, cfg.Key.Selector, cfg.Key.PrivatePath, cfg.Canonicalization)
		fmt.Fprintf(&c, "InternalHosts 127.0.0.1, ::1\nSoftwareHeader yes\n")
	case DKIMVerify:
		zone := e.WriteFile(cfg.Name+"-testdns.txt", []byte(cfg.Key.RecordName()+" "+cfg.Key.TXT+"\n"), 0o644)
		fmt.Fprintf(&c, "Mode v\nAuthservID mx.test.example\nAlwaysAddARHeader yes\nTestDNSData file:%s\n", zone)
		fmt.Fprintf(&c, "InternalHosts 192.0.2.1\nSoftwareHeader yes\n")
	default:
		tb.Fatalf("harness: opendkim mode %q", cfg.Mode)
	}
	for _, l := range cfg.Extra {
		fmt.Fprintf(&c, "%s\n", l)
	}
	d.ConfPath = e.WriteFile(cfg.Name+".conf", []byte(c.String()), 0o644)
	if out, err := run("opendkim", "-n", "-x", d.ConfPath); err != nil {
		tb.Fatalf("harness: `opendkim -n -x %s` failed: %v\n%s\nconfig:\n%s", d.ConfPath, err, out, c.String())
	}
	d.Proc = e.Start(cfg.Name, nil, "opendkim", "-f", "-x", d.ConfPath)
	d.Proc.StopGrace = 300 * time.Millisecond
	if cfg.Unix {
		WaitUnix(tb, d.Proc, strings.TrimPrefix(d.Spec, "unix:"), 10*time.Second)
	} else {
		WaitTCP(tb, d.Proc, port, 10*time.Second)
	}
	tb.Logf("harness: opendkim mode %s (%s) on %s, key %s", cfg.Mode, cfg.Canonicalization, d.Spec, cfg.Key.RecordName())
	return d
}
