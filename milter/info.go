package milter

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// This file is for the postmaster's tools (filter-milter check) and for
// metrics: what a milter answers in negotiation, decoded to names, and a
// classification of the errors a milter session can end with.
//
// go-milter keeps the macro lists a milter asks for in negotiation to
// itself, so Negotiate does the OPTNEG exchange on its own socket (12
// bytes out, 12 bytes and the optional lists back; libmilter's engine.c
// st_optionneg) and then quits, checking the reply exactly as
// go-milter's ClientSession does when the gateway opens a session.

// codeQuit is SMFIC_QUIT.
const codeQuit = 'Q'

// StageMacros is one macro list a milter asked for in negotiation
// (SMFIF_SETSYMLIST); MacroPlan says what is sent at every stage.
type StageMacros struct {
	Stage  string   // connect, helo, mail, rcpt, data, eom, eoh
	Macros []string // as the milter wrote them, split as go-milter does (splitAsked)
}

// Negotiation is what one milter endpoint answered to the gateway's offer.
type Negotiation struct {
	Endpoint  string
	Offered   Masks
	Reply     Masks
	Requested []StageMacros // the milter's own macro lists, in the order it sent them; nil: none
	Dial      time.Duration // connecting
	RoundTrip time.Duration // OPTNEG out to the milter's OPTNEG in
	macros    *MacroConfig  // the client's, for MacroPlan
}

// Offer is what the client offers in negotiation: the same numbers
// NewClient gives go-milter.
func (c *Client) Offer() Masks { return offer(c.opts.Version) }

// NegotiationError is why Negotiate failed; Kind is one of the Kind*
// constants.
type NegotiationError struct {
	Kind string
	Err  error
}

func (e *NegotiationError) Error() string { return e.Err.Error() }
func (e *NegotiationError) Unwrap() error { return e.Err }

// Error kinds, for check's messages and the metrics' kind label.
const (
	KindRefused  = "refused"  // nothing listens: connection refused, no such socket
	KindTimeout  = "timeout"  // connect or a reply took longer than its timeout
	KindProtocol = "protocol" // the peer does not speak milter, or broke the protocol
	KindRejected = "rejected" // negotiation failed: the milter closed the connection, or asked for what is not offered
	KindOther    = "other"    // anything else: the milter closed the connection, permission denied, ...
)

// Negotiate connects to the milter, negotiates as a gateway session would,
// sends QUIT and closes. It reports what the milter answered and how long
// it took, or a *NegotiationError.
func (c *Client) Negotiate() (*Negotiation, error) {
	n := &Negotiation{Endpoint: c.Spec.String(), Offered: c.Offer(), macros: c.opts.Macros}
	start := time.Now()
	nc, err := (&net.Dialer{Timeout: c.opts.ConnectTimeout}).Dial(c.Spec.Network, c.Spec.Address)
	if err != nil {
		return nil, &NegotiationError{Kind: dialKind(err), Err: fmt.Errorf("connect: %w", err)}
	}
	defer nc.Close()
	n.Dial = time.Since(start)
	_ = nc.SetDeadline(time.Now().Add(c.opts.ConnectTimeout))

	pkt := make([]byte, 4+1+12)
	binary.BigEndian.PutUint32(pkt, 13)
	pkt[4] = replyOptneg
	binary.BigEndian.PutUint32(pkt[5:], n.Offered.Version)
	binary.BigEndian.PutUint32(pkt[9:], n.Offered.Actions)
	binary.BigEndian.PutUint32(pkt[13:], n.Offered.Protocol)
	sent := time.Now()
	if _, err := nc.Write(pkt); err != nil {
		return nil, &NegotiationError{Kind: ErrorKind(err), Err: fmt.Errorf("sending the negotiation: %w", err)}
	}
	code, data, err := readNegotiation(nc, c.opts.MaxPacket)
	if err != nil {
		return nil, err
	}
	n.RoundTrip = time.Since(sent)
	if code != replyOptneg {
		return nil, &NegotiationError{Kind: KindProtocol, Err: fmt.Errorf("answered the negotiation with packet %q instead of 'O'", code)}
	}
	if err := n.parseReply(data); err != nil {
		return nil, err
	}
	if err := n.compatible(); err != nil {
		return nil, err
	}
	// QUIT: the milter ends the session; nothing comes back.
	_, _ = nc.Write([]byte{0, 0, 0, 1, codeQuit})
	return n, nil
}

func dialKind(err error) string {
	if k := ErrorKind(err); k != KindProtocol {
		return k
	}
	return KindOther
}

