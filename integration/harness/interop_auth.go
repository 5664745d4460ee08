package harness

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// AuthUser and AuthPassword are the credentials StartSMTPDAuth accepts.
const (
	AuthUser     = "alice"
	AuthPassword = "secret123"
)

// StartSMTPDAuth starts smtpd like StartSMTPD, with one listener "auth"
// that offers STARTTLS (a self-signed ECDSA certificate for
// mx.test.example, key mode 0600) and AUTH after it (`auth-optional
// <creds>`, AuthUser/AuthPassword hashed with `smtpctl encrypt`), filtered
// by filter-milter with filterArgs. smtpd 6.8's STARTTLS fails with
// OpenSSL 3, so this needs 7.4 or later (7.6 runs in its root like with
// StartSMTPD; the certificate, key and tables are under the test
// directory, which it sees at the same path).
func StartSMTPDAuth(tb TB, e *Env, binary string, filterArgs []string) *SMTPD {
	tb.Helper()
	RequireBaseTools(tb)
	requireSMTPDBinary(tb, binary)
	ms := EnsureMailsink(tb)
	uid, _ := strconv.Atoi(ms.Uid)
	gid, _ := strconv.Atoi(ms.Gid)
	s := &SMTPD{env: e, Binary: binary, ports: map[string]int{}, seen: map[string]bool{}}
	s.MailDir = e.Mkdir("mail")
	if err := os.Chown(s.MailDir, uid, gid); err != nil {
		tb.Fatalf("harness: chown %s: %v", s.MailDir, err)
	}
	e.Mkdir("sent")
	tlsDir := e.Mkdir("tls")
	cert, key := tlsDir+"/cert.pem", tlsDir+"/key.pem"
	if out, err := run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
		"-keyout", key, "-out", cert, "-days", "3650", "-subj", "/CN=mx.test.example",
		"-addext", "subjectAltName=DNS:mx.test.example,DNS:localhost,IP:127.0.0.1"); err != nil {
		tb.Fatalf("harness: openssl req: %v\n%s", err, out)
	}
	if err := os.Chmod(key, 0o600); err != nil { // smtpd refuses keys readable by group/others
		tb.Fatalf("harness: %v", err)
	}
	// 7.4's smtpctl in /opt is not installed setgid opensmtpq and refuses
	// to run; 6.8's makes the same crypt(3) SHA-512 hash, which 7.6's
	// crypt(3) (trixie's libcrypt) checks as well.
	smtpctl := "/usr/sbin/smtpctl"
	hash, err := run(smtpctl, "encrypt", AuthPassword)
	if err != nil || !strings.HasPrefix(hash, "$") {
		tb.Fatalf("harness: %s encrypt: %v %s", smtpctl, err, hash)
	}
	creds := e.WriteFile("creds", []byte(AuthUser+"\t"+strings.TrimSpace(hash)+"\n"), 0o644)
	mda := e.WriteFile("mda.sh", []byte(`#!/bin/sh
umask 022
dir='`+s.MailDir+`'
name="$(date +%s%N).$$.$(printf '%s' "$1" | tr -c 'A-Za-z0-9@._+-' '_')"
cat > "$dir/.tmp.$name" || exit 75
mv "$dir/.tmp.$name" "$dir/$name.eml" || exit 75
`), 0o755)
	vusers := e.WriteFile("vusers", []byte("@\tmailsink\n"), 0o644)
	resolv := e.WriteFile("resolv.conf", []byte("nameserver 127.0.0.9\noptions timeout:1 attempts:1\n"), 0o644)
	parts := []string{shellQuote(BuildFilterMilter(tb))}
	for _, a := range filterArgs {
		parts = append(parts, shellQuote(a))
	}
	port := FreePort(tb)
	s.ports["auth"] = port
	var conf strings.Builder
	fmt.Fprintf(&conf, "# smtpd.conf with STARTTLS and AUTH, written by filter-milter's interop harness\n")
	fmt.Fprintf(&conf, "pki mx.test.example cert \"%s\"\npki mx.test.example key \"%s\"\n", cert, key)
	fmt.Fprintf(&conf, "table vusers file:%s\ntable creds file:%s\n\n", vusers, creds)
	fmt.Fprintf(&conf, "filter \"auth\" proc-exec \"%s\"\n", strings.Join(parts, " "))
	fmt.Fprintf(&conf, "listen on 127.0.0.1 port %d hostname mx.test.example tls pki mx.test.example auth-optional <creds> filter \"auth\"\n\n", port)
	fmt.Fprintf(&conf, "action \"save\" mda \"%s %%{rcpt}\" virtual <vusers> user mailsink\n", mda)
	fmt.Fprintf(&conf, "match from any for any action \"save\"\n")
	s.ConfPath = e.WriteFile("smtpd.conf", []byte(conf.String()), 0o644)
	s.launch(tb, e, binary, "-d", conf.String(), resolv)
	tb.Logf("harness: %s (%s), config %s:\n%s", s.Version, binary, s.ConfPath, conf.String())
	WaitTCP(tb, s.Proc, port, 10*time.Second)
	tb.Cleanup(func() { s.checkLog(tb) })
	return s
}

// SendAuth sends m over STARTTLS, authenticated as AuthUser when auth is
// true (swaks --tls [--auth PLAIN ...]). In the result's Output the TLS
// markers "~>"/"<~" are rewritten to "->"/"<-".
func (s *SMTPD) SendAuth(tb TB, m Message, auth bool) SwaksResult {
	tb.Helper()
	s.seenMu.Lock()
	s.nsent++
	n := s.nsent
	s.seenMu.Unlock()
	path := s.env.WriteFile(fmt.Sprintf("sent/%03d-%s.wire", n, sanitize(m.Name)), WireData(m.Data), 0o644)
	args := []string{"--from", m.From, "--to", strings.Join(m.To, ","), "--no-data-fixup", "--data", "@" + path, "--suppress-data", "--tls"}
	if auth {
		args = append(args, "--auth", "PLAIN", "--auth-user", AuthUser, "--auth-password", AuthPassword)
	}
	r := RunSwaks(tb, s.Port("auth"), args...)
	// After STARTTLS swaks marks lines "~>" / "<~" instead of "->" / "<-";
	// make them parse like the clear-text ones (Reply, EndOfDataReply).
	r.Output = strings.NewReplacer("\n ~> ", "\n -> ", "\n<~  ", "\n<-  ", "\n<~* ", "\n<** ").Replace(r.Output)
	return r
}
