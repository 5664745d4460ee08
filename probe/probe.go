// Package probe is the engine of `filter-milter check`: it connects to
// every endpoint of every configured milter, negotiates as a session
// would, and prints what each answered: protocol version, actions,
// protocol flags (the stages it skips and those it does not answer), the
// macros each stage will send it (its own lists or the configured ones,
// by where each value comes from, and apart those never sent) and the
// round-trip time, or why it could not be used and a hint.
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
	printMacros(w, n)
}

// printMacros prints, per stage, exactly the macros the milter will be
// sent (n.MacroPlan), by where their value comes from, and apart the
// ones of the list that are never sent because nothing gives them a
// value at that stage.
func printMacros(w io.Writer, n *milter.Negotiation) {
	fmt.Fprintf(w, "  macros:         sent at each stage (* the milter's own list, else the configured one; [X]: only in sessions with X):\n")
	for _, p := range n.MacroPlan() {
		mark := " "
		if p.Asked {
			mark = "*"
		}
		var bySource [milter.NeverSent + 1][]string
		for _, m := range p.Macros {
			bySource[m.Source] = append(bySource[m.Source], macroText(m))
		}
		var lines []string
		switch {
		case p.NoStage != "":
			lines = append(lines, "nothing: "+p.NoStage)
		case len(p.Macros) == 0:
			lines = append(lines, "nothing (an empty list)")
		default:
			for src, label := range sourceLabels {
				if len(bySource[src]) > 0 {
					lines = append(lines, label+strings.Join(bySource[src], " "))
				}
			}
		}
		for i, l := range lines {
			stage := ""
			if i == 0 {
				stage = mark + p.Stage
			}
			fmt.Fprintf(w, "   %-9s %s\n", stage, l)
		}
	}
	if unused := n.UnusedMacroDefaults(); len(unused) > 0 {
		fmt.Fprintf(w, "  macro_defaults: in no stage's list, never sent: %s\n", strings.Join(unused, " "))
	}
}

var sourceLabels = [...]string{
	milter.FromSMTPD:    "from smtpd: ",
	milter.FromMacroV:   "from macro_v: ",
	milter.FromDefaults: "from macro_defaults: ",
	milter.NeverSent:    "never sent (no value at this stage): ",
}

func macroText(m milter.PlannedMacro) string {
	switch {
	case m.Source == milter.FromSMTPD && m.When != "" && m.Value != "":
		return fmt.Sprintf("%s[%s, else %q]", m.Name, m.When, m.Value)
	case m.Source == milter.FromSMTPD && m.When != "":
		return fmt.Sprintf("%s[%s]", m.Name, m.When)
	case m.Source == milter.FromMacroV, m.Source == milter.FromDefaults:
		return fmt.Sprintf("%s=%q", m.Name, m.Value)
	}
	return m.Name
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
