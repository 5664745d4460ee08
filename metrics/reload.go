package metrics

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/filter-milter/filter-milter/milter"
)

// Reload results, the result label of config_reloads_total.
const (
	ReloadOK     = "ok"
	ReloadFailed = "failed"
)

// newReloads makes filter_milter_config_reloads_total{result}, with both
// results at 0 from the start, so that an alert on failed reloads has a
// series to watch before the first one.
func newReloads(reg *prometheus.Registry) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "config_reloads_total",
		Help: "Configuration reloads (SIGHUP), by result: ok (the new configuration is in force) or failed (the running one stays).",
	}, []string{"result"})
	c.WithLabelValues(ReloadOK)
	c.WithLabelValues(ReloadFailed)
	reg.MustRegister(c)
	return c
}

// ConfigReloaded counts a reload: ReloadOK or ReloadFailed.
func (o *Observer) ConfigReloaded(result string) {
	o.reloads.WithLabelValues(result).Inc()
}

// Rewatch replaces the milters /healthz and filter_milter_endpoint_up
// report on by pools, after a reload. The gauges of the endpoints of a
// milter no longer configured are dropped (the series ends); the
// counters labelled with its name keep their last value, as counters do.
func (o *Observer) Rewatch(pools []*milter.Pool) {
	o.roles.mu.Lock()
	defer o.roles.mu.Unlock()
	o.roles.pools = slices.Clone(pools)
}
