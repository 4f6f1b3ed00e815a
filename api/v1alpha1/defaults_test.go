package v1alpha1

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func dur(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }

func TestResolve(t *testing.T) {
	target := TargetReference{Service: "backend", Port: ptr.To(intstr.FromString("http"))}
	// resolved is what a spec with only a target resolves to: the built-in defaults.
	resolved := func(edit func(*CircuitBreakerSpec)) CircuitBreakerSpec {
		s := CircuitBreakerSpec{
			Target: target,
			Mode:   ModeAuto,
			Probe: ProbeSpec{
				Interval: dur(time.Second), Timeout: dur(time.Second),
				HTTP: &HTTPProbe{Path: "/", Scheme: SchemeHTTP, SuccessCodes: "200-399"},
			},
			Trip: TripSpec{ConsecutiveFailures: ptr.To[int32](5)},
			Recovery: RecoverySpec{
				OpenDuration: dur(60 * time.Second),
				HalfOpen:     HalfOpenSpec{TrialProbes: ptr.To[int32](1), SuccessThreshold: ptr.To[int32](1)},
			},
			Gate: &GateSpec{EndpointSlice: &EndpointSliceGate{Service: "payments", HalfOpenEndpoints: 1, WhenOpen: WhenOpenRespond,
				CutConnections: ptr.To(true)}},
		}
		if edit != nil {
			edit(&s)
		}
		if s.Trip.Confirm == nil {
			// Every resolved spec asks 2 observers, other zones first: a manager without
			// observers (--observer-service) ignores it.
			s.Trip.Confirm = &ConfirmSpec{Observers: ptr.To[int32](2), Zones: ConfirmZonesPrefer}
		}
		return s
	}

	tests := []struct {
		name string
		spec CircuitBreakerSpec
		want CircuitBreakerSpec
	}{{
		name: "only a target gets the built-in defaults, which equal balanced",
		spec: CircuitBreakerSpec{Target: target},
		want: resolved(nil),
	}, {
		name: "an empty ejection section gets Envoy's defaults, but half the endpoints at most",
		spec: CircuitBreakerSpec{Target: target, Ejection: &EjectionSpec{}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Ejection = &EjectionSpec{ConsecutiveFailures: ptr.To[int32](5), BaseEjectionTime: dur(30 * time.Second),
				MaxEjectionTime: dur(5 * time.Minute), MaxEjectedPercent: ptr.To[int32](50), PanicThresholdPercent: ptr.To[int32](50)}
		}),
	}, {
		name: "an ejection failure rate alone fills no consecutive rule, and a long base lifts the cap",
		spec: CircuitBreakerSpec{Target: target, Ejection: &EjectionSpec{FailureRate: &RateRule{Percent: 50},
			BaseEjectionTime: dur(10 * time.Minute), MaxEjectedPercent: ptr.To[int32](0)}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Ejection = &EjectionSpec{FailureRate: &RateRule{Percent: 50, Window: 20, MinimumProbes: ptr.To[int32](20)},
				BaseEjectionTime: dur(10 * time.Minute), MaxEjectionTime: dur(10 * time.Minute),
				MaxEjectedPercent: ptr.To[int32](0), PanicThresholdPercent: ptr.To[int32](50)}
		}),
	}, {
		name: "query rules get their interval, for and noData, and the probes keep their default rule",
		spec: CircuitBreakerSpec{Target: target, Trip: TripSpec{Queries: []QueryRule{{Name: "e", Query: "up", Above: ptr.To("1")}}}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Trip.Queries = []QueryRule{{Name: "e", Query: "up", Above: ptr.To("1"), For: 3, NoData: NoDataIgnore}}
			s.Trip.QueryInterval = dur(15 * time.Second)
		}),
	}, {
		name: "balanced profile changes nothing",
		spec: CircuitBreakerSpec{Target: target, Profile: ProfileBalanced},
		want: resolved(func(s *CircuitBreakerSpec) { s.Profile = ProfileBalanced }),
	}, {
		name: "aggressive profile fills failures and open duration",
		spec: CircuitBreakerSpec{Target: target, Profile: ProfileAggressive},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Profile = ProfileAggressive
			s.Trip.ConsecutiveFailures = ptr.To[int32](3)
			s.Recovery.OpenDuration = dur(30 * time.Second)
		}),
	}, {
		name: "conservative profile never overrides what the user set",
		spec: CircuitBreakerSpec{Target: target, Profile: ProfileConservative,
			Trip:     TripSpec{ConsecutiveFailures: ptr.To[int32](7)},
			Recovery: RecoverySpec{OpenDuration: dur(15 * time.Second)}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Profile = ProfileConservative
			s.Trip.ConsecutiveFailures = ptr.To[int32](7)
			s.Recovery.OpenDuration = dur(15 * time.Second)
		}),
	}, {
		name: "conservative profile fills only the unset open duration",
		spec: CircuitBreakerSpec{Target: target, Profile: ProfileConservative,
			Trip: TripSpec{ConsecutiveFailures: ptr.To[int32](2)}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Profile = ProfileConservative
			s.Trip.ConsecutiveFailures = ptr.To[int32](2)
			s.Recovery.OpenDuration = dur(120 * time.Second)
		}),
	}, {
		name: "a rate rule alone gets no consecutive-failure rule, and minimumProbes defaults to window",
		spec: CircuitBreakerSpec{Target: target, Trip: TripSpec{FailureRate: &RateRule{Percent: 50}}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Trip = TripSpec{FailureRate: &RateRule{Percent: 50, Window: 20, MinimumProbes: ptr.To[int32](20)}}
		}),
	}, {
		name: "a profile fills consecutive failures even next to a rate rule",
		spec: CircuitBreakerSpec{Target: target, Profile: ProfileAggressive,
			Trip: TripSpec{SlowRate: &RateRule{Percent: 80, MinimumProbes: ptr.To[int32](30)}}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Profile = ProfileAggressive
			s.Trip = TripSpec{ConsecutiveFailures: ptr.To[int32](3),
				SlowRate: &RateRule{Percent: 80, Window: 30, MinimumProbes: ptr.To[int32](30)}}
			s.Recovery.OpenDuration = dur(30 * time.Second)
		}),
	}, {
		name: "timeout defaults to a shorter interval",
		spec: CircuitBreakerSpec{Target: target, Probe: ProbeSpec{Interval: dur(200 * time.Millisecond)}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Probe.Interval = dur(200 * time.Millisecond)
			s.Probe.Timeout = dur(200 * time.Millisecond)
		}),
	}, {
		name: "a tcp probe gets no http defaults",
		spec: CircuitBreakerSpec{Target: target, Probe: ProbeSpec{TCP: &TCPProbe{}}},
		want: resolved(func(s *CircuitBreakerSpec) { s.Probe.HTTP = nil; s.Probe.TCP = &TCPProbe{} }),
	}, {
		name: "trialProbes defaults to successThreshold",
		spec: CircuitBreakerSpec{Target: target, Recovery: RecoverySpec{HalfOpen: HalfOpenSpec{SuccessThreshold: ptr.To[int32](3)}}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Recovery.HalfOpen = HalfOpenSpec{TrialProbes: ptr.To[int32](3), SuccessThreshold: ptr.To[int32](3)}
		}),
	}, {
		name: "backoff cap defaults to 10m, or to a longer open duration",
		spec: CircuitBreakerSpec{Target: target, Recovery: RecoverySpec{OpenDuration: dur(20 * time.Minute), Backoff: &BackoffSpec{}}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Recovery.OpenDuration = dur(20 * time.Minute)
			s.Recovery.Backoff = &BackoffSpec{Factor: 2, MaxOpenDuration: dur(20 * time.Minute)}
		}),
	}, {
		name: "fallback port defaults to the target port; explicit front Service kept",
		spec: CircuitBreakerSpec{Target: target, Gate: &GateSpec{EndpointSlice: &EndpointSliceGate{
			Service: "front", Fallback: &FallbackReference{Service: "degraded"}}}},
		want: resolved(func(s *CircuitBreakerSpec) {
			port := intstr.FromString("http")
			s.Gate.EndpointSlice = &EndpointSliceGate{Service: "front", HalfOpenEndpoints: 1, WhenOpen: WhenOpenRespond, CutConnections: ptr.To(true),
				Fallback: &FallbackReference{Service: "degraded", Port: &port}}
		}),
	}, {
		name: "observers: 0 stays off",
		spec: CircuitBreakerSpec{Target: target, Trip: TripSpec{Confirm: &ConfirmSpec{Observers: ptr.To[int32](0)}}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Trip.Confirm = &ConfirmSpec{Observers: ptr.To[int32](0), Zones: ConfirmZonesPrefer}
		}),
	}, {
		name: "zones alone gets 2 observers",
		spec: CircuitBreakerSpec{Target: target, Trip: TripSpec{Confirm: &ConfirmSpec{Zones: ConfirmZonesRequire}}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Trip.Confirm = &ConfirmSpec{Observers: ptr.To[int32](2), Zones: ConfirmZonesRequire}
		}),
	}, {
		name: "an annotation-only gate stays without an EndpointSlice gate",
		spec: CircuitBreakerSpec{Target: target, Gate: &GateSpec{Annotations: []AnnotatedObjectReference{
			{APIVersion: "networking.k8s.io/v1", Kind: "Ingress", Name: "shop"}}}},
		want: resolved(func(s *CircuitBreakerSpec) {
			s.Gate = &GateSpec{Annotations: []AnnotatedObjectReference{
				{APIVersion: "networking.k8s.io/v1", Kind: "Ingress", Name: "shop"}}}
		}),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cb := &CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Name: "payments"}, Spec: tt.spec}
			before := cb.DeepCopy()
			got := cb.Resolve()
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Resolve() mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, cb); diff != "" {
				t.Errorf("Resolve() changed its receiver (-before +after):\n%s", diff)
			}
			// Resolving is idempotent: a resolved spec has nothing left to fill.
			again := &CircuitBreaker{ObjectMeta: cb.ObjectMeta, Spec: got}
			if diff := cmp.Diff(got, again.Resolve()); diff != "" {
				t.Errorf("Resolve() is not idempotent (-first +second):\n%s", diff)
			}
		})
	}
}

func TestPresetsMatchTheSeedTables(t *testing.T) {
	want := map[Profile]Preset{
		ProfileAggressive:   {3, 30 * time.Second},
		ProfileBalanced:     {5, 60 * time.Second},
		ProfileConservative: {10, 120 * time.Second},
	}
	if diff := cmp.Diff(want, Presets); diff != "" {
		t.Errorf("Presets (-want +got):\n%s", diff)
	}
}

func TestFrontServiceName(t *testing.T) {
	for _, tt := range []struct {
		gate *GateSpec
		want string
	}{
		{nil, "payments"},
		{&GateSpec{EndpointSlice: &EndpointSliceGate{}}, "payments"},
		{&GateSpec{EndpointSlice: &EndpointSliceGate{Service: "front"}}, "front"},
		{&GateSpec{Annotations: []AnnotatedObjectReference{{Name: "x"}}}, ""},
	} {
		cb := &CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Name: "payments"}, Spec: CircuitBreakerSpec{Gate: tt.gate}}
		if got := cb.FrontServiceName(); got != tt.want {
			t.Errorf("FrontServiceName() with gate %+v = %q, want %q", tt.gate, got, tt.want)
		}
	}
}
