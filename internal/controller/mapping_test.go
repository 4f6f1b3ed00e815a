package controller

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/ejection"
	"github.com/tripswitch/tripswitch/internal/probe"
	"github.com/tripswitch/tripswitch/internal/runner"
	"github.com/tripswitch/tripswitch/internal/testcerts"
)

// The helpers here carry a mapping prefix, because other files of this package change often.

func mappingDur(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }

// mappingResolved is the resolved spec of a breaker named payments with the given spec, which
// gets a target when it has none.
func mappingResolved(spec tripswitchv1alpha1.CircuitBreakerSpec) tripswitchv1alpha1.CircuitBreakerSpec {
	if spec.Target.Service == "" && spec.Target.External == nil {
		spec.Target = tripswitchv1alpha1.TargetReference{Service: "backend", Port: ptr.To(intstr.FromString("http"))}
	}
	cb := &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Name: "payments"}, Spec: spec}
	return cb.Resolve()
}

// mappingConfig is the engine configuration of a breaker with only a target: the built-in
// defaults, which equal the balanced profile.
func mappingConfig(edit func(*breaker.Config)) breaker.Config {
	c := breaker.Config{
		ConsecutiveFailures: 5,
		OpenDuration:        60 * time.Second,
		MaxOpenDuration:     60 * time.Second,
		BackoffFactor:       1,
		TrialProbes:         1,
		SuccessThreshold:    1,
		TrialTimeout:        2 * time.Second, // interval 1s + timeout 1s
		Mode:                breaker.Auto,
		Granularity:         time.Second,
	}
	if edit != nil {
		edit(&c)
	}
	return c
}

func mustCodes(t *testing.T, s string) probe.CodeSet {
	t.Helper()
	set, err := probe.ParseCodes(s)
	if err != nil {
		t.Fatalf("ParseCodes(%q): %v", s, err)
	}
	return set
}

