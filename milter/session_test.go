package milter_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	djmilter "github.com/d--j/go-milter"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
)

func open(t *testing.T, spec string, opts milter.Options, macros *milter.Macros) *milter.Session {
	t.Helper()
	sp, err := milter.ParseSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	s, err := milter.NewClient(spec, sp, opts, nil).Open(macros)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// checker returns a function that fails the test on an error and passes
// the verdict through: ok(s.Helo("h")).
func checker(t *testing.T) func(milter.Verdict, error) milter.Verdict {
	return func(v milter.Verdict, err error) milter.Verdict {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func TestSessionWholeTransaction(t *testing.T) {
	ok := checker(t)
	srv := miltertest.Start(t, miltertest.Script{
		EOM: func(m djmilter.Modifier) (*djmilter.Response, error) {
			_ = m.AddHeader("X-Added", "yes")
			_ = m.InsertHeader(0, "X-First", "top")
			_ = m.ChangeHeader(1, "Subject", "")
			return djmilter.RespAccept, nil
		},
	})
	macros := milter.NewMacros()
	macros.Set(milter.MacroMTAName, "mx.test.example")
	macros.Set(milter.MacroClientAddr, "192.0.2.1")
	s := open(t, srv.Spec, milter.DefaultOptions, macros)

	ok(s.Connect("client.example", milter.FamilyInet, 4242, "192.0.2.1"))
	ok(s.Helo("helo.example"))
	macros.Set(milter.MacroMailAddr, "a@test.example")
	ok(s.Mail("a@test.example", []string{"SIZE=12", "BODY=8BITMIME"}))
	macros.Set(milter.MacroQueueID, "abcd1234")
	ok(s.Rcpt("b@test.example", nil))
	ok(s.Data())
	ok(s.Header("Subject", " hello\n\tfolded"))
	ok(s.Header("X-Tab", "\tvalue"))
	ok(s.EndOfHeaders())
	ok(s.Body([]byte("line 1\r\nline 2\r\n")))
	v, mods, err := s.End(nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.Kind != milter.Accept {
		t.Errorf("end verdict = %v, want accept", v)
	}
	want := []milter.Modification{
		{Kind: milter.AddHeader, Name: "X-Added", Value: " yes"},
		{Kind: milter.InsertHeader, Name: "X-First", Value: " top", Index: 0},
		{Kind: milter.ChangeHeader, Name: "Subject", Value: "", Index: 1},
	}
	if len(mods) != len(want) {
		t.Fatalf("mods = %+v, want %+v", mods, want)
	}
	for i := range want {
		if mods[i].Kind != want[i].Kind || mods[i].Name != want[i].Name || mods[i].Value != want[i].Value || mods[i].Index != want[i].Index {
			t.Errorf("mod %d = %+v, want %+v", i, mods[i], want[i])
		}
	}
	_ = s.Close()

	seen := srv.Seen()[0]
	if seen.Host != "client.example" || seen.Family != "tcp4" || seen.Port != 4242 || seen.Addr != "192.0.2.1" {
		t.Errorf("connect seen = %q %q %d %q", seen.Host, seen.Family, seen.Port, seen.Addr)
	}
	if seen.From != "a@test.example" || seen.FromArgs != "SIZE=12 BODY=8BITMIME" {
		t.Errorf("mail seen = %q %q", seen.From, seen.FromArgs)
	}
	// Without SMFIP_HDR_LEADSPC exactly one space is stripped, never a tab;
	// folds reach the milter with a bare LF.
	wantHeaders := [][2]string{{"Subject", "hello\n\tfolded"}, {"X-Tab", "\tvalue"}}
	if len(seen.Headers) != 2 || seen.Headers[0] != wantHeaders[0] || seen.Headers[1] != wantHeaders[1] {
		t.Errorf("headers seen = %q, want %q", seen.Headers, wantHeaders)
	}
	if string(seen.Body) != "line 1\r\nline 2\r\n" {
		t.Errorf("body seen = %q", seen.Body)
	}
	if seen.Macros["i"] != "abcd1234" || seen.Macros["j"] != "mx.test.example" || seen.Macros["mail_addr"] != "a@test.example" {
		t.Errorf("macros seen = %v", seen.Macros)
	}
}

func TestSessionLeadingSpace(t *testing.T) {
	ok := checker(t)
	srv := miltertest.Start(t, miltertest.Script{
		EOM: func(m djmilter.Modifier) (*djmilter.Response, error) {
			_ = m.AddHeader("X-Sig", " v=1;\n\tb=abc")
			return djmilter.RespAccept, nil
		},
	}, djmilter.WithProtocol(djmilter.OptHeaderLeadingSpace))
	s := open(t, srv.Spec, milter.DefaultOptions, nil)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	ok(s.Helo("h"))
	ok(s.Mail("a@b", nil))
	ok(s.Rcpt("c@d", nil))
	ok(s.Data())
	ok(s.Header("Subject", "  two spaces"))
	ok(s.EndOfHeaders())
	_, mods, err := s.End(nil) // an empty body: no chunk before end of message
	if err != nil {
		t.Fatal(err)
	}
	if !s.LeadingSpace() {
		t.Fatal("HDR_LEADSPC not negotiated")
	}
	if got := srv.Seen()[0].Headers[0][1]; got != "  two spaces" {
		t.Errorf("with HDR_LEADSPC the value must go verbatim, got %q", got)
	}
	if len(mods) != 1 || mods[0].Value != " v=1;\n\tb=abc" {
		t.Errorf("with HDR_LEADSPC the milter's value is written as given, got %+v", mods)
	}
}

func TestSessionAcceptEndsTheMessageWithoutIO(t *testing.T) {
	ok := checker(t)
	// libmilter ignores message events after ACCEPT without answering; a
	// client that kept sending would hang until its timeout.
	srv := miltertest.Start(t, miltertest.Script{
		Mail: func(from string) (*djmilter.Response, error) {
			if from == "a@b" {
				return djmilter.RespAccept, nil
			}
			return djmilter.RespContinue, nil
		},
	})
	opts := milter.DefaultOptions
	opts.CommandTimeout = 2 * time.Second
	s := open(t, srv.Spec, opts, nil)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	ok(s.Helo("h"))
	if v := ok(s.Mail("a@b", nil)); v.Kind != milter.Accept {
		t.Fatalf("mail verdict %v", v)
	}
	if !s.Done() || s.WantsMessage() {
		t.Error("after accept at MAIL the session must be done with the message")
	}
	start := time.Now()
	for _, f := range []func() (milter.Verdict, error){
		func() (milter.Verdict, error) { return s.Rcpt("c@d", nil) },
		s.Data,
		func() (milter.Verdict, error) { return s.Header("A", " b") },
		s.EndOfHeaders,
	} {
		if v := ok(f()); v.Kind != milter.Continue {
			t.Errorf("after accept: %v, want continue", v)
		}
	}
	if _, _, err := s.End(nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("events after accept took %v: they must not wait for the milter", d)
	}
	// A new transaction talks to the milter again.
	ok(s.Mail("x@y", nil))
	if s.Done() {
		t.Error("a new MAIL must reopen the message scope")
	}
	if n := len(srv.Seen()[0].Rcpts); n != 0 {
		t.Errorf("milter saw %d recipients after accepting at MAIL", n)
	}
}

func TestSessionRejectReplies(t *testing.T) {
	ok := checker(t)
	srv := miltertest.Start(t, miltertest.Script{
		Rcpt: func(rcpt string) (*djmilter.Response, error) {
			switch rcpt {
			case "plain@x":
				return djmilter.RespReject, nil
			case "temp@x":
				return djmilter.RespTempFail, nil
			case "code@x":
				return djmilter.RejectWithCodeAndReason(554, "5.7.1 go away")
			}
			return djmilter.RespContinue, nil
		},
	})
	s := open(t, srv.Spec, milter.DefaultOptions, nil)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	ok(s.Helo("h"))
	ok(s.Mail("a@b", nil))
	for rcpt, want := range map[string]milter.Verdict{
		"plain@x": {Kind: milter.Reject, Code: 550, Reply: "550 5.7.1 Command rejected"},
		"temp@x":  {Kind: milter.Tempfail, Code: 451, Reply: "451 4.7.1 Service unavailable - try again later"},
		"code@x":  {Kind: milter.Reject, Code: 554, Reply: "554 5.7.1 go away"},
		"ok@x":    {Kind: milter.Continue},
	} {
		if v := ok(s.Rcpt(rcpt, nil)); v != want {
			t.Errorf("rcpt %s: %+v, want %+v", rcpt, v, want)
		}
	}
	if s.Done() {
		t.Error("a recipient refusal must not end the message")
	}
}

// rawMilter accepts one connection, answers negotiation with the given
// payload and then runs fn on the connection.
func rawMilter(t *testing.T, fn func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := readPacket(c); err != nil {
			return
		}
		optneg := make([]byte, 13)
		optneg[0] = 'O'
		binary.BigEndian.PutUint32(optneg[1:], 6)
		writePacket(c, optneg)
		fn(c)
	}()
	return "inet:" + ln.Addr().String()
}

func readPacket(c net.Conn) ([]byte, error) {
	var n uint32
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	_, err := io.ReadFull(c, b)
	return b, err
}

func writePacket(c net.Conn, p []byte) {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(p)))
	_, _ = c.Write(append(b, p...))
}

func TestSessionMailParamsAreSeparateStrings(t *testing.T) {
	ok := checker(t)
	got := make(chan []byte, 1)
	spec := rawMilter(t, func(c net.Conn) {
		for {
			p, err := readPacket(c)
			if err != nil {
				return
			}
			if p[0] == 'M' {
				got <- p[1:]
			}
			if p[0] != 'D' {
				writePacket(c, []byte{'c'})
			}
		}
	})
	s := open(t, spec, milter.DefaultOptions, nil)
	ok(s.Connect("h", milter.FamilyUnix, 0, "/run/smtpd.sock"))
	ok(s.Helo("h"))
	ok(s.Mail("a@b", []string{"SIZE=10", "BODY=8BITMIME"}))
	if p := <-got; string(p) != "<a@b>\x00SIZE=10\x00BODY=8BITMIME\x00" {
		t.Errorf("MAIL payload %q: each ESMTP parameter must be its own string", p)
	}
}

func TestSessionRefusesOversizedPacket(t *testing.T) {
	spec := rawMilter(t, func(c net.Conn) {
		if _, err := readPacket(c); err != nil {
			return
		}
		// Announce 1 GiB; the client must refuse before allocating it.
		_, _ = c.Write([]byte{0x40, 0, 0, 0, 'c'})
		time.Sleep(time.Second)
	})
	opts := milter.DefaultOptions
	opts.MaxPacket = 1 << 20
	s := open(t, spec, opts, nil)
	_, err := s.Connect("h", milter.FamilyInet, 1, "192.0.2.1")
	if !errors.Is(err, milter.ErrPacketTooLarge) {
		t.Fatalf("err = %v, want ErrPacketTooLarge", err)
	}
	if _, err := s.Helo("h"); err == nil {
		t.Error("a broken session must stay broken")
	}
}

func TestSessionZeroLengthPacketIsAnError(t *testing.T) {
	spec := rawMilter(t, func(c net.Conn) {
		if _, err := readPacket(c); err != nil {
			return
		}
		_, _ = c.Write([]byte{0, 0, 0, 0})
		time.Sleep(time.Second)
	})
	s := open(t, spec, milter.DefaultOptions, nil)
	if _, err := s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"); !errors.Is(err, milter.ErrPacketTooLarge) {
		t.Fatalf("err = %v, want ErrPacketTooLarge (a zero length makes go-milter panic)", err)
	}
}

