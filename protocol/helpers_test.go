package protocol

import (
	"reflect"
	"testing"
)

func TestSplitTLS(t *testing.T) {
	for _, c := range []struct {
		in                   string
		version, cipher, bit string
		ok                   bool
	}{
		{"TLSv1.3:TLS_AES_256_GCM_SHA384:256", "TLSv1.3", "TLS_AES_256_GCM_SHA384", "256", true},
		{"TLSv1.2:ECDHE-RSA-AES128-GCM-SHA256:128", "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", "128", true},
		{"v:a:b:128", "v", "a:b", "128", true},
		{"v::0", "v", "", "0", true},
		{"", "", "", "", false},
		{"TLSv1.3", "", "", "", false},
		{"TLSv1.3:TLS_AES_256_GCM_SHA384", "", "", "", false},
	} {
		v, ci, b, ok := SplitTLS(c.in)
		if v != c.version || ci != c.cipher || b != c.bit || ok != c.ok {
			t.Errorf("SplitTLS(%q) = %q, %q, %q, %v; want %q, %q, %q, %v", c.in, v, ci, b, ok, c.version, c.cipher, c.bit, c.ok)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Endpoint
	}{
		{"127.0.0.1:47092", Endpoint{"inet", "127.0.0.1", 47092}},
		{"1.2.3.4:25", Endpoint{"inet", "1.2.3.4", 25}},
		{"[::1]:37382", Endpoint{"inet6", "::1", 37382}},
		{"[::1]:2525", Endpoint{"inet6", "::1", 2525}},
		{"[2001:db8:0:0::1]:65535", Endpoint{"inet6", "2001:db8::1", 65535}},
		{"[::ffff:192.0.2.1]:25", Endpoint{"inet", "192.0.2.1", 25}},
		{"[fe80::1%eth0]:25", Endpoint{"inet6", "fe80::1%eth0", 25}},
		{"unix:/var/run/smtpd.sock", Endpoint{"unix", "/var/run/smtpd.sock", 0}},
	} {
		got, err := ParseEndpoint(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseEndpoint(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{
		"", "local", "127.0.0.1", "[::1]", "::1:25", "1.2.3.4:", "1.2.3.4:65536", "1.2.3.4:-1",
		"1.2.3.4:+25", "[1.2.3.4]:25", "host.example:25", "unix:", "UNIX:/x", "<unknown>",
	} {
		if got, err := ParseEndpoint(in); err == nil {
			t.Errorf("ParseEndpoint(%q) = %+v, want an error", in, got)
		}
	}
}

func TestESMTPParams(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"MAIL FROM:<a@b> SIZE=12 BODY=8BITMIME", []string{"SIZE=12", "BODY=8BITMIME"}},
		{"mail FROM:<sender@example.org> size=3137", []string{"size=3137"}},
		{"mail FROM:<> size=22", []string{"size=22"}},
		{"mail FROM:<sender@example.org>  ", nil},
		{"mail from:<a@b>  SIZE=1   BODY=7BIT  ", []string{"SIZE=1", "BODY=7BIT"}},
		{"MAIL FROM : <a@b> SIZE=1", []string{"SIZE=1"}},
		{"MAIL FROM: <a@b>\tSMTPUTF8", []string{"SMTPUTF8"}},
		{"MAIL FROM:<a@b>SIZE=1", []string{"SIZE=1"}},
		{"rcpt TO:<x@y> NOTIFY=NEVER", []string{"NOTIFY=NEVER"}},
		{"RCPT TO:<nobody@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;nobody@example.net", []string{"NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;nobody@example.net"}},
		{"rcpt to:<a|b@example.net> X=|", []string{"X=|"}},
		{"MAIL FROM:<>", nil},
		{"rcpt TO:<nobody@example.net>", nil},
		{"EHLO client.example", nil},
		{"AUTH PLAIN ********", nil},
		{"MAIL TO:<a@b> SIZE=1", nil},
		{"RCPT FROM:<a@b> NOTIFY=NEVER", nil},
		{"MAILFROM:<a@b> SIZE=1", nil},
		{"MAIL FROM:a@b SIZE=1", nil},
		{"MAIL FROM:<a@b SIZE=1", nil},
		{"MAIL", nil},
		{"", nil},
	} {
		if got := ESMTPParams(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("ESMTPParams(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