func TestEngineConfig(t *testing.T) {
	type S = tripswitchv1alpha1.CircuitBreakerSpec
	tests := []struct {
		name string
		spec S
		want breaker.Config
	}{{
		name: "no profile gets the built-in defaults",
		spec: S{},
		want: mappingConfig(nil),
	}, {
		name: "aggressive profile",
		spec: S{Profile: tripswitchv1alpha1.ProfileAggressive},
		want: mappingConfig(func(c *breaker.Config) {
			c.ConsecutiveFailures, c.OpenDuration, c.MaxOpenDuration = 3, 30*time.Second, 30*time.Second
		}),
	}, {
		name: "balanced profile equals the defaults",
		spec: S{Profile: tripswitchv1alpha1.ProfileBalanced},
		want: mappingConfig(nil),
	}, {
		name: "conservative profile",
		spec: S{Profile: tripswitchv1alpha1.ProfileConservative},
		want: mappingConfig(func(c *breaker.Config) {
			c.ConsecutiveFailures, c.OpenDuration, c.MaxOpenDuration = 10, 120*time.Second, 120*time.Second
		}),
	}, {
		name: "a profile never overrides what the user set",
		spec: S{Profile: tripswitchv1alpha1.ProfileConservative,
			Trip:     tripswitchv1alpha1.TripSpec{ConsecutiveFailures: ptr.To[int32](2)},
			Recovery: tripswitchv1alpha1.RecoverySpec{OpenDuration: mappingDur(15 * time.Second)}},
		want: mappingConfig(func(c *breaker.Config) {
			c.ConsecutiveFailures, c.OpenDuration, c.MaxOpenDuration = 2, 15*time.Second, 15*time.Second
		}),
	}, {
		name: "without backoff the open duration never grows: factor 1, capped at itself",
		spec: S{Recovery: tripswitchv1alpha1.RecoverySpec{OpenDuration: mappingDur(90 * time.Second)}},
		want: mappingConfig(func(c *breaker.Config) {
			c.OpenDuration, c.MaxOpenDuration, c.BackoffFactor = 90*time.Second, 90*time.Second, 1
		}),
	}, {
		name: "empty backoff gets factor 2 and a 10m cap",
		spec: S{Recovery: tripswitchv1alpha1.RecoverySpec{Backoff: &tripswitchv1alpha1.BackoffSpec{}}},
		want: mappingConfig(func(c *breaker.Config) { c.BackoffFactor, c.MaxOpenDuration = 2, 10*time.Minute }),
	}, {
		name: "empty backoff caps at an open duration longer than 10m",
		spec: S{Recovery: tripswitchv1alpha1.RecoverySpec{OpenDuration: mappingDur(time.Hour),
			Backoff: &tripswitchv1alpha1.BackoffSpec{}}},
		want: mappingConfig(func(c *breaker.Config) {
			c.OpenDuration, c.BackoffFactor, c.MaxOpenDuration = time.Hour, 2, time.Hour
		}),
	}, {
		name: "explicit backoff",
		spec: S{Profile: tripswitchv1alpha1.ProfileAggressive, Recovery: tripswitchv1alpha1.RecoverySpec{
			Backoff: &tripswitchv1alpha1.BackoffSpec{Factor: 3, MaxOpenDuration: mappingDur(5 * time.Minute), JitterPercent: 10}}},
		want: mappingConfig(func(c *breaker.Config) {
			c.ConsecutiveFailures, c.OpenDuration = 3, 30*time.Second
			c.BackoffFactor, c.MaxOpenDuration, c.JitterPercent = 3, 5*time.Minute, 10
		}),
	}, {
		name: "halfOpen: trialProbes defaults to successThreshold",
		spec: S{Recovery: tripswitchv1alpha1.RecoverySpec{HalfOpen: tripswitchv1alpha1.HalfOpenSpec{
			SuccessThreshold: ptr.To[int32](3)}}},
		want: mappingConfig(func(c *breaker.Config) { c.TrialProbes, c.SuccessThreshold = 3, 3 }),
	}, {
		name: "halfOpen: explicit trials",
		spec: S{Recovery: tripswitchv1alpha1.RecoverySpec{HalfOpen: tripswitchv1alpha1.HalfOpenSpec{
			TrialProbes: ptr.To[int32](5), SuccessThreshold: ptr.To[int32](2)}}},
		want: mappingConfig(func(c *breaker.Config) { c.TrialProbes, c.SuccessThreshold = 5, 2 }),
	}, {
		name: "a rate rule alone: no consecutive-failure rule, window 20 and minimumProbes its window",
		spec: S{Trip: tripswitchv1alpha1.TripSpec{FailureRate: &tripswitchv1alpha1.RateRule{Percent: 50}}},
		want: mappingConfig(func(c *breaker.Config) {
			c.ConsecutiveFailures = 0
			c.FailureRate = breaker.RateRule{Percent: 50, Window: 20, MinimumProbes: 20}
		}),
	}, {
		name: "minimumProbes defaults to an explicit window",
		spec: S{Trip: tripswitchv1alpha1.TripSpec{FailureRate: &tripswitchv1alpha1.RateRule{Percent: 40, Window: 50}}},
		want: mappingConfig(func(c *breaker.Config) {
			c.ConsecutiveFailures = 0
			c.FailureRate = breaker.RateRule{Percent: 40, Window: 50, MinimumProbes: 50}
		}),
	}, {
		name: "explicit minimumProbes, and a profile's failures next to rate rules",
		spec: S{Profile: tripswitchv1alpha1.ProfileAggressive,
			Probe: tripswitchv1alpha1.ProbeSpec{SlowThreshold: mappingDur(300 * time.Millisecond)},
			Trip: tripswitchv1alpha1.TripSpec{
				FailureRate: &tripswitchv1alpha1.RateRule{Percent: 50, Window: 20, MinimumProbes: ptr.To[int32](10)},
				SlowRate:    &tripswitchv1alpha1.RateRule{Percent: 80, Window: 100, MinimumProbes: ptr.To[int32](1)}}},
		want: mappingConfig(func(c *breaker.Config) {
			c.ConsecutiveFailures, c.OpenDuration, c.MaxOpenDuration = 3, 30*time.Second, 30*time.Second
			c.FailureRate = breaker.RateRule{Percent: 50, Window: 20, MinimumProbes: 10}
			c.SlowRate = breaker.RateRule{Percent: 80, Window: 100, MinimumProbes: 1}
		}),
	}, {
		name: "trial timeout is one interval and one timeout",
		spec: S{Probe: tripswitchv1alpha1.ProbeSpec{Interval: mappingDur(5 * time.Second), Timeout: mappingDur(3 * time.Second)}},
		want: mappingConfig(func(c *breaker.Config) { c.TrialTimeout = 8 * time.Second }),
	}}
	for _, mode := range []struct {
		api    tripswitchv1alpha1.Mode
		engine breaker.Mode
	}{
		{"", breaker.Auto},
		{tripswitchv1alpha1.ModeAuto, breaker.Auto},
		{tripswitchv1alpha1.ModeForceOpen, breaker.ForceOpen},
		{tripswitchv1alpha1.ModeForceClosed, breaker.ForceClosed},
		{tripswitchv1alpha1.ModeObserve, breaker.Observe},
	} {
		tests = append(tests, struct {
			name string
			spec S
			want breaker.Config
		}{
			name: "mode " + string(mode.api) + " maps to " + mode.engine.String(),
			spec: S{Mode: mode.api},
			want: mappingConfig(func(c *breaker.Config) { c.Mode = mode.engine }),
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			spec := mappingResolved(tt.spec)
			got := engineConfig(&spec)
			g.Expect(got).To(Equal(tt.want))
			g.Expect(got.Granularity).To(Equal(time.Second), "status keeps whole seconds")
			g.Expect(got.Validate()).To(Succeed())
		})
	}
}

