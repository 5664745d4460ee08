package gateway

import (
	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/milter"
)

// Evaluation mode (milter-manager's): an evaluating milter (role
// evaluating, its evaluation setting) gets every command and the message
// as an enforcing milter in its place would, and nothing it says is
// enforced or applied. What it would have done is kept here, per
// transaction, and said once per message at commit: one log line and the
// observer's Evaluated (the metric evaluation_verdicts_total).

// evaluation is what an evaluating milter would have done: its first
// verdict that was not continue, its changes to the message, or the error
// that took it out.
type evaluation struct {
	connScope  bool        // decided at connect or HELO, or failed: it holds for every later message of the session
	kind       milter.Kind // Continue until it decided
	stage      milter.Stage
	reply      string
	mods       []string // the changes it asked for, in short: "addheader X-Spam"
	quarantine bool
	err        error
	eom        bool // it was given the end of the message
	reported   bool // logged at least once (a connection-scoped one is reported with each message)
}

// verdict names what the milter would have done to the message, in the
// metrics' words: accept, reject, tempfail, discard, quarantine, or error
// (it failed; the session went on without it).
func (e *evaluation) verdict() string {
	switch {
	case e.err != nil:
		return "error"
	case e.kind == milter.Reject || e.kind == milter.Tempfail || e.kind == milter.Discard:
		return e.kind.String()
	case e.quarantine:
		return "quarantine"
	}
	return "accept"
}

// evaluated keeps an evaluating milter's answer to a command; its first
// verdict other than continue is the one reported.
func (s *session) evaluated(sl *slot, stage milter.Stage, connScope bool, v milter.Verdict) {
	if v.Kind == milter.Continue {
		return
	}
	if sl.eval == nil {
		sl.eval = &evaluation{}
	}
	if sl.eval.kind != milter.Continue || sl.eval.err != nil {
		return
	}
	sl.eval.kind, sl.eval.stage, sl.eval.connScope = v.Kind, stage, connScope
	if v.Kind == milter.Reject || v.Kind == milter.Tempfail {
		sl.eval.reply = logText(oneLine(v.Reply))
	}
	s.log.Debug("evaluating milter answered; not enforced", zap.String("milter", sl.name()), zap.String("stage", string(stage)),
		zap.Stringer("verdict", v.Kind), zap.String("reply", logText(v.Reply)))
}

// evaluatedMessage keeps an evaluating milter's answer to the message
// (headers to end of message, reported as stage eom): its verdict and, in
// short, the changes that were not made.
func (s *session) evaluatedMessage(sl *slot, v milter.Verdict, mods []milter.Modification) {
	s.evaluated(sl, milter.StageEOM, false, v)
	if sl.eval == nil {
		sl.eval = &evaluation{}
	}
	sl.eval.eom = true
	for i, m := range mods {
		if m.Kind == milter.ReplaceBody && i > 0 && mods[i-1].Kind == milter.ReplaceBody {
			continue // one replacement, however many chunks
		}
		text := m.Kind.String()
		switch {
		case m.Name != "":
			text += " " + m.Name
		case m.Addr != "":
			text += " " + m.Addr
		}
		sl.eval.mods = append(sl.eval.mods, logText(text))
		sl.eval.quarantine = sl.eval.quarantine || m.Kind == milter.Quarantine
	}
}

// evaluationFailed keeps the failure of an evaluating milter, which is out
// of the session: no default action, no answer changed.
func (s *session) evaluationFailed(sl *slot, err error) {
	s.log.Warn("evaluating milter failed; the session goes on without it", zap.String("milter", sl.name()), zap.Error(err))
	// It is out for the rest of the session: every later message of the
	// session reports the error, and what it said before is moot.
	sl.eval = &evaluation{err: err, connScope: true}
}

// reportEvaluations says, for one message, what each evaluating milter of
// the session would have done: queueID is the message's, "" at the end of
// a session whose connection-scoped verdict no message reported. A milter
// that decided nothing and was not given the end of the message (the
// message was refused before its turn) has nothing to report.
func (s *session) reportEvaluations(queueID string) {
	for _, sl := range s.milters {
		if sl.role != evaluating || sl.part == partNotForClient || sl.part == partAfterAuth {
			continue
		}
		e := sl.eval
		if queueID == "" && (e == nil || !e.connScope || e.reported) {
			continue
		}
		if e == nil || e.kind == milter.Continue && e.err == nil && !e.eom {
			continue
		}
		fields := []zap.Field{zap.String("milter", sl.name()), zap.String("queue_id", queueID),
			zap.String("verdict", e.verdict())}
		e.reported = true
		if e.stage != "" {
			fields = append(fields, zap.String("stage", string(e.stage)))
		}
		if e.reply != "" {
			fields = append(fields, zap.String("reply", e.reply))
		}
		if len(e.mods) > 0 {
			fields = append(fields, zap.Strings("modifications", e.mods))
		}
		if e.err != nil {
			fields = append(fields, zap.Error(e.err))
		}
		s.log.Info("evaluation: what the milter would have done", fields...)
		s.cfg.Observer.Evaluated(s.id, sl.name(), e.verdict())
	}
}

// forNextTransaction is what is kept of an evaluation when a transaction
// ends: a connection-scoped verdict or failure only.
func (e *evaluation) forNextTransaction() *evaluation {
	if e == nil || !e.connScope {
		return nil
	}
	return e
}
