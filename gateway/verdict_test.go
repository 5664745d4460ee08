package gateway_test

import (
	"testing"

	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/metrics"
	"github.com/filter-milter/filter-milter/protocol"
)

// The message line names the answer to commit as the metrics count it.
func TestVerdictWordIsMetrics(t *testing.T) {
	for _, c := range []struct {
		d     protocol.Decision
		reply string
	}{
		{protocol.Proceed, ""},
		{protocol.Reject, "550 5.7.1 no"},
		{protocol.Reject, "451 4.7.1 later"},
		{protocol.Reject, "421 4.7.0 bye"},
		{protocol.Disconnect, "421 4.7.0 bye"},
		{protocol.Junk, ""},
	} {
		if got, want := gateway.VerdictWord(c.d, c.reply), metrics.Verdict(string(c.d), c.reply); got != want {
			t.Errorf("%s %q: the message line says %q, the metrics %q", c.d, c.reply, got, want)
		}
	}
}
