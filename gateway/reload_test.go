package gateway

import (
	"testing"

	djmilter "github.com/d--j/go-milter"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
	"github.com/filter-milter/filter-milter/smtpdplay"
)

// After Reload, new sessions use the new milters; a session that started
// before finishes on the milters it started with.
func TestReloadAppliesToNewSessions(t *testing.T) {
	old := miltertest.Start(t, miltertest.Script{
		Mail: func(string) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(550, "5.7.1 old configuration")
		},
	})
	cur := miltertest.Start(t, miltertest.Script{
		Mail: func(string) (*djmilter.Response, error) {
			return djmilter.RejectWithCodeAndReason(550, "5.7.1 new configuration")
		},
	})
	p := startGateway(t, Tempfail, old.Spec)
	p.handshake()
	before := p.play.NewSession()
	greet(p, before)

	c2, err := milter.ParseConfig(cur.Spec, milter.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	next := *p.g.cfg.Load()
	next.Milters = []*milter.Pool{milter.NewPool(c2, nil)}
	p.g.Reload(next)

	after := p.play.NewSession()
	greet(p, after)
	m := p.request(after, "mail-from", "a@test.example")
	p.expectOn(after, after.WantResult(m, "reject|550 5.7.1 new configuration"))
	m = p.request(before, "mail-from", "a@test.example")
	p.expectOn(before, before.WantResult(m, "reject|550 5.7.1 old configuration"))
}

// The memory budget is the process's: Reload changes it at once.
func TestReloadChangesTheMemoryBudget(t *testing.T) {
	g := New(Config{MemoryBudget: 1 << 20})
	cfg := *g.cfg.Load()
	cfg.MemoryBudget = 5 << 20
	g.Reload(cfg)
	if got := g.budget.max.Load(); got != 5<<20 {
		t.Errorf("budget after Reload = %d, want %d", got, 5<<20)
	}
}

// greet plays connect and HELO for s.
func greet(p *pipe, s *smtpdplay.Session) {
	p.t.Helper()
	c := p.request(s, "connect", "localhost|127.0.0.1")
	p.expectOn(s, s.WantResult(c, "proceed"))
	h := p.request(s, "helo", "client.example")
	p.expectOn(s, s.WantResult(h, "proceed"))
}
