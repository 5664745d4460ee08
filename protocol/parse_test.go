package protocol

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/compat"
)

var (
	v04 = compat.Version{Major: 0, Minor: 4}
	v05 = compat.Version{Major: 0, Minor: 5}
	v06 = compat.Version{Major: 0, Minor: 6}
	v07 = compat.Version{Major: 0, Minor: 7}
)

// Lines copied from the transcripts of smtpd 6.8.0p2 (0.6) and 7.8.0p1
// (0.7) under ../testdata/transcripts; the few marked "synthetic" are
// events or phases those runs did not produce.
func TestParse(t *testing.T) {
	rep := func(v compat.Version, ts, event, session, params string) Report {
		return Report{Version: v, Timestamp: ts, Subsystem: "smtp-in", Event: Event(event), Session: session, Params: params}
	}
	req := func(v compat.Version, ts, phase, session, token, param string) Request {
		return Request{Version: v, Timestamp: ts, Subsystem: "smtp-in", Phase: Phase(phase), Session: session, Token: token, Param: param}
	}
	cases := []struct {
		line string
		want Parsed
	}{
		// config
		{"config|smtpd-version|6.8.0p2", Config{"smtpd-version", "6.8.0p2"}},
		{"config|smtpd-version|7.8.0-portable", Config{"smtpd-version", "7.8.0-portable"}},
		{"config|protocol|0.7", Config{"protocol", "0.7"}},
		{"config|smtp-session-timeout|300", Config{"smtp-session-timeout", "300"}},
		{"config|subsystem|smtp-in", Config{"subsystem", "smtp-in"}},
		{"config|admd|vm", Config{"admd", "vm"}},
		{"config|ready", Config{"ready", ""}},
		{"config|some-future-key|a|b", Config{"some-future-key", "a|b"}}, // synthetic
		{"config|empty|", Config{"empty", ""}},                           // synthetic

		// every report event
		{"report|0.6|1795504563.036967|smtp-in|link-connect|229dd54d9c889a05|localhost|pass|127.0.0.1:60574|127.0.0.1:2525",
			rep(v06, "1795504563.036967", "link-connect", "229dd54d9c889a05", "localhost|pass|127.0.0.1:60574|127.0.0.1:2525")},
		{"report|0.6|1795504534.998761|smtp-in|link-connect|0d46959a1949ea5d|<unknown>|fail|[::1]:37382|[::1]:2525",
			rep(v06, "1795504534.998761", "link-connect", "0d46959a1949ea5d", "<unknown>|fail|[::1]:37382|[::1]:2525")},
		{"report|0.6|1795504548.386020|smtp-in|link-connect|26a153e15705968d|vm|pass|unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock",
			rep(v06, "1795504548.386020", "link-connect", "26a153e15705968d", "vm|pass|unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock")},
		{"report|0.6|1795504563.037959|smtp-in|link-greeting|229dd54d9c889a05|vm",
			rep(v06, "1795504563.037959", "link-greeting", "229dd54d9c889a05", "vm")},
		{"report|0.6|1795504563.039191|smtp-in|link-identify|229dd54d9c889a05|EHLO|client.example",
			rep(v06, "1795504563.039191", "link-identify", "229dd54d9c889a05", "EHLO|client.example")},
		{"report|0.7|1795504662.814445|smtp-in|link-tls|61cd21cac6515ff6|TLSv1.3:TLS_AES_256_GCM_SHA384:256",
			rep(v07, "1795504662.814445", "link-tls", "61cd21cac6515ff6", "TLSv1.3:TLS_AES_256_GCM_SHA384:256")},
		{"report|0.7|1795504672.838734|smtp-in|link-auth|b65e53face041212|pass|al|ice",
			rep(v07, "1795504672.838734", "link-auth", "b65e53face041212", "pass|al|ice")},
		{"report|0.7|1795504677.078097|smtp-in|link-auth|364af23ae8fb423f|fail|bob",
			rep(v07, "1795504677.078097", "link-auth", "364af23ae8fb423f", "fail|bob")},
		{"report|0.6|1795504563.049278|smtp-in|link-disconnect|229dd54d9c889a05",
			rep(v06, "1795504563.049278", "link-disconnect", "229dd54d9c889a05", "")},
		{"report|0.6|1795504563.040491|smtp-in|tx-begin|229dd54d9c889a05|191901f5",
			rep(v06, "1795504563.040491", "tx-begin", "229dd54d9c889a05", "191901f5")},
		{"report|0.6|1795504563.040492|smtp-in|tx-mail|229dd54d9c889a05|191901f5|ok|",
			rep(v06, "1795504563.040492", "tx-mail", "229dd54d9c889a05", "191901f5|ok|")},
		{"report|0.6|1795504563.046865|smtp-in|tx-mail|229dd54d9c889a05|a9408d1b|ok|UPPER@Example.ORG",
			rep(v06, "1795504563.046865", "tx-mail", "229dd54d9c889a05", "a9408d1b|ok|UPPER@Example.ORG")},
		{"report|0.6|1795504563.048017|smtp-in|tx-rcpt|229dd54d9c889a05|a9408d1b|ok|Nobody@Example.NET",
			rep(v06, "1795504563.048017", "tx-rcpt", "229dd54d9c889a05", "a9408d1b|ok|Nobody@Example.NET")},
		{"report|0.6|1795504563.041937|smtp-in|tx-envelope|229dd54d9c889a05|191901f5|191901f560fba066",
			rep(v06, "1795504563.041937", "tx-envelope", "229dd54d9c889a05", "191901f5|191901f560fba066")},
		{"report|0.6|1795504563.043105|smtp-in|tx-data|229dd54d9c889a05|191901f5|ok",
			rep(v06, "1795504563.043105", "tx-data", "229dd54d9c889a05", "191901f5|ok")},
		{"report|0.6|1795504563.045920|smtp-in|tx-commit|229dd54d9c889a05|191901f5|421",
			rep(v06, "1795504563.045920", "tx-commit", "229dd54d9c889a05", "191901f5|421")},
		{"report|0.6|1795504563.045921|smtp-in|tx-reset|229dd54d9c889a05|191901f5",
			rep(v06, "1795504563.045921", "tx-reset", "229dd54d9c889a05", "191901f5")},
		{"report|0.6|1795504473.755733|smtp-in|tx-rollback|8644386d3a5406c9|9dfe6abb",
			rep(v06, "1795504473.755733", "tx-rollback", "8644386d3a5406c9", "9dfe6abb")},
		{"report|0.6|1795504563.040953|smtp-in|protocol-client|229dd54d9c889a05|rcpt TO:<nobody@example.net> NOTIFY=NEVER",
			rep(v06, "1795504563.040953", "protocol-client", "229dd54d9c889a05", "rcpt TO:<nobody@example.net> NOTIFY=NEVER")},
		{"report|0.6|1795504563.039194|smtp-in|protocol-server|229dd54d9c889a05|250-vm Hello client.example [127.0.0.1], pleased to meet you",
			rep(v06, "1795504563.039194", "protocol-server", "229dd54d9c889a05", "250-vm Hello client.example [127.0.0.1], pleased to meet you")},
		{"report|0.6|1795504473.755699|smtp-in|filter-response|8644386d3a5406c9|commit|reject|550 no thanks",
			rep(v06, "1795504473.755699", "filter-response", "8644386d3a5406c9", "commit|reject|550 no thanks")},
		{"report|0.6|1795504563.037947|smtp-in|filter-response|229dd54d9c889a05|connected|proceed",
			rep(v06, "1795504563.037947", "filter-response", "229dd54d9c889a05", "connected|proceed")},
		{"report|0.7|1795504999.000001|smtp-in|timeout|61cd21cac6515ff6", // synthetic
			rep(v07, "1795504999.000001", "timeout", "61cd21cac6515ff6", "")},
		{"report|0.6|1795504999.000001|smtp-out|link-connect|61cd21cac6515ff6|a|b|c|d", // synthetic
			Report{v06, "1795504999.000001", "smtp-out", "link-connect", "61cd21cac6515ff6", "a|b|c|d"}},

		// every filter phase
		{"filter|0.6|1795504563.037006|smtp-in|connect|229dd54d9c889a05|a534e08beb3a9428|localhost|127.0.0.1",
			req(v06, "1795504563.037006", "connect", "229dd54d9c889a05", "a534e08beb3a9428", "localhost|127.0.0.1")},
		{"filter|0.6|1795504534.998804|smtp-in|connect|0d46959a1949ea5d|a2a729aabb73fc11|<unknown>|[::1]",
			req(v06, "1795504534.998804", "connect", "0d46959a1949ea5d", "a2a729aabb73fc11", "<unknown>|[::1]")},
		{"filter|0.6|1795504999.000001|smtp-in|helo|229dd54d9c889a05|a534e08dbe2fa4d6|client.example", // synthetic
			req(v06, "1795504999.000001", "helo", "229dd54d9c889a05", "a534e08dbe2fa4d6", "client.example")},
		{"filter|0.6|1795504563.038300|smtp-in|ehlo|229dd54d9c889a05|a534e08dbe2fa4d6|client.example",
			req(v06, "1795504563.038300", "ehlo", "229dd54d9c889a05", "a534e08dbe2fa4d6", "client.example")},
		{"filter|0.7|1795504676.922320|smtp-in|starttls|364af23ae8fb423f|ecee04f3053a3235|",
			req(v07, "1795504676.922320", "starttls", "364af23ae8fb423f", "ecee04f3053a3235", "")},
		{"filter|0.7|1795504676.969917|smtp-in|auth|364af23ae8fb423f|ecee04f403da819a|PLAIN AGJvYgB3cm9uZw==",
			req(v07, "1795504676.969917", "auth", "364af23ae8fb423f", "ecee04f403da819a", "PLAIN AGJvYgB3cm9uZw==")},
		{"filter|0.6|1795504563.039585|smtp-in|mail-from|229dd54d9c889a05|a534e0902cbb3160|",
			req(v06, "1795504563.039585", "mail-from", "229dd54d9c889a05", "a534e0902cbb3160", "")},
		{"filter|0.6|1795504563.047560|smtp-in|rcpt-to|229dd54d9c889a05|a534e09174cbcb52|Nobody@Example.NET",
			req(v06, "1795504563.047560", "rcpt-to", "229dd54d9c889a05", "a534e09174cbcb52", "Nobody@Example.NET")},
		{"filter|0.6|1795504563.042350|smtp-in|data|229dd54d9c889a05|a534e092a2949fb0|",
			req(v06, "1795504563.042350", "data", "229dd54d9c889a05", "a534e092a2949fb0", "")},
		{"filter|0.6|1795504563.044310|smtp-in|commit|229dd54d9c889a05|a534e0990aec9806|",
			req(v06, "1795504563.044310", "commit", "229dd54d9c889a05", "a534e0990aec9806", "")},
		{"filter|0.6|1795504563.048173|smtp-in|rset|229dd54d9c889a05|a534e094f05ecc5d|",
			req(v06, "1795504563.048173", "rset", "229dd54d9c889a05", "a534e094f05ecc5d", "")},
		{"filter|0.6|1795504923.803421|smtp-in|noop|433e864b1fd6b49c|0b70359c112c7127|",
			req(v06, "1795504923.803421", "noop", "433e864b1fd6b49c", "0b70359c112c7127", "")},
		{"filter|0.6|1795504563.049129|smtp-in|quit|229dd54d9c889a05|a534e09582002cc3|",
			req(v06, "1795504563.049129", "quit", "229dd54d9c889a05", "a534e09582002cc3", "")},

		// data lines: '|' inside, empty, the terminator, dot-stuffed,
		// blanks kept, a trailing '\r' kept (synthetic)
		{"filter|0.6|1795504923.809505|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|a|b|c",
			req(v06, "1795504923.809505", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "a|b|c")},
		{"filter|0.6|1795504923.809499|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|Subject: test|pipe",
			req(v06, "1795504923.809499", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "Subject: test|pipe")},
		{"filter|0.6|1795504923.809500|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|",
			req(v06, "1795504923.809500", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "")},
		{"filter|0.6|1795504923.809513|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|.",
			req(v06, "1795504923.809513", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", ".")},
		{"filter|0.6|1795504923.809504|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|..",
			req(v06, "1795504923.809504", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "..")},
		{"filter|0.6|1795504923.809502|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|..leading dot",
			req(v06, "1795504923.809502", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "..leading dot")},
		{"filter|0.6|1795504923.809503|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|...two dots",
			req(v06, "1795504923.809503", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "...two dots")},
		{"filter|0.6|1795504923.809507|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|   spaces   ",
			req(v06, "1795504923.809507", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "   spaces   ")},
		{"filter|0.7|1795504662.979568|smtp-in|data-line|61cd21cac6515ff6|e1b36a3bd962f4fa|\tfor <nobody@example.net>;",
			req(v07, "1795504662.979568", "data-line", "61cd21cac6515ff6", "e1b36a3bd962f4fa", "\tfor <nobody@example.net>;")},
		{"filter|0.6|1795504923.809512|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|last line\r",
			req(v06, "1795504923.809512", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "last line\r")},
		{"filter|0.6|1795504923.809512|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b||",
			req(v06, "1795504923.809512", "data-line", "433e864b1fd6b49c", "0b70359911b2783b", "|")},

		// versions are numbers; ids are any hex (synthetic)
		{"report|0.10|1|smtp-in|tx-begin|ABCDEF0123|1",
			Report{compat.Version{Major: 0, Minor: 10}, "1", "smtp-in", "tx-begin", "ABCDEF0123", "1"}},
		{"report|0.4|1|smtp-in|link-disconnect|a|",
			Report{v04, "1", "smtp-in", "link-disconnect", "a", ""}},
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
	for _, c := range []struct{ line, reason string }{
		{"", "empty line"},
		{"garbage", "not a config"},
		{"register|ready", "not a config"},
		{"filter-result|229dd54d9c889a05|a534e09582002cc3|proceed", "not a config"},
		{"filter-dataline|229dd54d9c889a05|a534e09582002cc3|x", "not a config"},
		{"REPORT|0.6|1|smtp-in|tx-begin|a|b", "not a config"},
		{"config", "not a config"},
		{"config|", "empty config key"},
		{"config||x", "empty config key"},
		{"report", "not a config"},
		{"report|0.6", "want report|"},
		{"report|0.6|1795504563.036967|smtp-in|link-connect", "want report|"},
		{"report|x.y|1795504563.036967|smtp-in|tx-begin|229dd54d9c889a05|191901f5", "version"},
		{"report|0.6.1|1795504563.036967|smtp-in|tx-begin|229dd54d9c889a05|191901f5", "version"},
		{"report||1795504563.036967|smtp-in|tx-begin|229dd54d9c889a05|191901f5", "version"},
		{"report|0.6||smtp-in|tx-begin|229dd54d9c889a05|191901f5", "timestamp"},
		{"report|0.6|1795504563.036967||tx-begin|229dd54d9c889a05|191901f5", "subsystem"},
		{"report|0.6|1795504563.036967|smtp-in||229dd54d9c889a05|191901f5", "event"},
		{"report|0.6|1795504563.036967|smtp-in|link-disconnect|", "session"},
		{"report|0.6|1795504563.036967|smtp-in|tx-begin|not-hex!|191901f5", "session"},
		{"report|0.6|1795504563.036967|smtp-in|tx-begin|229dd54d9c889a0g|191901f5", "session"},
		{"filter|0.6|1795504563.049129|smtp-in|quit|229dd54d9c889a05", "want filter|"},
		{"filter|0.6|1795504563.049129|smtp-in|quit|229dd54d9c889a05|a534e09582002cc3", "want filter|"}, // no parameter field
		{"filter|0.6|1795504563.049129|smtp-in|quit||a534e09582002cc3|", "session"},
		{"filter|0.6|1795504563.049129|smtp-in|quit|xyz|a534e09582002cc3|", "session"},
		{"filter|0.6|1795504563.049129|smtp-in|quit|229dd54d9c889a05||", "token"},
		{"filter|0.6|1795504563.049129|smtp-in|quit|229dd54d9c889a05|token|", "token"},
		{"filter|v0.6|1795504563.049129|smtp-in|quit|229dd54d9c889a05|a534e09582002cc3|", "version"},
		{"filter|0.6|1795504563.049129|smtp-in||229dd54d9c889a05|a534e09582002cc3|", "phase"},
	} {
		ev, err := Parse([]byte(c.line))
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("Parse(%q) = %#v, %v; want a *ParseError", c.line, ev, err)
			continue
		}
		if ev != nil {
			t.Errorf("Parse(%q) returned %#v with its error", c.line, ev)
		}
		if pe.Line != c.line || !strings.Contains(err.Error(), strconv.Quote(c.line)) {
			t.Errorf("Parse(%q): error %q does not name the line", c.line, err)
		}
		if !strings.Contains(pe.Reason, c.reason) {
			t.Errorf("Parse(%q): reason %q, want one about %q", c.line, pe.Reason, c.reason)
		}
	}
}

func TestParseErrorQuotesABoundedPart(t *testing.T) {
	long := "filter|0.6|1|smtp-in|data-line|not-hex|a534e09582002cc3|" + strings.Repeat("x", 70000)
	_, err := Parse([]byte(long))
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("got %v, want a *ParseError", err)
	}
	if !strings.HasPrefix(long, strings.TrimSuffix(pe.Line, "...")) || !strings.HasSuffix(pe.Line, "...") {
		t.Errorf("Line %q is not a marked prefix of the line", pe.Line)
	}
	if len(err.Error()) > 300 {
		t.Errorf("error is %d bytes, want about 200 of the line", len(err.Error()))
	}
}

// The fields of a parsed line must rebuild the line exactly: nothing is
// lost, trimmed or moved.
func TestParseKeepsEveryByte(t *testing.T) {
	for _, line := range []string{
		"filter|0.6|1|smtp-in|data-line|a|b| \t|x|\r",
		"report|0.7|1|smtp-in|protocol-client|a|MAIL FROM:<a|b@c>  ",
		"report|0.7|1|smtp-in|link-disconnect|a",
		"config|k|v|w\r",
	} {
		ev, err := Parse([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		if got := rebuild(ev); got != line {
			t.Errorf("rebuilt %q, want %q", got, line)
		}
	}
}

// rebuild writes an event back as smtpd would have written it.
func rebuild(ev Parsed) string {
	switch e := ev.(type) {
	case Config:
		if e.Key == "ready" && e.Value == "" {
			return "config|ready"
		}
		return "config|" + e.Key + "|" + e.Value
	case Report:
		s := "report|" + e.Version.String() + "|" + e.Timestamp + "|" + e.Subsystem + "|" + string(e.Event) + "|" + e.Session
		if e.Params != "" {
			s += "|" + e.Params
		}
		return s
	case Request:
		return "filter|" + e.Version.String() + "|" + e.Timestamp + "|" + e.Subsystem + "|" + string(e.Phase) + "|" + e.Session + "|" + e.Token + "|" + e.Param
	}
	return ""
}

func TestParseAllocations(t *testing.T) {
	line := []byte("filter|0.6|1795504923.809505|smtp-in|data-line|433e864b1fd6b49c|0b70359911b2783b|Subject: test|pipe")
	// One copy of the line, and the Request in its interface.
	if n := testing.AllocsPerRun(100, func() { _, _ = Parse(line) }); n > 2 {
		t.Errorf("Parse of a data line makes %v allocations, want at most 2", n)
	}
}
