package protocol

import (
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/compat"
)

const (
	sess = "433e864b1fd6b49c"
	tok  = "0b70359911b2783b"
)

func TestAppendRegister(t *testing.T) {
	var b []byte
	b = AppendRegister(b, "report", "smtp-in", "link-connect")
	b = AppendRegister(b, "report", "smtp-in", "*")
	b = AppendRegister(b, "filter", "smtp-in", "data-line")
	b = AppendRegisterReady(b)
	want := "register|report|smtp-in|link-connect\nregister|report|smtp-in|*\nregister|filter|smtp-in|data-line\nregister|ready\n"
	if string(b) != want {
		t.Errorf("got %q, want %q", b, want)
	}
}

func TestAppendResult(t *testing.T) {
	sessionFirst := "filter-result|" + sess + "|" + tok + "|"
	tokenFirst := "filter-result|" + tok + "|" + sess + "|"
	for _, c := range []struct {
		v     compat.Version
		d     Decision
		param string
		want  string
	}{
		{v04, Proceed, "", tokenFirst + "proceed\n"},
		{v04, Junk, "", tokenFirst + "junk\n"},
		{v04, Reject, "550 5.7.1 no", tokenFirst + "reject|550 5.7.1 no\n"},
		{v04, Disconnect, "421 4.7.0 bye", tokenFirst + "disconnect|421 4.7.0 bye\n"},
		{v04, Rewrite, "<other@example.com>", tokenFirst + "rewrite|<other@example.com>\n"},
		{v05, Proceed, "", sessionFirst + "proceed\n"},
		{v06, Proceed, "", sessionFirst + "proceed\n"},
		{v06, Junk, "", sessionFirst + "junk\n"},
		{v06, Reject, "550 no thanks", sessionFirst + "reject|550 no thanks\n"},
		{v06, Reject, "451 4.7.1 try | later", sessionFirst + "reject|451 4.7.1 try | later\n"},
		{v06, Disconnect, "421 go away", sessionFirst + "disconnect|421 go away\n"},
		{v06, Rewrite, "<nobody@example.org>", sessionFirst + "rewrite|<nobody@example.org>\n"},
		{v07, Proceed, "", sessionFirst + "proceed\n"},
		{v07, Reject, "554 5.7.1 a\ttab", sessionFirst + "reject|554 5.7.1 a\ttab\n"},
		{v07, Disconnect, "421 4.3.2 shutting down", sessionFirst + "disconnect|421 4.3.2 shutting down\n"},
		{compat.Version{Major: 1, Minor: 0}, Proceed, "", sessionFirst + "proceed\n"},
	} {
		got, err := AppendResult([]byte("x"), compat.For(c.v), sess, tok, c.d, c.param)
		if err != nil || string(got) != "x"+c.want {
			t.Errorf("%v %s %q = %q, %v; want %q", c.v, c.d, c.param, got, err, "x"+c.want)
		}
	}
}

func TestAppendResultRefuses(t *testing.T) {
	for _, c := range []struct {
		d     Decision
		param string
	}{
		{Proceed, "x"},
		{Proceed, "250 ok"},
		{Junk, "x"},
		{Reject, ""},
		{Reject, "550"},
		{Reject, "5501 x"},
		{Reject, "550-5.7.1 multi"},
		{Reject, "250 2.0.0 ok"},
		{Reject, "350 x"},
		{Reject, "650 x"},
		{Reject, "5x0 no"},
		{Reject, " 550 no"},
		{Reject, "550 a\r\n550 b"},
		{Reject, "550 a\n"},
		{Reject, "550 a\r"},
		{Reject, "550 a\x00b"},
		{Disconnect, ""},
		{Disconnect, "4xx bad"},
		{Disconnect, "221 bye"},
		{Disconnect, "421 a\nb"},
		{Rewrite, ""},
		{Rewrite, "<a@b>\n"},
		{Rewrite, "<a@b>\r"},
		{Rewrite, "<a\x00@b>"},
		{"report", "hello"},
		{"bypass", ""},
		{"", ""},
		{"PROCEED", ""},
	} {
		for _, v := range []compat.Version{v04, v07} {
			got, err := AppendResult([]byte("keep"), compat.For(v), sess, tok, c.d, c.param)
			if err == nil || string(got) != "keep" {
				t.Errorf("AppendResult(%s, %q) = %q, %v; want an error and nothing appended", c.d, c.param, got, err)
			}
		}
	}
}

func TestAppendResultErrorIsBounded(t *testing.T) {
	_, err := AppendResult(nil, compat.For(v07), sess, tok, Reject, strings.Repeat("x", 100000))
	if err == nil || len(err.Error()) > 400 {
		t.Errorf("error for a huge parameter should quote a bounded part of it: %d bytes", len(err.Error()))
	}
}

