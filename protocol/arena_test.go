package protocol

import (
	"strings"
	"testing"
)

// Strings from an Arena keep their bytes while the caller reuses its line
// buffer and the arena moves on to new blocks.
func TestArenaStringsStay(t *testing.T) {
	var a Arena
	buf := make([]byte, 0, 128)
	var got, want []string
	for i := 0; i < 5000; i++ { // several blocks
		line := strings.Repeat(string(rune('a'+i%26)), i%97)
		buf = append(buf[:0], line...)
		got = append(got, a.String(buf))
		want = append(want, line)
		for j := range buf {
			buf[j] = '#' // the caller's buffer is reused
		}
	}
	long := strings.Repeat("x", arenaBlock) // bigger than a block: its own copy
	got, want = append(got, a.String([]byte(long))), append(want, long)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("string %d = %.20q..., want %.20q...", i, got[i], want[i])
		}
	}
	if a.String(nil) != "" {
		t.Fatal("empty line")
	}
}

func TestParseLineKinds(t *testing.T) {
	for _, tc := range []struct {
		line string
		kind Kind
	}{
		{"config|ready", KindConfig},
		{"report|0.7|1.5|smtp-in|link-disconnect|0123456789abcdef", KindReport},
		{"filter|0.7|1.5|smtp-in|data-line|0123456789abcdef|fedcba9876543210|a|b", KindRequest},
	} {
		var l Line
		if err := ParseLine(tc.line, &l); err != nil {
			t.Fatalf("%s: %v", tc.line, err)
		}
		if l.Kind != tc.kind {
			t.Errorf("%s: kind %d, want %d", tc.line, l.Kind, tc.kind)
		}
	}
	var l Line
	if err := ParseLine("filter|0.7|1.5|smtp-in|data-line|0123456789abcdef|fedcba9876543210|a|b", &l); err != nil || l.Request.Param != "a|b" || l.Request.Token != "fedcba9876543210" {
		t.Fatalf("data line: %+v, %v", l.Request, err)
	}
	if err := ParseLine("bogus", &l); err == nil {
		t.Fatal("no error for a bogus line")
	}
}

func TestDataLineCutter(t *testing.T) {
	var c DataLineCutter
	for line, want := range map[string]bool{
		"filter|0.7|1.5|smtp-in|data-line|0123456789abcdef|fedcba9876543210|x|y": true,
		"filter|0.7|1.5|smtp-in|data-line|0123456789abcdef|fedcba9876543210|":    true,
		"filter|0.5|1.5|smtp-in|data-line|0123456789abcdef|fedcba9876543210|.":   true,
		"filter|0.7|1.5|smtp-in|data|0123456789abcdef|fedcba9876543210|":         false,
		"filter|0.7|1.5|smtp-in|commit|0123456789abcdef|fedcba9876543210|":       false,
		"report|0.7|1.5|smtp-in|data-line|0123456789abcdef|x":                    false,
		"filter|0.7|1.5": false,
		"filter|0.7|1.5|smtp-in|data-lines|0123456789abcdef|fedcba9876543210|": false,
		"filter|x.7|1.5|smtp-in|data-line|0123456789abcdef|fedcba9876543210|x": false,
		"filter|0.7||smtp-in|data-line|0123456789abcdef|fedcba9876543210|x":    false,
		"filter|0.7|1.5|smtp-in|data-line|0123456789abcdeg|fedcba9876543210|x": false,
		"filter|0.7|1.5|smtp-in|data-line|0123456789abcdef||x":                 false,
	} {
		var d DataLine
		got := c.Cut([]byte(line), &d)
		if got != want {
			t.Errorf("Cut(%q) = %v, want %v", line, got, want)
			continue
		}
		if !got {
			continue
		}
		// What Cut takes, ParseLine takes the same way.
		var l Line
		if err := ParseLine(line, &l); err != nil {
			t.Fatalf("ParseLine(%q): %v", line, err)
		}
		r := l.Request
		if d.Version != r.Version || string(d.Session) != r.Session || string(d.Token) != r.Token || string(d.Param) != r.Param {
			t.Errorf("Cut(%q) = %+v, ParseLine has %+v", line, d, r)
		}
	}
}
