package milter

import (
	"bytes"
	"fmt"
	"strconv"
)

// This file is what conn checks in the milter's replies before go-milter
// parses them: which reply codes a phase allows, which negotiated action
// each modification needs, and the shape of header modifications. Postfix's
// milter8.c applies the same rules (milter8_event's reply loop); go-milter
// checks none of them.

// readPhase is what the milter may send next.
type readPhase int

const (
	// phaseNegotiation: the SMFIC_OPTNEG reply, left to go-milter.
	phaseNegotiation readPhase = iota
	// phaseReply: the one reply to a command other than end of message.
	phaseReply
	// phaseGreeting: the one reply to CONNECT or HELO, where DISCARD
	// means nothing (there is no message yet).
	phaseGreeting
	// phaseEndOfMessage: modifications and PROGRESS, then one reply.
	phaseEndOfMessage
)

// Reply codes (SMFIR_*, libmilter's mfdef.h).
const (
	replyContinue  = 'c' // SMFIR_CONTINUE
	replyAccept    = 'a' // SMFIR_ACCEPT
	replyDiscard   = 'd' // SMFIR_DISCARD
	replyReject    = 'r' // SMFIR_REJECT
	replyTempfail  = 't' // SMFIR_TEMPFAIL
	replyReplyCode = 'y' // SMFIR_REPLYCODE
	replySkip      = 's' // SMFIR_SKIP
	replyProgress  = 'p' // SMFIR_PROGRESS
	replyBody      = 'b' // SMFIR_REPLBODY
)

// isVerdict reports whether code is a reply that answers a command.
// (go-milter decides where SKIP is allowed.)
func isVerdict(code byte) bool {
	switch code {
	case replyContinue, replyAccept, replyDiscard, replyReject, replyTempfail, replyReplyCode, replySkip:
		return true
	}
	return false
}

// modification is one SMFIR_* modification code and the SMFIF_* action
// the milter must have negotiated to send it (mfdef.h; Postfix's milter8.c
// refuses a modification whose action was not negotiated the same way).
type modification struct {
	name, action string // for messages: SMFIR_ and SMFIF_ names
	needs        uint32 // SMFIF_*
	header       bool   // the payload is [index] name NUL value NUL
	indexed      bool   // the payload starts with a 4-byte index
}

var modifications = map[byte]modification{
	'h':       {"SMFIR_ADDHEADER", "SMFIF_ADDHDRS", actAddHeaders, true, false},
	'i':       {"SMFIR_INSHEADER", "SMFIF_ADDHDRS", actAddHeaders, true, true},
	'm':       {"SMFIR_CHGHEADER", "SMFIF_CHGHDRS", actChangeHeader, true, true},
	replyBody: {"SMFIR_REPLBODY", "SMFIF_CHGBODY", actChangeBody, false, false},
	'+':       {"SMFIR_ADDRCPT", "SMFIF_ADDRCPT", actAddRcpt, false, false},
	'2':       {"SMFIR_ADDRCPT_PAR", "SMFIF_ADDRCPT_PAR", actAddRcptPar, false, false},
	'-':       {"SMFIR_DELRCPT", "SMFIF_DELRCPT", actDelRcpt, false, false},
	'e':       {"SMFIR_CHGFROM", "SMFIF_CHGFROM", actChangeFrom, false, false},
	'q':       {"SMFIR_QUARANTINE", "SMFIF_QUARANTINE", actQuarantine, false, false},
}

// checkPayload refuses what the gateway could not write to smtpd
// faithfully: a NUL byte inside a header's name or value (smtpd's filter
// protocol is text, and a NUL would cut the line there). data is the
// packet's payload, without the code.
func (m modification) checkPayload(data []byte) error {
	if !m.header {
		return nil
	}
	fields := data
	if m.indexed {
		if len(fields) < 4 {
			return fmt.Errorf("%w: %s of %d bytes has no header index: %s", ErrProtocol, m.name, len(data), quoteSome(data))
		}
		fields = fields[4:]
	}
	if len(fields) == 0 || fields[len(fields)-1] != 0 {
		return fmt.Errorf("%w: %s is not NUL-terminated: %s", ErrProtocol, m.name, quoteSome(data))
	}
	switch bytes.Count(fields, []byte{0}) {
	case 1:
		return fmt.Errorf("%w: %s has a header name but no value: %s", ErrProtocol, m.name, quoteSome(data))
	case 2:
		return nil
	}
	return fmt.Errorf("%w: NUL byte in the header name or value of %s: %s", ErrProtocol, m.name, quoteSome(data))
}

// quoteSome quotes the first bytes of what a milter sent, for an error
// message: escaped, so that a milter cannot write a line into the log, and
// short, so that it cannot fill it.
func quoteSome(b []byte) string {
	const max = 64
	if len(b) <= max {
		return strconv.Quote(string(b))
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(string(b[:max])), len(b))
}