func TestEngineConfigOfAnUnresolvedRateRule(t *testing.T) {
	g := NewWithT(t)
	// minimumProbes falls back to the window even when Resolve did not run.
	spec := mappingResolved(tripswitchv1alpha1.CircuitBreakerSpec{})
	spec.Trip.SlowRate = &tripswitchv1alpha1.RateRule{Percent: 70, Window: 30}
	g.Expect(engineConfig(&spec).SlowRate).To(Equal(breaker.RateRule{Percent: 70, Window: 30, MinimumProbes: 30}))
}

func TestProbeSpec(t *testing.T) {
	type P = tripswitchv1alpha1.ProbeSpec
	tests := []struct {
		name  string
		probe P
		want  func(t *testing.T) probe.Spec
	}{{
		name:  "nothing set is an HTTP GET / with the default codes and a 1s timeout",
		probe: P{},
		want: func(t *testing.T) probe.Spec {
			return probe.Spec{Timeout: time.Second, HTTP: &probe.HTTPSpec{Path: "/", Headers: http.Header{},
				Success: mustCodes(t, "200-399")}}
		},
	}, {
		name:  "timeout defaults to a shorter interval; slow threshold is kept",
		probe: P{Interval: mappingDur(200 * time.Millisecond), SlowThreshold: mappingDur(150 * time.Millisecond)},
		want: func(t *testing.T) probe.Spec {
			return probe.Spec{Timeout: 200 * time.Millisecond, SlowThreshold: 150 * time.Millisecond,
				HTTP: &probe.HTTPSpec{Path: "/", Headers: http.Header{}, Success: mustCodes(t, "200-399")}}
		},
	}, {
		name: "HTTP headers (canonical, repeated names kept), codes, HTTPS and host",
		probe: P{Timeout: mappingDur(500 * time.Millisecond), HTTP: &tripswitchv1alpha1.HTTPProbe{
			Path: "/healthz?full=1", Scheme: tripswitchv1alpha1.SchemeHTTPS, Host: "payments.example.com",
			Headers: []tripswitchv1alpha1.HTTPHeader{{Name: "x-probe", Value: "a"}, {Name: "X-Probe", Value: "b"},
				{Name: "Authorization", Value: "Bearer t"}},
			SuccessCodes: "200-299,304", NeutralCodes: "429,503", InsecureSkipVerify: true}},
		want: func(t *testing.T) probe.Spec {
			return probe.Spec{Timeout: 500 * time.Millisecond, HTTP: &probe.HTTPSpec{
				Path: "/healthz?full=1", HTTPS: true, Host: "payments.example.com",
				Headers: http.Header{"X-Probe": {"a", "b"}, "Authorization": {"Bearer t"}},
				Success: mustCodes(t, "200-299,304"), Neutral: mustCodes(t, "429,503"), InsecureSkipVerify: true}}
		},
	}, {
		name:  "plain HTTP says HTTPS false",
		probe: P{HTTP: &tripswitchv1alpha1.HTTPProbe{Scheme: tripswitchv1alpha1.SchemeHTTP, SuccessCodes: "200"}},
		want: func(t *testing.T) probe.Spec {
			return probe.Spec{Timeout: time.Second, HTTP: &probe.HTTPSpec{Path: "/", Headers: http.Header{},
				Success: mustCodes(t, "200")}}
		},
	}, {
		name:  "tcp",
		probe: P{Interval: mappingDur(5 * time.Second), Timeout: mappingDur(2 * time.Second), TCP: &tripswitchv1alpha1.TCPProbe{}},
		want:  func(*testing.T) probe.Spec { return probe.Spec{Timeout: 2 * time.Second, TCP: true} },
	}, {
		name:  "grpc with a service",
		probe: P{GRPC: &tripswitchv1alpha1.GRPCProbe{Service: "payments.v1.Payments"}},
		want: func(*testing.T) probe.Spec {
			return probe.Spec{Timeout: time.Second, GRPC: &probe.GRPCSpec{Service: "payments.v1.Payments"}}
		},
	}, {
		name:  "grpc asking about the whole server",
		probe: P{GRPC: &tripswitchv1alpha1.GRPCProbe{}},
		want:  func(*testing.T) probe.Spec { return probe.Spec{Timeout: time.Second, GRPC: &probe.GRPCSpec{}} },
	}, {
		name:  "grpc over TLS with the system roots",
		probe: P{GRPC: &tripswitchv1alpha1.GRPCProbe{TLS: &tripswitchv1alpha1.ProbeTLS{}}},
		want: func(*testing.T) probe.Spec {
			return probe.Spec{Timeout: time.Second, GRPC: &probe.GRPCSpec{UseTLS: true}}
		},
	}, {
		name:  "grpc over TLS with a CA bundle and a server name",
		probe: P{GRPC: &tripswitchv1alpha1.GRPCProbe{TLS: &tripswitchv1alpha1.ProbeTLS{CABundle: mappingCA.PEM, ServerName: "payments.svc"}}},
		want: func(*testing.T) probe.Spec {
			return probe.Spec{Timeout: time.Second, GRPC: &probe.GRPCSpec{UseTLS: true,
				TLS: probe.TLSSpec{CABundle: mappingCA.PEM, ServerName: "payments.svc"}}}
		},
	}, {
		name: "HTTPS host with a port beside a CA bundle and a server name",
		probe: P{HTTP: &tripswitchv1alpha1.HTTPProbe{Scheme: tripswitchv1alpha1.SchemeHTTPS, Host: "payments.example.com:8443",
			SuccessCodes: "200", TLS: &tripswitchv1alpha1.ProbeTLS{CABundle: mappingCA.PEM, ServerName: "payments.svc"}}},
		want: func(t *testing.T) probe.Spec {
			return probe.Spec{Timeout: time.Second, HTTP: &probe.HTTPSpec{Path: "/", HTTPS: true, Host: "payments.example.com:8443",
				Headers: http.Header{}, Success: mustCodes(t, "200"),
				TLS: probe.TLSSpec{CABundle: mappingCA.PEM, ServerName: "payments.svc"}}}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			spec := mappingResolved(tripswitchv1alpha1.CircuitBreakerSpec{Probe: tt.probe})
			got, err := probeSpec(&spec)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tt.want(t)))
			g.Expect(got.Validate()).To(Succeed())
		})
	}
}

