package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Preset is the tuning a Profile stands for.
type Preset struct {
	// ConsecutiveFailures fills trip.consecutiveFailures.
	ConsecutiveFailures int32
	// OpenDuration fills recovery.openDuration.
	OpenDuration time.Duration
}

// Presets are the seed documents' tuning tables. Balanced equals the built-in defaults, so a
// breaker without a profile behaves as a balanced one.
var Presets = map[Profile]Preset{
	ProfileAggressive:   {ConsecutiveFailures: 3, OpenDuration: 30 * time.Second},
	ProfileBalanced:     {ConsecutiveFailures: 5, OpenDuration: 60 * time.Second},
	ProfileConservative: {ConsecutiveFailures: 10, OpenDuration: 120 * time.Second},
}

// Built-in defaults. The API server applies the ones that depend on nothing else (see the
// +kubebuilder:default markers); Resolve applies all of them, including those that depend on
// another field or on the profile, which OpenAPI defaults cannot express.
const (
	DefaultInterval          = time.Second
	DefaultTimeout           = time.Second
	DefaultHTTPPath          = "/"
	DefaultSuccessCodes      = StatusCodes("200-399")
	DefaultRateWindow        = int32(20)
	DefaultBackoffFactor     = int32(2)
	DefaultMaxOpenDuration   = 10 * time.Minute
	DefaultSuccessThreshold  = int32(1)
	DefaultHalfOpenEndpoints = int32(1)

	// Ejection defaults follow Envoy's outlier detection, except maxEjectedPercent (Envoy
	// 10%, which rounds to no ejection at all below 10 endpoints here; see EjectionSpec).
	DefaultEjectionConsecutiveFailures = int32(5)
	DefaultBaseEjectionTime            = 30 * time.Second
	DefaultMaxEjectionTime             = 5 * time.Minute
	DefaultMaxEjectedPercent           = int32(50)
	DefaultPanicThresholdPercent       = int32(50)

	// DefaultMaxExternalAddresses bounds an external target's addresses.
	DefaultMaxExternalAddresses = int32(16)

	// DefaultQueryInterval is how often PromQL trip rules are evaluated.
	DefaultQueryInterval = 15 * time.Second
	// DefaultQueryFor is how many consecutive evaluations of a PromQL trip rule must hold.
	DefaultQueryFor = int32(3)

	// DefaultConfirmObservers is how many observers a suspect trip asks, where the manager
	// has observers: with the manager's own node, three votes, so one sick node is outvoted.
	DefaultConfirmObservers = int32(2)
)

// Resolve returns a copy of the breaker's spec in which every field the user left unset is
// filled: first from the profile's preset, then from the built-in defaults. Fields the user
// set are never changed. The result has exactly one probe kind and every optional pointer
// that the controller reads set, so callers need no nil checks for tuning values.
func (in *CircuitBreaker) Resolve() CircuitBreakerSpec {
	spec := *in.Spec.DeepCopy()
	preset := Presets[ProfileBalanced]
	if p, ok := Presets[spec.Profile]; ok {
		preset = p
	}

	if spec.Mode == "" {
		spec.Mode = ModeAuto
	}
	resolveProbe(&spec.Probe)
	resolveTrip(&spec.Trip, spec.Profile != "", preset)
	resolveRecovery(&spec.Recovery, preset)
	resolveGate(&spec, in.Name)
	if ext := spec.Target.External; ext != nil && ext.MaxAddresses == nil {
		ext.MaxAddresses = ptr.To(DefaultMaxExternalAddresses)
	}
	resolveEjection(spec.Ejection)
	return spec
}

// FrontServiceName is the Service whose EndpointSlices the breaker owns, or "" when the
// EndpointSlice gate is off.
func (in *CircuitBreaker) FrontServiceName() string {
	gate := in.Spec.Gate
	switch {
	case gate == nil:
		return in.Name
	case gate.EndpointSlice == nil:
		return ""
	case gate.EndpointSlice.Service != "":
		return gate.EndpointSlice.Service
	default:
		return in.Name
	}
}

func resolveProbe(p *ProbeSpec) {
	if p.Interval == nil {
		p.Interval = &metav1.Duration{Duration: DefaultInterval}
	}
	if p.Timeout == nil {
		p.Timeout = &metav1.Duration{Duration: min(DefaultTimeout, p.Interval.Duration)}
	}
	if p.HTTP == nil && p.TCP == nil && p.GRPC == nil {
		p.HTTP = &HTTPProbe{}
	}
	if h := p.HTTP; h != nil {
		if h.Path == "" {
			h.Path = DefaultHTTPPath
		}
		if h.Scheme == "" {
			h.Scheme = SchemeHTTP
		}
		if h.SuccessCodes == "" {
			h.SuccessCodes = DefaultSuccessCodes
		}
	}
}

