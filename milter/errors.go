package milter

import "errors"

// Errors a milter session fails with when the milter breaks the protocol
// or asks for more than it may. Each ends that milter's part in the SMTP
// session (its default action applies), as Postfix's milter8 does: a
// milter that sent one thing out of turn cannot be resynchronised.
var (
	// ErrProtocol wraps every violation of the milter protocol: data
	// from the milter before a command was sent (a second reply, or bytes
	// out of turn), PROGRESS where libmilter never sends it (anywhere but
	// end of message), a modification the milter did not negotiate, NUL
	// in a header value or a replacement body.
	ErrProtocol = errors.New("milter protocol violation")
	// ErrOverBudget: the milter's modifications at one end of message
	// exceed Options.MaxModifications or Options.MaxModificationBytes.
	ErrOverBudget = errors.New("modifications over the per-message budget")
	// ErrEOMTimeout: end of message took longer than Options.EOMTimeout,
	// PROGRESS packets included.
	ErrEOMTimeout = errors.New("end of message took longer than the end-of-message timeout")
)