// readNegotiation reads one packet, telling a peer that does not speak
// milter (an SMTP or HTTP server answers text) from one that closed the
// connection because it did not like the offer.
func readNegotiation(nc net.Conn, maxPacket uint32) (byte, []byte, error) {
	var hdr [4]byte
	if n, err := io.ReadFull(nc, hdr[:]); err != nil {
		switch {
		case n == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)):
			return 0, nil, &NegotiationError{Kind: KindRejected, Err: errors.New(
				"the milter closed the connection without answering the negotiation (it refused what was offered: " +
					"a libmilter milter does so when an action it requires is not offered; see the milter's own log)")}
		case ErrorKind(err) == KindTimeout:
			return 0, nil, &NegotiationError{Kind: KindTimeout, Err: fmt.Errorf("no answer to the negotiation: %w", err)}
		}
		return 0, nil, &NegotiationError{Kind: KindProtocol, Err: fmt.Errorf("short answer to the negotiation (%q): %w", hdr[:n], err)}
	}
	length := binary.BigEndian.Uint32(hdr[:])
	if maxPacket == 0 {
		maxPacket = DefaultOptions.MaxPacket
	}
	if length == 0 || length > maxPacket || length > 1<<20 {
		// Text where a length should be: show what the peer said.
		_ = nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		more := make([]byte, 60)
		k, _ := io.ReadAtLeast(nc, more, 1)
		said := append(hdr[:], more[:k]...)
		if i := bytes.IndexAny(said, "\r\n"); i >= 0 {
			said = said[:i]
		}
		return 0, nil, &NegotiationError{Kind: KindProtocol, Err: fmt.Errorf(
			"the peer does not speak milter: it answered %s (a packet length of %d bytes)", strconv.Quote(string(said)), length)}
	}
	buf := make([]byte, length)
	if _, err := io.ReadFull(nc, buf); err != nil {
		kind := KindProtocol
		if ErrorKind(err) == KindTimeout {
			kind = KindTimeout
		}
		return 0, nil, &NegotiationError{Kind: kind, Err: fmt.Errorf("truncated answer to the negotiation: %w", err)}
	}
	return buf[0], buf[1:], nil
}

// parseReply reads the answer with the gateway's one reader of it
// (parseOptneg). A list that is not NUL-terminated, which a session logs
// and ignores, is an error here: check is where the postmaster sees it.
func (n *Negotiation) parseReply(data []byte) error {
	a, err := parseOptneg(data)
	if err != nil {
		return &NegotiationError{Kind: KindProtocol, Err: err}
	}
	n.Reply = a.Masks
	for _, l := range a.lists {
		n.Requested = append(n.Requested, StageMacros{Stage: l.stage.String(), Macros: splitAsked(l.names)})
	}
	if a.malformed != nil {
		return &NegotiationError{Kind: KindProtocol, Err: fmt.Errorf("a macro list is not NUL-terminated: %s", quoteSome(a.malformed))}
	}
	return nil
}

// compatible applies go-milter's checks of the answer (client.go
// negotiate): the gateway cannot use a milter that fails them.
func (n *Negotiation) compatible() error {
	r, o := n.Reply, n.Offered
	switch {
	case r.Version < 2 || r.Version > o.Version:
		return &NegotiationError{Kind: KindRejected, Err: fmt.Errorf("the milter answered protocol version %d; the gateway speaks 2 to %d", r.Version, o.Version)}
	case r.Actions&^o.Actions != 0:
		return &NegotiationError{Kind: KindRejected, Err: fmt.Errorf("the milter asks for actions that are not offered: %s",
			strings.Join(ActionNames(r.Actions&^o.Actions), " "))}
	case (r.Protocol&^protoInternal)&^o.Protocol != 0:
		return &NegotiationError{Kind: KindRejected, Err: fmt.Errorf("the milter asks for protocol flags that are not offered: %s",
			strings.Join(ProtocolNames((r.Protocol&^protoInternal)&^o.Protocol), " "))}
	}
	return nil
}

type flagName struct {
	bit  uint32
	name string
}

var actionNames = []flagName{
	{actAddHeaders, "ADDHDRS"}, {actChangeBody, "CHGBODY"}, {actAddRcpt, "ADDRCPT"}, {actDelRcpt, "DELRCPT"},
	{actChangeHeader, "CHGHDRS"}, {actQuarantine, "QUARANTINE"}, {actChangeFrom, "CHGFROM"},
	{actAddRcptPar, "ADDRCPT_PAR"}, {actSetSymlist, "SETSYMLIST"},
}

