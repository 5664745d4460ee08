package dryrun

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/filter-milter/filter-milter/config"
	"github.com/filter-milter/filter-milter/metrics"
)

// player is smtpd's side of the filter protocol, version 0.7 (OpenSMTPD
// 7.4 and later), for one SMTP session.
type player struct {
	in      io.Writer
	lines   chan string
	readErr chan error
	sid     string
	wait    time.Duration // the longest the gateway may take to answer
}

// newPlayer reads the gateway's lines from out on a goroutine of its own,
// so that a read can time out.
func newPlayer(in io.Writer, out io.Reader, wait time.Duration) *player {
	p := &player{in: in, lines: make(chan string, 1024), readErr: make(chan error, 1), sid: randomID(), wait: wait}
	go func() {
		br := bufio.NewReaderSize(out, 1<<20)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				p.readErr <- err
				close(p.lines)
				return
			}
			p.lines <- strings.TrimSuffix(l, "\n")
		}
	}()
	return p
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (p *player) send(line string) error {
	_, err := io.WriteString(p.in, line+"\n")
	return err
}

func stamp() string {
	now := time.Now()
	return fmt.Sprintf("%d.%06d", now.Unix(), now.Nanosecond()/1000)
}

func (p *player) report(event string, fields ...string) error {
	return p.send(strings.Join(append([]string{"report", "0.7", stamp(), "smtp-in", event, p.sid}, fields...), "|"))
}

func (p *player) filterLine(phase, token, param string) string {
	return strings.Join([]string{"filter", "0.7", stamp(), "smtp-in", phase, p.sid, token, param}, "|")
}

// read returns the gateway's next line.
func (p *player) read() (string, error) {
	select {
	case l, ok := <-p.lines:
		if !ok {
			err := <-p.readErr
			if err == nil {
				err = io.EOF
			}
			return "", fmt.Errorf("the gateway stopped writing: %w", err)
		}
		return l, nil
	case <-time.After(p.wait):
		return "", fmt.Errorf("no answer from the gateway within %v", p.wait)
	}
}

// request sends one filter request and returns the gateway's decision.
func (p *player) request(phase, param string) (string, string, error) {
	token := randomID()
	if err := p.send(p.filterLine(phase, token, param)); err != nil {
		return "", "", err
	}
	l, err := p.read()
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", phase, err)
	}
	rest, ok := strings.CutPrefix(l, "filter-result|"+p.sid+"|"+token+"|")
	if !ok {
		return "", "", fmt.Errorf("%s: unexpected line from the gateway: %q", phase, l)
	}
	decision, reply, _ := strings.Cut(rest, "|")
	return decision, reply, nil
}

