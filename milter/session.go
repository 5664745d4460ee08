package milter

import (
	"fmt"
	"io"
	"iter"
	"net"
	"strings"
	"time"

	djmilter "github.com/d--j/go-milter"
)

// Options configure one milter.
type Options struct {
	ConnectTimeout time.Duration // dial and negotiation
	CommandTimeout time.Duration // CONNECT, HELO, MAIL, RCPT, DATA (Postfix: milter_command_timeout)
	ContentTimeout time.Duration // HEADER, EOH, BODY, end of message (Postfix: milter_content_timeout)
	MaxPacket      uint32        // the largest packet accepted from the milter
	Version        uint32        // the highest protocol version offered (2 to 6; 0 means 6)
	// EOMTimeout bounds the whole of end of message, from SMFIC_BODYEOB to
	// the final reply, however many PROGRESS packets the milter sends
	// (Sendmail's T=E; ContentTimeout still bounds each packet).
	EOMTimeout time.Duration
	// MaxModifications and MaxModificationBytes bound what one milter may
	// ask for at one end of message: the number of modification packets
	// and the bytes of their payloads (replacement body included). Over
	// either is a protocol error: that milter's default action.
	MaxModifications     int
	MaxModificationBytes int64
}

// DefaultOptions are Postfix's defaults.
var DefaultOptions = Options{
	ConnectTimeout: 30 * time.Second,
	CommandTimeout: 30 * time.Second,
	ContentTimeout: 300 * time.Second,
	MaxPacket:      64 << 20,
	// Sendmail's T=E default is 5 minutes; a milter that keeps sending
	// PROGRESS (a virus scanner on a large message) gets twice that.
	EOMTimeout: 10 * time.Minute,
	// opendkim sends one header, rspamd and spamass-milter a few dozen;
	// a replacement body is about the size of the message (smtpd's
	// default limit is 35 MB).
	MaxModifications:     10000,
	MaxModificationBytes: 64 << 20,
}

// Client opens milter sessions to one milter. It is safe for concurrent use.
type Client struct {
	Name      string // for logs: the spec as the postmaster wrote it
	Spec      Spec
	opts      Options
	djOptions []djmilter.Option
}

// Offered is what the gateway offers in negotiation: version 6 and every
// action and protocol flag, as Postfix and Sendmail do. Milters built on
// libmilter abort negotiation when an action they require is missing
// (clamav-milter and opendmarc need QUARANTINE), and rspamd claims six
// actions and all no-reply flags whatever it is offered; what the
// filter protocol cannot carry is decided by the gateway's policy instead.
const (
	offeredActions = djmilter.AllClientSupportedActionMasks
)

// NewClient prepares a client; nothing is dialled until Open.
func NewClient(name string, spec Spec, opts Options) *Client {
	if opts.MaxPacket == 0 {
		opts.MaxPacket = DefaultOptions.MaxPacket
	}
	if opts.EOMTimeout == 0 {
		opts.EOMTimeout = DefaultOptions.EOMTimeout
	}
	if opts.MaxModifications == 0 {
		opts.MaxModifications = DefaultOptions.MaxModifications
	}
	if opts.MaxModificationBytes == 0 {
		opts.MaxModificationBytes = DefaultOptions.MaxModificationBytes
	}
	version := opts.Version
	if version == 0 {
		version = djmilter.MaxClientProtocolVersion
	}
	actions := offeredActions
	var protocol djmilter.OptProtocol // 0: go-milter offers every flag of version 6
	if version < 6 {
		// What versions 2 to 4 know (mfdef.h SMFI_V2_ACTS, SMFI_V2_PROT,
		// NOUNKNOWN from 3, NODATA from 4).
		actions &= djmilter.OptAddHeader | djmilter.OptChangeBody | djmilter.OptAddRcpt | djmilter.OptRemoveRcpt | djmilter.OptChangeHeader | djmilter.OptQuarantine
		protocol = djmilter.OptNoConnect | djmilter.OptNoHelo | djmilter.OptNoMailFrom | djmilter.OptNoRcptTo | djmilter.OptNoBody | djmilter.OptNoHeaders | djmilter.OptNoEOH
		if version >= 3 {
			protocol |= djmilter.OptNoUnknown
		}
		if version >= 4 {
			protocol |= djmilter.OptNoData
		}
	}
	return &Client{Name: name, Spec: spec, opts: opts, djOptions: []djmilter.Option{
		djmilter.WithMaximumVersion(version),
		djmilter.WithProtocols(protocol),
		djmilter.WithActions(actions),
		// go-milter applies a deadline only when its timeout is not zero;
		// conn replaces the value with the current stage's own timeout.
		djmilter.WithReadTimeout(time.Hour),
		djmilter.WithWriteTimeout(time.Hour),
		djmilter.WithoutDefaultMacros(),
		djmilter.WithMacroRequest(djmilter.StageConnect, connectMacros),
		djmilter.WithMacroRequest(djmilter.StageHelo, heloMacros),
		djmilter.WithMacroRequest(djmilter.StageMail, mailMacros),
		djmilter.WithMacroRequest(djmilter.StageRcpt, rcptMacros),
		djmilter.WithMacroRequest(djmilter.StageData, queueIDMacros),
		djmilter.WithMacroRequest(djmilter.StageEOH, queueIDMacros),
		djmilter.WithMacroRequest(djmilter.StageEOM, queueIDMacros),
	}}
}

