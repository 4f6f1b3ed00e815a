package controller

import (
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/confirm"
	"github.com/tripswitch/tripswitch/internal/ejection"
	"github.com/tripswitch/tripswitch/internal/probe"
	"github.com/tripswitch/tripswitch/internal/runner"
)

// Runnable is what a breaker's spec compiles to: everything the scheduler needs to run it.
type Runnable struct {
	Probe    probe.Spec
	Interval time.Duration
	Engine   breaker.Config
	// Ejection is the endpoint level: ejection and slow start; its zero value does neither.
	Ejection ejection.Config
	// RampKeep is how many endpoints a HalfOpen gate published, which slow start keeps when
	// the breaker closes.
	RampKeep int
	// Confirm is trip.confirm, for the scheduler's second opinion.
	Confirm runner.ConfirmConfig
}

// Compile maps a resolved spec onto a probe and an engine configuration and validates both
// exactly as the scheduler will. An error means that the API server accepted a spec the
// operator cannot run: the CRD's rules and this code disagree, which the admission agreement
// test exists to catch.
func Compile(spec *tripswitchv1alpha1.CircuitBreakerSpec) (Runnable, error) {
	pspec, err := probeSpec(spec)
	if err != nil {
		return Runnable{}, err
	}
	if err := pspec.Validate(); err != nil {
		return Runnable{}, fmt.Errorf("probe: %w", err)
	}
	r := Runnable{Probe: pspec, Interval: spec.Probe.Interval.Duration, Engine: engineConfig(spec),
		Ejection: ejectionConfig(spec), Confirm: confirmConfig(spec)}
	if es := spec.Gate.EndpointSlice; es != nil {
		r.RampKeep = int(es.HalfOpenEndpoints)
	}
	if r.Interval <= 0 {
		return Runnable{}, fmt.Errorf("probe.interval %s is not positive", r.Interval)
	}
	if err := r.Engine.Validate(); err != nil {
		return Runnable{}, err
	}
	if err := r.Ejection.Validate(); err != nil {
		return Runnable{}, err
	}
	return r, nil
}

// ejectionConfig maps a resolved spec onto the endpoint level's configuration. Without the
// endpointSlice gate there is nothing to eject from or ramp, so it does neither.
func ejectionConfig(spec *tripswitchv1alpha1.CircuitBreakerSpec) ejection.Config {
	var c ejection.Config
	if spec.Gate == nil || spec.Gate.EndpointSlice == nil {
		return c
	}
	if s := spec.Recovery.SlowStart; s != nil {
		c.SlowStart = s.Window.Duration
	}
	e := spec.Ejection
	if e == nil {
		return c
	}
	c.ConsecutiveFailures = int(ptr.Deref(e.ConsecutiveFailures, 0))
	c.FailureRate = rateRule(e.FailureRate)
	c.BaseEjectionTime = e.BaseEjectionTime.Duration
	c.MaxEjectionTime = e.MaxEjectionTime.Duration
	c.MaxEjectedPercent = int(ptr.Deref(e.MaxEjectedPercent, 0))
	c.PanicThresholdPercent = int(ptr.Deref(e.PanicThresholdPercent, 0))
	return c
}

func rateRule(r *tripswitchv1alpha1.RateRule) breaker.RateRule {
	if r == nil {
		return breaker.RateRule{}
	}
	return breaker.RateRule{Percent: int(r.Percent), Window: int(r.Window), MinimumProbes: int(ptr.Deref(r.MinimumProbes, r.Window))}
}

