package milter

import (
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"time"

	djmilter "github.com/d--j/go-milter"
)

// state is where a milter session is, as Postfix's milter8.c keeps one
// state per milter (MILTER8_STAT_*): every command below says what it
// does in each state, in one switch.
//
// After a final verdict (accept anywhere; reject, tempfail or discard
// anywhere but RCPT) libmilter ignores further events of that scope
// without answering, so a client that kept sending would hang until its
// timeout (libmilter's engine.c: next_states and trans_ok send it back to
// the HELO state). The two "decided" states remember the scope a verdict
// closed, and the commands answer its later events themselves, without
// I/O.
type state int

const (
	// stateReady: negotiated, no transaction open (MILTER8_STAT_READY).
	// CONNECT, HELO and MAIL go out.
	stateReady state = iota
	// stateEnvelope: MAIL went out and no body chunk yet
	// (MILTER8_STAT_ENVELOPE): RCPT, DATA, the header and end of headers
	// go out; ABORT is owed when the transaction ends without end of
	// message.
	stateEnvelope
	// stateBody: a body chunk went out (MILTER8_STAT_MESSAGE): more
	// chunks and end of message go out; ABORT is owed as above.
	stateBody
	// stateMessageDecided: the milter decided the message
	// (MILTER8_STAT_ACCEPT_MSG): its events are answered here; ABORT is
	// still owed, and the next MAIL or HELO sends it.
	stateMessageDecided
	// stateConnectionDecided: the milter decided the connection at
	// CONNECT or HELO (MILTER8_STAT_ACCEPT_CON, REJECT_CON): every event
	// is answered here, and no ABORT is owed (no transaction was opened).
	stateConnectionDecided
	// stateFailed: an error broke the session (MILTER8_STAT_ERROR); err
	// says which. The socket is closed.
	stateFailed
	// stateClosed: Close sent QUIT (MILTER8_STAT_CLOSED).
	stateClosed
)

