// Package metrics records tripswitch's Prometheus metrics, as the design's table names them.
// Labels stay small: a breaker's namespace and name, plus a state, outcome or reason.
package metrics

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tripswitch/tripswitch/internal/probe"
)

// Metric names, exported for the dashboard test that checks every query against them.
const (
	StateName              = "tripswitch_breaker_state"
	TransitionsName        = "tripswitch_breaker_transitions_total"
	TripsName              = "tripswitch_breaker_trips_total"
	RecoveriesName         = "tripswitch_breaker_recoveries_total"
	ProbesName             = "tripswitch_probes_total"
	ProbeDurationName      = "tripswitch_probe_duration_seconds"
	ObserverGuardName      = "tripswitch_observer_guard_active"
	LocalErrorsName        = "tripswitch_probe_local_errors_total"
	StartLatenessName      = "tripswitch_probe_start_lateness_seconds"
	InfoName               = "tripswitch_breaker_info"
	EjectionsName          = "tripswitch_endpoint_ejections_total"
	EjectedName            = "tripswitch_endpoints_ejected"
	PanicName              = "tripswitch_ejection_panic"
	QueryErrorsName        = "tripswitch_query_errors_total"
	QueryValueName         = "tripswitch_query_value"
	ResolutionsName        = "tripswitch_external_resolutions_total"
	ExternalAddressesName  = "tripswitch_external_addresses"
	ObserverDegradedName   = "tripswitch_observer_degraded"
	stateClosed, stateOpen = "closed", "open"
	stateHalfOpen          = "half_open"
)

// States are the state label's values.
var States = []string{stateClosed, stateOpen, stateHalfOpen}

// Outcomes are the outcome label's values.
var Outcomes = []string{"success", "failure", "slow", "neutral"}

// Recorder holds the metrics. Build it with NewRecorder against the registry to serve them
// from, such as controller-runtime's metrics.Registry, or a fresh one in tests.
type Recorder struct {
	state         *prometheus.GaugeVec
	transitions   *prometheus.CounterVec
	trips         *prometheus.CounterVec
	recoveries    *prometheus.CounterVec
	probes        *prometheus.CounterVec
	probeDuration *prometheus.HistogramVec
	guard         prometheus.Gauge
	localErrors   *prometheus.CounterVec
	startLateness prometheus.Histogram
	info          *prometheus.GaugeVec
	ejections     *prometheus.CounterVec
	ejected       *prometheus.GaugeVec
	panic         *prometheus.GaugeVec
	queryErrors   *prometheus.CounterVec
	queryValue    *prometheus.GaugeVec
	resolutions   *prometheus.CounterVec
	addresses     *prometheus.GaugeVec
	degraded      *degradedCollector

	// infoMu guards infoOf: the target and front each breaker's info series carries now.
	infoMu sync.Mutex
	infoOf map[[2]string][2]string
	// queryRulesMu guards queryRules: the query rules each breaker has series for.
	queryRulesMu sync.Mutex
	queryRules   map[[2]string]map[string]bool
}