// engineConfig maps a resolved spec onto the breaker engine's configuration.
func engineConfig(spec *tripswitchv1alpha1.CircuitBreakerSpec) breaker.Config {
	rec := spec.Recovery
	c := breaker.Config{
		ConsecutiveFailures: int(ptr.Deref(spec.Trip.ConsecutiveFailures, 0)),
		FailureRate:         rateRule(spec.Trip.FailureRate),
		SlowRate:            rateRule(spec.Trip.SlowRate),
		OpenDuration:        rec.OpenDuration.Duration,
		MaxOpenDuration:     rec.OpenDuration.Duration,
		BackoffFactor:       1,
		TrialProbes:         int(ptr.Deref(rec.HalfOpen.TrialProbes, 1)),
		SuccessThreshold:    int(ptr.Deref(rec.HalfOpen.SuccessThreshold, 1)),
		// A trial goes out as soon as it is admitted and ends by its timeout; an interval
		// more is slack. Past that bound it is lost, and its slot is handed out again.
		TrialTimeout: spec.Probe.Interval.Duration + spec.Probe.Timeout.Duration,
		Mode:         engineMode(spec.Mode),
		// Status keeps whole seconds; openUntil must read back exactly as the engine holds it.
		Granularity: time.Second,
	}
	if b := rec.Backoff; b != nil {
		c.BackoffFactor = int(b.Factor)
		c.MaxOpenDuration = b.MaxOpenDuration.Duration
		c.JitterPercent = int(b.JitterPercent)
	}
	return c
}

func engineMode(m tripswitchv1alpha1.Mode) breaker.Mode {
	switch m {
	case tripswitchv1alpha1.ModeForceOpen:
		return breaker.ForceOpen
	case tripswitchv1alpha1.ModeForceClosed:
		return breaker.ForceClosed
	case tripswitchv1alpha1.ModeObserve:
		return breaker.Observe
	}
	return breaker.Auto
}

// probeSpec maps a resolved spec onto a probe. Status codes are validated at admission too;
// a parse error here means the CRD's rules and the parser disagree.
func probeSpec(spec *tripswitchv1alpha1.CircuitBreakerSpec) (probe.Spec, error) {
	p := spec.Probe
	out := probe.Spec{Timeout: p.Timeout.Duration}
	if p.SlowThreshold != nil {
		out.SlowThreshold = p.SlowThreshold.Duration
	}
	switch {
	case p.TCP != nil:
		out.TCP = true
	case p.GRPC != nil:
		out.GRPC = &probe.GRPCSpec{Service: p.GRPC.Service, UseTLS: p.GRPC.TLS != nil, TLS: probeTLS(p.GRPC.TLS)}
		if ext := spec.Target.External; ext != nil && out.GRPC.TLS.ServerName == "" {
			// The provider's certificate names the host, not the address dialled.
			out.GRPC.TLS.ServerName = ext.Host
		}
	default:
		h := p.HTTP
		success, err := probe.ParseCodes(string(h.SuccessCodes))
		if err != nil {
			return probe.Spec{}, fmt.Errorf("probe.http.successCodes: %w", err)
		}
		neutral, err := probe.ParseCodes(string(h.NeutralCodes))
		if err != nil {
			return probe.Spec{}, fmt.Errorf("probe.http.neutralCodes: %w", err)
		}
		headers := http.Header{}
		for _, hd := range h.Headers {
			headers.Add(hd.Name, hd.Value)
		}
		out.HTTP = &probe.HTTPSpec{Path: h.Path, HTTPS: h.Scheme == tripswitchv1alpha1.SchemeHTTPS, Host: h.Host,
			Headers: headers, Success: success, Neutral: neutral, InsecureSkipVerify: h.InsecureSkipVerify, TLS: probeTLS(h.TLS)}
		if ext := spec.Target.External; ext != nil {
			externalHTTP(out.HTTP, ext)
		}
	}
	return out, nil
}

func probeTLS(t *tripswitchv1alpha1.ProbeTLS) probe.TLSSpec {
	if t == nil {
		return probe.TLSSpec{}
	}
	return probe.TLSSpec{CABundle: t.CABundle, ServerName: t.ServerName}
}

// seedFor fixes a breaker's jitter by its UID, so that every leader computes the same
// open periods and breakers that tripped together don't all retry together.
func seedFor(cb *tripswitchv1alpha1.CircuitBreaker) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(cb.UID))
	return h.Sum64()
}

var apiStates = map[breaker.State]tripswitchv1alpha1.State{
	breaker.Closed: tripswitchv1alpha1.StateClosed, breaker.Open: tripswitchv1alpha1.StateOpen,
	breaker.HalfOpen: tripswitchv1alpha1.StateHalfOpen,
}