func (s state) String() string {
	switch s {
	case stateReady:
		return "ready"
	case stateEnvelope:
		return "envelope"
	case stateBody:
		return "body"
	case stateMessageDecided:
		return "message decided"
	case stateConnectionDecided:
		return "connection decided"
	case stateFailed:
		return "failed"
	case stateClosed:
		return "closed"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Session is one milter conversation, for one SMTP session. Its methods
// are not safe for concurrent use (but Interrupt); the gateway drives
// each SMTP session from a single goroutine.
type Session struct {
	c            *Client
	dj           *djmilter.ClientSession
	conn         *conn
	leadingSpace bool
	state        state
	err          error // why the session failed or closed; nil before
}

var errClosed = errors.New("milter session closed")

// LeadingSpace reports whether the milter negotiated SMFIP_HDR_LEADSPC.
func (s *Session) LeadingSpace() bool { return s.leadingSpace }

func (s *Session) String() string { return s.c.Name }

// Err is the error that broke the session (errClosed after Close), or nil.
func (s *Session) Err() error { return s.err }

// Done reports whether the milter wants no more events for this message
// (or, after a verdict at connect or HELO, for the whole connection).
func (s *Session) Done() bool {
	switch s.state {
	case stateReady, stateEnvelope, stateBody:
		return false
	case stateMessageDecided, stateConnectionDecided, stateFailed, stateClosed:
		return true
	}
	panic("milter: impossible session state " + s.state.String())
}

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

// SkipBody reports whether sending more body chunks is pointless: the
// milter answered SKIP, asked for no body, or has decided.
func (s *Session) SkipBody() bool {
	return s.Done() || s.dj.Skip() || s.dj.ProtocolOption(djmilter.OptNoBody)
}

// send runs one go-milter command with the stage's timeout and turns its
// answer into a Verdict; a final one moves the session to decided, the
// state of the scope it closes. Any error breaks the session for good:
// Postfix "poisons" the socket the same way, because a milter that missed
// or garbled one reply cannot be resynchronised.
func (s *Session) send(stage string, timeout time.Duration, decided state, fn func() (*djmilter.Action, error)) (Verdict, error) {
	s.conn.setTimeout(timeout)
	if err := s.conn.quiet(); err != nil {
		return Verdict{}, s.fail(stage, err)
	}
	act, err := fn()
	if err != nil {
		return Verdict{}, s.fail(stage, err)
	}
	v := verdictOf(act)
	if v.Final() {
		s.state = decided
	}
	return v, nil
}

func (s *Session) fail(stage string, err error) error {
	s.state = stateFailed
	s.err = fmt.Errorf("milter %s: %s: %w", s.c.Name, stage, err)
	_ = s.dj.Close()
	_ = s.conn.Close()
	return s.err
}

// outOfOrder fails the session on a command its state does not allow (the
// gateway's bug, not the milter's): go-milter would refuse it too.
func (s *Session) outOfOrder(stage string) error {
	return s.fail(stage, fmt.Errorf("command out of order in state %s", s.state))
}

// Connect sends SMFIC_CONNECT. A final verdict here covers the connection.
func (s *Session) Connect(hostname string, family Family, port uint16, addr string) (Verdict, error) {
	switch s.state {
	case stateReady:
		return s.greeting("connect", func() (*djmilter.Action, error) {
			return s.dj.Conn(hostname, djmilter.ProtoFamily(family), port, addr)
		})
	case stateConnectionDecided:
		return continueVerdict, nil
	case stateEnvelope, stateBody, stateMessageDecided:
		return Verdict{}, s.outOfOrder("connect")
	case stateFailed, stateClosed:
		return Verdict{}, s.err
	}
	panic("milter: impossible session state " + s.state.String())
}

// greeting sends CONNECT or HELO, whose one reply conn reads in
// phaseGreeting (DISCARD there is CONTINUE).
func (s *Session) greeting(stage string, fn func() (*djmilter.Action, error)) (Verdict, error) {
	s.conn.phase = phaseGreeting
	v, err := s.send(stage, s.c.opts.CommandTimeout, stateConnectionDecided, fn)
	s.conn.phase = phaseReply
	return v, err
}

// Helo sends SMFIC_HELO; a HELO in the middle of a transaction aborts it
// first, as Postfix does. A final verdict here covers the connection.
func (s *Session) Helo(name string) (Verdict, error) {
	switch s.state {
	case stateEnvelope, stateBody, stateMessageDecided:
		if err := s.abort(); err != nil {
			return Verdict{}, err
		}
		return s.Helo(name)
	case stateReady:
		return s.greeting("helo", func() (*djmilter.Action, error) {
			return s.dj.Helo(name)
		})
	case stateConnectionDecided:
		return continueVerdict, nil
	case stateFailed, stateClosed:
		return Verdict{}, s.err
	}
	panic("milter: impossible session state " + s.state.String())
}

// Mail starts a transaction, aborting the one still open. params are the
// ESMTP parameters, each sent as its own string as Postfix and Sendmail
// do (go-milter would send them as one; rspamd and libmilter milters split
// on NUL).
func (s *Session) Mail(from string, params []string) (Verdict, error) {
	switch s.state {
	case stateEnvelope, stateBody, stateMessageDecided:
		if err := s.abort(); err != nil {
			return Verdict{}, err
		}
		return s.Mail(from, params)
	case stateReady:
		s.state = stateEnvelope
		return s.send("mail", s.c.opts.CommandTimeout, stateMessageDecided, func() (*djmilter.Action, error) {
			return s.dj.Mail(from, strings.Join(params, "\x00"))
		})
	case stateConnectionDecided:
		return continueVerdict, nil
	case stateFailed, stateClosed:
		return Verdict{}, s.err
	}
	panic("milter: impossible session state " + s.state.String())
}

// Rcpt sends one recipient. A reject or tempfail covers that recipient
// only; accept and discard cover the message.
func (s *Session) Rcpt(to string, params []string) (Verdict, error) {
	switch s.state {
	case stateEnvelope:
		// A reject or tempfail covers this recipient only: the state stays.
		v, err := s.send("rcpt", s.c.opts.CommandTimeout, stateEnvelope, func() (*djmilter.Action, error) {
			return s.dj.Rcpt(to, strings.Join(params, "\x00"))
		})
		if err == nil && (v.Kind == Accept || v.Kind == Discard) {
			s.state = stateMessageDecided
		}
		return v, err
	case stateMessageDecided, stateConnectionDecided:
		return continueVerdict, nil
	case stateReady, stateBody:
		return Verdict{}, s.outOfOrder("rcpt")
	case stateFailed, stateClosed:
		return Verdict{}, s.err
	}
	panic("milter: impossible session state " + s.state.String())
}

// Data sends SMFIC_DATA.
func (s *Session) Data() (Verdict, error) {
	switch s.state {
	case stateEnvelope:
		return s.send("data", s.c.opts.CommandTimeout, stateMessageDecided, s.dj.DataStart)
	case stateMessageDecided, stateConnectionDecided:
		return continueVerdict, nil
	case stateReady, stateBody:
		return Verdict{}, s.outOfOrder("data")
	case stateFailed, stateClosed:
		return Verdict{}, s.err
	}
	panic("milter: impossible session state " + s.state.String())
}

// Header sends one header. value is the field's text after the colon with
// continuation lines joined by LF and their leading white space kept; one
// leading space is removed unless the milter negotiated
// SMFIP_HDR_LEADSPC (Sendmail's and Postfix's rule: one space, never a tab).
func (s *Session) Header(name, value string) (Verdict, error) {
	switch s.state {
	case stateEnvelope:
		if !s.leadingSpace && strings.HasPrefix(value, " ") {
			value = value[1:]
		}
		return s.send("header", s.c.opts.ContentTimeout, stateMessageDecided, func() (*djmilter.Action, error) {
			return s.dj.HeaderField(name, value, nil)
		})
	case stateMessageDecided, stateConnectionDecided:
		return continueVerdict, nil
	case stateReady, stateBody:
		return Verdict{}, s.outOfOrder("header")
	case stateFailed, stateClosed:
		return Verdict{}, s.err
	}
	panic("milter: impossible session state " + s.state.String())
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
	switch s.state {
	case stateEnvelope:
		switch {
		case s.dj.ProtocolOption(djmilter.OptNoHeaders):
			return continueVerdict, nil
		case !s.dj.ProtocolOption(djmilter.OptNoHeaderReply):
			for name, value := range fields {
				v, err := s.Header(string(name), string(value))
				if err != nil || v.Final() || s.dj.Skip() {
					return v, err
				}
			}
			return continueVerdict, nil
		}
		return s.send("header", s.c.opts.ContentTimeout, stateMessageDecided, func() (*djmilter.Action, error) {
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
	case stateMessageDecided, stateConnectionDecided:
		return continueVerdict, nil
	case stateReady, stateBody:
		return Verdict{}, s.outOfOrder("header")
	case stateFailed, stateClosed:
		return Verdict{}, s.err
	}
	panic("milter: impossible session state " + s.state.String())
}

var continueAction = &djmilter.Action{Type: djmilter.ActionContinue}

// EndOfHeaders sends SMFIC_EOH.
func (s *Session) EndOfHeaders() (Verdict, error) {
	switch s.state {
	case stateEnvelope:
		return s.send("end of headers", s.c.opts.ContentTimeout, stateMessageDecided, s.dj.HeaderEnd)
	case stateMessageDecided, stateConnectionDecided:
		return continueVerdict, nil
	case stateReady, stateBody:
		return Verdict{}, s.outOfOrder("end of headers")
	case stateFailed, stateClosed:
		return Verdict{}, s.err
	}
	panic("milter: impossible session state " + s.state.String())
}

// MaxChunk is the largest body chunk a libmilter milter accepts unless a
// larger size was negotiated.
const MaxChunk = 65535

// Body sends one chunk of at most MaxChunk bytes of CRLF-terminated body.
func (s *Session) Body(chunk []byte) (Verdict, error) {
	switch s.state {
	case stateEnvelope, stateBody:
		s.state = stateBody
		return s.send("body", s.c.opts.ContentTimeout, stateMessageDecided, func() (*djmilter.Action, error) {
			return s.dj.BodyChunk(chunk)
		})
	case stateMessageDecided, stateConnectionDecided:
		return continueVerdict, nil
	case stateReady:
		return Verdict{}, s.outOfOrder("body")
	case stateFailed, stateClosed:
		return Verdict{}, s.err
	}
	panic("milter: impossible session state " + s.state.String())
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
	switch s.state {
	case stateEnvelope:
		// go-milter wants a body event before end of message; for an
		// empty body conn keeps it off the wire.
		s.conn.skipEmptyBody(true, !s.dj.ProtocolOption(djmilter.OptNoBodyReply))
		v, err := s.Body(nil)
		s.conn.skipEmptyBody(false, false)
		if err != nil || v.Final() {
			return v, nil, err
		}
		return s.End(body)
	case stateBody:
		return s.endOfMessage(body)
	case stateMessageDecided, stateConnectionDecided:
		return continueVerdict, nil, nil
	case stateReady:
		return Verdict{}, nil, s.outOfOrder("end of message")
	case stateFailed, stateClosed:
		return Verdict{}, nil, s.err
	}
	panic("milter: impossible session state " + s.state.String())
}

// endOfMessage is End in stateBody: the transaction ends here whatever
// the milter answers, so no ABORT is owed after it.
func (s *Session) endOfMessage(body io.Writer) (Verdict, []Modification, error) {
	s.state = stateReady
	s.conn.setTimeout(s.c.opts.ContentTimeout)
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
func (s *Session) Abort() error {
	switch s.state {
	case stateEnvelope, stateBody, stateMessageDecided:
		return s.abort()
	case stateReady, stateConnectionDecided:
		return nil
	case stateFailed, stateClosed:
		return s.err
	}
	panic("milter: impossible session state " + s.state.String())
}

// abort sends SMFIC_ABORT for the open transaction.
func (s *Session) abort() error {
	s.state = stateReady
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
	switch s.state {
	case stateReady, stateEnvelope, stateBody, stateMessageDecided, stateConnectionDecided:
		s.conn.setTimeout(s.c.opts.CommandTimeout)
		err := s.dj.Close()
		s.state, s.err = stateClosed, errClosed
		return err
	case stateFailed, stateClosed:
		return nil
	}
	panic("milter: impossible session state " + s.state.String())
}

// Interrupt closes the milter's socket at once, so that a call blocked on
// it (a milter that keeps sending PROGRESS, or says nothing) returns with
// an error now. It is the one method that is safe to call from another
// goroutine: the gateway calls it when smtpd reports that the client is
// gone, when it reaps a session, and at shutdown.
func (s *Session) Interrupt() { _ = s.conn.Conn.Close() }
