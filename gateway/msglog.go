package gateway

import (
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/protocol"
)

// The per-message info line, written at commit: who sent the message
// (client address, HELO name, sender, number of recipients), its size,
// the answer to commit and what each milter said about it and how long it
// took, in the words the metrics use.

// tally is what one milter did for the message in progress, from MAIL to
// commit: its last answer and the time of all its calls (observe).
type tally struct {
	calls   int
	verdict milter.Kind
	failed  string // milter.ErrorKind of the call that failed; "" if none did
	took    time.Duration
}

// record adds one milter call to the tally.
func (t *tally) record(v milter.Verdict, err error, took time.Duration) {
	t.calls++
	t.took += took
	if err != nil {
		t.failed = milter.ErrorKind(err)
		return
	}
	t.failed = "" // another endpoint of its pool took over (failover)
	t.verdict = v.Kind
}

// milterTallies is the milters' part of the message line: the session,
// as a pointer, so that logging it allocates nothing.
type milterTallies session

func (ms *milterTallies) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, sl := range ms.milters {
		if sl.tally.calls == 0 {
			continue // not asked about this message (it had decided before, or was not reached)
		}
		if err := enc.AppendObject(sl); err != nil {
			return err
		}
	}
	return nil
}

// MarshalLogObject is the slot's tally for the message line.
func (sl *slot) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("milter", sl.name())
	if sl.tally.failed != "" {
		enc.AddString("verdict", "error")
		enc.AddString("error", sl.tally.failed)
	} else {
		enc.AddString("verdict", sl.tally.verdict.String())
	}
	enc.AddDuration("took", sl.tally.took)
	return nil
}

// logMessage writes the message line for the answer a to commit.
func (s *session) logMessage(a answer) {
	verdict := verdictWord(a.decision, a.reply)
	if s.discard {
		verdict = "discard" // a milter discarded it: the policy made a refusal or a mark of that
	}
	client := s.client.Addr
	s.log.Info("message", zap.String("queue_id", s.macros.Get(milter.MacroQueueID)),
		zap.String("client", client), zap.String("helo", s.heloName),
		zap.String("sender", s.macros.Get(milter.MacroMailAddr)), zap.Int("recipients", s.rcpts),
		zap.Int("size", s.size), zap.String("verdict", verdict), zap.String("reply", a.reply),
		zap.Array("milters", (*milterTallies)(s)))
}

// verdictWord names the answer to commit as the metrics count it
// (metrics.Verdict; TestVerdictWordIsMetrics): accept for proceed,
// tempfail for a 4xx reject, reject for a 5xx one, disconnect.
func verdictWord(d protocol.Decision, reply string) string {
	switch d {
	case protocol.Proceed:
		return "accept"
	case protocol.Reject:
		if strings.HasPrefix(reply, "4") {
			return "tempfail"
		}
		return "reject"
	}
	return string(d)
}