var apiOutcomes = map[breaker.Outcome]tripswitchv1alpha1.Outcome{
	breaker.Success: tripswitchv1alpha1.OutcomeSuccess, breaker.Failure: tripswitchv1alpha1.OutcomeFailure,
	breaker.Slow: tripswitchv1alpha1.OutcomeSlow, breaker.Neutral: tripswitchv1alpha1.OutcomeNeutral,
}

// snapshotFromStatus reads back what a previous leader wrote, or nil for a new breaker.
func snapshotFromStatus(st *tripswitchv1alpha1.CircuitBreakerStatus) *breaker.Snapshot {
	if st.State == "" {
		return nil
	}
	s := &breaker.Snapshot{
		Reason:               breaker.ParseReason(st.Reason),
		OpenStreak:           st.OpenStreak,
		Trips:                st.Trips,
		ConsecutiveFailures:  st.ConsecutiveFailures,
		ConsecutiveSuccesses: st.ConsecutiveSuccesses,
	}
	for engine, api := range apiStates {
		if api == st.State {
			s.State = engine
		}
	}
	if st.LastTransitionTime != nil {
		s.Since = st.LastTransitionTime.Time
	}
	if st.OpenUntil != nil {
		s.OpenUntil = st.OpenUntil.Time
	}
	return s
}

// applyView writes the engine's view into status.
func applyView(st *tripswitchv1alpha1.CircuitBreakerStatus, v runner.View) {
	s := v.Snapshot
	st.State = apiStates[s.State]
	st.GateState = apiStates[v.Gate]
	st.Reason = s.Reason.String()
	st.LastTransitionTime = timePtr(s.Since)
	st.OpenUntil = nil
	if s.State == breaker.Open {
		st.OpenUntil = timePtr(s.OpenUntil)
	}
	st.Trips, st.OpenStreak = s.Trips, s.OpenStreak
	st.ConsecutiveFailures, st.ConsecutiveSuccesses = s.ConsecutiveFailures, s.ConsecutiveSuccesses
	st.Window = &tripswitchv1alpha1.WindowStatus{Probes: int32(v.Window.Probes), Failures: int32(v.Window.Failures),
		Slow: int32(v.Window.Slow)}
	if p := v.LastProbe; p != nil {
		st.LastProbe = &tripswitchv1alpha1.ProbeResult{Time: metav1.NewTime(p.Time.Truncate(time.Second)),
			Endpoint: p.Endpoint.String(), Outcome: apiOutcomes[p.Outcome], LatencyMilliseconds: p.Latency.Milliseconds(),
			Message: p.Message}
	}
}

// timePtr converts to the second precision that metav1.Time keeps in the API, so that a
// value read back compares equal to the one written.
func timePtr(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(t.Truncate(time.Second))
	return &mt
}

// externalHTTP makes an HTTP probe of an external target call as a new caller does: on a
// connection of its own, with a TLS handshake that checks the certificate every time, and
// (unless probe.http.host says otherwise) asking for the host by name: a provider behind a CDN
// or a virtual host answers by the Host header and, over TLS, presents the certificate that
// SNI asks for, which names the host and not the address dialled.
func externalHTTP(h *probe.HTTPSpec, ext *tripswitchv1alpha1.ExternalTarget) {
	h.FreshConnections = true
	if h.Host != "" {
		return
	}
	h.Host = ext.Host
	if standard := map[bool]int32{false: 80, true: 443}[h.HTTPS]; ext.Port != standard {
		h.Host = net.JoinHostPort(ext.Host, strconv.Itoa(int(ext.Port)))
		if h.TLS.ServerName == "" {
			h.TLS.ServerName = ext.Host
		}
	}
}

// confirmConfig maps trip.confirm and the rate rules' percents for the observers' judgement.
func confirmConfig(spec *tripswitchv1alpha1.CircuitBreakerSpec) runner.ConfirmConfig {
	var c runner.ConfirmConfig
	if cf := spec.Trip.Confirm; cf != nil && cf.Observers != nil {
		c.Observers, c.Zones = int(*cf.Observers), confirm.ZonePolicy(cf.Zones)
	}
	if r := spec.Trip.FailureRate; r != nil {
		c.FailurePercent = int(r.Percent)
	}
	if r := spec.Trip.SlowRate; r != nil {
		c.SlowPercent = int(r.Percent)
	}
	return c
}
