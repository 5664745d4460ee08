package metrics

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/milter"
)

// TestReloadMetrics: config_reloads_total counts each result from 0; after
// Rewatch, /healthz and endpoint_up report on the new milters only, and
// the counters of a milter no longer configured keep their value.
func TestReloadMetrics(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "inet:" + ln.Addr().String()
	ln.Close()
	gone, kept := pool(t, closed), pool(t, closed+"{default_action=accept}")
	gone.Config.Name, kept.Config.Name = "gone", "kept"
	open(gone)
	o := New()
	o.Watch([]*milter.Pool{gone})
	o.MilterError("s", "gone", "connect", &net.OpError{Op: "dial", Err: &net.AddrError{}})
	srv := httptest.NewServer(o.Handler())
	defer srv.Close()

	wantLines(t, scrape(t, srv.URL), `filter_milter_config_reloads_total{result="failed"} 0`, `filter_milter_config_reloads_total{result="ok"} 0`,
		`filter_milter_endpoint_up{endpoint="`+closed+`",milter="gone"} 0`)
	if code, body := health(t, o); code != http.StatusServiceUnavailable || !strings.Contains(body, "gone") {
		t.Errorf("before the reload: %d %q", code, body)
	}

	o.ConfigReloaded(ReloadFailed)
	o.ConfigReloaded(ReloadOK)
	o.ConfigReloaded(ReloadOK)
	o.Rewatch([]*milter.Pool{kept})
	text := scrape(t, srv.URL)
	wantLines(t, text, `filter_milter_config_reloads_total{result="failed"} 1`, `filter_milter_config_reloads_total{result="ok"} 2`,
		`filter_milter_endpoint_up{endpoint="`+closed+`",milter="kept"} 1`, `filter_milter_milter_errors_total{kind="other",milter="gone"} 1`)
	if strings.Contains(text, `endpoint_up{endpoint="`+closed+`",milter="gone"}`) {
		t.Errorf("the removed milter's endpoint_up is still reported:\n%s", text)
	}
	if code, body := health(t, o); code != http.StatusOK {
		t.Errorf("after the reload, the removed milter is still reported on: %d %q, want 200", code, body)
	}
}