func resolveTrip(t *TripSpec, hasProfile bool, preset Preset) {
	// A profile is an explicit request for its failure count, so it fills the field even next
	// to a rate rule; the plain default only applies when no rule was given at all.
	noRule := t.ConsecutiveFailures == nil && t.FailureRate == nil && t.SlowRate == nil
	if t.ConsecutiveFailures == nil && (hasProfile || noRule) {
		t.ConsecutiveFailures = ptr.To(preset.ConsecutiveFailures)
	}
	resolveRate(t.FailureRate)
	resolveRate(t.SlowRate)
	if len(t.Queries) > 0 && t.QueryInterval == nil {
		t.QueryInterval = &metav1.Duration{Duration: DefaultQueryInterval}
	}
	if t.Confirm == nil {
		t.Confirm = &ConfirmSpec{}
	}
	if t.Confirm.Observers == nil {
		t.Confirm.Observers = ptr.To(DefaultConfirmObservers)
	}
	if t.Confirm.Zones == "" {
		t.Confirm.Zones = ConfirmZonesPrefer
	}
	for i := range t.Queries {
		q := &t.Queries[i]
		if q.For == 0 {
			q.For = DefaultQueryFor
		}
		if q.NoData == "" {
			q.NoData = NoDataIgnore
		}
	}
}

func resolveRate(r *RateRule) {
	if r == nil {
		return
	}
	if r.Window == 0 {
		r.Window = max(DefaultRateWindow, ptr.Deref(r.MinimumProbes, 0))
	}
	if r.MinimumProbes == nil {
		r.MinimumProbes = ptr.To(r.Window)
	}
}

func resolveRecovery(r *RecoverySpec, preset Preset) {
	if r.OpenDuration == nil {
		r.OpenDuration = &metav1.Duration{Duration: preset.OpenDuration}
	}
	if b := r.Backoff; b != nil {
		if b.Factor == 0 {
			b.Factor = DefaultBackoffFactor
		}
		if b.MaxOpenDuration == nil {
			b.MaxOpenDuration = &metav1.Duration{Duration: max(DefaultMaxOpenDuration, r.OpenDuration.Duration)}
		}
	}
	h := &r.HalfOpen
	if h.SuccessThreshold == nil {
		h.SuccessThreshold = ptr.To(DefaultSuccessThreshold)
	}
	if h.TrialProbes == nil {
		h.TrialProbes = ptr.To(*h.SuccessThreshold)
	}
}

func resolveGate(spec *CircuitBreakerSpec, name string) {
	if spec.Gate == nil {
		spec.Gate = &GateSpec{EndpointSlice: &EndpointSliceGate{}}
	}
	es := spec.Gate.EndpointSlice
	if es == nil {
		return
	}
	if es.Service == "" {
		es.Service = name
	}
	if es.HalfOpenEndpoints == 0 {
		es.HalfOpenEndpoints = DefaultHalfOpenEndpoints
	}
	if es.WhenOpen == "" {
		es.WhenOpen = WhenOpenRespond
	}
	if es.CutConnections == nil {
		es.CutConnections = ptr.To(true)
	}
	if f := es.Fallback; f != nil && f.Port == nil {
		switch {
		case spec.Target.Port != nil:
			port := *spec.Target.Port
			f.Port = &port
		case spec.Target.External != nil:
			port := intstr.FromInt32(spec.Target.External.Port)
			f.Port = &port
		}
	}
}

func resolveEjection(e *EjectionSpec) {
	if e == nil {
		return
	}
	if e.ConsecutiveFailures == nil && e.FailureRate == nil {
		e.ConsecutiveFailures = ptr.To(DefaultEjectionConsecutiveFailures)
	}
	resolveRate(e.FailureRate)
	if e.BaseEjectionTime == nil {
		e.BaseEjectionTime = &metav1.Duration{Duration: DefaultBaseEjectionTime}
	}
	if e.MaxEjectionTime == nil {
		e.MaxEjectionTime = &metav1.Duration{Duration: max(DefaultMaxEjectionTime, e.BaseEjectionTime.Duration)}
	}
	if e.MaxEjectedPercent == nil {
		e.MaxEjectedPercent = ptr.To(DefaultMaxEjectedPercent)
	}
	if e.PanicThresholdPercent == nil {
		e.PanicThresholdPercent = ptr.To(DefaultPanicThresholdPercent)
	}
}