func TestSessionCommandTimeout(t *testing.T) {
	spec := rawMilter(t, func(c net.Conn) {
		_, _ = readPacket(c)
		time.Sleep(3 * time.Second) // never answers CONNECT
	})
	opts := milter.DefaultOptions
	opts.CommandTimeout = 300 * time.Millisecond
	s := open(t, spec, opts, nil)
	_, err := s.Connect("h", milter.FamilyInet, 1, "192.0.2.1")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("err = %v, want a timeout", err)
	}
	if !strings.Contains(err.Error(), "connect") {
		t.Errorf("error %q should name the stage", err)
	}
}

func TestSessionProgressRestartsTheTimer(t *testing.T) {
	ok := checker(t)
	spec := rawMilter(t, func(c net.Conn) {
		for {
			p, err := readPacket(c)
			if err != nil {
				return
			}
			switch p[0] {
			case 'D', 'A':
			case 'E':
				// Three PROGRESS packets 200 ms apart: 600 ms in all, more
				// than the 400 ms content timeout, less between packets.
				for i := 0; i < 3; i++ {
					time.Sleep(200 * time.Millisecond)
					writePacket(c, []byte{'p'})
				}
				writePacket(c, []byte{'a'})
			default:
				writePacket(c, []byte{'c'})
			}
		}
	})
	opts := milter.DefaultOptions
	opts.ContentTimeout = 400 * time.Millisecond
	s := open(t, spec, opts, nil)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	ok(s.Helo("h"))
	ok(s.Mail("a@b", nil))
	ok(s.Rcpt("c@d", nil))
	ok(s.Data())
	ok(s.EndOfHeaders())
	v, _, err := s.End(nil)
	if err != nil || v.Kind != milter.Accept {
		t.Fatalf("End = %v, %v; PROGRESS must restart the timer", v, err)
	}
}

