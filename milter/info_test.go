package milter_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	djmilter "github.com/d--j/go-milter"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
)

// rawPeer listens on loopback and runs serve on each connection.
func rawPeer(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return "inet:" + ln.Addr().String()
}

func client(t *testing.T, spec string, opts milter.Options) *milter.Client {
	t.Helper()
	sp, err := milter.ParseSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	return milter.NewClient(spec, sp, opts, nil)
}

// readOptneg reads the MTA's OPTNEG packet.
func readOptneg(c net.Conn) ([]byte, error) {
	buf := make([]byte, 17)
	_, err := io.ReadFull(c, buf)
	return buf, err
}

func optnegReply(version, actions, protocol uint32, lists ...any) []byte {
	data := []byte{'O'}
	data = binary.BigEndian.AppendUint32(data, version)
	data = binary.BigEndian.AppendUint32(data, actions)
	data = binary.BigEndian.AppendUint32(data, protocol)
	for i := 0; i < len(lists); i += 2 {
		data = binary.BigEndian.AppendUint32(data, lists[i].(uint32))
		data = append(append(data, lists[i+1].(string)...), 0)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(data))), data...)
}

func TestNegotiateDecodesTheAnswer(t *testing.T) {
	got := make(chan []byte, 1)
	spec := rawPeer(t, func(c net.Conn) {
		b, err := readOptneg(c)
		if err != nil {
			return
		}
		got <- b
		// opendkim-like: ADDHDRS|CHGHDRS|SETSYMLIST; NOHELO, NOUNKNOWN,
		// NODATA, SKIP, HDR_LEADSPC, NR_HDR; lists for connect and eom.
		_, _ = c.Write(optnegReply(6, 0x111, 0x100782, uint32(0), "j {daemon_name}", uint32(5), "i {auth_type}"))
		_, _ = io.ReadAll(c)
	})
	n, err := client(t, spec, milter.DefaultOptions).Negotiate()
	if err != nil {
		t.Fatal(err)
	}
	sent := <-got
	if want := []byte{0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff}; string(sent) != string(want) {
		t.Errorf("offered % x, want % x", sent, want)
	}
	if n.Reply != (milter.Masks{Version: 6, Actions: 0x111, Protocol: 0x100782}) {
		t.Errorf("reply %+v", n.Reply)
	}
	if a := milter.ActionNames(n.Reply.Actions); !reflect.DeepEqual(a, []string{"ADDHDRS", "CHGHDRS", "SETSYMLIST"}) {
		t.Errorf("actions %v", a)
	}
	if p := milter.ProtocolNames(n.Reply.Protocol); !reflect.DeepEqual(p, []string{"NOHELO", "NR_HDR", "NOUNKNOWN", "NODATA", "SKIP", "HDR_LEADSPC"}) {
		t.Errorf("protocol %v", p)
	}
	if s := n.SkippedStages(); !reflect.DeepEqual(s, []string{"helo", "data", "unknown"}) {
		t.Errorf("skipped %v", s)
	}
	if s := n.NoReplyStages(); !reflect.DeepEqual(s, []string{"header"}) {
		t.Errorf("no reply %v", s)
	}
	want := []milter.StageMacros{{Stage: "connect", Macros: []string{"j", "{daemon_name}"}}, {Stage: "eom", Macros: []string{"i", "{auth_type}"}}}
	if !reflect.DeepEqual(n.Requested, want) {
		t.Errorf("requested macros %+v", n.Requested)
	}
	// The stages the milter named get its lists, the others the defaults.
	var macrosSent []string
	for _, sp := range n.MacroPlan() {
		var names []string
		for _, m := range sp.Macros {
			names = append(names, m.Name)
		}
		macrosSent = append(macrosSent, fmt.Sprintf("%s:%v:%s", sp.Stage, sp.Asked, strings.Join(names, " ")))
	}
	wantAll := []string{"connect:true:j {daemon_name}",
		"helo:false:{tls_version} {cipher} {cipher_bits}",
		"mail:false:{auth_type} {auth_authen} {mail_addr} {mail_host}",
		"rcpt:false:i {rcpt_addr} {rcpt_host}", "data:false:i", "eoh:false:i", "eom:true:i {auth_type}"}
	if !reflect.DeepEqual(macrosSent, wantAll) {
		t.Errorf("macros sent\n got %q\nwant %q", macrosSent, wantAll)
	}
	if n.RoundTrip <= 0 || n.Endpoint != spec {
		t.Errorf("round trip %v, endpoint %q", n.RoundTrip, n.Endpoint)
	}
}

