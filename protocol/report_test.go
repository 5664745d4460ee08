package protocol

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/compat"
)

func TestDecode(t *testing.T) {
	all := []compat.Version{v04, v05, v06, v07, {Major: 0, Minor: 8}}
	cases := []struct {
		versions []compat.Version // nil: every version
		event    string
		params   string
		want     any
	}{
		{nil, "link-connect", "localhost|pass|127.0.0.1:47092|127.0.0.1:2525", LinkConnect{"localhost", "pass", "127.0.0.1:47092", "127.0.0.1:2525"}},
		{nil, "link-connect", "<unknown>|fail|[::1]:37382|[::1]:2525", LinkConnect{"<unknown>", "fail", "[::1]:37382", "[::1]:2525"}},
		{nil, "link-connect", "vm|pass|unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock", LinkConnect{"vm", "pass", "unix:/var/run/smtpd.sock", "unix:/var/run/smtpd.sock"}},
		{nil, "link-connect", "|error|1.2.3.4:5|6.7.8.9:25", LinkConnect{"", "error", "1.2.3.4:5", "6.7.8.9:25"}},
		{nil, "link-greeting", "vm", LinkGreeting{"vm"}},
		{nil, "link-identify", "EHLO|client.example", LinkIdentify{"EHLO", "client.example"}},
		{nil, "link-identify", "HELO|", LinkIdentify{"HELO", ""}},
		{nil, "link-tls", "TLSv1.3:TLS_AES_256_GCM_SHA384:256", LinkTLS{"TLSv1.3:TLS_AES_256_GCM_SHA384:256"}},

		// link-auth: username|result before 0.7, result|username from 0.7;
		// a '|' in the user name survives both.
		{[]compat.Version{v07, {Major: 0, Minor: 8}, {Major: 1, Minor: 0}}, "link-auth", "pass|bob", LinkAuth{"pass", "bob"}},
		{[]compat.Version{v07}, "link-auth", "pass|al|ice", LinkAuth{"pass", "al|ice"}},
		{[]compat.Version{v07}, "link-auth", "fail||", LinkAuth{"fail", "|"}},
		{[]compat.Version{v07}, "link-auth", "error|", LinkAuth{"error", ""}},
		{[]compat.Version{v04, v05, v06}, "link-auth", "bob|pass", LinkAuth{"pass", "bob"}},
		{[]compat.Version{v04, v05, v06}, "link-auth", "al|ice|pass", LinkAuth{"pass", "al|ice"}},
		{[]compat.Version{v06}, "link-auth", "||fail", LinkAuth{"fail", "|"}},

		{nil, "link-disconnect", "", LinkDisconnect{}},
		{nil, "tx-begin", "191901f5", TxBegin{"191901f5"}},

		// tx-mail and tx-rcpt: msgid|address|result before 0.6,
		// msgid|result|address from 0.6.
		{[]compat.Version{v06, v07}, "tx-mail", "191901f5|ok|sender@example.org", TxMail{"191901f5", "ok", "sender@example.org"}},
		{[]compat.Version{v06, v07}, "tx-mail", "191901f5|ok|", TxMail{"191901f5", "ok", ""}}, // MAIL FROM:<>
		{[]compat.Version{v06, v07}, "tx-mail", "191901f5|ok|we|ird@example.org", TxMail{"191901f5", "ok", "we|ird@example.org"}},
		{[]compat.Version{v06, v07}, "tx-mail", "00000000|permfail|sender@example.org", TxMail{"00000000", "permfail", "sender@example.org"}},
		{[]compat.Version{v04, v05}, "tx-mail", "191901f5|sender@example.org|ok", TxMail{"191901f5", "ok", "sender@example.org"}},
		{[]compat.Version{v04, v05}, "tx-mail", "191901f5||ok", TxMail{"191901f5", "ok", ""}},
		{[]compat.Version{v04, v05}, "tx-mail", "191901f5|we|ird@example.org|tempfail", TxMail{"191901f5", "tempfail", "we|ird@example.org"}},
		{[]compat.Version{v06, v07}, "tx-rcpt", "a9408d1b|ok|Nobody@Example.NET", TxRcpt{"a9408d1b", "ok", "Nobody@Example.NET"}},
		{[]compat.Version{v06, v07}, "tx-rcpt", "a9408d1b|permfail|a|b@c", TxRcpt{"a9408d1b", "permfail", "a|b@c"}},
		{[]compat.Version{v04, v05}, "tx-rcpt", "a9408d1b|Nobody@Example.NET|ok", TxRcpt{"a9408d1b", "ok", "Nobody@Example.NET"}},
		{[]compat.Version{v04, v05}, "tx-rcpt", "a9408d1b|a|b@c|permfail", TxRcpt{"a9408d1b", "permfail", "a|b@c"}},

		{nil, "tx-envelope", "191901f5|191901f560fba066", TxEnvelope{"191901f5", "191901f560fba066"}},
		{nil, "tx-data", "191901f5|ok", TxData{"191901f5", "ok"}},
		{nil, "tx-data", "191901f5|permfail", TxData{"191901f5", "permfail"}},
		{nil, "tx-commit", "191901f5|421", TxCommit{"191901f5", 421}},
		{nil, "tx-commit", "191901f5|36700160", TxCommit{"191901f5", 36700160}},
		{nil, "tx-reset", "191901f5", TxReset{"191901f5"}},
		{nil, "tx-rollback", "9dfe6abb", TxRollback{"9dfe6abb"}},
		{nil, "protocol-client", "mail FROM:<sender@example.org>  ", ProtocolClient{"mail FROM:<sender@example.org>  "}},
		{nil, "protocol-client", "rcpt TO:<a|b@example.net>", ProtocolClient{"rcpt TO:<a|b@example.net>"}},
		{nil, "protocol-client", "AUTH PLAIN ********", ProtocolClient{"AUTH PLAIN ********"}},
		{nil, "protocol-server", "250-SIZE 36700160", ProtocolServer{"250-SIZE 36700160"}},
		{nil, "protocol-server", "354 Enter mail, end with \".\" on a line by itself", ProtocolServer{"354 Enter mail, end with \".\" on a line by itself"}},
		{nil, "filter-response", "connected|proceed", FilterResponse{"connected", "proceed", ""}},
		{nil, "filter-response", "mail-from|junk", FilterResponse{"mail-from", "junk", ""}},
		{nil, "filter-response", "commit|reject|550 no thanks", FilterResponse{"commit", "reject", "550 no thanks"}},
		{nil, "filter-response", "rcpt-to|rewrite|<a|b@example.org>", FilterResponse{"rcpt-to", "rewrite", "<a|b@example.org>"}},
		{nil, "timeout", "", Timeout{}},
		{nil, "filter-report", "builtin|name|message", Unhandled{"filter-report"}},
		{nil, "link-reset", "", Unhandled{"link-reset"}},
	}
	for _, c := range cases {
		versions := c.versions
		if versions == nil {
			versions = all
		}
		for _, v := range versions {
			r := Report{Version: v, Timestamp: "1795504563.036967", Subsystem: "smtp-in", Event: Event(c.event), Session: "229dd54d9c889a05", Params: c.params}
			got, err := r.Decode()
			if err != nil {
				t.Errorf("%v %s %q: %v", v, c.event, c.params, err)
				continue
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("%v %s %q = %#v, want %#v", v, c.event, c.params, got, c.want)
			}
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, c := range []struct {
		v             compat.Version
		event, params string
	}{
		{v06, "link-connect", ""},
		{v06, "link-connect", "localhost|pass|127.0.0.1:47092"},
		{v06, "link-identify", "EHLO"},
		{v07, "link-auth", "pass"},
		{v06, "link-auth", "bob"},
		{v06, "tx-mail", "191901f5"},
		{v06, "tx-mail", "191901f5|ok"},
		{v05, "tx-mail", "191901f5|sender@example.org"},
		{v07, "tx-rcpt", ""},
		{v04, "tx-rcpt", "a9408d1b"},
		{v06, "tx-envelope", "191901f5"},
		{v06, "tx-data", "191901f5"},
		{v06, "tx-commit", "191901f5"},
		{v06, "tx-commit", "191901f5|"},
		{v06, "tx-commit", "191901f5|x"},
		{v06, "tx-commit", "191901f5|-1"},
		{v06, "tx-commit", "191901f5|99999999999999999999"},
		{v06, "filter-response", "connected"},
	} {
		r := Report{Version: c.v, Timestamp: "1795504563.036967", Subsystem: "smtp-in", Event: Event(c.event), Session: "229dd54d9c889a05", Params: c.params}
		got, err := r.Decode()
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("%v %s %q = %#v, %v; want a *ParseError", c.v, c.event, c.params, got, err)
			continue
		}
		line := "report|" + c.v.String() + "|1795504563.036967|smtp-in|" + c.event + "|229dd54d9c889a05"
		if c.params != "" {
			line += "|" + c.params
		}
		if pe.Line != line || !strings.Contains(pe.Reason, c.event) {
			t.Errorf("%v %s %q: error %q should name the report line %q and the event", c.v, c.event, c.params, err, line)
		}
	}
}