var protocolNames = []flagName{
	{protoNoConnect, "NOCONNECT"}, {protoNoHelo, "NOHELO"}, {protoNoMail, "NOMAIL"}, {protoNoRcpt, "NORCPT"},
	{protoNoBody, "NOBODY"}, {protoNoHeaders, "NOHDRS"}, {protoNoEOH, "NOEOH"}, {protoNoHeaderReply, "NR_HDR"},
	{protoNoUnknown, "NOUNKNOWN"}, {protoNoData, "NODATA"}, {protoSkip, "SKIP"}, {protoRcptRej, "RCPT_REJ"},
	{protoNoConnectReply, "NR_CONN"}, {protoNoHeloReply, "NR_HELO"}, {protoNoMailReply, "NR_MAIL"},
	{protoNoRcptReply, "NR_RCPT"}, {protoNoDataReply, "NR_DATA"}, {protoNoUnknownReply, "NR_UNKN"},
	{protoNoEOHReply, "NR_EOH"}, {protoNoBodyReply, "NR_BODY"}, {protoHeaderLeadSpc, "HDR_LEADSPC"},
	{protoMaxData256K, "MDS_256K"}, {protoMaxData1M, "MDS_1M"},
}

func names(mask uint32, table []flagName) []string {
	var out []string
	for _, f := range table {
		if mask&f.bit != 0 {
			out = append(out, f.name)
			mask &^= f.bit
		}
	}
	for bit := uint32(1); mask != 0; bit <<= 1 {
		if mask&bit != 0 {
			out = append(out, fmt.Sprintf("0x%x", bit))
			mask &^= bit
		}
	}
	return out
}

// ActionNames decodes SMFIF_* bits to their mfdef.h names without the prefix.
func ActionNames(mask uint32) []string { return names(mask, actionNames) }

// ProtocolNames decodes SMFIP_* bits to their mfdef.h names without the prefix.
func ProtocolNames(mask uint32) []string { return names(mask, protocolNames) }

var (
	skipFlags = []flagName{
		{protoNoConnect, "connect"}, {protoNoHelo, "helo"}, {protoNoMail, "mail"}, {protoNoRcpt, "rcpt"},
		{protoNoData, "data"}, {protoNoHeaders, "header"}, {protoNoEOH, "eoh"}, {protoNoBody, "body"},
		{protoNoUnknown, "unknown"},
	}
	noReplyFlags = []flagName{
		{protoNoConnectReply, "connect"}, {protoNoHeloReply, "helo"}, {protoNoMailReply, "mail"},
		{protoNoRcptReply, "rcpt"}, {protoNoDataReply, "data"}, {protoNoHeaderReply, "header"},
		{protoNoEOHReply, "eoh"}, {protoNoBodyReply, "body"}, {protoNoUnknownReply, "unknown"},
	}
)

// SkippedStages are the stages the milter asked not to be sent (SMFIP_NO*),
// including those its protocol version does not have (UNKNOWN before 3,
// DATA before 4), as go-milter adds them.
func (n *Negotiation) SkippedStages() []string {
	p := n.Reply.Protocol
	if n.Reply.Version <= 2 {
		p |= protoNoUnknown
	}
	if n.Reply.Version <= 3 {
		p |= protoNoData
	}
	return names(p&protoSkipStages, skipFlags)
}

// NoReplyStages are the stages the milter will not answer (SMFIP_NR_*).
func (n *Negotiation) NoReplyStages() []string {
	return names(n.Reply.Protocol&protoNoReplyStages, noReplyFlags)
}

// ErrorKind classifies an error of a milter connection or session for
// logs and metrics: KindTimeout, KindRefused, KindProtocol or KindOther.
// Errors that go-milter or this package make up themselves (an unexpected
// packet, a bad length, a negotiation it refuses) are protocol errors;
// errors of the connection (closed, reset, permission) are other.
func ErrorKind(err error) string {
	if err == nil {
		return ""
	}
	var ne *NegotiationError
	if errors.As(err, &ne) {
		switch ne.Kind {
		case KindRejected:
			return KindProtocol
		default:
			return ne.Kind
		}
	}
	var nerr net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return KindTimeout
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return KindRefused
	case errors.Is(err, ErrPacketTooLarge):
		return KindProtocol
	}
	var errno syscall.Errno
	if errors.As(err, &errno) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, errClosed) || errors.As(err, new(*net.OpError)) {
		return KindOther
	}
	return KindProtocol
}
