package metrics

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/filter-milter/filter-milter/milter"
)

// roles are the milter roles /healthz and filter_milter_endpoint_up
// report on, one pool each.
type roles struct {
	mu    sync.Mutex
	pools []*milter.Pool
}

var endpointUpDesc = prometheus.NewDesc(namespace+"_endpoint_up",
	"1 while a milter endpoint is up, 0 once a connection to it or a session on it failed, until a connection succeeds again.",
	[]string{"milter", "endpoint"}, nil)

// Watch makes /healthz and the gauge filter_milter_endpoint_up{milter,
// endpoint} report on these milters (the gateway's pools, one per
// -milter). The state is the pools' own: an endpoint is down from a
// failed connection or session until a connection to it succeeds again,
// which takes a session after its backoff (see milter.Pool.Endpoints).
func (o *Observer) Watch(pools []*milter.Pool) {
	o.roles.mu.Lock()
	defer o.roles.mu.Unlock()
	o.roles.pools = append(o.roles.pools, pools...)
}

func (r *roles) watched() []*milter.Pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pools
}

// Describe implements prometheus.Collector.
func (r *roles) Describe(ch chan<- *prometheus.Desc) { ch <- endpointUpDesc }

// Collect implements prometheus.Collector: the gauge is read from the
// pools at each scrape.
func (r *roles) Collect(ch chan<- prometheus.Metric) {
	for _, p := range r.watched() {
		for _, ep := range p.Endpoints() {
			v := 0.0
			if ep.Up {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(endpointUpDesc, prometheus.GaugeValue, v, p.Name(), ep.Name)
		}
	}
}

// Down names the watched milters that have no endpoint up, in order.
func (o *Observer) Down() []string {
	var down []string
	for _, p := range o.roles.watched() {
		up := false
		for _, ep := range p.Endpoints() {
			up = up || ep.Up
		}
		if !up {
			down = append(down, p.Name())
		}
	}
	return down
}

// serveHealth answers 200 "ok" while every watched milter has an endpoint
// up, and 503 with one line per milter that has none otherwise: a load
// balancer or a monitor can tell a filter-milter whose milters are all
// gone from one that works.
func (o *Observer) serveHealth(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	down := o.Down()
	if len(down) == 0 {
		fmt.Fprintln(w, "ok")
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	for _, name := range down {
		fmt.Fprintf(w, "milter %s: no endpoint up\n", name)
	}
}