func TestProbeSpecOfAnExternalTarget(t *testing.T) {
	https := func(host string) *tripswitchv1alpha1.HTTPProbe {
		return &tripswitchv1alpha1.HTTPProbe{Scheme: tripswitchv1alpha1.SchemeHTTPS, Host: host, SuccessCodes: "200-499"}
	}
	tests := []struct {
		name  string
		port  int32
		probe tripswitchv1alpha1.ProbeSpec
		want  func(*probe.Spec)
	}{{
		name: "HTTPS on 443 asks for the host by name, on a connection of its own",
		port: 443, probe: tripswitchv1alpha1.ProbeSpec{HTTP: https("")},
		want: func(s *probe.Spec) { s.HTTP.Host, s.HTTP.FreshConnections = "api.stripe.com", true },
	}, {
		name: "another port goes into the Host header, and the server name stays the host",
		port: 8443, probe: tripswitchv1alpha1.ProbeSpec{HTTP: https("")},
		want: func(s *probe.Spec) {
			s.HTTP.Host, s.HTTP.TLS.ServerName, s.HTTP.FreshConnections = "api.stripe.com:8443", "api.stripe.com", true
		},
	}, {
		name: "a host the user set is kept",
		port: 443, probe: tripswitchv1alpha1.ProbeSpec{HTTP: https("status.stripe.com")},
		want: func(s *probe.Spec) { s.HTTP.FreshConnections = true },
	}, {
		name: "gRPC over TLS checks the certificate against the host",
		port: 443, probe: tripswitchv1alpha1.ProbeSpec{GRPC: &tripswitchv1alpha1.GRPCProbe{TLS: &tripswitchv1alpha1.ProbeTLS{}}},
		want: func(s *probe.Spec) { s.GRPC.TLS.ServerName = "api.stripe.com" },
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			service := mappingResolved(tripswitchv1alpha1.CircuitBreakerSpec{Probe: tt.probe})
			want, err := probeSpec(&service)
			g.Expect(err).NotTo(HaveOccurred())
			tt.want(&want)
			spec := mappingResolved(tripswitchv1alpha1.CircuitBreakerSpec{Probe: tt.probe,
				Target: tripswitchv1alpha1.TargetReference{External: &tripswitchv1alpha1.ExternalTarget{Host: "api.stripe.com", Port: tt.port}}})
			got, err := probeSpec(&spec)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(want))
			g.Expect(got.Validate()).To(Succeed())
		})
	}
}