// NewRecorder registers the metrics with reg. Registering twice with one registry (a second
// manager in one process, as tests do) reuses the collectors already there.
func NewRecorder(reg prometheus.Registerer) (*Recorder, error) {
	r := &Recorder{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: StateName,
			Help: "1 for the breaker's current state (closed, open, half_open), 0 for the others."},
			[]string{"namespace", "name", "state"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: TransitionsName,
			Help: "Breaker state transitions, by from, to and reason."},
			[]string{"namespace", "name", "from", "to", "reason"}),
		trips: prometheus.NewCounterVec(prometheus.CounterOpts{Name: TripsName,
			Help: "Times the breaker opened."}, []string{"namespace", "name"}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: RecoveriesName,
			Help: "Times the breaker closed after a successful HalfOpen trial."}, []string{"namespace", "name"}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ProbesName,
			Help: "Probe results, by outcome (success, failure, slow, neutral)."}, []string{"namespace", "name", "outcome"}),
		probeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: ProbeDurationName,
			Help: "How long probes took, successful or not.",
			// 100µs to 10s: loopback and in-zone probes up to the longest timeout.
			Buckets: prometheus.ExponentialBucketsRange(0.0001, 10, 16)}, []string{"namespace", "name"}),
		startLateness: prometheus.NewHistogram(prometheus.HistogramOpts{Name: StartLatenessName,
			Help: "How late probes started against their turn, across all breakers: waiting for a free place under " +
				"--max-concurrent-probes. Probes that would start after their own deadline are not sent and not observed.",
			// 100µs to 10s: from a manager at ease to one whose probes wait out whole timeouts.
			Buckets: prometheus.ExponentialBucketsRange(0.0001, 10, 16)}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: InfoName,
			Help: "Always 1: the breaker's target and front Service, to join onto its other series in alerts and dashboards."},
			[]string{"namespace", "name", "target", "front"}),
		guard: prometheus.NewGauge(prometheus.GaugeOpts{Name: ObserverGuardName,
			Help: "1 while the observer guard holds trips back because too many breakers would trip at once."}),
		localErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: LocalErrorsName,
			Help: "Probes that failed for a reason of the manager's own (file descriptors, buffers, ephemeral ports, " +
				"a start past the probe's deadline); they count as Neutral, never against a target."},
			[]string{"reason"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: EjectionsName,
			Help: "Endpoints ejected (spec.ejection), by reason: ConsecutiveFailures, FailureRate, or TrialFailed " +
				"when the trial at the end of an ejection failed."}, []string{"namespace", "name", "reason"}),
		ejected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: EjectedName,
			Help: "Endpoints ejected now, including those waiting for their trial probe. In panic they are published anyway."},
			[]string{"namespace", "name"}),
		panic: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: PanicName,
			Help: "1 while fewer of the breaker's endpoints are healthy than spec.ejection.panicThresholdPercent, so " +
				"ejections are ignored and every endpoint is published."}, []string{"namespace", "name"}),
		queryErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: QueryErrorsName,
			Help: "Evaluations of a query rule (spec.trip.queries) that failed: no --prometheus-url, an unreachable " +
				"server, a timeout, or a result that is not one number. A failed evaluation never trips."},
			[]string{"namespace", "name", "rule"}),
		queryValue: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: QueryValueName,
			Help: "The newest value of a query rule; absent while it returns no data or fails."},
			[]string{"namespace", "name", "rule"}),
		resolutions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ResolutionsName,
			Help: "Resolutions of an external target's host, by result: success; failure (timeout, SERVFAIL, NXDOMAIN, " +
				"no addresses), which keeps the last good addresses; refused, an answer whose every address is never published."},
			[]string{"namespace", "name", "result"}),
		addresses: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: ExternalAddressesName,
			Help: "The addresses of an external target's host that are probed and published."},
			[]string{"namespace", "name"}),
	}
	r.state = register(reg, r.state)
	r.transitions = register(reg, r.transitions)
	r.trips = register(reg, r.trips)
	r.recoveries = register(reg, r.recoveries)
	r.probes = register(reg, r.probes)
	r.probeDuration = register(reg, r.probeDuration)
	r.guard = register(reg, r.guard)
	r.localErrors = register(reg, r.localErrors)
	r.startLateness = register(reg, r.startLateness)
	for _, reason := range probe.LocalReasons {
		r.localErrors.WithLabelValues(reason) // every reason shows as 0 before its first error
	}
	r.info = register(reg, r.info)
	r.ejections = register(reg, r.ejections)
	r.ejected = register(reg, r.ejected)
	r.panic = register(reg, r.panic)
	r.queryErrors = register(reg, r.queryErrors)
	r.queryValue = register(reg, r.queryValue)
	r.resolutions = register(reg, r.resolutions)
	r.addresses = register(reg, r.addresses)
	r.degraded = register(reg, &degradedCollector{desc: prometheus.NewDesc(ObserverDegradedName,
		"1 for each observer (a node) that the second opinion finds degraded: it alone saw several unrelated targets "+
			"fail while its peers reached them, so its votes weigh half. Absent for sound observers.",
		[]string{"observer"}, nil)})
	return r, nil
}

// degradedCollector reports the degraded observers at scrape time: degradation ends by
// itself as its evidence ages, with no event to clear a gauge on.
type degradedCollector struct {
	desc   *prometheus.Desc
	source atomic.Pointer[func() map[string][]string]
}

func (c *degradedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *degradedCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.source.Load()
	if f == nil {
		return
	}
	for observer := range (*f)() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1, observer)
	}
}

// SetDegradedObservers installs what says which observers are degraded now (by name, with the
// targets that made each so); nil reports none.
func (r *Recorder) SetDegradedObservers(f func() map[string][]string) {
	if f == nil {
		r.degraded.source.Store(nil)
		return
	}
	r.degraded.source.Store(&f)
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	c, err := Reuse(reg, c)
	if err != nil {
		panic(err) // a programming error: two different metrics with one name
	}
	return c
}

