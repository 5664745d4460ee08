package dryrun

import (
	"fmt"
	"io"
	"strings"
)

// Print writes the result for a person to read.
func (r *Result) Print(w io.Writer) {
	e := r.Envelope
	fmt.Fprintf(w, "message %s: %d lines\n", r.Message, len(r.before))
	for _, n := range r.notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	client := e.ClientIP
	if e.ClientName != "" {
		client = e.ClientName + " [" + e.ClientIP + "]"
	}
	fmt.Fprintf(w, "session: client %s, EHLO %s", client, e.Helo)
	if e.Auth != "" {
		fmt.Fprintf(w, ", authenticated as %s", e.Auth)
	}
	fmt.Fprintf(w, ", MAIL FROM:<%s>, RCPT TO:<%s>\n", e.From, strings.Join(e.Rcpts, ">, <"))

	fmt.Fprintf(w, "\nsmtpd's requests and filter-milter's answers:\n")
	for _, c := range r.Commands {
		fmt.Fprintf(w, "  %-40s %s", c.Command, c.Decision)
		if c.Reply != "" {
			fmt.Fprintf(w, " %q", c.Reply)
		}
		fmt.Fprintln(w)
	}

	for _, m := range r.Milters {
		fmt.Fprintf(w, "\nmilter %s:\n", m.Name)
		if len(m.Replies) == 0 && len(m.Errors) == 0 {
			fmt.Fprintf(w, "  no answer recorded: not reached, or it could not be opened (see the gateway's log below)\n")
		}
		for _, st := range m.Replies {
			label := st.Stage
			if st.Count > 1 {
				label = fmt.Sprintf("%s ×%d", st.Stage, st.Count)
			}
			fmt.Fprintf(w, "  %-12s %-9s %9.3fms", label, st.Verdict, st.TookMS)
			if st.Reply != "" {
				fmt.Fprintf(w, "  %q", st.Reply)
			}
			fmt.Fprintln(w)
		}
		for _, e := range m.Errors {
			fmt.Fprintf(w, "  %-12s ERROR (%s): %s\n", e.Stage, e.Kind, e.Error)
		}
		if len(m.Modifications) > 0 {
			fmt.Fprintf(w, "  modifications:\n")
			for _, mod := range m.Modifications {
				fmt.Fprintf(w, "    %s\n", mod.describe())
			}
		}
	}

	if len(r.Log) > 0 {
		fmt.Fprintf(w, "\ngateway log:\n")
		for _, l := range r.Log {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}

	fmt.Fprintf(w, "\nverdict: %s", strings.ToUpper(r.Verdict.Decision))
	if r.Verdict.Reply != "" {
		fmt.Fprintf(w, " %s", r.Verdict.Reply)
	}
	if r.Verdict.Stage != "" {
		fmt.Fprintf(w, " (at %s)", r.Verdict.Stage)
	}
	fmt.Fprintln(w)
	switch {
	case !r.delivered:
		fmt.Fprintf(w, "the message would not be queued; nothing to compare\n")
	case !r.Changed:
		fmt.Fprintf(w, "the message is unchanged\n")
	default:
		fmt.Fprintf(w, "\n%s", r.Diff)
	}
}

func (m ModLog) describe() string {
	hv := func() string { return strings.ReplaceAll(m.Value, "\n", "\n        ") }
	switch m.Kind {
	case "addheader":
		return fmt.Sprintf("add header      %s:%s", m.Name, hv())
	case "insheader":
		return fmt.Sprintf("insert header   at %d: %s:%s", m.Index, m.Name, hv())
	case "chgheader":
		if m.Value == "" {
			return fmt.Sprintf("delete header   %s #%d", m.Name, m.Index)
		}
		return fmt.Sprintf("change header   %s #%d to:%s", m.Name, m.Index, hv())
	case "replbody":
		return fmt.Sprintf("replace body    (%d bytes)", m.Bytes)
	case "addrcpt":
		return strings.TrimSpace(fmt.Sprintf("add recipient   %s %s", m.Addr, m.Args))
	case "delrcpt":
		return fmt.Sprintf("remove recipient %s", m.Addr)
	case "chgfrom":
		return strings.TrimSpace(fmt.Sprintf("change sender   %s %s", m.Addr, m.Args))
	case "quarantine":
		return fmt.Sprintf("quarantine      %q", m.Reason)
	}
	return m.Kind
}
