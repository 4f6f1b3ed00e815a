package agent

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tripswitch/tripswitch/internal/metrics"
)

// The agent's metrics, on its own metrics endpoint (one per node).
const (
	FlowsCutName       = "tripswitch_agent_flows_cut_total"
	CutLatencyName     = "tripswitch_agent_cut_latency_seconds"
	SweepDurationName  = "tripswitch_agent_sweep_duration_seconds"
	ChangesSkippedName = "tripswitch_agent_changes_skipped_total"
	ErrorsName         = "tripswitch_agent_errors_total"
	ResetGuardName     = "tripswitch_agent_reset_guard_active"
)

// Operations that fail, the errors metric's operation label.
const (
	OpConntrack = "conntrack"
	OpGuard     = "guard"
	OpKubeProxy = "kube_proxy"
)

// Metrics are the agent's Prometheus series.
type Metrics struct {
	flowsCut   *prometheus.CounterVec
	latency    prometheus.Histogram
	sweep      prometheus.Histogram
	skipped    *prometheus.CounterVec
	errors     *prometheus.CounterVec
	resetGuard prometheus.Gauge
}

// NewMetrics registers the agent's metrics with reg; registering twice with one registry
// reuses what is there, as tests start several agents in one process.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{}
	var errs []error
	var err error
	m.flowsCut, err = metrics.Reuse(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: FlowsCutName,
		Help: "Established TCP flows this node's agent cut, by breaker and reason (trip: the front opened; ejection: the endpoint was ejected)."},
		[]string{"namespace", "name", "reason"}))
	errs = append(errs, err)
	m.latency, err = metrics.Reuse(reg, prometheus.NewHistogram(prometheus.HistogramOpts{Name: CutLatencyName,
		Help:    "From the slice change the agent saw to the end of its first cut: kube-proxy's rule sync, which the agent waits for, and the conntrack sweep.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}))
	errs = append(errs, err)
	m.sweep, err = metrics.Reuse(reg, prometheus.NewHistogram(prometheus.HistogramOpts{Name: SweepDurationName,
		Help:    "How long one sweep of the conntrack table took: its dump, the deletions and arming the reset guard. It grows with the table.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}}))
	errs = append(errs, err)
	m.skipped, err = metrics.Reuse(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: ChangesSkippedName,
		Help: "Slice changes that withheld published endpoints but cut nothing, by reason (stale: the change was older than --max-change-age when it arrived; disabled: the breaker's cutConnections is false)."},
		[]string{"namespace", "name", "reason"}))
	errs = append(errs, err)
	m.errors, err = metrics.Reuse(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: ErrorsName,
		Help: "Failures of the agent's work, by operation (conntrack: listing or deleting flows; guard: arming the reset guard; kube_proxy: reading kube-proxy's sync time)."},
		[]string{"operation"}))
	errs = append(errs, err)
	m.resetGuard, err = metrics.Reuse(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: ResetGuardName,
		Help: "1 when the nftables reset guard is in place on this node, 0 when the kernel refused it and cut flows rely on nf_conntrack_tcp_loose."}))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, op := range []string{OpConntrack, OpGuard, OpKubeProxy} {
		m.errors.WithLabelValues(op)
	}
	return m, nil
}

func (m *Metrics) cut(namespace, name string, reason Reason, flows int) {
	m.flowsCut.WithLabelValues(namespace, name, string(reason)).Add(float64(flows))
}

func (m *Metrics) skip(s Skip) {
	m.skipped.WithLabelValues(s.Front.Namespace, s.Breaker, string(s.Why)).Inc()
}

func (m *Metrics) failed(op string) { m.errors.WithLabelValues(op).Inc() }

func (m *Metrics) observeLatency(d time.Duration) { m.latency.Observe(d.Seconds()) }

func (m *Metrics) observeSweep(d time.Duration) { m.sweep.Observe(d.Seconds()) }

func (m *Metrics) setResetGuard(active bool) {
	v := 0.0
	if active {
		v = 1
	}
	m.resetGuard.Set(v)
}

// forget deletes a breaker's series when its front is gone.
func (m *Metrics) forget(namespace, name string) {
	labels := map[string]string{"namespace": namespace, "name": name}
	m.flowsCut.DeletePartialMatch(labels)
	m.skipped.DeletePartialMatch(labels)
}
