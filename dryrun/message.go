package dryrun

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"net/netip"
	"os"
	"strings"
)

// Message is the message file, as the lines an SMTP client sends (line
// ends removed, not dot-stuffed).
type Message struct {
	Name     string // the file's name, as given
	lines    [][]byte
	mboxFrom string // an mbox "From " line dropped from the top
}

// ReadMessage reads the message file at path, or stdin when path is "-".
func ReadMessage(path string, stdin io.Reader) (*Message, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	m := &Message{Name: path}
	if len(data) > 0 {
		data = bytes.TrimSuffix(data, []byte("\n"))
		for _, l := range bytes.Split(data, []byte("\n")) {
			m.lines = append(m.lines, bytes.TrimSuffix(l, []byte("\r")))
		}
	}
	if len(m.lines) > 0 && bytes.HasPrefix(m.lines[0], []byte("From ")) {
		m.mboxFrom = string(m.lines[0])
		m.lines = m.lines[1:]
	}
	return m, nil
}

// size is the message's size as tx-commit reports it: each line with its
// CRLF, before dot-stuffing.
func (m *Message) size() int {
	n := 0
	for _, l := range m.lines {
		n += len(l) + 2
	}
	return n
}

// header returns the unfolded values of the header fields named name.
func (m *Message) header(name string) []string {
	var out []string
	cur := -1
	for _, l := range m.lines {
		if len(l) == 0 {
			break
		}
		if (l[0] == ' ' || l[0] == '\t') && cur >= 0 {
			out[cur] += " " + strings.TrimSpace(string(l))
			continue
		}
		cur = -1
		if n, v, ok := strings.Cut(string(l), ":"); ok && strings.EqualFold(strings.TrimSpace(n), name) {
			out = append(out, strings.TrimSpace(v))
			cur = len(out) - 1
		}
	}
	return out
}

// Complete fills in the sender and recipients from the message when they
// were not given, and checks the client's address and the addresses.
func (t *Session) Complete(m *Message) error {
	if _, err := netip.ParseAddr(t.ClientIP); err != nil {
		return fmt.Errorf("--client-ip %q: %v", t.ClientIP, err)
	}
	if t.From == "" {
		for _, v := range m.header("From") {
			if a, err := mail.ParseAddress(v); err == nil {
				t.From = a.Address
				break
			}
		}
	}
	if len(t.Rcpts) == 0 {
		for _, h := range []string{"To", "Cc"} {
			for _, v := range m.header(h) {
				if as, err := mail.ParseAddressList(v); err == nil {
					for _, a := range as {
						t.Rcpts = append(t.Rcpts, a.Address)
					}
				}
			}
		}
	}
	if len(t.Rcpts) == 0 {
		return errors.New("no recipient: give --rcpt ADDRESS (the message has no To: or Cc: address)")
	}
	for _, a := range append([]string{t.From}, t.Rcpts...) {
		if strings.ContainsAny(a, "<>|\r\n ") {
			return fmt.Errorf("address %q: give it bare, without <>, spaces or '|'", a)
		}
	}
	return nil
}
