package milter

import (
	"bytes"
	"errors"
	"testing"
)

// TestSessionStates walks the session's states as milter8.c does and
// checks, after each command, the state and the commands on the wire:
// a decided scope answers without I/O, an open transaction is aborted
// before the next MAIL or HELO and nowhere else, and a command out of
// order fails the session.
func TestSessionStates(t *testing.T) {
	type step struct {
		do    func(s *Session) error
		state state
		wire  string // command codes written so far, macros left out
	}
	ok := func(f func(s *Session) (Verdict, error)) func(s *Session) error {
		return func(s *Session) error { _, err := f(s); return err }
	}
	connect := ok(func(s *Session) (Verdict, error) { return s.Connect("h", FamilyInet, 1, "192.0.2.1") })
	helo := ok(func(s *Session) (Verdict, error) { return s.Helo("h") })
	mail := ok(func(s *Session) (Verdict, error) { return s.Mail("a@b", nil) })
	rcpt := ok(func(s *Session) (Verdict, error) { return s.Rcpt("c@d", nil) })
	data := ok(func(s *Session) (Verdict, error) { return s.Data() })
	eoh := ok(func(s *Session) (Verdict, error) { return s.EndOfHeaders() })
	body := ok(func(s *Session) (Verdict, error) { return s.Body([]byte("x\r\n")) })
	end := func(s *Session) error { _, _, err := s.End(nil); return err }
	abort := func(s *Session) error { return s.Abort() }
	for _, c := range []struct {
		name    string
		replies string // one reply code per command that is answered
		steps   []step
	}{
		{"reject at MAIL, then a new MAIL aborts first", "ccrcc", []step{
			{connect, stateReady, "OC"},
			{helo, stateReady, "OCH"},
			{mail, stateMessageDecided, "OCHM"},
			{rcpt, stateMessageDecided, "OCHM"},
			{data, stateMessageDecided, "OCHM"},
			{end, stateMessageDecided, "OCHM"},
			{mail, stateEnvelope, "OCHMAM"},
			{rcpt, stateEnvelope, "OCHMAMR"},
		}},
		{"a rejected recipient keeps the transaction; end of message closes it", "ccctccccac", []step{
			{connect, stateReady, "OC"},
			{helo, stateReady, "OCH"},
			{mail, stateEnvelope, "OCHM"},
			{rcpt, stateEnvelope, "OCHMR"},
			{rcpt, stateEnvelope, "OCHMRR"},
			{data, stateEnvelope, "OCHMRRT"},
			{eoh, stateEnvelope, "OCHMRRTN"},
			{body, stateBody, "OCHMRRTNB"},
			{end, stateReady, "OCHMRRTNBE"},
			{abort, stateReady, "OCHMRRTNBE"},
			{helo, stateReady, "OCHMRRTNBEH"},
		}},
		{"accept at CONNECT covers the connection", "a", []step{
			{connect, stateConnectionDecided, "OC"},
			{helo, stateConnectionDecided, "OC"},
			{mail, stateConnectionDecided, "OC"},
			{rcpt, stateConnectionDecided, "OC"},
			{abort, stateConnectionDecided, "OC"},
			{end, stateConnectionDecided, "OC"},
		}},
		{"HELO inside a transaction aborts it", "ccccc", []step{
			{connect, stateReady, "OC"},
			{helo, stateReady, "OCH"},
			{mail, stateEnvelope, "OCHM"},
			{rcpt, stateEnvelope, "OCHMR"},
			{helo, stateReady, "OCHMRAH"},
		}},
		{"RCPT before MAIL fails the session", "cc", []step{
			{connect, stateReady, "OC"},
			{helo, stateReady, "OCH"},
			{rcpt, stateFailed, "OCHQ"}, // fail says QUIT
			{mail, stateFailed, "OCHQ"},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			script := optnegReply(0x1ff, 0)
			for _, r := range []byte(c.replies) {
				script = append(script, packet(r)...)
			}
			nc := &recordingConn{scriptConn: scriptConn{r: bytes.NewReader(script)}}
			s, err := NewClient("states", Spec{Network: "unix", Address: "states"}, DefaultOptions, nil).openOn(nc, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, st := range c.steps {
				err := st.do(s)
				if (st.state == stateFailed) != (err != nil) {
					t.Fatalf("step %d: error %v in state %s", i, err, s.state)
				}
				var wire []byte
				for _, p := range packets(t, nc.written.Bytes()) {
					if p[0] != 'D' {
						wire = append(wire, p[0])
					}
				}
				if s.state != st.state || string(wire) != st.wire {
					t.Fatalf("step %d: state %s, wire %q; want %s, %q", i, s.state, wire, st.state, st.wire)
				}
			}
			_ = s.Close()
			wantState := stateClosed
			if c.steps[len(c.steps)-1].state == stateFailed {
				wantState = stateFailed // Close keeps the failure and its error
			}
			if s.state != wantState || s.Err() == nil || (wantState == stateClosed) != errors.Is(s.Err(), errClosed) {
				t.Errorf("after Close: state %s, Err %v; want %s", s.state, s.Err(), wantState)
			}
		})
	}
}
