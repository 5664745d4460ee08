package milter

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// headerFields are fields as the gateway yields them to Headers: the
// value is the text after the colon, continuation lines joined by LF.
var headerFields = [][2]string{
	{"Subject", " one space"},
	{"X-Two", "  two spaces"},
	{"X-Tab", "\ta tab"},
	{"X-None", "no space"},
	{"X-Empty", ""},
	{"X-Space", " "},
	{"X-Folded", " v=1;\n\tb=abc\n d=e"},
	{"X-CRLF", " ends in CRLF\r\n"},
	{"X-LF", " ends in LF\n"},
	{"X-CR", " ends in CR\r"},
	{"X-Only-CRLF", "\r\n"},
	{"X-Only-LF", "\n"},
	{"X-Long", " " + strings.Repeat("0123456789abcdef", 600)}, // larger than conn's write buffer
	{"X-After", " after the long one"},
}

func yieldFields(fields [][2]string) func(func([]byte, []byte) bool) {
	return func(yield func([]byte, []byte) bool) {
		for _, f := range fields {
			if !yield([]byte(f[0]), []byte(f[1])) {
				return
			}
		}
	}
}

const protoLeadingSpace = protoHeaderLeadSpc

// wholeMessage runs a transaction whose header goes through Headers
// against a scripted milter that negotiated protocol and answers with
// headerReplies after DATA; it returns what went on the wire.
func wholeMessage(t *testing.T, protocol uint32, headerReplies [][]byte, fields [][2]string) (Verdict, []byte) {
	t.Helper()
	script := optnegReply(0x1ff, protocol)
	for range 5 { // CONNECT HELO MAIL RCPT DATA
		script = append(script, packet('c')...)
	}
	for _, r := range headerReplies {
		script = append(script, r...)
	}
	script = append(script, packet('c')...) // EOH
	script = append(script, packet('a')...) // end of message
	nc := &recordingConn{scriptConn: scriptConn{r: bytes.NewReader(script)}}
	s, err := NewClient("headers", Spec{Network: "unix", Address: "headers"}, DefaultOptions, nil).openOn(nc, nil)
	if err != nil {
		t.Fatal(err)
	}
	playEnvelope(t, s)
	hv, err := s.Headers(yieldFields(fields))
	if err != nil {
		t.Fatalf("Headers: %v", err)
	}
	if !hv.Final() {
		if _, err := s.EndOfHeaders(); err != nil {
			t.Fatalf("EndOfHeaders after Headers: %v", err)
		}
		v, _, err := s.End(nil)
		if err != nil {
			t.Fatalf("End: %v", err)
		}
		if v.Kind != Accept {
			t.Fatalf("End = %v, want accept", v)
		}
	}
	_ = s.conn.flush()
	return hv, nc.written.Bytes()
}

// TestHeadersOnTheWireAsGoMilter pins conn.writeHeader, which writes the
// header packets of a milter that negotiated SMFIP_NR_HDR instead of
// go-milter's HeaderField: the bytes on the wire for the whole
// transaction must be those go-milter writes for a milter that answers
// each field, with and without SMFIP_HDR_LEADSPC. It fails if a field's
// name, its NUL terminators, the one leading space stripped, the value's
// last line break (go-milter trims one) or a packet larger than the write
// buffer, or one written through conn's batch for a large header,
// differs; and End checks that go-milter's state machine still
// accepts end of headers and end of message after the bypass.
func TestHeadersOnTheWireAsGoMilter(t *testing.T) {
	// Past conn's batch of 64 KiB: several batches and a partial one.
	many := slices.Clone(headerFields)
	for i := range 10000 {
		many = append(many, [2]string{"X-H", " abcdefghijklmnop" + strings.Repeat("x", i%7)})
	}
	for name, c := range map[string]struct {
		protocol uint32
		fields   [][2]string
	}{
		"one space stripped":        {0, headerFields},
		"HDR_LEADSPC":               {protoLeadingSpace, headerFields},
		"10000 fields":              {0, many},
		"10000 fields, HDR_LEADSPC": {protoLeadingSpace, many},
	} {
		t.Run(name, func(t *testing.T) {
			var replies [][]byte
			for range c.fields {
				replies = append(replies, packet('c'))
			}
			_, viaGoMilter := wholeMessage(t, c.protocol, replies, c.fields)
			_, direct := wholeMessage(t, c.protocol|protoNoHeaderReply, nil, c.fields)
			var headers int
			for _, p := range packets(t, viaGoMilter) {
				if p[0] == 'L' {
					headers++
				}
			}
			if headers != len(c.fields) {
				t.Fatalf("go-milter wrote %d header packets, want %d", headers, len(c.fields))
			}
			if !bytes.Equal(direct, viaGoMilter) {
				a, b := packets(t, direct), packets(t, viaGoMilter)
				for i := range min(len(a), len(b)) {
					if !bytes.Equal(a[i], b[i]) {
						t.Fatalf("packet %d differs:\n  direct     %q\n  go-milter  %q", i, a[i][:min(len(a[i]), 80)], b[i][:min(len(b[i]), 80)])
					}
				}
				t.Fatalf("%d packets written directly, %d by go-milter", len(a), len(b))
			}
		})
	}
}

// TestHeadersHonoursEachReply: a milter that answers each field is asked
// field by field, and Headers stops sending at SKIP (the rest of the
// header is not sent, end of headers is) and at a reject.
func TestHeadersHonoursEachReply(t *testing.T) {
	fields := headerFields[:4]
	codes := func(wire []byte) string {
		var c []byte
		for _, p := range packets(t, wire) {
			c = append(c, p[0])
		}
		return string(c)
	}
	t.Run("skip", func(t *testing.T) {
		v, wire := wholeMessage(t, protoSkip, [][]byte{packet('c'), packet('s')}, fields)
		if v.Kind != Continue {
			t.Errorf("Headers = %v after SKIP, want continue", v)
		}
		if got, want := codes(wire), "OCHMRTLLNE"; got != want {
			t.Errorf("commands on the wire %q, want %q (two headers, then end of headers)", got, want)
		}
	})
	t.Run("reject", func(t *testing.T) {
		v, wire := wholeMessage(t, 0, [][]byte{packet('c'), packet('r')}, fields)
		if v.Kind != Reject {
			t.Errorf("Headers = %v, want reject at the second field", v)
		}
		if got := codes(wire); !strings.HasSuffix(got, "TLL") || slices.Contains([]byte(got), 'N') {
			t.Errorf("commands on the wire %q: want nothing after the rejected second header", got)
		}
	})
}