// TestOfferIsWhatSessionsOffer checks that Negotiate offers what
// Client.Open (go-milter) sends, for each protocol version setting.
func TestOfferIsWhatSessionsOffer(t *testing.T) {
	for _, version := range []uint32{0, 2, 3, 4, 5, 6} {
		got := make(chan []byte, 1)
		spec := rawPeer(t, func(c net.Conn) {
			b, err := readOptneg(c)
			if err != nil {
				return
			}
			got <- b
			v := binary.BigEndian.Uint32(b[5:])
			_, _ = c.Write(optnegReply(v, 0, 0))
			_, _ = io.ReadAll(c)
		})
		opts := milter.DefaultOptions
		opts.Version = version
		cl := client(t, spec, opts)
		s, err := cl.Open(nil)
		if err != nil {
			t.Fatalf("version %d: %v", version, err)
		}
		sent := <-got
		_ = s.Close()
		offer := cl.Offer()
		want := milter.Masks{Version: binary.BigEndian.Uint32(sent[5:]), Actions: binary.BigEndian.Uint32(sent[9:]), Protocol: binary.BigEndian.Uint32(sent[13:])}
		if offer != want {
			t.Errorf("version setting %d: Offer() = %+v, a session offers %+v", version, offer, want)
		}
	}
}

func TestNegotiateAgainstGoMilter(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{}, djmilter.WithProtocols(djmilter.OptNoHelo|djmilter.OptHeaderLeadingSpace))
	n, err := client(t, srv.Spec, milter.DefaultOptions).Negotiate()
	if err != nil {
		t.Fatal(err)
	}
	if n.Reply.Version != 6 || n.Reply.Protocol&0x100002 != 0x100002 || len(n.Requested) != 0 {
		t.Errorf("negotiated %+v", n)
	}
	if p := n.MacroPlan()[0]; p.Stage != "connect" || p.Asked || !slices.ContainsFunc(p.Macros, func(m milter.PlannedMacro) bool { return m.Name == "{client_addr}" }) {
		t.Errorf("default macros %+v", n.MacroPlan())
	}
}

func TestNegotiateFailures(t *testing.T) {
	short := milter.DefaultOptions
	short.ConnectTimeout = 300 * time.Millisecond

	closedPort := func() string {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return "inet:" + addr
	}()
	for _, c := range []struct {
		name string
		spec string
		kind string
		text string
	}{
		{"refused", closedPort, milter.KindRefused, "connection refused"},
		{"no socket", "unix:" + t.TempDir() + "/none.sock", milter.KindRefused, "no such file"},
		{"silent", rawPeer(t, func(c net.Conn) { _, _ = io.ReadAll(c) }), milter.KindTimeout, "no answer"},
		{"closes", rawPeer(t, func(c net.Conn) { _, _ = readOptneg(c) }), milter.KindRejected, "closed the connection"},
		{"smtp server", rawPeer(t, func(c net.Conn) { _, _ = io.WriteString(c, "220 mx.example ESMTP\r\n"); _, _ = io.ReadAll(c) }),
			milter.KindProtocol, `"220 mx.example ESMTP"`},
		{"wrong code", rawPeer(t, func(c net.Conn) { _, _ = readOptneg(c); _, _ = c.Write([]byte{0, 0, 0, 1, 'c'}); _, _ = io.ReadAll(c) }),
			milter.KindProtocol, "instead of 'O'"},
		{"short answer", rawPeer(t, func(c net.Conn) {
			_, _ = readOptneg(c)
			_, _ = c.Write([]byte{0, 0, 0, 5, 'O', 0, 0, 0, 6})
			_, _ = io.ReadAll(c)
		}),
			milter.KindProtocol, "at least 12"},
		{"version 7", rawPeer(t, func(c net.Conn) { _, _ = readOptneg(c); _, _ = c.Write(optnegReply(7, 0, 0)); _, _ = io.ReadAll(c) }),
			milter.KindRejected, "version 7"},
		{"unoffered flag", rawPeer(t, func(c net.Conn) { _, _ = readOptneg(c); _, _ = c.Write(optnegReply(6, 0x200, 0)); _, _ = io.ReadAll(c) }),
			milter.KindRejected, "0x200"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, err := client(t, c.spec, short).Negotiate()
			if err == nil {
				t.Fatalf("no error; negotiated %+v", n)
			}
			var ne *milter.NegotiationError
			if !errors.As(err, &ne) || ne.Kind != c.kind {
				t.Errorf("error %v (%T), want kind %s", err, err, c.kind)
			}
			if !strings.Contains(err.Error(), c.text) {
				t.Errorf("error %q does not say %q", err, c.text)
			}
		})
	}
}

func TestErrorKind(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("milter x: connect: %w", &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), milter.KindRefused},
		{fmt.Errorf("milter x: rcpt: action read: %w", os.ErrDeadlineExceeded), milter.KindTimeout},
		{fmt.Errorf("milter x: eom: %w", io.EOF), milter.KindOther},
		{fmt.Errorf("milter x: body: %w", &net.OpError{Op: "write", Err: os.NewSyscallError("write", syscall.EPIPE)}), milter.KindOther},
		{fmt.Errorf("milter x: header: %w", milter.ErrPacketTooLarge), milter.KindProtocol},
		{errors.New("milter: negotiate: unsupported actions requested"), milter.KindProtocol},
		{&milter.NegotiationError{Kind: milter.KindRejected, Err: errors.New("x")}, milter.KindProtocol},
		{nil, ""},
	} {
		if got := milter.ErrorKind(c.err); got != c.want {
			t.Errorf("ErrorKind(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
