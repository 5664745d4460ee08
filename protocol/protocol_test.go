package protocol

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/compat"
)

var v06, v07 = compat.Version{Major: 0, Minor: 6}, compat.Version{Major: 0, Minor: 7}

func TestParse(t *testing.T) {
	cases := []struct {
		line string
		want Event
	}{
		{"config|ready", Config{Key: "ready"}},
		{"config|admd|vm", Config{Key: "admd", Value: "vm"}},
		{"config|x|a|b", Config{Key: "x", Value: "a|b"}},
		{"report|0.6|1795504415.685235|smtp-in|link-connect|cda4ad7207385219|localhost|pass|127.0.0.1:47092|127.0.0.1:2525",
			Report{v06, "1795504415.685235", "smtp-in", "link-connect", "cda4ad7207385219", "localhost|pass|127.0.0.1:47092|127.0.0.1:2525"}},
		{"report|0.7|1795504662.981870|smtp-in|link-disconnect|61cd21cac6515ff6",
			Report{v07, "1795504662.981870", "smtp-in", "link-disconnect", "61cd21cac6515ff6", ""}},
		{"filter|0.6|1795504923.809505|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|a|b|c",
			Request{v06, "1795504923.809505", "smtp-in", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "a|b|c"}},
		{"filter|0.6|1795504923.809505|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|",
			Request{v06, "1795504923.809505", "smtp-in", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", ""}},
		{"filter|0.6|1795504923.809505|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|..",
			Request{v06, "1795504923.809505", "smtp-in", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", ".."}},
		{"filter|0.7|1795504662.792637|smtp-in|connect|61cd21cac6515ff6|e1b36a332881ef55|localhost|127.0.0.1",
			Request{v07, "1795504662.792637", "smtp-in", "connect", "61cd21cac6515ff6", "e1b36a332881ef55", "localhost|127.0.0.1"}},
		{"filter|0.6|1795504923.809505|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|last\r",
			Request{v06, "1795504923.809505", "smtp-in", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "last\r"}},
	}
	for _, c := range cases {
		got, err := Parse([]byte(c.line))
		if err != nil {
			t.Errorf("Parse(%q): %v", c.line, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("Parse(%q) =\n %#v\nwant\n %#v", c.line, got, c.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, line := range []string{
		"", "garbage", "config", "config|", "report|0.6", "report|0.6|1|smtp-in|link-connect",
		"report|x.y|1|smtp-in|link-connect|cda4ad7207385219", "report|0.6|1|smtp-in|tx-begin|not-hex!",
		"filter|0.6|1|smtp-in|connect|cda4ad7207385219", "filter|0.6|1|smtp-in|connect|cda4ad7207385219|e4c8847d2b7a625b",
		"filter|0.6|1|smtp-in|connect||e4c8847d2b7a625b|x", "filter|0.6|1|smtp-in|connect|cda4|zz|x",
		"register|ready", "filter-result|a|b|proceed",
	} {
		ev, err := Parse([]byte(line))
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("Parse(%q) = %#v, %v; want a *ParseError", line, ev, err)
			continue
		}
		if !strings.Contains(err.Error(), line) {
			t.Errorf("error %q does not name the line %q", err, line)
		}
	}
	long := "report|0.6|" + strings.Repeat("x", 5000)
	_, err := Parse([]byte(long))
	if err == nil || len(err.Error()) > 400 {
		t.Errorf("error for a long bad line should quote a bounded part of it: %v", err)
	}
}

func decode(t *testing.T, v compat.Version, event, params string) any {
	t.Helper()
	got, err := Report{Version: v, Event: event, Params: params}.Decode()
	if err != nil {
		t.Fatalf("Decode %s %q: %v", event, params, err)
	}
	return got
}

func TestDecode(t *testing.T) {
	v04, v05 := compat.Version{Major: 0, Minor: 4}, compat.Version{Major: 0, Minor: 5}
	cases := []struct {
		v             compat.Version
		event, params string
		want          any
	}{
		{v06, "link-connect", "<unknown>|fail|[::1]:37382|[::1]:2525", LinkConnect{"<unknown>", "fail", "[::1]:37382", "[::1]:2525"}},
		{v06, "link-greeting", "vm", LinkGreeting{"vm"}},
		{v06, "link-identify", "EHLO|client.example", LinkIdentify{"EHLO", "client.example"}},
		{v07, "link-tls", "TLSv1.3:TLS_AES_256_GCM_SHA384:256", LinkTLS{"TLSv1.3:TLS_AES_256_GCM_SHA384:256"}},
		{v07, "link-auth", "pass|al|ice", LinkAuth{"pass", "al|ice"}},
		{v06, "link-auth", "al|ice|pass", LinkAuth{"pass", "al|ice"}},
		{v04, "link-auth", "bob|fail", LinkAuth{"fail", "bob"}},
		{v06, "tx-mail", "2a4946c4|ok|sender@example.org", TxMail{"2a4946c4", "ok", "sender@example.org"}},
		{v06, "tx-mail", "2a4946c4|ok|", TxMail{"2a4946c4", "ok", ""}},
		{v06, "tx-mail", "2a4946c4|ok|we|ird@x", TxMail{"2a4946c4", "ok", "we|ird@x"}},
		{v05, "tx-mail", "2a4946c4|we|ird@x|ok", TxMail{"2a4946c4", "ok", "we|ird@x"}},
		{v04, "tx-rcpt", "2a4946c4|b@x|permfail", TxRcpt{"2a4946c4", "permfail", "b@x"}},
		{v07, "tx-rcpt", "498e96ea|ok|nobody@example.net", TxRcpt{"498e96ea", "ok", "nobody@example.net"}},
		{v06, "tx-envelope", "2a4946c4|2a4946c40924d652", TxEnvelope{"2a4946c4", "2a4946c40924d652"}},
		{v06, "tx-data", "2a4946c4|ok", TxData{"2a4946c4", "ok"}},
		{v06, "tx-commit", "2a4946c4|2471", TxCommit{"2a4946c4", 2471}},
		{v06, "tx-begin", "2a4946c4", TxBegin{"2a4946c4"}},
		{v06, "tx-reset", "2a4946c4", TxReset{"2a4946c4"}},
		{v06, "tx-rollback", "2a4946c4", TxRollback{"2a4946c4"}},
		{v06, "protocol-client", "mail FROM:<a|b@x> size=3", ProtocolClient{"mail FROM:<a|b@x> size=3"}},
		{v06, "protocol-server", "250 2.0.0 Ok", ProtocolServer{"250 2.0.0 Ok"}},
		{v06, "filter-response", "rcpt-to|rewrite|<nobody@example.org>", FilterResponse{"rcpt-to", "rewrite", "<nobody@example.org>"}},
		{v06, "filter-response", "connected|proceed", FilterResponse{"connected", "proceed", ""}},
		{v06, "link-disconnect", "", LinkDisconnect{}},
		{v06, "timeout", "", Timeout{}},
		{v06, "something-new", "x", Unhandled{"something-new"}},
	}
	for _, c := range cases {
		if got := decode(t, c.v, c.event, c.params); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%v %s %q = %#v, want %#v", c.v, c.event, c.params, got, c.want)
		}
	}
	for _, bad := range [][2]string{{"link-connect", "a|b|c"}, {"tx-mail", "x"}, {"tx-commit", "x|y"}, {"link-identify", "EHLO"}} {
		if got, err := (Report{Version: v06, Event: bad[0], Params: bad[1]}).Decode(); err == nil {
			t.Errorf("Decode %s %q = %#v, want an error", bad[0], bad[1], got)
		}
	}
}

func TestHelpers(t *testing.T) {
	if v, c, b, ok := SplitTLS("TLSv1.3:TLS_AES_256_GCM_SHA384:256"); !ok || v != "TLSv1.3" || c != "TLS_AES_256_GCM_SHA384" || b != "256" {
		t.Errorf("SplitTLS = %q %q %q %v", v, c, b, ok)
	}
	if _, _, _, ok := SplitTLS("nonsense"); ok {
		t.Error("SplitTLS accepted nonsense")
	}
	for in, want := range map[string]Endpoint{
		"127.0.0.1:47092":          {"inet", "127.0.0.1", 47092},
		"[::1]:2525":               {"inet6", "::1", 2525},
		"unix:/var/run/smtpd.sock": {"unix", "/var/run/smtpd.sock", 0},
	} {
		if got, err := ParseEndpoint(in); err != nil || got != want {
			t.Errorf("ParseEndpoint(%q) = %+v, %v", in, got, err)
		}
	}
	if _, err := ParseEndpoint("local"); err == nil {
		t.Error("ParseEndpoint accepted \"local\"")
	}
	for in, want := range map[string][]string{
		"MAIL FROM:<a@b> SIZE=12 BODY=8BITMIME":      {"SIZE=12", "BODY=8BITMIME"},
		"mail FROM:<sender@example.org> size=3137  ": {"size=3137"},
		"rcpt TO:<x@y> NOTIFY=NEVER":                 {"NOTIFY=NEVER"},
		"MAIL FROM:<>":                               nil,
		"EHLO x":                                     nil,
	} {
		if got := ESMTPParams(in); !reflect.DeepEqual(got, want) {
			t.Errorf("ESMTPParams(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEncode(t *testing.T) {
	l06, l04 := compat.For(v06), compat.For(compat.Version{Major: 0, Minor: 4})
	ok := func(b []byte, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := ok(AppendResult(nil, l06, "s1", "t1", Proceed, "")); got != "filter-result|s1|t1|proceed\n" {
		t.Errorf("got %q", got)
	}
	if got := ok(AppendResult(nil, l04, "s1", "t1", Reject, "550 5.7.1 no")); got != "filter-result|t1|s1|reject|550 5.7.1 no\n" {
		t.Errorf("0.4 order: got %q", got)
	}
	if got := ok(AppendResult(nil, l06, "s1", "t1", Disconnect, "421 4.7.0 bye")); got != "filter-result|s1|t1|disconnect|421 4.7.0 bye\n" {
		t.Errorf("got %q", got)
	}
	if got := string(AppendDataLine(nil, l06, "s1", "t1", []byte("a|b"))); got != "filter-dataline|s1|t1|a|b\n" {
		t.Errorf("got %q", got)
	}
	if got := string(AppendDataLine(nil, l04, "s1", "t1", nil)); got != "filter-dataline|t1|s1|\n" {
		t.Errorf("got %q", got)
	}
	if got := string(AppendRegisterReady(AppendRegister(nil, "filter", "smtp-in", "commit"))); got != "register|filter|smtp-in|commit\nregister|ready\n" {
		t.Errorf("got %q", got)
	}
	for _, c := range []struct {
		d     Decision
		param string
	}{
		{Proceed, "x"}, {Junk, "x"}, {Reject, ""}, {Reject, "550"}, {Reject, "250 ok"}, {Reject, "550-5.7.1 multi"},
		{Reject, "550 a\r\n550 b"}, {Disconnect, "4xx bad"}, {Rewrite, ""}, {Rewrite, "a\nb"}, {"report", "x"}, {"bypass", ""},
	} {
		if b, err := AppendResult([]byte("keep"), l06, "s", "t", c.d, c.param); err == nil || string(b) != "keep" {
			t.Errorf("AppendResult(%s, %q) = %q, %v; want an error and nothing appended", c.d, c.param, b, err)
		}
	}
}

func TestReader(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	in := "a\nb\r\n" + big + "\n\n" + strings.Repeat("y", 200) + "\nlast"
	r := NewReader(strings.NewReader(in), 0)
	for _, want := range []string{"a", "b\r", big, "", strings.Repeat("y", 200), "last"} {
		got, err := r.ReadLine()
		if err != nil || string(got) != want {
			t.Fatalf("ReadLine = %d bytes %v, want %d bytes", len(got), err, len(want))
		}
	}
	if _, err := r.ReadLine(); err != io.EOF {
		t.Errorf("after the last line: %v, want io.EOF", err)
	}
	r = NewReader(strings.NewReader(strings.Repeat("z", 300<<10)+"\nnext\n"), 100<<10)
	if _, err := r.ReadLine(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("over the limit: %v", err)
	}
	if got, err := r.ReadLine(); err != nil || string(got) != "next" {
		t.Errorf("after a too-long line: %q %v", got, err)
	}
}

// transcriptLines yields the lines smtpd sent ("<< ") and the filter
// answered (">> ") in the real transcripts of smtpd 6.8 and 7.8.
func transcripts(t *testing.T) []string {
	files, err := filepath.Glob("../testdata/transcripts/*/*/f[12].log")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts found under ../testdata/transcripts: %v", err)
	}
	return files
}

func TestTranscriptsParse(t *testing.T) {
	n := 0
	for _, file := range transcripts(t) {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		requests := map[string]Request{}
		for sc.Scan() {
			line := sc.Text()
			if in, ok := strings.CutPrefix(line, "<< "); ok {
				ev, err := Parse([]byte(in))
				if err != nil {
					t.Errorf("%s: %v", file, err)
					continue
				}
				n++
				switch e := ev.(type) {
				case Report:
					got, err := e.Decode()
					if err != nil {
						t.Errorf("%s: %v", file, err)
					}
					if u, ok := got.(Unhandled); ok {
						t.Errorf("%s: event %q has no type", file, u.Event)
					}
				case Request:
					requests[e.Session+e.Token] = e
				}
				continue
			}
			// The test filter's proceed answers and data-line echoes must
			// be what this package encodes for the request they answer.
			out, ok := strings.CutPrefix(line, ">> ")
			if !ok || !(strings.HasSuffix(out, "|proceed") || strings.HasPrefix(out, "filter-dataline|")) {
				continue
			}
			parts := strings.SplitN(out, "|", 4)
			r, ok := requests[parts[1]+parts[2]]
			if !ok {
				continue
			}
			var want []byte
			if parts[0] == "filter-result" {
				want, _ = AppendResult(nil, compat.For(r.Version), r.Session, r.Token, Proceed, "")
			} else {
				want = AppendDataLine(nil, compat.For(r.Version), r.Session, r.Token, []byte(parts[3]))
			}
			if string(want) != out+"\n" {
				t.Errorf("%s: encoded %q, the filter sent %q", file, want, out)
			}
		}
		f.Close()
	}
	if n < 500 {
		t.Errorf("only %d lines replayed: transcripts missing?", n)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"filter|0.6|1795504923.809505|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|a|b|c",
		"report|0.7|1795504662.975854|smtp-in|link-auth|61cd21cac6515ff6|pass|bob",
		"report|0.6|1795504923.806001|smtp-in|tx-mail|433e864b1fd6b49c|2a|ok|x",
		"config|ready", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, err := Parse(line)
		if err != nil {
			return
		}
		switch e := ev.(type) {
		case Report:
			_, _ = e.Decode()
		case Request:
			// An echoed parameter parses back to itself.
			out := AppendDataLine(nil, compat.For(e.Version), e.Session, e.Token, []byte(e.Param))
			if bytes.IndexByte(out[:len(out)-1], '\n') >= 0 {
				return
			}
			if !strings.HasSuffix(string(out[:len(out)-1]), "|"+e.Param) {
				t.Fatalf("param %q not kept whole in %q", e.Param, out)
			}
		}
	})
}

func BenchmarkParseDataLine(b *testing.B) {
	line := []byte("filter|0.6|1795504923.809505|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|" + strings.Repeat("x", 76))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(line); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendDataLine(b *testing.B) {
	l := compat.For(v06)
	line := []byte(strings.Repeat("x", 76))
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendDataLine(buf[:0], l, "433e864b1fd6b49c", "0b70359911b2783b", line)
	}
}

func BenchmarkReaderReadLine(b *testing.B) {
	line := "filter|0.6|1795504923.809505|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|" + strings.Repeat("x", 76) + "\n"
	data := []byte(strings.Repeat(line, 1000))
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		r := NewReader(bytes.NewReader(data), 0)
		for {
			if _, err := r.ReadLine(); err != nil {
				break
			}
		}
	}
}
