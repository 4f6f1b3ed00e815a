package metrics

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRecorder(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewRecorder(reg); err != nil {
		t.Fatalf("a second recorder on one registry must reuse its collectors: %v", err)
	}
	b := r.Breaker("shop", "payments")
	b.ObserveStart(200 * time.Microsecond)
	b.ObserveStart(2 * time.Second)
	r.Breaker("shop", "other").ObserveStart(0)
	b.ObserveProbe(0, 3*time.Millisecond)
	b.ObserveProbe(1, 500*time.Millisecond)
	b.ObserveProbe(1, time.Second)
	r.SetState("shop", "payments", "Open")
	r.SetInfo("shop", "payments", "old-backend", "payments")
	r.SetInfo("shop", "payments", "payments-backend", "payments")
	r.Transition("shop", "payments", "Closed", "Open", "ConsecutiveFailures")
	r.Transition("shop", "payments", "Open", "HalfOpen", "OpenTimeout")
	r.Transition("shop", "payments", "HalfOpen", "Closed", "TrialSucceeded")
	r.Transition("shop", "payments", "Closed", "Closed", "Forced") // a gate-only change: no trip
	r.Breaker("shop", "other").ObserveProbe(0, time.Millisecond)
	r.SetState("shop", "other", "Closed")

	want := `
# HELP tripswitch_breaker_state 1 for the breaker's current state (closed, open, half_open), 0 for the others.
# TYPE tripswitch_breaker_state gauge
tripswitch_breaker_state{name="other",namespace="shop",state="closed"} 1
tripswitch_breaker_state{name="other",namespace="shop",state="half_open"} 0
tripswitch_breaker_state{name="other",namespace="shop",state="open"} 0
tripswitch_breaker_state{name="payments",namespace="shop",state="closed"} 0
tripswitch_breaker_state{name="payments",namespace="shop",state="half_open"} 0
tripswitch_breaker_state{name="payments",namespace="shop",state="open"} 1
# HELP tripswitch_breaker_trips_total Times the breaker opened.
# TYPE tripswitch_breaker_trips_total counter
tripswitch_breaker_trips_total{name="other",namespace="shop"} 0
tripswitch_breaker_trips_total{name="payments",namespace="shop"} 1
# HELP tripswitch_breaker_recoveries_total Times the breaker closed after a successful HalfOpen trial.
# TYPE tripswitch_breaker_recoveries_total counter
tripswitch_breaker_recoveries_total{name="other",namespace="shop"} 0
tripswitch_breaker_recoveries_total{name="payments",namespace="shop"} 1
# HELP tripswitch_probes_total Probe results, by outcome (success, failure, slow, neutral).
# TYPE tripswitch_probes_total counter
tripswitch_probes_total{name="other",namespace="shop",outcome="failure"} 0
tripswitch_probes_total{name="other",namespace="shop",outcome="neutral"} 0
tripswitch_probes_total{name="other",namespace="shop",outcome="slow"} 0
tripswitch_probes_total{name="other",namespace="shop",outcome="success"} 1
tripswitch_probes_total{name="payments",namespace="shop",outcome="failure"} 2
tripswitch_probes_total{name="payments",namespace="shop",outcome="neutral"} 0
tripswitch_probes_total{name="payments",namespace="shop",outcome="slow"} 0
tripswitch_probes_total{name="payments",namespace="shop",outcome="success"} 1
`
	want += `
# HELP tripswitch_breaker_info Always 1: the breaker's target and front Service, to join onto its other series in alerts and dashboards.
# TYPE tripswitch_breaker_info gauge
tripswitch_breaker_info{front="payments",name="payments",namespace="shop",target="payments-backend"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), StateName, TripsName, RecoveriesName, ProbesName, InfoName); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(r.transitions); n != 4 {
		t.Errorf("%d transition series, want 4", n)
	}
	if n := testutil.CollectAndCount(r.probeDuration); n != 2 {
		t.Errorf("%d histogram series, want 2", n)
	}
	if n := testutil.CollectAndCount(r.startLateness); n != 1 {
		t.Errorf("%d start lateness series, want 1 for the whole manager", n)
	}
	if got, err := testutil.GatherAndCount(reg, StartLatenessName); err != nil || got != 1 {
		t.Errorf("%s: %d series (%v), want 1", StartLatenessName, got, err)
	}
	if n := histogramCount(t, reg, StartLatenessName); n != 3 {
		t.Errorf("%s counted %d starts, want 3", StartLatenessName, n)
	}

	r.Delete("shop", "payments")
	if n := testutil.CollectAndCount(r.transitions); n != 0 {
		t.Errorf("%d transition series left after deleting the only breaker with transitions", n)
	}
	for _, c := range []prometheus.Collector{r.state, r.trips, r.recoveries, r.probes, r.probeDuration} {
		if n := testutil.CollectAndCount(c); n == 0 {
			t.Error("the other breaker's series must stay")
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP tripswitch_breaker_trips_total Times the breaker opened.
# TYPE tripswitch_breaker_trips_total counter
tripswitch_breaker_trips_total{name="other",namespace="shop"} 0
`), TripsName); err != nil {
		t.Errorf("payments' series should be gone: %v", err)
	}
	b.ObserveProbe(0, time.Millisecond) // a probe in flight at deletion must not bring a series back
	if n := testutil.CollectAndCount(r.probes); n != 4 {
		t.Errorf("%d probe series after deletion, want the other breaker's 4", n)
	}
}

