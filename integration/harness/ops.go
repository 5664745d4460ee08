package harness

import (
	"fmt"
	"io"
	"net/http"
	"time"
)

// RestartPyMilter runs m's script again on m's socket, once m.Proc has
// been stopped: a milter that died and is brought back by its
// supervisor. The new process replaces m.Proc; its log goes to
// <name>.log.
func RestartPyMilter(tb TB, e *Env, m *PyMilter, name, script string, extra ...string) {
	tb.Helper()
	if exited, _ := m.Proc.Exited(); !exited {
		tb.Fatalf("harness: RestartPyMilter %s: the milter still runs", name)
	}
	if m.Port == 0 {
		tb.Fatalf("harness: RestartPyMilter %s: TCP milters only", name)
	}
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", "PYTHONUNBUFFERED=1"}
	m.Proc = e.Start(name, env, append([]string{"/usr/bin/python3", script, m.Spec}, extra...)...)
	m.Proc.StopGrace = 300 * time.Millisecond
	WaitTCP(tb, m.Proc, m.Port, 10*time.Second)
}

// Healthz GETs url (filter-milter's /healthz) and returns the status code
// and the body; unlike ScrapeMetrics it does not fail on a 503, which is
// an answer the tests expect.
func Healthz(tb TB, url string) (int, string) {
	tb.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		tb.Fatalf("harness: GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("harness: GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// EndpointUp is filter_milter_endpoint_up for one milter endpoint, as
// scraped from url (filter-milter's /metrics); it fails the test when the
// gauge is missing.
func EndpointUp(tb TB, url, milter, endpoint string) float64 {
	tb.Helper()
	v, ok := Metric(ParseMetrics(ScrapeMetrics(tb, url)), "filter_milter_endpoint_up",
		map[string]string{"milter": milter, "endpoint": endpoint})
	if !ok {
		tb.Fatalf("harness: %s has no filter_milter_endpoint_up{milter=%q,endpoint=%q}", url, milter, endpoint)
	}
	return v
}

// Until calls try until it reports true or timeout passes, and fails the
// test then, with what the last try said. try does something that makes
// the state change happen (a session, for a pool) and looks at the state
// (an HTTP endpoint): polling an answer, not sleeping for an event.
func Until(tb TB, timeout time.Duration, what string, try func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := try()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("harness: %s: not within %v; last: %s", what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// OnPort is "inet:127.0.0.1:PORT", the endpoint name filter-milter gives
// a TCP milter in its logs and metrics.
func OnPort(port int) string { return fmt.Sprintf("inet:127.0.0.1:%d", port) }
