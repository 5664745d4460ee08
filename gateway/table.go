package gateway

import "github.com/filter-milter/filter-milter/protocol"

// The gateway's subscriptions, each with its handler: this one table is
// both what the gateway registers with smtpd (register) and how a session
// dispatches a request or a report (request, report), as filter-rspamd's
// table does. It holds only what feeds milter macros and session life:
// every registered phase costs a round trip through smtpd's lookup process
// for every session.
var (
	phaseTable = []struct {
		phase  protocol.Phase
		handle func(*session, protocol.Request)
	}{
		{protocol.PhaseConnect, stage((*session).connect)},
		{protocol.PhaseHelo, stage((*session).helo)},
		{protocol.PhaseEhlo, stage((*session).helo)},
		{protocol.PhaseMailFrom, stage((*session).mail)},
		{protocol.PhaseRcptTo, stage((*session).rcpt)},
		{protocol.PhaseData, stage((*session).data)},
		{protocol.PhaseDataLine, (*session).dataLine},
		{protocol.PhaseCommit, (*session).commitMessage},
	}
	eventTable = []struct {
		event  protocol.Event
		handle func(*session, any)
	}{
		{protocol.EventLinkConnect, on((*session).linkConnect)},
		{protocol.EventLinkGreeting, on((*session).linkGreeting)},
		{protocol.EventLinkTLS, on((*session).linkTLS)},
		{protocol.EventLinkAuth, on((*session).linkAuth)},
		{protocol.EventLinkDisconnect, on((*session).linkDisconnect)},
		{protocol.EventTxBegin, on((*session).txBegin)},
		{protocol.EventTxReset, on(func(s *session, _ protocol.TxReset) { s.resetTransaction() })},
		{protocol.EventTxRollback, on(func(s *session, _ protocol.TxRollback) { s.resetTransaction() })},
		{protocol.EventProtocolClient, on((*session).protocolClient)},
	}
)

// phaseHandler and eventHandler index the table for dispatch.
var (
	phaseHandler = make(map[protocol.Phase]func(*session, protocol.Request), len(phaseTable))
	eventHandler = make(map[protocol.Event]func(*session, any), len(eventTable))
)

func init() {
	for _, p := range phaseTable {
		phaseHandler[p.phase] = p.handle
	}
	for _, e := range eventTable {
		eventHandler[e.event] = e.handle
	}
}

// registration is the register lines for the table, and register|ready.
func registration() []byte {
	var b []byte
	for _, e := range eventTable {
		b = protocol.AppendRegister(b, "report", "smtp-in", string(e.event))
	}
	for _, p := range phaseTable {
		b = protocol.AppendRegister(b, "filter", "smtp-in", string(p.phase))
	}
	return protocol.AppendRegisterReady(b)
}

// stage is the handler of an SMTP stage the milters answer: once a
// connection-scoped answer is given (a refusal at connect or HELO, a
// failed milter's tempfail or reject), it answers every later stage.
func stage(f func(*session, protocol.Request) answer) func(*session, protocol.Request) {
	return func(s *session, r protocol.Request) {
		if s.sticky != nil {
			s.send(r, *s.sticky)
			return
		}
		s.send(r, f(s, r))
	}
}

// on is the handler of a report event, given its decoded value.
func on[E any](f func(*session, E)) func(*session, any) {
	return func(s *session, ev any) {
		if e, ok := ev.(E); ok {
			f(s, e)
		}
	}
}