func histogramCount(t *testing.T, reg prometheus.Gatherer, name string) uint64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("%s is not registered", name)
	return 0
}

func TestEjectionMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(reg)
	if err != nil {
		t.Fatal(err)
	}
	r.Ejected("shop", "payments", "ConsecutiveFailures")
	r.Ejected("shop", "payments", "TrialFailed")
	r.Ejected("shop", "payments", "ConsecutiveFailures")
	r.SetEjection("shop", "payments", 1, false, true)
	r.SetEjection("shop", "search", 1, true, true)
	r.SetEjection("shop", "cart", 0, false, true)
	r.SetEjection("shop", "cart", 0, false, false) // ejection turned off: no series
	want := `
# HELP tripswitch_endpoint_ejections_total Endpoints ejected (spec.ejection), by reason: ConsecutiveFailures, FailureRate, or TrialFailed when the trial at the end of an ejection failed.
# TYPE tripswitch_endpoint_ejections_total counter
tripswitch_endpoint_ejections_total{name="payments",namespace="shop",reason="ConsecutiveFailures"} 2
tripswitch_endpoint_ejections_total{name="payments",namespace="shop",reason="TrialFailed"} 1
# HELP tripswitch_endpoints_ejected Endpoints ejected now, including those waiting for their trial probe. In panic they are published anyway.
# TYPE tripswitch_endpoints_ejected gauge
tripswitch_endpoints_ejected{name="payments",namespace="shop"} 1
tripswitch_endpoints_ejected{name="search",namespace="shop"} 1
# HELP tripswitch_ejection_panic 1 while fewer of the breaker's endpoints are healthy than spec.ejection.panicThresholdPercent, so ejections are ignored and every endpoint is published.
# TYPE tripswitch_ejection_panic gauge
tripswitch_ejection_panic{name="payments",namespace="shop"} 0
tripswitch_ejection_panic{name="search",namespace="shop"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), EjectionsName, EjectedName, PanicName); err != nil {
		t.Error(err)
	}
	r.Delete("shop", "payments")
	if n := testutil.CollectAndCount(r.ejections); n != 0 {
		t.Errorf("deleting the breaker left %d ejection series", n)
	}
}

func TestQueryMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(reg)
	if err != nil {
		t.Fatal(err)
	}
	r.QueryEvaluated("shop", "payments", "error-rate", 0.31, false, nil)
	r.QueryEvaluated("shop", "orders", "errors", 0, false, errors.New("connection refused"))
	r.QueryEvaluated("shop", "orders", "errors", 0, false, errors.New("connection refused"))
	r.QueryEvaluated("shop", "cart", "errors", 0.5, false, nil)
	r.QueryEvaluated("shop", "cart", "errors", 0, true, nil) // no data: the value goes
	want := `