// connDialer hands go-milter the connection Open has already dialled, so
// that Open keeps the *conn whose timeouts it sets per stage.
type connDialer struct{ c net.Conn }

func (d connDialer) Dial(string, string) (net.Conn, error) { return d.c, nil }

// Session is one milter conversation, for one SMTP session. Its methods
// are not safe for concurrent use; the gateway drives each SMTP session
// from a single goroutine.
//
// After a final verdict (accept anywhere; reject, tempfail or discard
// anywhere but RCPT) libmilter ignores further message events without
// answering, so a client that keeps sending hangs until its timeout
// (libmilter's engine.c: next_states and trans_ok send it back to the
// HELO state). Session therefore remembers the
// scope a verdict closed and answers later events of that scope itself,
// without I/O.
type Session struct {
	c            *Client
	dj           *djmilter.ClientSession
	conn         *conn
	leadingSpace bool
	connDone     bool // accepted for the whole connection
	msgDone      bool // done with this message until the next MAIL
	txOpen       bool // MAIL sent and neither end of message nor ABORT since
	bodySent     bool // a body chunk went out for this message
	broken       error
}

// Open dials the milter and negotiates. macros is read at each stage, so
// values set later (the queue id after MAIL) still reach the milter.
func (c *Client) Open(macros *Macros) (*Session, error) {
	nc, err := (&net.Dialer{Timeout: c.opts.ConnectTimeout}).Dial(c.Spec.Network, c.Spec.Address)
	if err != nil {
		return nil, fmt.Errorf("milter %s: connect: %w", c.Name, err)
	}
	return c.openOn(nc, macros)
}

// openOn negotiates on a connection that is already open.
func (c *Client) openOn(nc net.Conn, macros *Macros) (*Session, error) {
	mc := newConn(nc, c.opts.ConnectTimeout, c.opts.MaxPacket)
	mc.defaults = [][]string{connectMacros, heloMacros, mailMacros, rcptMacros, queueIDMacros, queueIDMacros, queueIDMacros}
	var m djmilter.Macros
	if macros != nil {
		m = macros
	}
	opts := append(c.djOptions[:len(c.djOptions):len(c.djOptions)], djmilter.WithDialer(connDialer{mc}))
	dj, err := djmilter.NewClient(c.Spec.Network, c.Spec.Address, opts...).Session(m)
	if err != nil {
		_ = mc.Close()
		return nil, fmt.Errorf("milter %s: negotiate: %w", c.Name, err)
	}
	mc.phase = phaseReply
	for bit := djmilter.OptAction(1); bit <= djmilter.OptSetMacros; bit <<= 1 {
		if dj.ActionOption(bit) {
			mc.actions |= bit
		}
	}
	return &Session{
		c:            c,
		dj:           dj,
		conn:         mc,
		leadingSpace: dj.ProtocolOption(djmilter.OptHeaderLeadingSpace),
	}, nil
}

// Family is the kind of address a client connected from.
type Family byte

