//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// interopMessage builds a well-formed message from alice@test.example
// (current Date, a Message-ID) with extra header lines and a body.
func interopMessage(name, from string, extra []string, body string) harness.Message {
	var b strings.Builder
	fmt.Fprintf(&b, "From: %s\n", from)
	fmt.Fprintf(&b, "To: Bob <bob@test.example>\n")
	fmt.Fprintf(&b, "Subject: interop %s\n", name)
	fmt.Fprintf(&b, "Date: %s\n", time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <%s.%d@test.example>\n", name, time.Now().UnixNano())
	fmt.Fprintf(&b, "MIME-Version: 1.0\n")
	for _, l := range extra {
		fmt.Fprintf(&b, "%s\n", l)
	}
	if !strings.Contains(strings.Join(extra, "\n"), "Content-Type:") {
		fmt.Fprintf(&b, "Content-Type: text/plain; charset=us-ascii\n")
	}
	fmt.Fprintf(&b, "\n%s", body)
	return harness.Message{Name: name, Data: []byte(b.String())}
}

// sendOne sends m from `from` to bob+<name>@test.example.
func sendOne(t *testing.T, s *harness.SMTPD, listener, from string, m harness.Message) harness.SwaksResult {
	t.Helper()
	m.From = from
	m.To = []string{"bob+" + m.Name + "@test.example"}
	r := s.Send(t, listener, m)
	t.Logf("%s via %s: %s", m.Name, listener, r.Summary())
	return r
}

// splitAdded returns the delivered message (mda headers and smtpd's
// Received removed) without the fields whose names match keep, and those
// fields.
func splitAdded(delivered []byte, match func(name string) bool) (rest []byte, added []harness.Field) {
	fields, body := harness.SplitMessage(harness.StripDelivered(delivered))
	var other []harness.Field
	for _, f := range fields {
		if match(f.Name) {
			added = append(added, f)
		} else {
			other = append(other, f)
		}
	}
	return harness.JoinMessage(other, body), added
}

func fieldValue(fs []harness.Field, name string) (string, int) {
	var v string
	n := 0
	for _, f := range fs {
		if strings.EqualFold(f.Name, name) {
			n++
			v = strings.Join(strings.Fields(f.Value()), " ")
		}
	}
	return v, n
}

// expectEndOfData fails unless the end-of-DATA reply starts with want.
func expectEndOfData(t *testing.T, r harness.SwaksResult, want string) {
	t.Helper()
	if got := r.EndOfDataReply(); !strings.HasPrefix(got, want) {
		t.Errorf("end of DATA: got %q, want %q; swaks:\n%s", got, want, r.Output)
	}
}