// mappingCA's certificate is a CA bundle that parses.
var mappingCA = testcerts.NewCA("mapping CA")

func TestCompile(t *testing.T) {
	g := NewWithT(t)
	spec := mappingResolved(tripswitchv1alpha1.CircuitBreakerSpec{
		Profile: tripswitchv1alpha1.ProfileConservative,
		Probe:   tripswitchv1alpha1.ProbeSpec{Interval: mappingDur(2 * time.Second), TCP: &tripswitchv1alpha1.TCPProbe{}},
	})
	r, err := Compile(&spec)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.Interval).To(Equal(2 * time.Second))
	g.Expect(r.Probe).To(Equal(probe.Spec{Timeout: time.Second, TCP: true}))
	g.Expect(r.Engine).To(Equal(engineConfig(&spec)))
}

func TestCompileEjection(t *testing.T) {
	g := NewWithT(t)
	spec := mappingResolved(tripswitchv1alpha1.CircuitBreakerSpec{
		Ejection: &tripswitchv1alpha1.EjectionSpec{ConsecutiveFailures: ptr.To[int32](3),
			FailureRate: &tripswitchv1alpha1.RateRule{Percent: 40, Window: 10, MinimumProbes: ptr.To[int32](4)}},
		Recovery: tripswitchv1alpha1.RecoverySpec{SlowStart: &tripswitchv1alpha1.SlowStartSpec{Window: metav1.Duration{Duration: 20 * time.Second}}},
		Gate:     &tripswitchv1alpha1.GateSpec{EndpointSlice: &tripswitchv1alpha1.EndpointSliceGate{HalfOpenEndpoints: 2}},
	})
	r, err := Compile(&spec)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.Ejection).To(Equal(ejection.Config{ConsecutiveFailures: 3,
		FailureRate:      breaker.RateRule{Percent: 40, Window: 10, MinimumProbes: 4},
		BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 5 * time.Minute, MaxEjectedPercent: 50,
		PanicThresholdPercent: 50, SlowStart: 20 * time.Second}))
	g.Expect(r.RampKeep).To(Equal(2))

	// Without the endpointSlice gate there is nothing to eject from: an older CRD that let
	// this through gets a breaker that ejects nothing, rather than one that cannot run.
	spec.Gate.EndpointSlice = nil
	r, err = Compile(&spec)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.Ejection.Enabled()).To(BeFalse())

	// A spec without ejection or slow start has an endpoint level that does nothing.
	plain := mappingResolved(tripswitchv1alpha1.CircuitBreakerSpec{})
	r, err = Compile(&plain)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(r.Ejection).To(Equal(ejection.Config{}))
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name string
		// edit breaks a resolved spec, the way a CRD that disagrees with the operator would
		// let it through.
		spec    tripswitchv1alpha1.CircuitBreakerSpec
		edit    func(*tripswitchv1alpha1.CircuitBreakerSpec)
		wantErr string
	}{{
		name: "backoff cap under the profile's open duration (issue 2a)",
		spec: tripswitchv1alpha1.CircuitBreakerSpec{Profile: tripswitchv1alpha1.ProfileConservative,
			Recovery: tripswitchv1alpha1.RecoverySpec{Backoff: &tripswitchv1alpha1.BackoffSpec{MaxOpenDuration: mappingDur(time.Minute)}}},
		wantErr: "maxOpenDuration 1m0s is shorter than openDuration 2m0s",
	}, {
		name: "backoff cap under the default open duration",
		spec: tripswitchv1alpha1.CircuitBreakerSpec{
			Recovery: tripswitchv1alpha1.RecoverySpec{Backoff: &tripswitchv1alpha1.BackoffSpec{MaxOpenDuration: mappingDur(30 * time.Second)}}},
		wantErr: "maxOpenDuration 30s is shorter than openDuration 1m0s",
	}, {
		name:    "malformed success codes",
		spec:    tripswitchv1alpha1.CircuitBreakerSpec{Probe: tripswitchv1alpha1.ProbeSpec{HTTP: &tripswitchv1alpha1.HTTPProbe{SuccessCodes: "2xx"}}},
		wantErr: "probe.http.successCodes",
	}, {
		name:    "malformed neutral codes",
		spec:    tripswitchv1alpha1.CircuitBreakerSpec{Probe: tripswitchv1alpha1.ProbeSpec{HTTP: &tripswitchv1alpha1.HTTPProbe{NeutralCodes: "600"}}},
		wantErr: "probe.http.neutralCodes",
	}, {
		name: "a CA bundle that is PEM but no certificate (CEL cannot tell)",
		spec: tripswitchv1alpha1.CircuitBreakerSpec{Probe: tripswitchv1alpha1.ProbeSpec{GRPC: &tripswitchv1alpha1.GRPCProbe{
			TLS: &tripswitchv1alpha1.ProbeTLS{CABundle: testcerts.NotParsing}}}},
		wantErr: "probe: caBundle: PEM block 1: x509:",
	}, {
		name: "an HTTPS host with a port and no server name, past an older CRD",
		spec: tripswitchv1alpha1.CircuitBreakerSpec{Probe: tripswitchv1alpha1.ProbeSpec{HTTP: &tripswitchv1alpha1.HTTPProbe{
			Scheme: tripswitchv1alpha1.SchemeHTTPS, Host: "payments:8443"}}},
		wantErr: `probe: host "payments:8443" has a port`,
	}, {
		name:    "no timeout",
		edit:    func(s *tripswitchv1alpha1.CircuitBreakerSpec) { s.Probe.Timeout = mappingDur(0) },
		wantErr: "probe: probe timeout must be positive",
	}, {
		name:    "no interval",
		edit:    func(s *tripswitchv1alpha1.CircuitBreakerSpec) { s.Probe.Interval = mappingDur(0) },
		wantErr: "probe.interval 0s is not positive",
	}, {
		name:    "no trip rule",
		edit:    func(s *tripswitchv1alpha1.CircuitBreakerSpec) { s.Trip.ConsecutiveFailures = ptr.To[int32](0) },
		wantErr: "no trip rule is configured",
	}, {
		name: "window under minimumProbes",
		spec: tripswitchv1alpha1.CircuitBreakerSpec{Trip: tripswitchv1alpha1.TripSpec{
			FailureRate: &tripswitchv1alpha1.RateRule{Percent: 50, Window: 5, MinimumProbes: ptr.To[int32](10)}}},
		wantErr: "failureRate minimumProbes 10 is not in 1..window (5)",
	}, {
		name: "successThreshold above trialProbes",
		spec: tripswitchv1alpha1.CircuitBreakerSpec{Recovery: tripswitchv1alpha1.RecoverySpec{HalfOpen: tripswitchv1alpha1.HalfOpenSpec{
			TrialProbes: ptr.To[int32](1), SuccessThreshold: ptr.To[int32](2)}}},
		wantErr: "need 1 <= successThreshold (2) <= trialProbes (1)",
	}, {
		name: "jitter over 50%",
		spec: tripswitchv1alpha1.CircuitBreakerSpec{Recovery: tripswitchv1alpha1.RecoverySpec{
			Backoff: &tripswitchv1alpha1.BackoffSpec{JitterPercent: 51}}},
		wantErr: "jitterPercent 51 is not in 0..50",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			spec := mappingResolved(tt.spec)
			if tt.edit != nil {
				tt.edit(&spec)
			}
			_, err := Compile(&spec)
			g.Expect(err).To(MatchError(ContainSubstring(tt.wantErr)))
		})
	}
}