const (
	FamilyUnknown Family = Family(djmilter.FamilyUnknown)
	FamilyUnix    Family = Family(djmilter.FamilyUnix)
	FamilyInet    Family = Family(djmilter.FamilyInet)
	FamilyInet6   Family = Family(djmilter.FamilyInet6)
)

// LeadingSpace reports whether the milter negotiated SMFIP_HDR_LEADSPC.
func (s *Session) LeadingSpace() bool { return s.leadingSpace }

func (s *Session) String() string { return s.c.Name }

// Err is the error that broke the session, or nil.
func (s *Session) Err() error { return s.broken }

// Done reports whether the milter wants no more events for this message
// (or, after accept at connect or HELO, for the whole connection).
func (s *Session) Done() bool { return s.connDone || s.msgDone || s.broken != nil }

// WantsMessage reports whether the milter wants to see headers or body.
func (s *Session) WantsMessage() bool {
	if s.Done() {
		return false
	}
	return !s.dj.ProtocolOption(djmilter.OptNoHeaders) || !s.dj.ProtocolOption(djmilter.OptNoBody) ||
		!s.dj.ProtocolOption(djmilter.OptNoEOH) || s.dj.ActionOption(djmilter.OptAddHeader|djmilter.OptChangeHeader|djmilter.OptChangeBody)
}

// CanChange reports whether the milter negotiated any change to the
// message text: headers, body, or quarantine (which the gateway marks in a
// header).
func (s *Session) CanChange() bool {
	return s.dj.ActionOption(djmilter.OptAddHeader | djmilter.OptChangeHeader | djmilter.OptChangeBody | djmilter.OptQuarantine)
}

// call runs one go-milter command with the stage's timeout and turns its
// answer into a Verdict. Any error breaks the session for good: Postfix
// "poisons" the socket the same way, because a milter that missed or
// garbled one reply cannot be resynchronised.
func (s *Session) call(stage string, timeout time.Duration, scope *bool, fn func() (*djmilter.Action, error)) (Verdict, error) {
	if s.broken != nil {
		return Verdict{}, s.broken
	}
	if s.Done() {
		return continueVerdict, nil
	}
	s.conn.setTimeout(timeout)
	if err := s.conn.quiet(); err != nil {
		return Verdict{}, s.fail(stage, err)
	}
	act, err := fn()
	if err != nil {
		return Verdict{}, s.fail(stage, err)
	}
	v := verdictOf(act)
	if v.Final() && scope != nil {
		*scope = true
	}
	return v, nil
}

func (s *Session) fail(stage string, err error) error {
	s.broken = fmt.Errorf("milter %s: %s: %w", s.c.Name, stage, err)
	_ = s.dj.Close()
	_ = s.conn.Close()
	return s.broken
}

// Connect sends SMFIC_CONNECT. A final verdict here covers the connection.
func (s *Session) Connect(hostname string, family Family, port uint16, addr string) (Verdict, error) {
	return s.call("connect", s.c.opts.CommandTimeout, &s.connDone, func() (*djmilter.Action, error) {
		return s.dj.Conn(hostname, djmilter.ProtoFamily(family), port, addr)
	})
}

// Helo sends SMFIC_HELO; a HELO in the middle of a transaction aborts it
// first, as Postfix does.
func (s *Session) Helo(name string) (Verdict, error) {
	if err := s.abortIfOpen(); err != nil {
		return Verdict{}, err
	}
	return s.call("helo", s.c.opts.CommandTimeout, &s.connDone, func() (*djmilter.Action, error) {
		return s.dj.Helo(name)
	})
}

// Mail starts a transaction. params are the ESMTP parameters, each sent as
// its own string as Postfix and Sendmail do (go-milter would send them as
// one; rspamd and libmilter milters split on NUL).
func (s *Session) Mail(from string, params []string) (Verdict, error) {
	if err := s.abortIfOpen(); err != nil {
		return Verdict{}, err
	}
	s.msgDone = false
	return s.call("mail", s.c.opts.CommandTimeout, &s.msgDone, func() (*djmilter.Action, error) {
		s.txOpen = true
		return s.dj.Mail(from, strings.Join(params, "\x00"))
	})
}

