package gateway

import (
	"time"

	"github.com/filter-milter/filter-milter/milter"
)

// Observer hears what the gateway does: for metrics, the test command and
// tracing. Its methods are called from session goroutines, concurrently;
// they must be quick and must not block.
type Observer interface {
	SessionOpened(session string)
	SessionClosed(session string)
	// MilterReply is one answer of a milter at a stage (connect, helo,
	// mail, rcpt, data, header, eoh, body, eom) and how long it took.
	// header is the header stage as a whole, once per message: its verdict
	// is continue, or the final answer the milter gave to one of the
	// fields, and its time that of all the fields (a header of short
	// fields is tens of thousands per MB, too many to observe each).
	MilterReply(session, milter string, stage milter.Stage, v milter.Verdict, took time.Duration)
	// MilterError is a milter that failed: unreachable, timed out, broke
	// the protocol.
	MilterError(session, milter string, stage milter.Stage, err error)
	// Modifications are the changes a milter asked for at end of message.
	Modifications(session, milter string, mods []milter.Modification)
	// MessageDone is the answer to commit.
	MessageDone(session, queueID, decision, reply string, size int)
	// MessageBuffered is a message the gateway held for its milters, when
	// its buffer is released: its size, and whether part of it went to a
	// temporary file.
	MessageBuffered(session string, bytes int64, spilled bool)
	// Evaluated is what an evaluating milter would have done to a message
	// (or, once, to a session it decided at connect or HELO without a
	// message): accept, reject, tempfail, discard, quarantine or error.
	// Nothing of it was enforced.
	Evaluated(session, milter, verdict string)
}

// NopObserver observes nothing.
type NopObserver struct{}

func (NopObserver) SessionOpened(string)                                                    {}
func (NopObserver) SessionClosed(string)                                                    {}
func (NopObserver) MilterReply(string, string, milter.Stage, milter.Verdict, time.Duration) {}
func (NopObserver) MilterError(string, string, milter.Stage, error)                         {}
func (NopObserver) Modifications(string, string, []milter.Modification)                     {}
func (NopObserver) MessageDone(string, string, string, string, int)                         {}
func (NopObserver) MessageBuffered(string, int64, bool)                                     {}
func (NopObserver) Evaluated(string, string, string)                                        {}
