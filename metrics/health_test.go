package metrics

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
)

func health(t *testing.T, o *Observer) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	o.serveHealth(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

func pool(t *testing.T, spec string) *milter.Pool {
	t.Helper()
	c, err := milter.ParseConfig(spec, milter.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	return milter.NewPool(c, nil)
}

// open opens and closes a session on p, as the gateway does for each SMTP
// session; that is how the pool learns which endpoints are up.
func open(p *milter.Pool) {
	if s, err := p.Open(nil); err == nil {
		_ = s.Close()
	}
}

// TestHealthz: /healthz is 200 while every milter has an endpoint up and
// 503 naming those that have none; filter_milter_endpoint_up is 1 or 0
// per endpoint, as the pools last found them.
func TestHealthz(t *testing.T) {
	live := miltertest.Start(t, miltertest.Script{})
	dying := miltertest.Start(t, miltertest.Script{})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "inet:" + ln.Addr().String()
	ln.Close() // nothing listens there any more

	mixed := pool(t, live.Spec+","+closed)
	dead := pool(t, closed)
	solo := pool(t, dying.Spec)
	o := New()
	if code, body := health(t, o); code != http.StatusOK || body != "ok\n" {
		t.Errorf("no milter watched: %d %q, want 200 ok", code, body)
	}
	o.Watch([]*milter.Pool{mixed, dead, solo})

	// Before any session no endpoint has failed.
	if code, body := health(t, o); code != http.StatusOK || body != "ok\n" {
		t.Errorf("before any session: %d %q, want 200 ok", code, body)
	}

	open(mixed) // the live endpoint first: round robin from the first
	open(mixed) // the closed one, marked down, then the live one
	open(dead)
	open(solo)
	code, body := health(t, o)
	if want := "milter " + closed + ": no endpoint up\n"; code != http.StatusServiceUnavailable || body != want {
		t.Errorf("a milter whose only endpoint is a closed port: %d %q, want 503 %q", code, body, want)
	}
	srv := httptest.NewServer(o.Handler())
	defer srv.Close()
	wantLines(t, scrape(t, srv.URL),
		`filter_milter_endpoint_up{endpoint="`+live.Spec+`",milter="`+mixed.Name()+`"} 1`,
		`filter_milter_endpoint_up{endpoint="`+closed+`",milter="`+mixed.Name()+`"} 0`,
		`filter_milter_endpoint_up{endpoint="`+closed+`",milter="`+closed+`"} 0`,
		`filter_milter_endpoint_up{endpoint="`+dying.Spec+`",milter="`+dying.Spec+`"} 1`,
	)

	// The only endpoint of solo dies: the next session finds it down.
	dying.Stop()
	open(solo)
	code, body = health(t, o)
	if want := "milter " + closed + ": no endpoint up\nmilter " + dying.Spec + ": no endpoint up\n"; code != http.StatusServiceUnavailable || body != want {
		t.Errorf("after a milter died: %d %q, want 503 %q", code, body, want)
	}
	wantLines(t, scrape(t, srv.URL), `filter_milter_endpoint_up{endpoint="`+dying.Spec+`",milter="`+dying.Spec+`"} 0`)
	if got := o.Down(); len(got) != 2 || got[0] != closed || got[1] != dying.Spec {
		t.Errorf("Down() = %q", got)
	}
}