// Rcpt sends one recipient. A reject or tempfail covers that recipient
// only; accept and discard cover the message.
func (s *Session) Rcpt(to string, params []string) (Verdict, error) {
	v, err := s.call("rcpt", s.c.opts.CommandTimeout, nil, func() (*djmilter.Action, error) {
		return s.dj.Rcpt(to, strings.Join(params, "\x00"))
	})
	if v.Kind == Accept || v.Kind == Discard {
		s.msgDone = true
	}
	return v, err
}

// Data sends SMFIC_DATA.
func (s *Session) Data() (Verdict, error) {
	return s.call("data", s.c.opts.CommandTimeout, &s.msgDone, s.dj.DataStart)
}

// Header sends one header. value is the field's text after the colon with
// continuation lines joined by LF and their leading white space kept; one
// leading space is removed unless the milter negotiated
// SMFIP_HDR_LEADSPC (Sendmail's and Postfix's rule: one space, never a tab).
func (s *Session) Header(name, value string) (Verdict, error) {
	if !s.leadingSpace && strings.HasPrefix(value, " ") {
		value = value[1:]
	}
	return s.call("header", s.c.opts.ContentTimeout, &s.msgDone, func() (*djmilter.Action, error) {
		return s.dj.HeaderField(name, value, nil)
	})
}

// Headers sends the header fields, each as Header does, in order, and
// stops at the first final verdict or SKIP. The name and value fields
// yields are read only before it yields the next pair, so they may be
// views of a buffer that fields reuses.
//
// A milter that negotiated SMFIP_NR_HDR (rspamd does) answers none of
// them: a header of short fields is then tens of thousands of packets per
// MB and no round trip, and the per-field work is what costs. conn writes
// those packets itself (writeHeader), into its write buffer or, for a
// large header, a batch of its own, instead of go-milter's HeaderField,
// which builds a packet and a copy of name and value for each. Bypassing
// it keeps go-milter's client consistent: with no reply to read,
// HeaderField's only effects are its state (which stays at "DATA called"
// instead of moving to "header field called": HeaderEnd, which
// EndOfHeaders calls next, accepts both) and the macros it is handed
// (none: Header passes none either, and go-milter has no macro stage for
// headers); its skip flag is only set by a reply.
// The stray-bytes check (quiet), a syscall, runs once before the first
// field, not per field: no field is a command the milter answers, and
// EndOfHeaders checks again before it.
//
// A milter that answers each field still gets one round trip per field
// through go-milter, its answers honoured (SKIP, reject, ...).
func (s *Session) Headers(fields iter.Seq2[[]byte, []byte]) (Verdict, error) {
	if s.broken != nil {
		return Verdict{}, s.broken
	}
	if s.Done() || s.dj.ProtocolOption(djmilter.OptNoHeaders) {
		return continueVerdict, nil
	}
	if !s.dj.ProtocolOption(djmilter.OptNoHeaderReply) {
		for name, value := range fields {
			v, err := s.Header(string(name), string(value))
			if err != nil || v.Final() || s.dj.Skip() {
				return v, err
			}
		}
		return continueVerdict, nil
	}
	return s.call("header", s.c.opts.ContentTimeout, &s.msgDone, func() (*djmilter.Action, error) {
		for name, value := range fields {
			if !s.leadingSpace && len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
			if err := s.conn.writeHeader(name, value); err != nil {
				return nil, fmt.Errorf("milter: header field: %w", err)
			}
		}
		if err := s.conn.endHeaders(); err != nil {
			return nil, fmt.Errorf("milter: header field: %w", err)
		}
		return continueAction, nil
	})
}

var continueAction = &djmilter.Action{Type: djmilter.ActionContinue}

// EndOfHeaders sends SMFIC_EOH.
func (s *Session) EndOfHeaders() (Verdict, error) {
	return s.call("end of headers", s.c.opts.ContentTimeout, &s.msgDone, s.dj.HeaderEnd)
}

// MaxChunk is the largest body chunk a libmilter milter accepts unless a
// larger size was negotiated.
const MaxChunk = 65535

// Body sends one chunk of at most MaxChunk bytes of CRLF-terminated body.
func (s *Session) Body(chunk []byte) (Verdict, error) {
	s.bodySent = true
	return s.call("body", s.c.opts.ContentTimeout, &s.msgDone, func() (*djmilter.Action, error) {
		return s.dj.BodyChunk(chunk)
	})
}