// Reuse registers c with reg, or returns the collector of the same kind that is registered
// under its name already, as when a process (a test) sets up a component twice. Any other
// registration error is returned.
func Reuse[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			if existing, ok := already.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

// SetState sets the state gauge: 1 for state ("Closed", "Open" or "HalfOpen"), 0 for the others.
func (r *Recorder) SetState(namespace, name, state string) {
	current := labelOf(state)
	for _, s := range States {
		v := 0.0
		if s == current {
			v = 1
		}
		r.state.WithLabelValues(namespace, name, s).Set(v)
	}
}

// SetInfo records the breaker's target and front Service, replacing what it recorded before.
// The controller calls it on every reconcile, so it touches the series only when they change.
func (r *Recorder) SetInfo(namespace, name, target, front string) {
	key, want := [2]string{namespace, name}, [2]string{target, front}
	r.infoMu.Lock()
	defer r.infoMu.Unlock()
	have, ok := r.infoOf[key]
	if ok && have == want {
		return
	}
	if ok {
		r.info.DeleteLabelValues(namespace, name, have[0], have[1])
	}
	if r.infoOf == nil {
		r.infoOf = map[[2]string][2]string{}
	}
	r.infoOf[key] = want
	r.info.WithLabelValues(namespace, name, target, front).Set(1)
}

// Transition counts one transition; into Open it is a trip, from HalfOpen to Closed a recovery.
func (r *Recorder) Transition(namespace, name, from, to, reason string) {
	r.transitions.WithLabelValues(namespace, name, labelOf(from), labelOf(to), reason).Inc()
	switch {
	case to == "Open" && from != "Open":
		r.trips.WithLabelValues(namespace, name).Inc()
	case from == "HalfOpen" && to == "Closed":
		r.recoveries.WithLabelValues(namespace, name).Inc()
	}
}

// SetObserverGuard reports whether the observer guard is holding transitions.
func (r *Recorder) SetObserverGuard(active bool) {
	if active {
		r.guard.Set(1)
	} else {
		r.guard.Set(0)
	}
}

// LocalError counts one probe that failed for a reason of the manager's own.
func (r *Recorder) LocalError(reason string) {
	r.localErrors.WithLabelValues(reason).Inc()
}

// Ejected counts one ejection of one of the breaker's endpoints.
func (r *Recorder) Ejected(namespace, name, reason string) {
	r.ejections.WithLabelValues(namespace, name, reason).Inc()
}

// SetEjection sets the ejected and panic gauges of a breaker with an endpoint level, and
// removes them (on ok false) from one without, so that they exist only where they mean
// something.
func (r *Recorder) SetEjection(namespace, name string, ejected int, panicking, ok bool) {
	if !ok {
		labels := prometheus.Labels{"namespace": namespace, "name": name}
		r.ejected.DeletePartialMatch(labels)
		r.panic.DeletePartialMatch(labels)
		return
	}
	r.ejected.WithLabelValues(namespace, name).Set(float64(ejected))
	v := 0.0
	if panicking {
		v = 1
	}
	r.panic.WithLabelValues(namespace, name).Set(v)
}

// QueryEvaluated records one evaluation of a breaker's query rule: a failure counts, a number
// is the value, and no data or a failure removes the value.
func (r *Recorder) QueryEvaluated(namespace, name, rule string, value float64, noData bool, err error) {
	// Known from its first evaluation, so that KeepQueryRules finds it even when an
	// evaluation of a rule just taken out ends after the breaker's rules changed.
	r.queryRulesMu.Lock()
	if r.queryRules == nil {
		r.queryRules = map[[2]string]map[string]bool{}
	}
	key := [2]string{namespace, name}
	if r.queryRules[key] == nil {
		r.queryRules[key] = map[string]bool{}
	}
	r.queryRules[key][rule] = true
	r.queryRulesMu.Unlock()
	failed := r.queryErrors.WithLabelValues(namespace, name, rule) // exists from the first evaluation
	switch {
	case err != nil:
		failed.Inc()
		r.queryValue.DeleteLabelValues(namespace, name, rule)
	case noData:
		r.queryValue.DeleteLabelValues(namespace, name, rule)
	default:
		r.queryValue.WithLabelValues(namespace, name, rule).Set(value)
	}
}

// KeepQueryRules drops the query series of a breaker's rules that are not in rules, such as
// a rule taken out of the spec or renamed, so that no series shows a value nobody computes.
func (r *Recorder) KeepQueryRules(namespace, name string, rules []string) {
	keep := map[string]bool{}
	for _, rule := range rules {
		keep[rule] = true
	}
	r.queryRulesMu.Lock()
	defer r.queryRulesMu.Unlock()
	key := [2]string{namespace, name}
	for rule := range r.queryRules[key] {
		if !keep[rule] {
			r.queryErrors.DeleteLabelValues(namespace, name, rule)
			r.queryValue.DeleteLabelValues(namespace, name, rule)
		}
	}
	if len(keep) == 0 {
		delete(r.queryRules, key)
		return
	}
	if r.queryRules == nil {
		r.queryRules = map[[2]string]map[string]bool{}
	}
	r.queryRules[key] = keep
}

// Delete removes every series of a breaker, when the breaker is deleted.
func (r *Recorder) Delete(namespace, name string) {
	labels := prometheus.Labels{"namespace": namespace, "name": name}
	r.state.DeletePartialMatch(labels)
	r.transitions.DeletePartialMatch(labels)
	r.trips.DeletePartialMatch(labels)
	r.recoveries.DeletePartialMatch(labels)
	r.probes.DeletePartialMatch(labels)
	r.probeDuration.DeletePartialMatch(labels)
	r.info.DeletePartialMatch(labels)
	r.ejections.DeletePartialMatch(labels)
	r.ejected.DeletePartialMatch(labels)
	r.panic.DeletePartialMatch(labels)
	r.queryErrors.DeletePartialMatch(labels)
	r.queryValue.DeletePartialMatch(labels)
	r.resolutions.DeletePartialMatch(labels)
	r.addresses.DeletePartialMatch(labels)
	r.infoMu.Lock()
	delete(r.infoOf, [2]string{namespace, name})
	r.infoMu.Unlock()
	r.queryRulesMu.Lock()
	delete(r.queryRules, [2]string{namespace, name})
	r.queryRulesMu.Unlock()
}

// Breaker returns the probe metrics of one breaker with their labels resolved, so that
// recording a probe costs no label lookup.
func (r *Recorder) Breaker(namespace, name string) *BreakerMetrics {
	m := &BreakerMetrics{duration: r.probeDuration.WithLabelValues(namespace, name), startLateness: r.startLateness}
	for i, o := range Outcomes {
		m.outcomes[i] = r.probes.WithLabelValues(namespace, name, o)
	}
	// Initialize the counters of both trip kinds, so that increase() sees the first trip.
	r.trips.WithLabelValues(namespace, name)
	r.recoveries.WithLabelValues(namespace, name)
	return m
}

// BreakerMetrics are one breaker's probe metrics.
type BreakerMetrics struct {
	outcomes [4]prometheus.Counter // indexed like Outcomes and breaker.Outcome
	duration prometheus.Observer
	// startLateness is the manager-wide histogram: it sizes the manager, not the breaker, so
	// it has no breaker labels.
	startLateness prometheus.Observer
}

// ObserveStart records how late one of the breaker's probes started against its turn.
func (m *BreakerMetrics) ObserveStart(lateness time.Duration) {
	m.startLateness.Observe(lateness.Seconds())
}

// ObserveProbe counts one probe; outcome indexes Outcomes.
func (m *BreakerMetrics) ObserveProbe(outcome int, latency time.Duration) {
	if outcome >= 0 && outcome < len(m.outcomes) {
		m.outcomes[outcome].Inc()
	}
	m.duration.Observe(latency.Seconds())
}

func labelOf(state string) string {
	switch state {
	case "Open":
		return stateOpen
	case "HalfOpen":
		return stateHalfOpen
	}
	return stateClosed
}

// Resolution results, the result label's values.
const (
	ResolutionSuccess = "success"
	ResolutionFailure = "failure"
	ResolutionRefused = "refused"
)

// Resolved counts one resolution of an external target's host.
func (r *Recorder) Resolved(namespace, name, result string) {
	r.resolutions.WithLabelValues(namespace, name, result).Inc()
}

// SetExternalAddresses records how many addresses an external target publishes.
func (r *Recorder) SetExternalAddresses(namespace, name string, n int) {
	r.addresses.WithLabelValues(namespace, name).Set(float64(n))
}
