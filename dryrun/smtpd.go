package dryrun

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"

	"github.com/filter-milter/filter-milter/metrics"
	"github.com/filter-milter/filter-milter/protocol"
	"github.com/filter-milter/filter-milter/smtpdplay"
)

// smtpd is smtpd 7.4's side of one SMTP session, which it reports and
// filters, played through smtpdplay. Reports go through report, which
// keeps the first write error, so that run reads in smtpd's order of
// events.
type smtpd struct {
	play *smtpdplay.Session
	res  *Result
	last protocol.Decision // the answer to the last request
	err  error             // the first error of a report
}

func (p *smtpd) report(event string, fields ...string) {
	if p.err == nil {
		p.err = p.play.Report(event, fields...)
	}
}

// ask sends one filter request, records it as the command the client
// sent, and says whether smtpd would go on (proceed).
func (p *smtpd) ask(command, phase, param string) (bool, error) {
	if p.err != nil {
		return false, p.err
	}
	d, reply, err := p.play.Ask(phase, param)
	if err != nil {
		return false, err
	}
	p.last = d
	p.res.Commands = append(p.res.Commands, Step{Command: command, Decision: string(d), Reply: reply})
	if d != protocol.Proceed {
		p.res.Verdict = Verdict{Decision: metrics.Verdict(string(d), reply), Reply: reply, Stage: command}
		return false, nil
	}
	return true, nil
}

// end reports the end of the session, after the transaction's own end
// events when one was open.
func (p *smtpd) end(events ...[]string) error {
	for _, e := range events {
		p.report(e[0], e[1:]...)
	}
	p.report("link-disconnect")
	return p.err
}

// stop ends the session where a request stopped it: on an error at once,
// else as smtpd ends it after a refusal.
func (p *smtpd) stop(err error, events ...[]string) error {
	if err != nil {
		return err
	}
	return p.end(events...)
}

// run plays the session. It stops where smtpd would: a refused connect,
// HELO, MAIL or DATA, no recipient accepted.
func (p *smtpd) run(host string, t *Session, m *Message) error {
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
		p.res.Envelope.ClientName = rdns
	}
	src := netip.AddrPortFrom(ip, 40000).String()
	dest := "127.0.0.1:25"
	connectAddr := ip.String()
	if ip.Is6() {
		dest = "[::1]:25"
		connectAddr = "[" + ip.String() + "]"
	}
	msgid := fmt.Sprintf("%08x", rand.Uint32())
	rollback := [][]string{{"tx-rollback", msgid}, {"tx-reset", msgid}}

	p.report("link-connect", rdns, fcrdns, src, dest)
	if ok, err := p.ask(fmt.Sprintf("connect from %s [%s]", rdns, ip), "connect", rdns+"|"+connectAddr); !ok {
		return p.stop(err)
	}
	p.report("link-greeting", host)
	p.report("protocol-client", "EHLO "+t.Helo)
	if ok, err := p.ask("EHLO "+t.Helo, "ehlo", t.Helo); !ok {
		return p.stop(err)
	}
	p.report("link-identify", "EHLO", t.Helo)
	if t.Auth != "" {
		p.report("protocol-client", "AUTH PLAIN ********")
		p.report("link-auth", "pass", t.Auth)
	}
	mailCmd := "MAIL FROM:<" + t.From + ">"
	p.report("protocol-client", mailCmd)
	if ok, err := p.ask(mailCmd, "mail-from", t.From); !ok {
		return p.stop(err)
	}
	p.report("tx-begin", msgid)
	p.report("tx-mail", msgid, "ok", t.From)
	accepted := 0
	for _, r := range t.Rcpts {
		cmd := "RCPT TO:<" + r + ">"
		p.report("protocol-client", cmd)
		ok, err := p.ask(cmd, "rcpt-to", r)
		switch {
		case err != nil:
			return err
		case ok:
			accepted++
			p.report("tx-rcpt", msgid, "ok", r)
		case p.last == protocol.Disconnect:
			return p.end(rollback...)
		default:
			p.report("tx-rcpt", msgid, "permfail", r)
		}
	}
	if accepted == 0 {
		return p.end(rollback...)
	}
	p.report("protocol-client", "DATA")
	if ok, err := p.ask("DATA", "data", ""); !ok {
		return p.stop(err, rollback...)
	}
	p.report("tx-data", msgid, "ok")
	if p.err != nil {
		return p.err
	}

	after, err := p.data(m)
	if err != nil {
		return err
	}
	p.report("protocol-client", ".")
	if ok, err := p.ask("end of DATA", "commit", ""); !ok {
		return p.stop(err, rollback...)
	}
	p.res.Verdict = Verdict{Decision: "accept", Stage: "end of DATA"}
	p.res.delivered = true
	p.res.after = after
	return p.end([]string{"tx-commit", msgid, fmt.Sprint(m.size())}, []string{"tx-reset", msgid})
}

// data sends the message, dot-stuffed as the client sends it and smtpd
// passes it on, all lines under one token, then ".", and returns the
// lines the gateway hands back, unstuffed.
func (p *smtpd) data(m *Message) ([][]byte, error) {
	tok := p.play.StartData()
	// In writes of about 64 KB, as smtpd's pipe carries a large message.
	var batch []string
	size := 0
	for _, l := range m.lines {
		line := string(l)
		if strings.HasPrefix(line, ".") {
			line = "." + line
		}
		batch = append(batch, line)
		if size += len(line); size > 64<<10 {
			if err := p.play.SendData(tok, batch...); err != nil {
				return nil, err
			}
			batch, size = batch[:0], 0
		}
	}
	if err := p.play.SendData(tok, append(batch, ".")...); err != nil {
		return nil, err
	}
	lines, err := p.play.ReadMessage(tok)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	after := make([][]byte, len(lines))
	for i, l := range lines {
		after[i] = []byte(strings.TrimPrefix(l, "."))
	}
	return after, nil
}