func TestSessionEmptyBodySendsNoBodyPacket(t *testing.T) {
	// Postfix and Sendmail send no BODY for an empty body; opendkim drops
	// the connection on an empty BODY packet.
	codes := make(chan byte, 32)
	spec := rawMilter(t, func(c net.Conn) {
		for {
			p, err := readPacket(c)
			if err != nil {
				close(codes)
				return
			}
			codes <- p[0]
			switch p[0] {
			case 'D', 'A', 'Q':
			case 'E':
				writePacket(c, []byte{'a'})
			default:
				writePacket(c, []byte{'c'})
			}
		}
	})
	ok := checker(t)
	s := open(t, spec, milter.DefaultOptions, nil)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	ok(s.Helo("h"))
	ok(s.Mail("a@b", nil))
	ok(s.Rcpt("c@d", nil))
	ok(s.Data())
	ok(s.Header("Subject", " x"))
	ok(s.EndOfHeaders())
	if v, _, err := s.End(nil); err != nil || v.Kind != milter.Accept {
		t.Fatalf("End = %v, %v", v, err)
	}
	// The session is still in step: a second message works.
	ok(s.Mail("a@b", nil))
	_ = s.Close()
	var got []byte
	for c := range codes {
		got = append(got, c)
	}
	if string(got) != "CHMRTLNEMQ" {
		t.Errorf("commands on the wire %q, want %q (no B)", got, "CHMRTLNEMQ")
	}
}

