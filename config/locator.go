package config

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// locator finds the line of a key in a TOML file: BurntSushi/toml reports
// lines for values it fails to decode, but MetaData.Undecoded gives keys
// only. It understands [table] and [[array]] headers, dotted and quoted
// keys and multi-line strings, which is all a configuration file uses.
type locator struct {
	entries []locEntry
}

type locEntry struct {
	line   int
	path   []string // the full key path the line defines
	header bool
}

func newLocator(data []byte) *locator {
	l := &locator{}
	var table []string
	inMulti := "" // the closing quotes of a multi-line string in progress
	for i, raw := range bytes.Split(data, []byte("\n")) {
		line := strings.TrimSpace(string(raw))
		if inMulti != "" {
			if strings.Contains(line, inMulti) {
				inMulti = ""
			}
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			inner := strings.TrimLeft(line, "[")
			if j := strings.Index(inner, "]"); j >= 0 {
				inner = inner[:j]
			}
			table = splitKey(inner)
			l.entries = append(l.entries, locEntry{line: i + 1, path: table, header: true})
			continue
		}
		k, rest, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		path := append(append([]string{}, table...), splitKey(k)...)
		l.entries = append(l.entries, locEntry{line: i + 1, path: path})
		for _, q := range []string{`"""`, `'''`} {
			if v := strings.TrimSpace(rest); strings.HasPrefix(v, q) && !strings.Contains(v[3:], q) {
				inMulti = q
			}
		}
	}
	return l
}

// splitKey splits a dotted key, honouring quotes.
func splitKey(s string) []string {
	var out []string
	var cur strings.Builder
	quote := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '"' || c == '\'':
			quote = c
		case c == '.':
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(out, strings.TrimSpace(cur.String()))
}

// line returns the line of the nth (0-based; default the first) line that
// defines key or something below it, as a string ("?" when not found).
func (l *locator) line(key toml.Key, nth ...int) string {
	want := 0
	if len(nth) > 0 {
		want = nth[0]
	}
	seen := 0
	for _, e := range l.entries {
		if len(e.path) < len(key) {
			continue
		}
		match := true
		for i := range key {
			if e.path[i] != key[i] {
				match = false
				break
			}
		}
		if !match || (len(nth) > 0 && (!e.header || len(e.path) != len(key))) {
			continue
		}
		if seen == want {
			return strconv.Itoa(e.line)
		}
		seen++
	}
	return "?"
}