// SkipBody reports whether sending more body chunks is pointless: the
// milter answered SKIP, asked for no body, or has decided.
func (s *Session) SkipBody() bool {
	return s.Done() || s.dj.Skip() || s.dj.ProtocolOption(djmilter.OptNoBody)
}

// End sends end of message and collects the modifications and the final
// verdict. A milter that already decided the message is not asked.
//
// The milter's replacement body, if it sends one, is written to body as it
// arrives, never held whole: mods then hold one Modification of Kind
// ReplaceBody, with a nil Body, where the first body chunk came among the
// other modifications. With a nil body the chunks are returned instead,
// each as a ReplaceBody Modification whose Body is the chunk (to be
// concatenated in order). An error from body's Write fails the session.
//
// The end of message is bounded by Options.EOMTimeout (ErrEOMTimeout),
// Options.MaxModifications and Options.MaxModificationBytes
// (ErrOverBudget); a reply the milter may not send fails it with
// ErrProtocol.
func (s *Session) End(body io.Writer) (Verdict, []Modification, error) {
	if s.broken != nil {
		return Verdict{}, nil, s.broken
	}
	if s.Done() {
		return continueVerdict, nil, nil
	}
	s.conn.setTimeout(s.c.opts.ContentTimeout)
	if !s.bodySent {
		// go-milter wants a body event before end of message; for an
		// empty body conn keeps it off the wire.
		s.conn.skipEmptyBody(true, !s.dj.ProtocolOption(djmilter.OptNoBodyReply))
		v, err := s.Body(nil)
		s.conn.skipEmptyBody(false, false)
		if err != nil || v.Final() {
			return v, nil, err
		}
	}
	s.txOpen, s.bodySent = false, false
	if err := s.conn.quiet(); err != nil {
		return Verdict{}, nil, s.fail("end of message", err)
	}
	s.conn.beginEndOfMessage(s.c.opts.EOMTimeout, body, s.c.opts.MaxModifications, s.c.opts.MaxModificationBytes)
	acts, act, err := s.dj.End()
	bodyAt := s.conn.endEndOfMessage()
	if err != nil {
		return Verdict{}, nil, s.fail("end of message", err)
	}
	mods := make([]Modification, 0, len(acts)+1)
	for i, a := range acts {
		if i == bodyAt {
			mods = append(mods, Modification{Kind: ReplaceBody})
		}
		mods = append(mods, modificationOf(a, s.leadingSpace))
	}
	if bodyAt == len(acts) {
		mods = append(mods, Modification{Kind: ReplaceBody})
	}
	v := verdictOf(act)
	if v.Kind == Continue {
		v.Kind = Accept // CONTINUE at end of message means accept
	}
	return v, mods, nil
}

// Abort ends an open transaction (RSET, a rolled-back or failed message).
func (s *Session) Abort() error { return s.abortIfOpen() }

func (s *Session) abortIfOpen() error {
	if !s.txOpen || s.broken != nil {
		return s.broken
	}
	s.txOpen, s.bodySent = false, false
	s.msgDone = false
	if s.connDone {
		return nil
	}
	s.conn.setTimeout(s.c.opts.CommandTimeout)
	if err := s.conn.quiet(); err != nil {
		return s.fail("abort", err)
	}
	if err := s.dj.Abort(nil); err != nil {
		return s.fail("abort", err)
	}
	return nil
}

// Close sends QUIT and closes the connection. It is safe to call twice.
func (s *Session) Close() error {
	if s.broken != nil {
		return nil
	}
	s.conn.setTimeout(s.c.opts.CommandTimeout)
	err := s.dj.Close()
	s.broken = errClosed
	return err
}

var errClosed = fmt.Errorf("milter session closed")

// Interrupt closes the milter's socket at once, so that a call blocked on
// it (a milter that keeps sending PROGRESS, or says nothing) returns with
// an error now. It is the one method that is safe to call from another
// goroutine: the gateway calls it when smtpd reports that the client is
// gone, when it reaps a session, and at shutdown.
func (s *Session) Interrupt() { _ = s.conn.Conn.Close() }
