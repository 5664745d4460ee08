// Package metrics exports what filter-milter does as Prometheus metrics.
// An *Observer is the gateway's Observer: the gateway calls it for each
// session, milter answer, milter error and message, and a scrape reads the
// counters it keeps.
//
// Metrics (all prefixed filter_milter_):
//
//	sessions_open                       gauge    SMTP sessions in progress
//	sessions_total                      counter  SMTP sessions seen
//	messages_total{verdict}             counter  messages answered at commit: accept, reject, tempfail, disconnect
//	message_bytes_total                 counter  bytes of the messages seen (data lines with CRLF)
//	milter_replies_total{milter,stage,verdict}   counter  each milter answer: continue, accept, reject, tempfail, discard
//	milter_reply_seconds{milter,stage}  histogram how long each milter answer took
//	milter_errors_total{milter,kind}    counter  milters that failed: timeout, refused, protocol, other
//	milter_modifications_total{milter,kind}      counter  changes the milters asked for at end of message
//	endpoint_up{milter,endpoint}        gauge    1 while a milter endpoint is up, 0 once it failed (see Watch)
//	config_reloads_total{result}        counter  reloads on SIGHUP: ok, failed (see ConfigReloaded)
//	evaluation_verdicts_total{milter,verdict}    counter  what an evaluating milter (evaluation = true) would have done, once per message: accept, reject, tempfail, discard, quarantine, error
//
// An evaluating milter's answers and changes are counted in
// milter_replies_total and milter_modifications_total as any milter's
// (what it said); none of them was enforced, and messages_total counts
// what was.
//
// Stages are the gateway's: connect, helo or ehlo, mail, rcpt, data,
// header, eoh, body, eom. header counts the header stage once per message,
// all fields together: its verdict is continue or the final answer given
// to one field, its seconds those of the whole stage. The milter label is the milter as configured
// (its socket, or its name in the configuration file).
package metrics

import (
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/milter"
)

const namespace = "filter_milter"

// LatencyBuckets are the milter_reply_seconds buckets: a local milter
// answers a command in well under a millisecond, a content scanner takes
// seconds at end of message, and the content timeout is minutes.
var LatencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

// Observer counts what the gateway does. It is safe for concurrent use.
type Observer struct {
	reg *prometheus.Registry

	sessionsOpen  prometheus.Gauge
	sessionsTotal prometheus.Counter
	messages      *prometheus.CounterVec
	messageBytes  prometheus.Counter
	replies       *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	errors        *prometheus.CounterVec
	modifications *prometheus.CounterVec
	buffered      prometheus.Counter
	spilled       prometheus.Counter
	spilledMsgs   prometheus.Counter
	evaluations   *prometheus.CounterVec

	roles roles // the milters /healthz reports on (Watch)

	reloads *prometheus.CounterVec // config_reloads_total{result} (reload.go)
}

var _ gateway.Observer = (*Observer)(nil)

// New makes an Observer with its own registry, which also carries the Go
// runtime's and the process's standard metrics.
func New() *Observer {
	o := &Observer{
		reg: prometheus.NewRegistry(),
		sessionsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sessions_open", Help: "SMTP sessions in progress.",
		}),
		sessionsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sessions_total", Help: "SMTP sessions seen.",
		}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "messages_total", Help: "Messages answered at commit, by verdict (accept, reject, tempfail, disconnect).",
		}, []string{"verdict"}),
		messageBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "message_bytes_total", Help: "Bytes of the messages seen, as smtpd queues them (lines with CRLF).",
		}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "milter_replies_total", Help: "Milter answers, by milter, stage and verdict.",
		}, []string{"milter", "stage", "verdict"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "milter_reply_seconds", Help: "How long a milter took to answer, by milter and stage.",
			Buckets: LatencyBuckets,
		}, []string{"milter", "stage"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "milter_errors_total", Help: "Milters that failed, by milter and kind (timeout, refused, protocol, other).",
		}, []string{"milter", "kind"}),
		modifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "milter_modifications_total", Help: "Changes milters asked for at end of message, by milter and kind.",
		}, []string{"milter", "kind"}),
	}
	o.buffered = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "buffered_bytes_total", Help: "Bytes of messages held for the milters (in memory or on disk).",
	})
	o.spilled = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "spilled_bytes_total", Help: "Bytes of the messages that went past the memory limits to a temporary file (whole messages counted).",
	})
	o.spilledMsgs = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "messages_spilled_total", Help: "Messages that went past the memory limits to a temporary file.",
	})
	o.reloads = newReloads(o.reg)
	o.evaluations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "evaluation_verdicts_total",
		Help: "What evaluating milters would have done, once per message, by milter and verdict (accept, reject, tempfail, discard, quarantine, error); not enforced.",
	}, []string{"milter", "verdict"})
	o.reg.MustRegister(o.buffered, o.spilled, o.spilledMsgs, o.evaluations, &o.roles)
	o.reg.MustRegister(o.sessionsOpen, o.sessionsTotal, o.messages, o.messageBytes, o.replies, o.latency, o.errors, o.modifications,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return o
}

// Registry is where the metrics are registered, for tests and for adding
// more.
func (o *Observer) Registry() *prometheus.Registry { return o.reg }

// Handler serves the metrics in Prometheus' text format.
func (o *Observer) Handler() http.Handler {
	return promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{})
}

// SessionOpened implements gateway.Observer.
func (o *Observer) SessionOpened(string) {
	o.sessionsOpen.Inc()
	o.sessionsTotal.Inc()
}

// SessionClosed implements gateway.Observer.
func (o *Observer) SessionClosed(string) { o.sessionsOpen.Dec() }

// MilterReply implements gateway.Observer.
func (o *Observer) MilterReply(_, name string, stage milter.Stage, v milter.Verdict, took time.Duration) {
	o.replies.WithLabelValues(name, string(stage), v.Kind.String()).Inc()
	o.latency.WithLabelValues(name, string(stage)).Observe(took.Seconds())
}

// MilterError implements gateway.Observer.
func (o *Observer) MilterError(_, name string, _ milter.Stage, err error) {
	o.errors.WithLabelValues(name, milter.ErrorKind(err)).Inc()
}

// Modifications implements gateway.Observer.
func (o *Observer) Modifications(_, name string, mods []milter.Modification) {
	for _, m := range mods {
		o.modifications.WithLabelValues(name, m.Kind.String()).Inc()
	}
}

// MessageDone implements gateway.Observer.
func (o *Observer) MessageDone(_, _, decision, reply string, size int) {
	o.messages.WithLabelValues(Verdict(decision, reply)).Inc()
	if size > 0 {
		o.messageBytes.Add(float64(size))
	}
}

// MessageBuffered implements gateway.Observer.
func (o *Observer) MessageBuffered(_ string, bytes int64, spilled bool) {
	o.buffered.Add(float64(bytes))
	if spilled {
		o.spilled.Add(float64(bytes))
		o.spilledMsgs.Inc()
	}
}

// Evaluated implements gateway.Observer.
func (o *Observer) Evaluated(_, name, verdict string) {
	o.evaluations.WithLabelValues(name, verdict).Inc()
}

// Verdict names the answer to commit: accept for proceed, tempfail for a
// 4xx reject, reject for a 5xx one, disconnect.
func Verdict(decision, reply string) string {
	switch decision {
	case "proceed":
		return "accept"
	case "reject":
		if strings.HasPrefix(reply, "4") {
			return "tempfail"
		}
		return "reject"
	}
	return decision
}
