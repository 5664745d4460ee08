package milter

import (
	"fmt"

	djmilter "github.com/d--j/go-milter"
)

// Kind is what a milter decided about the command or message it was shown.
type Kind int

const (
	Continue Kind = iota // go on; at end of message it means accept
	Accept               // accept; no more events for the connection (at connect/helo) or the message
	Reject               // permanent failure (5xx), with Reply
	Tempfail             // temporary failure (4xx), with Reply
	Discard              // accept, then drop the message
)

func (k Kind) String() string {
	switch k {
	case Continue:
		return "continue"
	case Accept:
		return "accept"
	case Reject:
		return "reject"
	case Tempfail:
		return "tempfail"
	case Discard:
		return "discard"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Verdict is a milter's answer, neutral of both wire protocols.
type Verdict struct {
	Kind Kind
	// Reply is the SMTP reply for Reject and Tempfail: the milter's own
	// REPLYCODE text when it sent one (possibly several lines joined by
	// CRLF, as libmilter's smfi_setmlreply makes them), else Postfix's
	// default text for a plain SMFIR_REJECT or SMFIR_TEMPFAIL.
	Reply string
	// Code is the reply's three-digit code (550, 451, 421, ...).
	Code int
}

// Final reports whether the milter wants no more events for this scope.
func (v Verdict) Final() bool { return v.Kind != Continue }

func (v Verdict) String() string {
	if v.Reply != "" {
		return v.Kind.String() + " " + fmt.Sprintf("%q", v.Reply)
	}
	return v.Kind.String()
}

var continueVerdict = Verdict{Kind: Continue}

func verdictOf(a *djmilter.Action) Verdict {
	switch a.Type {
	case djmilter.ActionAccept:
		return Verdict{Kind: Accept}
	case djmilter.ActionDiscard:
		return Verdict{Kind: Discard}
	case djmilter.ActionReject, djmilter.ActionTempFail, djmilter.ActionRejectWithCode:
		// go-milter fills Postfix's texts for plain reject/tempfail and
		// has validated a REPLYCODE to be a 4xx or 5xx reply.
		k := Reject
		if a.SMTPCode < 500 {
			k = Tempfail
		}
		return Verdict{Kind: k, Code: int(a.SMTPCode), Reply: a.SMTPReply}
	}
	return continueVerdict
}

// ModKind is the kind of a change a milter asked for at end of message.
type ModKind int

const (
	AddHeader    ModKind = iota + 1 // append Name: Value after the last header
	InsertHeader                    // insert Name: Value at 0-based global Index
	ChangeHeader                    // change the Index-th (1-based) Name header; empty Value deletes it
	ReplaceBody                     // the milter replaced the body: streamed to End's writer, or (no writer) one chunk in Body, chunks concatenating in order
	AddRcpt                         // add Addr (with ESMTP Args) to the envelope
	DelRcpt                         // remove Addr from the envelope
	ChangeFrom                      // replace the envelope sender with Addr (and Args)
	Quarantine                      // hold the message, with Reason; not a final verdict
)

func (k ModKind) String() string {
	switch k {
	case AddHeader:
		return "addheader"
	case InsertHeader:
		return "insheader"
	case ChangeHeader:
		return "chgheader"
	case ReplaceBody:
		return "replbody"
	case AddRcpt:
		return "addrcpt"
	case DelRcpt:
		return "delrcpt"
	case ChangeFrom:
		return "chgfrom"
	case Quarantine:
		return "quarantine"
	}
	return fmt.Sprintf("mod(%d)", int(k))
}

// Modification is one change a milter asked for at end of message.
type Modification struct {
	Kind ModKind
	Name string
	// Value is the header text that follows the colon, exactly as it is to
	// be written: the session has already added the one space the MTA owes
	// a milter that did not negotiate SMFIP_HDR_LEADSPC. Continuation lines
	// are separated by LF, as milters send them.
	Value  string
	Index  int
	Body   []byte // a ReplaceBody chunk when End had no writer; nil when the body went to the writer
	Addr   string // with its angle brackets, as the milter sent it
	Args   string
	Reason string
}

// Envelope reports whether the modification changes the envelope, which
// OpenSMTPD's filter protocol cannot carry after RCPT.
func (m Modification) Envelope() bool {
	return m.Kind == AddRcpt || m.Kind == DelRcpt || m.Kind == ChangeFrom
}

func modificationOf(a djmilter.ModifyAction, leadingSpace bool) Modification {
	m := Modification{Name: a.HeaderName, Value: a.HeaderValue, Index: int(a.HeaderIndex), Reason: a.Reason}
	if !leadingSpace && m.Value != "" {
		m.Value = " " + m.Value
	}
	switch a.Type {
	case djmilter.ActionAddHeader:
		m.Kind = AddHeader
	case djmilter.ActionInsertHeader:
		m.Kind = InsertHeader
	case djmilter.ActionChangeHeader:
		m.Kind = ChangeHeader
	case djmilter.ActionReplaceBody:
		m.Kind, m.Body = ReplaceBody, a.Body
	case djmilter.ActionAddRcpt:
		m.Kind, m.Addr, m.Args = AddRcpt, a.Rcpt, a.RcptArgs
	case djmilter.ActionDelRcpt:
		m.Kind, m.Addr = DelRcpt, a.Rcpt
	case djmilter.ActionChangeFrom:
		m.Kind, m.Addr, m.Args = ChangeFrom, a.From, a.FromArgs
	case djmilter.ActionQuarantine:
		m.Kind = Quarantine
	}
	return m
}