// TestSnapshotRoundTrip writes engine snapshots into status, through JSON as the API server
// stores status, and reads them back: a new leader must resume exactly where the old one was,
// to the second that status keeps.
func TestSnapshotRoundTrip(t *testing.T) {
	since := time.Date(2026, 5, 17, 12, 30, 45, 678_901_234, time.UTC)
	tests := []struct {
		name string
		in   breaker.Snapshot
		gate breaker.State
		// want is in, with its times truncated to the second.
		want breaker.Snapshot
	}{{
		name: "Closed",
		in: breaker.Snapshot{State: breaker.Closed, Reason: breaker.TrialSucceeded, Since: since, Trips: 7,
			ConsecutiveSuccesses: 12},
		gate: breaker.Closed,
		want: breaker.Snapshot{State: breaker.Closed, Reason: breaker.TrialSucceeded, Since: since.Truncate(time.Second),
			Trips: 7, ConsecutiveSuccesses: 12},
	}, {
		name: "Open, openUntil on a whole second as the engine's granularity keeps it",
		in: breaker.Snapshot{State: breaker.Open, Reason: breaker.ConsecutiveFailures, Since: since,
			OpenUntil: since.Add(30 * time.Second).Truncate(time.Second).Add(time.Second), OpenStreak: 2, Trips: 8,
			ConsecutiveFailures: 5},
		gate: breaker.Open,
		want: breaker.Snapshot{State: breaker.Open, Reason: breaker.ConsecutiveFailures, Since: since.Truncate(time.Second),
			OpenUntil: time.Date(2026, 5, 17, 12, 31, 16, 0, time.UTC), OpenStreak: 2, Trips: 8, ConsecutiveFailures: 5},
	}, {
		name: "Open, a finer openUntil is kept to the second",
		in: breaker.Snapshot{State: breaker.Open, Reason: breaker.TrialFailed, Since: since,
			OpenUntil: since.Add(90 * time.Second), OpenStreak: 3, Trips: 9, ConsecutiveFailures: 1},
		gate: breaker.Open,
		want: breaker.Snapshot{State: breaker.Open, Reason: breaker.TrialFailed, Since: since.Truncate(time.Second),
			OpenUntil: time.Date(2026, 5, 17, 12, 32, 15, 0, time.UTC), OpenStreak: 3, Trips: 9, ConsecutiveFailures: 1},
	}, {
		name: "HalfOpen",
		in: breaker.Snapshot{State: breaker.HalfOpen, Reason: breaker.OpenTimeout, Since: since, OpenStreak: 1, Trips: 4,
			ConsecutiveSuccesses: 1},
		gate: breaker.HalfOpen,
		want: breaker.Snapshot{State: breaker.HalfOpen, Reason: breaker.OpenTimeout, Since: since.Truncate(time.Second),
			OpenStreak: 1, Trips: 4, ConsecutiveSuccesses: 1},
	}, {
		name: "Open under ForceClosed: the gate differs from the state",
		in: breaker.Snapshot{State: breaker.Open, Reason: breaker.FailureRate, Since: since,
			OpenUntil: since.Add(time.Minute).Truncate(time.Second), Trips: 1, OpenStreak: 1},
		gate: breaker.Closed,
		want: breaker.Snapshot{State: breaker.Open, Reason: breaker.FailureRate, Since: since.Truncate(time.Second),
			OpenUntil: since.Add(time.Minute).Truncate(time.Second), Trips: 1, OpenStreak: 1},
	}, {
		name: "Closed by a reset, never transitioned before",
		in:   breaker.Snapshot{State: breaker.Closed, Reason: breaker.Reset, Since: since.Truncate(time.Second)},
		gate: breaker.Closed,
		want: breaker.Snapshot{State: breaker.Closed, Reason: breaker.Reset, Since: since.Truncate(time.Second)},
	}}
	apiState := map[breaker.State]tripswitchv1alpha1.State{breaker.Closed: tripswitchv1alpha1.StateClosed,
		breaker.Open: tripswitchv1alpha1.StateOpen, breaker.HalfOpen: tripswitchv1alpha1.StateHalfOpen}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			last := &probe.Result{Endpoint: netip.MustParseAddrPort("10.1.2.3:8080"), Outcome: breaker.Failure,
				Latency: 3*time.Millisecond + 400*time.Microsecond, Message: "connection refused", Time: since}
			st := &tripswitchv1alpha1.CircuitBreakerStatus{}
			applyView(st, runner.View{Snapshot: tt.in, Gate: tt.gate,
				Window: breaker.WindowStats{Probes: 20, Failures: 12, Slow: 1}, LastProbe: last})

			g.Expect(st.State).To(Equal(apiState[tt.in.State]))
			g.Expect(st.GateState).To(Equal(apiState[tt.gate]))
			g.Expect(st.Reason).To(Equal(tt.in.Reason.String()))
			g.Expect(st.OpenUntil != nil).To(Equal(tt.in.State == breaker.Open), "openUntil is set only while Open")
			g.Expect(st.Window).To(Equal(&tripswitchv1alpha1.WindowStatus{Probes: 20, Failures: 12, Slow: 1}))
			g.Expect(st.LastProbe).NotTo(BeNil())
			g.Expect(st.LastProbe.Endpoint).To(Equal("10.1.2.3:8080"))
			g.Expect(st.LastProbe.Outcome).To(Equal(tripswitchv1alpha1.OutcomeFailure))
			g.Expect(st.LastProbe.LatencyMilliseconds).To(BeEquivalentTo(3))
			g.Expect(st.LastProbe.Time.Time).To(BeTemporally("==", since.Truncate(time.Second)))

			// Through JSON, as the API server keeps status (RFC 3339, whole seconds).
			data, err := json.Marshal(st)
			g.Expect(err).NotTo(HaveOccurred())
			stored := &tripswitchv1alpha1.CircuitBreakerStatus{}
			g.Expect(json.Unmarshal(data, stored)).To(Succeed())

			for name, status := range map[string]*tripswitchv1alpha1.CircuitBreakerStatus{"in memory": st, "stored": stored} {
				got := snapshotFromStatus(status)
				g.Expect(got).NotTo(BeNil(), name)
				g.Expect(mappingUTC(*got)).To(Equal(tt.want), name)
			}
		})
	}
}

func TestSnapshotFromEmptyStatusIsNil(t *testing.T) {
	NewWithT(t).Expect(snapshotFromStatus(&tripswitchv1alpha1.CircuitBreakerStatus{})).To(BeNil())
}

// mappingUTC puts a snapshot's times in UTC, since metav1.Time reads times back in Local.
func mappingUTC(s breaker.Snapshot) breaker.Snapshot {
	if !s.Since.IsZero() {
		s.Since = s.Since.UTC()
	}
	if !s.OpenUntil.IsZero() {
		s.OpenUntil = s.OpenUntil.UTC()
	}
	return s
}