func TestSymlistForOneStageKeepsTheOthers(t *testing.T) {
	// The milter asks for its own list at end of headers only: CONNECT
	// must still carry the default connect macros, as with Postfix.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	macroPackets := make(chan string, 16)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := readPacket(c); err != nil {
			return
		}
		reply := []byte{'O', 0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0, 0, 0}
		reply = binary.BigEndian.AppendUint32(reply, 6) // SMFIM_EOH
		reply = append(reply, "{daemon_name} i\x00"...)
		writePacket(c, reply)
		for {
			p, err := readPacket(c)
			if err != nil {
				close(macroPackets)
				return
			}
			switch p[0] {
			case 'D':
				macroPackets <- string(p[1:])
			case 'Q':
			default:
				writePacket(c, []byte{'c'})
			}
		}
	}()
	macros := milter.NewMacros()
	macros.Set(milter.MacroMTAName, "mx.test.example")
	macros.Set(milter.MacroDaemonName, "smtpd")
	ok := checker(t)
	s := open(t, "inet:"+ln.Addr().String(), milter.DefaultOptions, macros)
	ok(s.Connect("h", milter.FamilyInet, 1, "192.0.2.1"))
	_ = s.Close()
	var got []string
	for p := range macroPackets {
		got = append(got, p)
	}
	if len(got) == 0 || !strings.HasPrefix(got[0], "Cj\x00mx.test.example\x00") {
		t.Errorf("macro packets %q: the connect stage lost its default list", got)
	}
}

func TestZeroLengthNegotiationReplyFailsAtOnce(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = readPacket(c)
		_, _ = c.Write([]byte{0, 0, 0, 0})
		time.Sleep(3 * time.Second)
	}()
	sp, _ := milter.ParseSpec("inet:" + ln.Addr().String())
	start := time.Now()
	_, err = milter.NewClient("z", sp, milter.DefaultOptions, nil).Open(nil)
	if !errors.Is(err, milter.ErrPacketTooLarge) || time.Since(start) > time.Second {
		t.Errorf("Open = %v after %v; want ErrPacketTooLarge at once", err, time.Since(start))
	}
}