// session plays one SMTP session as smtpd 7.4 reports and filters it. It
// stops where smtpd would: a refused connect, HELO, MAIL or DATA, no
// recipient accepted.
func (p *player) session(s *config.Settings, t *Session, m *Message, res *Result) error {
	host := s.Hostname
	if host == "" {
		host, _ = os.Hostname()
		if host == "" {
			host = "localhost"
		}
	}
	for _, l := range []string{"config|smtpd-version|7.4.0", "config|protocol|0.7", "config|smtp-session-timeout|300",
		"config|subsystem|smtp-in", "config|admd|" + host, "config|ready"} {
		if err := p.send(l); err != nil {
			return err
		}
	}
	for {
		l, err := p.read()
		if err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
		if l == "register|ready" {
			break
		}
	}

	ip, _ := netip.ParseAddr(t.ClientIP)
	ip = ip.Unmap()
	rdns, fcrdns := "<unknown>", "error"
	switch {
	case t.ClientName != "":
		rdns, fcrdns = t.ClientName, "pass"
	case ip.IsLoopback():
		rdns, fcrdns = "localhost", "pass"
	}
	if rdns != "<unknown>" {
		res.Envelope.ClientName = rdns
	}
	src := netip.AddrPortFrom(ip, 40000).String()
	dest := "127.0.0.1:25"
	connectAddr := ip.String()
	if ip.Is6() {
		dest = "[::1]:25"
		connectAddr = "[" + ip.String() + "]"
	}
	msgid := randomID()[:8]

	step := func(command, phase, param string) (bool, error) {
		d, reply, err := p.request(phase, param)
		if err != nil {
			return false, err
		}
		res.Commands = append(res.Commands, Step{Command: command, Decision: d, Reply: reply})
		if d != "proceed" {
			res.Verdict = Verdict{Decision: metrics.Verdict(d, reply), Reply: reply, Stage: command}
			return false, nil
		}
		return true, nil
	}
	end := func(events ...[]string) error {
		for _, e := range events {
			if err := p.report(e[0], e[1:]...); err != nil {
				return err
			}
		}
		return p.report("link-disconnect")
	}

	if err := p.report("link-connect", rdns, fcrdns, src, dest); err != nil {
		return err
	}
	if ok, err := step(fmt.Sprintf("connect from %s [%s]", rdns, ip), "connect", rdns+"|"+connectAddr); !ok {
		if err != nil {
			return err
		}
		return end()
	}
	if err := p.report("link-greeting", host); err != nil {
		return err
	}
	if err := p.report("protocol-client", "EHLO "+t.Helo); err != nil {
		return err
	}
	if ok, err := step("EHLO "+t.Helo, "ehlo", t.Helo); !ok {
		if err != nil {
			return err
		}
		return end()
	}
	if err := p.report("link-identify", "EHLO", t.Helo); err != nil {
		return err
	}
	if t.Auth != "" {
		if err := p.report("protocol-client", "AUTH PLAIN ********"); err != nil {
			return err
		}
		if err := p.report("link-auth", "pass", t.Auth); err != nil {
			return err
		}
	}
	mailCmd := "MAIL FROM:<" + t.From + ">"
	if err := p.report("protocol-client", mailCmd); err != nil {
		return err
	}
	if ok, err := step(mailCmd, "mail-from", t.From); !ok {
		if err != nil {
			return err
		}
		return end()
	}
	if err := p.report("tx-begin", msgid); err != nil {
		return err
	}
	if err := p.report("tx-mail", msgid, "ok", t.From); err != nil {
		return err
	}
	accepted := 0
	for _, r := range t.Rcpts {
		cmd := "RCPT TO:<" + r + ">"
		if err := p.report("protocol-client", cmd); err != nil {
			return err
		}
		d, reply, err := p.request("rcpt-to", r)
		if err != nil {
			return err
		}
		res.Commands = append(res.Commands, Step{Command: cmd, Decision: d, Reply: reply})
		switch d {
		case "proceed":
			accepted++
			if err := p.report("tx-rcpt", msgid, "ok", r); err != nil {
				return err
			}
		case "disconnect":
			res.Verdict = Verdict{Decision: metrics.Verdict(d, reply), Reply: reply, Stage: cmd}
			return end([]string{"tx-rollback", msgid}, []string{"tx-reset", msgid})
		default:
			if err := p.report("tx-rcpt", msgid, "permfail", r); err != nil {
				return err
			}
			res.Verdict = Verdict{Decision: metrics.Verdict(d, reply), Reply: reply, Stage: cmd}
		}
	}
	if accepted == 0 {
		return end([]string{"tx-rollback", msgid}, []string{"tx-reset", msgid})
	}
	if err := p.report("protocol-client", "DATA"); err != nil {
		return err
	}
	if ok, err := step("DATA", "data", ""); !ok {
		if err != nil {
			return err
		}
		return end([]string{"tx-rollback", msgid}, []string{"tx-reset", msgid})
	}
	if err := p.report("tx-data", msgid, "ok"); err != nil {
		return err
	}

	// The message, dot-stuffed as the client sends it and smtpd passes it
	// on, all lines under one token, then ".".
	token := randomID()
	size := 0
	var batch bytes.Buffer
	for _, l := range m.lines {
		batch.WriteString(p.filterLine("data-line", token, ""))
		if len(l) > 0 && l[0] == '.' {
			batch.WriteByte('.')
		}
		batch.Write(l)
		batch.WriteByte('\n')
		size += len(l) + 2
		if batch.Len() > 64<<10 {
			if _, err := p.in.Write(batch.Bytes()); err != nil {
				return err
			}
			batch.Reset()
		}
	}
	batch.WriteString(p.filterLine("data-line", token, ".") + "\n")
	if _, err := p.in.Write(batch.Bytes()); err != nil {
		return err
	}
	prefix := "filter-dataline|" + p.sid + "|" + token + "|"
	var after [][]byte
	for {
		l, err := p.read()
		if err != nil {
			return fmt.Errorf("data: %w", err)
		}
		line, ok := strings.CutPrefix(l, prefix)
		if !ok {
			return fmt.Errorf("data: unexpected line from the gateway: %q", l)
		}
		if line == "." {
			break
		}
		after = append(after, []byte(strings.TrimPrefix(line, ".")))
	}
	if err := p.report("protocol-client", "."); err != nil {
		return err
	}
	ok, err := step("end of DATA", "commit", "")
	if err != nil {
		return err
	}
	if !ok {
		return end([]string{"tx-rollback", msgid}, []string{"tx-reset", msgid})
	}
	res.Verdict = Verdict{Decision: "accept", Stage: "end of DATA"}
	res.delivered = true
	res.after = after
	return end([]string{"tx-commit", msgid, fmt.Sprint(size)}, []string{"tx-reset", msgid})
}
