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

// milterTally is one milter's part of the message line.
type milterTally struct {
	name  string
	tally tally
}

// milterTallies is the milters' part of the message line, copied out of
// the session when the line is written: a log core may keep the fields
// and encode them later (zaptest's observer does), when the session has
// moved on.
type milterTallies []milterTally

func (s *session) tallies() milterTallies {
	var ms milterTallies
	for _, sl := range s.milters {
		if sl.tally.calls == 0 {
			continue // not asked about this message (it had decided before, or was not reached)
		}
		ms = append(ms, milterTally{name: sl.name(), tally: sl.tally})
	}
	return ms
}

func (ms milterTallies) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, m := range ms {
		if err := enc.AppendObject(m); err != nil {
			return err
		}
	}
	return nil
}

// MarshalLogObject is one milter's tally for the message line.
func (m milterTally) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("milter", m.name)
	if m.tally.failed != "" {
		enc.AddString("verdict", "error")
		enc.AddString("error", m.tally.failed)
	} else {
		enc.AddString("verdict", m.tally.verdict.String())
	}
	enc.AddDuration("took", m.tally.took)
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
		zap.Array("milters", s.tallies()))
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