# HELP tripswitch_query_errors_total Evaluations of a query rule (spec.trip.queries) that failed: no --prometheus-url, an unreachable server, a timeout, or a result that is not one number. A failed evaluation never trips.
# TYPE tripswitch_query_errors_total counter
tripswitch_query_errors_total{name="cart",namespace="shop",rule="errors"} 0
tripswitch_query_errors_total{name="orders",namespace="shop",rule="errors"} 2
tripswitch_query_errors_total{name="payments",namespace="shop",rule="error-rate"} 0
# HELP tripswitch_query_value The newest value of a query rule; absent while it returns no data or fails.
# TYPE tripswitch_query_value gauge
tripswitch_query_value{name="payments",namespace="shop",rule="error-rate"} 0.31
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), QueryErrorsName, QueryValueName); err != nil {
		t.Error(err)
	}
}

// A rule taken out of the spec, or renamed, takes its series with it; the others stay.
func TestQueryMetricsFollowTheRules(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(reg)
	if err != nil {
		t.Fatal(err)
	}
	r.KeepQueryRules("shop", "payments", []string{"error-rate", "latency"})
	r.QueryEvaluated("shop", "payments", "error-rate", 0.31, false, nil)
	r.QueryEvaluated("shop", "payments", "latency", 0.2, false, nil)
	r.QueryEvaluated("shop", "cart", "latency", 0.4, false, nil)
	r.KeepQueryRules("shop", "payments", []string{"latency"})
	want := `
# HELP tripswitch_query_value The newest value of a query rule; absent while it returns no data or fails.
# TYPE tripswitch_query_value gauge
tripswitch_query_value{name="cart",namespace="shop",rule="latency"} 0.4
tripswitch_query_value{name="payments",namespace="shop",rule="latency"} 0.2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), QueryValueName); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(r.queryErrors); n != 2 {
		t.Errorf("%d query error series, want 2 (payments/latency, cart/latency)", n)
	}
	r.KeepQueryRules("shop", "payments", nil)
	if n := testutil.CollectAndCount(r.queryValue); n != 1 {
		t.Errorf("%d query value series after the rules went, want cart's 1", n)
	}
}

func TestExternalMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(reg)
	if err != nil {
		t.Fatal(err)
	}
	r.Resolved("shop", "stripe", ResolutionSuccess)
	r.Resolved("shop", "stripe", ResolutionFailure)
	r.Resolved("shop", "stripe", ResolutionFailure)
	r.Resolved("shop", "stripe", ResolutionRefused)
	r.SetExternalAddresses("shop", "stripe", 3)
	want := `
# HELP tripswitch_external_resolutions_total Resolutions of an external target's host, by result: success; failure (timeout, SERVFAIL, NXDOMAIN, no addresses), which keeps the last good addresses; refused, an answer whose every address is never published.
# TYPE tripswitch_external_resolutions_total counter
tripswitch_external_resolutions_total{name="stripe",namespace="shop",result="failure"} 2
tripswitch_external_resolutions_total{name="stripe",namespace="shop",result="refused"} 1
tripswitch_external_resolutions_total{name="stripe",namespace="shop",result="success"} 1
# HELP tripswitch_external_addresses The addresses of an external target's host that are probed and published.
# TYPE tripswitch_external_addresses gauge
tripswitch_external_addresses{name="stripe",namespace="shop"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), ResolutionsName, ExternalAddressesName); err != nil {
		t.Error(err)
	}
	r.Delete("shop", "stripe")
	if n := testutil.CollectAndCount(r.resolutions) + testutil.CollectAndCount(r.addresses); n != 0 {
		t.Errorf("deleting the breaker left %d external series", n)
	}
}

func TestObserverDegradedFollowsItsSourceAtScrapeTime(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(reg)
	if err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(r.degraded); n != 0 {
		t.Errorf("without observers: %d series, want none", n)
	}
	degraded := map[string][]string{"node-a": {"shop/a", "shop/b", "shop/c"}}
	r.SetDegradedObservers(func() map[string][]string { return degraded })
	want := `
# HELP tripswitch_observer_degraded 1 for each observer (a node) that the second opinion finds degraded: it alone saw several unrelated targets fail while its peers reached them, so its votes weigh half. Absent for sound observers.
# TYPE tripswitch_observer_degraded gauge
tripswitch_observer_degraded{observer="node-a"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), ObserverDegradedName); err != nil {
		t.Error(err)
	}
	degraded = map[string][]string{}
	if n := testutil.CollectAndCount(r.degraded); n != 0 {
		t.Errorf("once it recovered: %d series, want none", n)
	}
}
