package protocol

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/compat"
)

// FuzzParse feeds arbitrary lines to Parse and Decode, which see every
// byte smtpd writes: they must never panic, must fail only with a
// *ParseError, and a parsed line must come back whole from its fields.
// For requests, the parameter sent back in a filter-dataline and read
// again must be the same parameter: that is what keeps '|', '\r' and
// dots of a data line intact on the way through the filter.
func FuzzParse(f *testing.F) {
	seen := map[string]bool{}
	for _, file := range transcriptFiles(f) {
		for _, line := range transcriptLines(f, file) {
			if in, ok := strings.CutPrefix(line, "<< "); ok && !seen[in] {
				seen[in] = true
				f.Add([]byte(in))
			}
		}
	}
	for _, s := range []string{
		"", "|", "||||||||", "config", "config|", "config|ready", "report|0.6", "filter|0.4|1|smtp-in|data-line|a|b|",
		"report|0.5|1|smtp-in|tx-mail|a|b|c|ok", "report|0.6|1|smtp-in|link-auth|a|al|ice|pass",
		"report|0.7|1|smtp-in|tx-commit|a|b|-1", "report|99999.0|1|smtp-in|link-auth|a|x",
		"filter|0.6|1|smtp-in|data-line|a|b|x\r", "filter|0.6|1|smtp-in|data-line|a|b|x\ny",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, err := Parse(line)
		// The gateway's fast path for data lines takes a line only as
		// Parse takes it.
		var c DataLineCutter
		var d DataLine
		cut := c.Cut(line, &d)
		if cut {
			r, ok := ev.(Request)
			if err != nil || !ok || r.Phase != "data-line" || r.Version != d.Version ||
				r.Session != string(d.Session) || r.Token != string(d.Token) || r.Param != string(d.Param) {
				t.Fatalf("DataLineCutter took %q as %+v; Parse gives %#v, %v", line, d, ev, err)
			}
		}
		if r, ok := ev.(Request); ok && err == nil && r.Phase == "data-line" && !cut {
			t.Fatalf("DataLineCutter refused %q, which Parse takes as a data line", line)
		}
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse(%q): error %T %v, want a *ParseError", line, err, err)
			}
			if ev != nil {
				t.Fatalf("Parse(%q) = %#v with an error", line, ev)
			}
			return
		}
		if !rebuildsTo(ev, string(line)) {
			t.Fatalf("Parse(%q) = %#v, which does not rebuild the line", line, ev)
		}
		switch e := ev.(type) {
		case Report:
			got, err := e.Decode()
			if err != nil {
				var pe *ParseError
				if !errors.As(err, &pe) || got != nil {
					t.Fatalf("Decode(%q) = %#v, %v; want nil and a *ParseError", line, got, err)
				}
				return
			}
			exercise(got)
		case Request:
			l := compat.For(e.Version)
			out := AppendDataLine(nil, l, e.Session, e.Token, []byte(e.Param))
			// Read the answer back the way smtpd reads its fields: as a
			// request-like line with the same header.
			body, ok := bytes.CutPrefix(out, []byte("filter-dataline|"))
			if !ok || out[len(out)-1] != '\n' {
				t.Fatalf("AppendDataLine gave %q", out)
			}
			again := "filter|" + e.Version.String() + "|" + e.Timestamp + "|" + e.Subsystem + "|" + string(e.Phase) + "|" + string(body[:len(body)-1])
			ev2, err := Parse([]byte(again))
			if err != nil {
				t.Fatalf("re-parsing %q: %v", again, err)
			}
			r := ev2.(Request)
			session, token := r.Session, r.Token
			if l.TokenFirst {
				session, token = token, session
			}
			if r.Param != e.Param || session != e.Session || token != e.Token {
				t.Fatalf("%q: sent back as %q, read again as %#v", line, out, r)
			}
			_, _ = AppendResult(nil, l, e.Session, e.Token, Reject, e.Param)
		}
		// The helpers get smtpd's strings: no input may panic them.
		s := string(line)
		_ = ESMTPParams(s)
		_, _ = ParseEndpoint(s)
		_, _, _, _ = SplitTLS(s)
		_ = ValidReply(s)
	})
}

// rebuildsTo reports whether ev's fields, joined as smtpd joins them,
// give line. A Config without value and a Report without params come
// from a line with or without the separator after them.
func rebuildsTo(ev Parsed, line string) bool {
	switch e := ev.(type) {
	case Config:
		return line == "config|"+e.Key+"|"+e.Value || (e.Value == "" && line == "config|"+e.Key)
	case Report:
		return line == rebuild(e) || (e.Params == "" && line == rebuild(e)+"|")
	}
	return line == rebuild(ev)
}

// exercise runs the helpers on the decoded fields they are meant for.
func exercise(v any) {
	switch e := v.(type) {
	case LinkConnect:
		_, _ = ParseEndpoint(e.Src)
		_, _ = ParseEndpoint(e.Dest)
	case LinkTLS:
		_, _, _, _ = SplitTLS(e.Info)
	case ProtocolClient:
		_ = ESMTPParams(e.Command)
	}
}

// FuzzReader checks Reader against a plain split on '\n', with a buffer
// small enough that lines span several reads.
func FuzzReader(f *testing.F) {
	f.Add([]byte("a\nb\r\n\nlast"), 4)
	f.Add([]byte("0123456789abcdefghij\nshort\n0123456789abcdefghijklmnopqrstuvwxyz"), 20)
	f.Add([]byte(strings.Repeat("x", 100)+"\n"+strings.Repeat("y", 17)), 16)
	f.Fuzz(func(t *testing.T, data []byte, limit int) {
		if limit <= 0 || limit > 1<<16 {
			return
		}
		r := &Reader{br: bufio.NewReaderSize(bytes.NewReader(data), 16), max: limit}
		want := bytes.Split(data, []byte("\n"))
		if len(want[len(want)-1]) == 0 {
			want = want[:len(want)-1] // data ends in '\n' or is empty
		}
		for i, w := range want {
			got, err := r.ReadLine()
			if len(w) > limit {
				if !errors.Is(err, ErrLineTooLong) {
					t.Fatalf("line %d (%d bytes, limit %d): %q, %v; want ErrLineTooLong", i, len(w), limit, got, err)
				}
				continue
			}
			if err != nil || !bytes.Equal(got, w) {
				t.Fatalf("line %d = %q, %v; want %q", i, got, err, w)
			}
		}
		if got, err := r.ReadLine(); err != io.EOF {
			t.Fatalf("after %d lines: %q, %v; want io.EOF", len(want), got, err)
		}
	})
}
