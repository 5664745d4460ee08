// Package probe is the engine of `filter-milter check`: it connects to
// every endpoint of every configured milter, negotiates as a session
// would, and prints what each answered: protocol version, actions,
// protocol flags (the stages it skips and those it does not answer), the
// macros it asked for and the round-trip time, or why it could not be
// used and a hint.
package probe

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/filter-milter/filter-milter/config"
	"github.com/filter-milter/filter-milter/milter"
)

// Milters checks every endpoint of every milter, writes what each
// answered to w, then a summary line, and says whether all could be used.
// globalAction is the default action of the milters that set none.
func Milters(w io.Writer, milters []milter.Config, globalAction string) bool {
	failed := 0
	for i, c := range milters {
		if i > 0 {
			fmt.Fprintln(w)
		}
		failed += checkMilter(w, c, globalAction)
	}
	fmt.Fprintln(w)
	if failed > 0 {
		fmt.Fprintf(w, "FAIL: %d of %d milter endpoint(s) cannot be used\n", failed, countEndpoints(milters))
		return false
	}
	fmt.Fprintf(w, "OK: %d milter endpoint(s) negotiated\n", countEndpoints(milters))
	return true
}

func countEndpoints(ms []milter.Config) int {
	n := 0
	for _, m := range ms {
		n += len(m.Endpoints)
	}
	return n
}

// checkMilter checks each endpoint of one milter and returns how many
// failed.
func checkMilter(w io.Writer, c milter.Config, globalAction string) int {
	action := c.DefaultAction
	if action == "" {
		action = globalAction
	}
	kind := "milter"
	if len(c.Endpoints) > 1 {
		kind = fmt.Sprintf("milter pool of %d endpoints", len(c.Endpoints))
	}
	fmt.Fprintf(w, "%s %s\n", kind, c.Name)
	fmt.Fprintf(w, "  settings:       default action %s; timeouts connect %v, command %v, content %v, end of message %v\n",
		action, c.Options.ConnectTimeout, c.Options.CommandTimeout, c.Options.ContentTimeout, c.Options.EOMTimeout)
	fmt.Fprintf(w, "  end of message: at most %d modifications, %v bytes\n",
		c.Options.MaxModifications, config.ByteSize(c.Options.MaxModificationBytes))
	failed := 0
	for _, spec := range c.Endpoints {
		cl := milter.NewClient(spec.String(), spec, c.Options, nil)
		n, err := cl.Negotiate()
		if len(c.Endpoints) > 1 {
			fmt.Fprintf(w, "  endpoint %s\n", spec)
		}
		if err != nil {
			failed++
			fmt.Fprintf(w, "  FAILED:         %s: %s: %s\n", kindText[kindOf(err)], spec, err)
			fmt.Fprintf(w, "  hint:           %s\n", hint(err, spec, c.Options))
			continue
		}
		printNegotiation(w, n)
	}
	return failed
}

var kindText = map[string]string{
	milter.KindRefused:  "connection refused",
	milter.KindTimeout:  "timeout",
	milter.KindProtocol: "wrong protocol",
	milter.KindRejected: "negotiation rejected",
	milter.KindOther:    "error",
}

func kindOf(err error) string {
	if ne, ok := err.(*milter.NegotiationError); ok {
		return ne.Kind
	}
	return milter.ErrorKind(err)
}

func hint(err error, spec milter.Spec, o milter.Options) string {
	switch kindOf(err) {
	case milter.KindRefused:
		if spec.Network == "unix" {
			return "nothing listens on that socket: is the milter running, and is this its Socket setting?"
		}
		return "nothing listens there: is the milter running, and is this its Socket/port setting?"
	case milter.KindTimeout:
		return fmt.Sprintf("no answer within the connect timeout (%v): a firewall, an overloaded milter, or not a milter", o.ConnectTimeout)
	case milter.KindProtocol:
		return "whatever listens there does not speak the milter protocol: check the port"
	case milter.KindRejected:
		return "the milter and filter-milter cannot agree; the milter's own log says why"
	}
	if strings.Contains(err.Error(), "permission denied") {
		return "filter-milter runs as smtpd's user (opensmtpd or _smtpd): it must be able to write to the socket"
	}
	return "see the error"
}

func printNegotiation(w io.Writer, n *milter.Negotiation) {
	r, o := n.Reply, n.Offered
	fmt.Fprintf(w, "  ok:             %s negotiated in %s (connect %s)\n", n.Endpoint, ms(n.RoundTrip), ms(n.Dial))
	fmt.Fprintf(w, "  version:        v%d (offered v%d)\n", r.Version, o.Version)
	fmt.Fprintf(w, "  actions:        %s (0x%03x)\n", orNone(milter.ActionNames(r.Actions)), r.Actions)
	fmt.Fprintf(w, "  protocol flags: %s (0x%06x)\n", orNone(milter.ProtocolNames(r.Protocol)), r.Protocol)
	fmt.Fprintf(w, "  stages skipped: %s\n", orNone(n.SkippedStages()))
	fmt.Fprintf(w, "  no reply to:    %s\n", orNone(n.NoReplyStages()))
	if len(n.Requested) > 0 {
		fmt.Fprintf(w, "  macros:         its own lists where it asked (*), filter-milter's defaults elsewhere:\n")
	} else {
		fmt.Fprintf(w, "  macros:         none asked for; filter-milter sends its defaults:\n")
	}
	for _, sm := range n.Macros() {
		mark := " "
		if sm.Asked {
			mark = "*"
		}
		fmt.Fprintf(w, "   %s%-8s %s\n", mark, sm.Stage+":", orNone(sm.Macros))
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, " ")
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond))
}