func TestValidReply(t *testing.T) {
	for s, want := range map[string]bool{
		"550 no thanks":       true,
		"421 go away":         true,
		"451 4.7.1 try later": true,
		"550 x":               true,
		"499  ":               true, // five bytes, as smtpd counts
		"550 ":                false,
		"550":                 false,
		"550x no":             false,
		"550-no":              false,
		"250 ok":              false,
		"221 bye":             false,
		"650 no":              false,
		"5a0 no":              false,
		"55 no":               false,
		"550 no\r\n":          false,
		"550 no\n550 more":    false,
		"550 n\x00o":          false,
		"":                    false,
	} {
		if got := ValidReply(s); got != want {
			t.Errorf("ValidReply(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestAppendDataLine(t *testing.T) {
	for _, c := range []struct {
		v    compat.Version
		line string
		want string
	}{
		{v04, "Subject: test|pipe", "filter-dataline|" + tok + "|" + sess + "|Subject: test|pipe\n"},
		{v04, "", "filter-dataline|" + tok + "|" + sess + "|\n"},
		{v05, "x", "filter-dataline|" + sess + "|" + tok + "|x\n"},
		{v06, "a|b|c", "filter-dataline|" + sess + "|" + tok + "|a|b|c\n"},
		{v06, "..leading dot", "filter-dataline|" + sess + "|" + tok + "|..leading dot\n"},
		{v06, ".", "filter-dataline|" + sess + "|" + tok + "|.\n"},
		{v07, "", "filter-dataline|" + sess + "|" + tok + "|\n"},
		{v07, "last\r", "filter-dataline|" + sess + "|" + tok + "|last\r\n"},
		{v07, "\tfor <nobody@example.net>;", "filter-dataline|" + sess + "|" + tok + "|\tfor <nobody@example.net>;\n"},
	} {
		got := AppendDataLine([]byte("x"), compat.For(c.v), sess, tok, []byte(c.line))
		if string(got) != "x"+c.want {
			t.Errorf("%v %q = %q, want %q", c.v, c.line, got, "x"+c.want)
		}
	}
}

func TestAppendDataLineAllocations(t *testing.T) {
	l := compat.For(v07)
	buf := make([]byte, 0, 256)
	line := []byte("Subject: test|pipe")
	if n := testing.AllocsPerRun(100, func() { buf = AppendDataLine(buf[:0], l, sess, tok, line) }); n != 0 {
		t.Errorf("AppendDataLine into a large enough buffer makes %v allocations, want 0", n)
	}
}

func TestAppendResultBoundsTheParameter(t *testing.T) {
	reply := func(n int) string { return "550 5.7.1 " + strings.Repeat("x", n-len("550 5.7.1 ")) }
	for _, d := range []Decision{Reject, Disconnect} {
		param := reply(MaxParam)
		if d == Disconnect {
			param = "421" + param[3:]
		}
		got, err := AppendResult(nil, compat.For(v07), sess, tok, d, param)
		if err != nil || !strings.HasSuffix(string(got), "|"+param+"\n") {
			t.Errorf("%s with a %d-byte reply (the limit): %v", d, len(param), err)
		}
		got, err = AppendResult([]byte("keep"), compat.For(v07), sess, tok, d, param+"y")
		if err == nil || string(got) != "keep" {
			t.Errorf("%s with a %d-byte reply = %q, %v; want an error and nothing appended", d, len(param)+1, got, err)
		}
	}
	addr := "<" + strings.Repeat("a", MaxParam) + "@example.org>"
	if got, err := AppendResult([]byte("keep"), compat.For(v07), sess, tok, Rewrite, addr); err == nil || string(got) != "keep" {
		t.Errorf("rewrite with a %d-byte parameter = %q, %v; want an error", len(addr), got, err)
	}
}

// The limit is the RFC's: a reply line of 512 octets with its CRLF, which
// also fits 6.8's LINE_MAX copy of the whole filter-result line.
func TestMaxParamFitsSMTPAndSmtpd68(t *testing.T) {
	if MaxParam+len("\r\n") != 512 {
		t.Errorf("MaxParam = %d: a reply line with CRLF must be 512 octets at most (RFC 5321 4.5.3.1.5)", MaxParam)
	}
	line, err := AppendResult(nil, compat.For(v07), sess, tok, Disconnect, "421 "+strings.Repeat("x", MaxParam-4))
	if err != nil || len(line) >= 2048 {
		t.Errorf("the longest filter-result line is %d bytes (%v); smtpd 6.8 keeps 2047", len(line), err)
	}
}
