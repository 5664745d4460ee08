package milter

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// wireConn is a scripted milter that logs what reaches the socket: each
// Write as the command codes of the packets in it ("DM": a macro packet
// and MAIL), and each reply read as "read".
type wireConn struct {
	scriptConn
	events []string
}

func (c *wireConn) Read(p []byte) (int, error) {
	if c.left == 0 {
		c.events = append(c.events, "read")
	}
	return c.scriptConn.Read(p)
}

func (c *wireConn) Write(p []byte) (int, error) {
	var codes strings.Builder
	for b := p; len(b) >= 5; {
		n := int(binary.BigEndian.Uint32(b))
		codes.WriteByte(b[4])
		b = b[min(4+n, len(b)):]
	}
	c.events = append(c.events, "write "+codes.String())
	return len(p), nil
}

// What a message costs on the wire, for a milter that answers every
// command and for one that negotiated every reply away but end of
// message's (SMFIP_NR_*). Item by item, as Postfix's milter8.c does it:
//   - A command and the macros for it go out in one write, and the
//     client reads its reply before the next command: no command is
//     pipelined past a reply, so a milter's verdict is always seen before
//     anything that depends on it is sent.
//   - A command whose reply was negotiated away is not waited for: its
//     bytes wait in the write buffer for the next command that has a
//     reply, so a milter that answers end of message only gets the whole
//     message in one write and costs one round trip.
func TestRoundTripsOnTheWire(t *testing.T) {
	noReplies := protoNoConnectReply | protoNoHeloReply | protoNoMailReply | protoNoRcptReply |
		protoNoDataReply | protoNoHeaderReply | protoNoEOHReply | protoNoBodyReply
	for _, c := range []struct {
		name     string
		protocol uint32
		replies  int
		want     []string
	}{
		{"every reply", 0, 10, []string{
			"write DC", "read", "write DH", "read", "write DM", "read", "write DR", "read", "write DT", "read",
			"write L", "read", "write L", "read", "write DN", "read", "write B", "read", "write DE", "read",
		}},
		{"end of message only", noReplies, 1, []string{"write DCDHDMDRDTLLDNBDE", "read"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			script := optnegReply(0, c.protocol)
			for range c.replies - 1 {
				script = append(script, packet('c')...)
			}
			script = append(script, packet('a')...)
			nc := &wireConn{scriptConn: scriptConn{r: bytes.NewReader(script)}}
			macros := NewMacros()
			macros.Set(MacroMTAName, "mx.test.example")
			macros.Set(MacroTLSVersion, "TLSv1.3")
			macros.Set(MacroMailAddr, "a@b")
			macros.Set(MacroRcptAddr, "c@d")
			macros.Set(MacroQueueID, "q1")
			s, err := NewClient("wire", Spec{Network: "unix", Address: "wire"}, DefaultOptions, nil).openOn(nc, macros)
			if err != nil {
				t.Fatal(err)
			}
			nc.events = nil // the negotiation
			playEnvelope(t, s)
			for _, step := range []func() (Verdict, error){
				func() (Verdict, error) { return s.Header("Subject", "x") },
				func() (Verdict, error) { return s.Header("To", "c@d") },
				s.EndOfHeaders,
				func() (Verdict, error) { return s.Body([]byte("body\r\n")) },
			} {
				if _, err := step(); err != nil {
					t.Fatal(err)
				}
			}
			if v, _, err := s.End(nil); err != nil || v.Kind != Accept {
				t.Fatalf("end of message: %v, %v; want accept", v, err)
			}
			if strings.Join(nc.events, ", ") != strings.Join(c.want, ", ") {
				t.Errorf("on the wire:\n got %q\nwant %q", nc.events, c.want)
			}
		})
	}
}
