package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Well-known names that users and other tools see on objects.
const (
	// ResetAnnotation, set on a CircuitBreaker to a value not yet recorded in
	// status.lastResetToken, closes the breaker once.
	ResetAnnotation = "tripswitch.io/reset"
	// StateAnnotation carries the breaker's gate state on objects listed in spec.gate.annotations.
	StateAnnotation = "tripswitch.io/state"
	// BreakerAnnotation names the breaker that owns StateAnnotation on an annotated object.
	BreakerAnnotation = "tripswitch.io/breaker"
	// Finalizer lets a breaker hand its front Service back to Kubernetes before it goes away.
	Finalizer = "tripswitch.io/finalizer"
	// ManagedBy is the endpointslice.kubernetes.io/managed-by value on the front Service's slices.
	ManagedBy = "tripswitch.io"
)

// Profile names a preset of trip and recovery tuning.
// +kubebuilder:validation:Enum=aggressive;balanced;conservative
type Profile string

const (
	// ProfileAggressive trips after 3 consecutive failures and stays open 30s.
	ProfileAggressive Profile = "aggressive"
	// ProfileBalanced trips after 5 consecutive failures and stays open 60s (the built-in defaults).
	ProfileBalanced Profile = "balanced"
	// ProfileConservative trips after 10 consecutive failures and stays open 120s.
	ProfileConservative Profile = "conservative"
)

// Mode says whether the breaker's decisions gate traffic.
// +kubebuilder:validation:Enum=Auto;ForceOpen;ForceClosed;Observe
type Mode string

const (
	// ModeAuto gates traffic by the breaker's state.
	ModeAuto Mode = "Auto"
	// ModeForceOpen pins the gate open (no traffic) while probing and status go on.
	ModeForceOpen Mode = "ForceOpen"
	// ModeForceClosed pins the gate closed (all ready endpoints) while probing and status go on.
	ModeForceClosed Mode = "ForceClosed"
	// ModeObserve runs and reports the state machine but never gates traffic ("shadow mode").
	ModeObserve Mode = "Observe"
)

// State is a circuit breaker state.
// +kubebuilder:validation:Enum=Closed;Open;HalfOpen
type State string

const (
	// StateClosed lets traffic through to every ready endpoint of the target.
	StateClosed State = "Closed"
	// StateOpen rejects traffic (or sends it to the fallback).
	StateOpen State = "Open"
	// StateHalfOpen admits a few trial probes and a reduced set of endpoints.
	StateHalfOpen State = "HalfOpen"
)

// Scheme is the URL scheme of an HTTP probe.
// +kubebuilder:validation:Enum=HTTP;HTTPS
type Scheme string

const (
	// SchemeHTTP probes over plain HTTP.
	SchemeHTTP Scheme = "HTTP"
	// SchemeHTTPS probes over TLS.
	SchemeHTTPS Scheme = "HTTPS"
)

// WhenOpen says what clients of a front Service get while the breaker is Open without a
// fallback.
// +kubebuilder:validation:Enum=Respond;Reject
type WhenOpen string

const (
	// WhenOpenRespond publishes tripswitch's responder in the front Service: HTTP gets 503
	// with Retry-After, gRPC gets UNAVAILABLE, any other TCP connection is reset, all at once.
	WhenOpenRespond WhenOpen = "Respond"
	// WhenOpenReject publishes no ready endpoints, so kube-proxy rejects new connections with
	// ICMP port-unreachable, which the kernel rate-limits per client.
	WhenOpenReject WhenOpen = "Reject"
)

// Outcome is the result of one probe as the breaker counts it.
// +kubebuilder:validation:Enum=Success;Failure;Slow;Neutral
type Outcome string

const (
	// OutcomeSuccess is a probe that met its success criteria in time.
	OutcomeSuccess Outcome = "Success"
	// OutcomeFailure is a probe that failed, timed out or returned a failing status.
	OutcomeFailure Outcome = "Failure"
	// OutcomeSlow is a success slower than probe.slowThreshold.
	OutcomeSlow Outcome = "Slow"
	// OutcomeNeutral is a response that counts as neither success nor failure.
	OutcomeNeutral Outcome = "Neutral"
)

// Rules that depend on a default the profile fills live on CircuitBreakerSpec, where
// spec.profile is in view. The maxOpenDuration rule compares against the open duration the
// engine will really use, so it repeats the open durations of Presets (defaults.go): keep
// them in step. "Admission and the engine agree" (test/envtest) fails when they drift.

// CircuitBreakerSpec describes what is protected, how it is probed, when the breaker trips,
// how it recovers and how traffic is gated.
// +kubebuilder:validation:XValidation:rule="!has(self.modeUntil) || (has(self.mode) && self.mode != 'Auto')",message="modeUntil needs a mode other than Auto: it says when that mode ends",fieldPath=".modeUntil"
// +kubebuilder:validation:XValidation:rule="!has(self.trip) || !has(self.trip.slowRate) || (has(self.probe) && has(self.probe.slowThreshold))",message="trip.slowRate needs probe.slowThreshold, which says what slow is"
// +kubebuilder:validation:XValidation:rule="!has(self.recovery) || has(self.recovery.openDuration) || !has(self.recovery.backoff) || !has(self.recovery.backoff.maxOpenDuration) || duration(self.recovery.backoff.maxOpenDuration) >= duration(has(self.profile) ? {'aggressive': '30s', 'balanced': '60s', 'conservative': '120s'}[self.profile] : '60s')",messageExpression="'recovery.backoff.maxOpenDuration must not be shorter than recovery.openDuration (' + (has(self.profile) ? {'aggressive': '30s', 'balanced': '60s', 'conservative': '120s'}[self.profile] + ' from the ' + self.profile + ' profile' : '60s by default') + ' when unset)'",fieldPath=".recovery.backoff.maxOpenDuration"
// +kubebuilder:validation:XValidation:rule="!has(self.target.external) || (has(self.probe) && (has(self.probe.http) || has(self.probe.tcp) || has(self.probe.grpc)))",message="an external target needs probe.http, probe.tcp or probe.grpc: a provider's root path often answers 401 or 404, which must not trip the breaker",fieldPath=".probe"
type CircuitBreakerSpec struct {
	// target is the Service whose ready endpoints are probed and, while the breaker is
	// Closed, published behind the front Service; or an external host, whose resolved
	// addresses are.
	// +required
	Target TargetReference `json:"target"`

	// profile is a preset for trip.consecutiveFailures and recovery.openDuration that fills
	// only the fields left unset: aggressive (3 failures, 30s), balanced (5, 60s) or
	// conservative (10, 120s). Without a profile the built-in defaults equal balanced.
	// +optional
	Profile Profile `json:"profile,omitempty"`

	// mode says whether the breaker gates traffic. Auto gates by state; ForceOpen and
	// ForceClosed pin the gate while probing and status go on; Observe runs and reports the
	// state machine without ever gating traffic.
	// +kubebuilder:default=Auto
	// +optional
	Mode Mode `json:"mode,omitempty"`

	// modeUntil, when set, is when mode ends: from then on the breaker runs in Auto, as if mode
	// were Auto, until the spec changes (`kubectl tripswitch trip payments --for 10m` sets it).
	// The manager never rewrites the spec; status.mode says which mode is in effect. It needs a
	// mode other than Auto.
	// +optional
	ModeUntil *metav1.Time `json:"modeUntil,omitempty"`

	// probe says how every ready endpoint of the target is checked.
	// +kubebuilder:default={}
	// +optional
	Probe ProbeSpec `json:"probe,omitempty"`

	// trip lists the rules that open the breaker; any rule that holds trips it. When no rule
	// is given, the breaker trips after consecutiveFailures (5, or the profile's value).
	// +optional
	Trip TripSpec `json:"trip,omitempty"`

	// recovery says how long the breaker stays Open and how it tests the target before closing.
	// +kubebuilder:default={}
	// +optional
	Recovery RecoverySpec `json:"recovery,omitempty"`

	// gate says how the breaker's state is applied to traffic. The default publishes the
	// target's endpoints behind a front Service named after the breaker.
	// +kubebuilder:default={endpointSlice:{}}
	// +optional
	Gate *GateSpec `json:"gate,omitempty"`

	// ejection, when present, also breaks at the level of single endpoints: an endpoint whose
	// own probes fail is ejected (published not ready and not serving, so kube-proxy stops
	// sending it new connections) for every client at once, while the whole-service breaker
	// keeps working above it. It needs the endpointSlice gate. Absent, no endpoint is ever
	// ejected.
	// +optional
	Ejection *EjectionSpec `json:"ejection,omitempty"`
}

// EjectionSpec ejects failing endpoints, following Envoy's outlier detection where it fits
// (the README lists the differences). An endpoint is ejected when either rule holds for its
// own probes. When neither rule is given, consecutiveFailures defaults to 5.
// +kubebuilder:validation:XValidation:rule="!has(self.baseEjectionTime) || !has(self.maxEjectionTime) || duration(self.maxEjectionTime) >= duration(self.baseEjectionTime)",message="ejection.maxEjectionTime must not be shorter than ejection.baseEjectionTime"
// +kubebuilder:validation:XValidation:rule="has(self.baseEjectionTime) || !has(self.maxEjectionTime) || duration(self.maxEjectionTime) >= duration('30s')",message="ejection.maxEjectionTime must not be shorter than ejection.baseEjectionTime (30s when unset)"
// +kubebuilder:validation:XValidation:rule="!has(self.failureRate) || self.failureRate.window <= 100",message="ejection.failureRate.window must be at most 100: every endpoint keeps a window of its own"
type EjectionSpec struct {
	// consecutiveFailures ejects an endpoint after this many failures in a row of its own
	// probes. Defaults to 5 when failureRate is not given either.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	ConsecutiveFailures *int32 `json:"consecutiveFailures,omitempty"`

	// failureRate ejects an endpoint when the share of failures among its own last window
	// counted probes (at most 100) reaches percent.
	// +optional
	FailureRate *RateRule `json:"failureRate,omitempty"`

	// baseEjectionTime is how long the first ejection of an endpoint lasts; each further
	// ejection lasts baseEjectionTime × the number of times it was ejected, capped at
	// maxEjectionTime. The count drops by one for every baseEjectionTime the endpoint stays
	// in. Defaults to 30s; at least 1s, at most 1h.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s')",message="ejection.baseEjectionTime must be at least 1s"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('1h')",message="ejection.baseEjectionTime must be at most 1h"
	// +optional
	BaseEjectionTime *metav1.Duration `json:"baseEjectionTime,omitempty"`

	// maxEjectionTime caps how long one ejection lasts. Defaults to 5m, or to
	// baseEjectionTime when that is longer; at most 24h.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s')",message="ejection.maxEjectionTime must be at least 1s"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('24h')",message="ejection.maxEjectionTime must be at most 24h"
	// +optional
	MaxEjectionTime *metav1.Duration `json:"maxEjectionTime,omitempty"`

	// maxEjectedPercent caps the endpoints ejected at once at this share of the target's
	// probed ready endpoints, rounded down, and never all of them: with 3 endpoints and 50,
	// one may be ejected. Defaults to 50.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	MaxEjectedPercent *int32 `json:"maxEjectedPercent,omitempty"`

	// panicThresholdPercent: when fewer than this share of the endpoints are healthy (neither
	// ejected nor failing their rule), ejections are ignored and every endpoint is
	// published, as Envoy does in panic mode. 0 never panics. Defaults to 50.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	PanicThresholdPercent *int32 `json:"panicThresholdPercent,omitempty"`
}

// TargetReference names what the breaker protects: a Service port in the breaker's
// namespace, or a host outside the cluster.
// +kubebuilder:validation:XValidation:rule="has(self.service) != has(self.external)",message="target needs exactly one of service and external"
// +kubebuilder:validation:XValidation:rule="has(self.service) == has(self.port)",message="target.port goes with target.service (a Service port); an external target has its own port in target.external.port"
type TargetReference struct {
	// service is the name of a Service in the breaker's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	// +optional
	Service string `json:"service,omitempty"`

	// port is the Service port, by name or by number; it goes with service.
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? (self >= 1 && self <= 65535) : (size(self) <= 15 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",message="port must be a number in 1-65535 or a Service port name"
	// +optional
	Port *intstr.IntOrString `json:"port,omitempty"`

	// external is a host outside the cluster, such as a third-party API. The manager
	// resolves it through its own upstream DNS server and publishes the addresses behind the
	// front Service; callers keep calling the host's name, which the cluster's DNS answers
	// with the front Service (see status.external.dnsRewrite). The host must be allowed by the
	// manager's --allowed-external-hosts.
	// +optional
	External *ExternalTarget `json:"external,omitempty"`
}

// ExternalTarget is a host outside the cluster and the port its clients call.
type ExternalTarget struct {
	// host is a fully qualified DNS name with at least two labels, lower case, without a
	// trailing dot, such as api.stripe.com. IP addresses are not accepted: a fixed address
	// needs no breaker of its own, a selectorless Service with hand-written EndpointSlices
	// serves it.
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`
	// +required
	Host string `json:"host"`

	// port is the TCP port the host's clients call, such as 443; the front Service gets it.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +required
	Port int32 `json:"port"`

	// maxAddresses bounds how many of the host's addresses are probed and published. Answers
	// that rotate through a CDN's addresses add up to it; those seen least recently go first.
	// +kubebuilder:default=16
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=64
	// +optional
	MaxAddresses *int32 `json:"maxAddresses,omitempty"`
}

// ProbeSpec says how endpoints are probed. At most one of http, tcp and grpc may be set;
// none means an HTTP GET of "/".
// +kubebuilder:validation:XValidation:rule="[has(self.http), has(self.tcp), has(self.grpc)].filter(x, x).size() <= 1",message="probe may set only one of http, tcp or grpc"
// +kubebuilder:validation:XValidation:rule="!has(self.timeout) || duration(self.timeout) <= (has(self.interval) ? duration(self.interval) : duration('1s'))",message="probe.timeout must not be longer than probe.interval"
// +kubebuilder:validation:XValidation:rule="!has(self.slowThreshold) || !has(self.timeout) || duration(self.slowThreshold) < duration(self.timeout)",message="probe.slowThreshold must be shorter than probe.timeout"
// +kubebuilder:validation:XValidation:rule="!has(self.slowThreshold) || has(self.timeout) || duration(self.slowThreshold) < (has(self.interval) && duration(self.interval) < duration('1s') ? duration(self.interval) : duration('1s'))",message="probe.slowThreshold must be shorter than probe.timeout (1s when unset, or probe.interval when that is shorter)"
type ProbeSpec struct {
	// interval is how often every ready endpoint is probed; at least 50ms, at most 5m.
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('50ms')",message="probe.interval must be at least 50ms"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('5m')",message="probe.interval must be at most 5m"
	// +optional
	Interval *metav1.Duration `json:"interval,omitempty"`

	// timeout bounds each probe; it may not be longer than interval. Defaults to 1s, or to
	// interval when that is shorter.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10ms')",message="probe.timeout must be at least 10ms"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// slowThreshold, when set, makes a successful probe slower than this count as Slow,
	// which feeds trip.slowRate and otherwise counts as a success. It must be shorter than
	// the timeout in use: timeout, or when that is unset 1s (or interval, when shorter).
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1ms')",message="probe.slowThreshold must be at least 1ms"
	// +optional
	SlowThreshold *metav1.Duration `json:"slowThreshold,omitempty"`

	// http probes with an HTTP GET; this is the default probe kind.
	// +optional
	HTTP *HTTPProbe `json:"http,omitempty"`

	// tcp probes by opening a TCP connection; a connection that opens is a success.
	// +optional
	TCP *TCPProbe `json:"tcp,omitempty"`

	// grpc probes with the standard grpc.health.v1.Health/Check call; SERVING is a success.
	// +optional
	GRPC *GRPCProbe `json:"grpc,omitempty"`
}

// HTTPProbe is an HTTP GET against each endpoint.
// +kubebuilder:validation:XValidation:rule="!has(self.tls) || (has(self.scheme) && self.scheme == 'HTTPS')",message="probe.http.tls needs scheme HTTPS"
// +kubebuilder:validation:XValidation:rule="!has(self.host) || !self.host.contains(':') || !has(self.scheme) || self.scheme != 'HTTPS' || (has(self.tls) && has(self.tls.serverName))",message="an HTTPS probe's host is also its TLS server name, which cannot have a port: drop the port, or set tls.serverName"
// +kubebuilder:validation:XValidation:rule="!has(self.insecureSkipVerify) || !self.insecureSkipVerify || !has(self.tls) || !has(self.tls.caBundle)",message="probe.http.insecureSkipVerify skips the very check that tls.caBundle is for: set one of them"
type HTTPProbe struct {
	// path is the request path, with an optional query. It has no spaces or control
	// characters, and every % starts an escape such as %20, so that it makes a valid URL.
	// +kubebuilder:default="/"
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^/([^\s\x00-\x1f\x7f%]|%[0-9A-Fa-f]{2})*$`
	// +optional
	Path string `json:"path,omitempty"`

	// scheme is HTTP or HTTPS.
	// +kubebuilder:default=HTTP
	// +optional
	Scheme Scheme `json:"scheme,omitempty"`

	// host is sent as the Host header; defaults to the endpoint address. For HTTPS it is also
	// the TLS server name unless tls.serverName is set, so it may then have a port only
	// beside tls.serverName.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$`
	// +optional
	Host string `json:"host,omitempty"`

	// headers are extra request headers.
	// +kubebuilder:validation:MaxItems=16
	// +listType=map
	// +listMapKey=name
	// +optional
	Headers []HTTPHeader `json:"headers,omitempty"`

	// successCodes lists the status codes that count as success, as comma-separated codes
	// and inclusive ranges, for example "200-299,304".
	// +kubebuilder:default="200-399"
	// +optional
	SuccessCodes StatusCodes `json:"successCodes,omitempty"`

	// neutralCodes lists status codes that count as neither success nor failure, such as 429,
	// in the same syntax as successCodes. They take precedence over successCodes.
	// +optional
	NeutralCodes StatusCodes `json:"neutralCodes,omitempty"`

	// insecureSkipVerify skips verification of the endpoint's certificate for HTTPS probes.
	// +optional
	InsecureSkipVerify bool `json:"insecureSkipVerify,omitempty"`

	// tls says how an HTTPS probe checks the endpoint's certificate; it needs scheme HTTPS.
	// +optional
	TLS *ProbeTLS `json:"tls,omitempty"`
}

// ProbeTLS says how a probe checks the endpoint's certificate: against which authorities,
// and for which name.
type ProbeTLS struct {
	// caBundle is one or more PEM certificates ("-----BEGIN CERTIFICATE-----" blocks, and
	// nothing else between them but whitespace): the authorities trusted to sign the
	// endpoint's certificate, instead of the manager's system roots. At most 64 KiB. A bundle
	// whose blocks do not parse as X.509 certificates is reported as the InvalidSpec
	// condition, and the breaker keeps running with its last good configuration.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=65536
	// +kubebuilder:validation:XValidation:rule="self.matches(r'^\\s*(-----BEGIN CERTIFICATE-----\\r?\\n[A-Za-z0-9+/=\\r\\n]+-----END CERTIFICATE-----\\s*)+$')",message="caBundle must be one or more PEM certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----) and nothing else"
	// +optional
	CABundle string `json:"caBundle,omitempty"`

	// serverName is sent in the TLS handshake (SNI) and must be named by the endpoint's
	// certificate. Defaults to probe.http.host for HTTPS, and otherwise to the endpoint's
	// IP address. For gRPC it is also the :authority of the health check.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$`
	// +optional
	ServerName string `json:"serverName,omitempty"`
}

// StatusCodes is a comma-separated list of HTTP status codes and inclusive ranges, such as
// "200-299,304".
// +kubebuilder:validation:MaxLength=128
// +kubebuilder:validation:Pattern=`^[1-5][0-9][0-9](-[1-5][0-9][0-9])?(,[1-5][0-9][0-9](-[1-5][0-9][0-9])?)*$`
// +kubebuilder:validation:XValidation:rule="self.split(',').all(r, !r.contains('-') || int(r.split('-')[0]) <= int(r.split('-')[1]))",message="status code ranges must be written low-high, as in 200-399"
type StatusCodes string

// HTTPHeader is one request header of an HTTP probe.
type HTTPHeader struct {
	// name is the header name.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[!#$%&'*+.^_|~0-9A-Za-z-]+$`
	// +required
	Name string `json:"name"`

	// value is the header value; it may hold no control characters other than tab.
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^[^\x00-\x08\x0a-\x1f\x7f]*$`
	// +required
	Value string `json:"value"`
}

// TCPProbe opens a TCP connection; it has no settings.
type TCPProbe struct{}

// GRPCProbe calls grpc.health.v1.Health/Check.
type GRPCProbe struct {
	// service is the service name sent in the health check request; empty asks about the
	// server as a whole.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Service string `json:"service,omitempty"`

	// tls, when present, makes the check over TLS, verified as it says; an empty tls: {}
	// trusts the manager's system roots and checks the endpoint's IP address.
	// +optional
	TLS *ProbeTLS `json:"tls,omitempty"`
}

// TripSpec lists the rules that open the breaker.
type TripSpec struct {
	// consecutiveFailures opens the breaker after this many failures in a row across the
	// target's endpoints. Defaults to 5 (or the profile's value) when no rule is given.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	ConsecutiveFailures *int32 `json:"consecutiveFailures,omitempty"`

	// failureRate opens the breaker when the share of failures over the last window counted
	// probes reaches percent.
	// +optional
	FailureRate *RateRule `json:"failureRate,omitempty"`

	// slowRate opens the breaker when the share of Slow probes over the last window counted
	// probes reaches percent. It needs probe.slowThreshold.
	// +optional
	SlowRate *RateRule `json:"slowRate,omitempty"`

	// queries are PromQL rules over the target's real traffic, evaluated against the
	// manager's --prometheus-url every queryInterval while the breaker is Closed; any rule that
	// holds for its number of consecutive evaluations trips the breaker, like the rules above.
	// A query that fails or times out never trips. Recovery stays with the probes.
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=10
	// +optional
	Queries []QueryRule `json:"queries,omitempty"`

	// queryInterval is how often the queries are evaluated. Defaults to 15s; at least 1s, at
	// most 10m.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s')",message="trip.queryInterval must be at least 1s"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('10m')",message="trip.queryInterval must be at most 10m"
	// +optional
	QueryInterval *metav1.Duration `json:"queryInterval,omitempty"`

	// confirm asks observers on other nodes for a second opinion before a trip decided on the
	// manager's own probes takes traffic away: the node agents probe the failing endpoints
	// once, and the breaker opens only when a majority of those that answered, the manager's
	// node included, see the failure. Nobody answering within one probe timeout leaves the
	// decision to the manager's probes, under the observer guard. It takes effect only where
	// the manager has observers (--observer-namespace); query rules are never confirmed.
	// +optional
	Confirm *ConfirmSpec `json:"confirm,omitempty"`
}

// ConfirmSpec is how a breaker's trips are confirmed (trip.confirm).
type ConfirmSpec struct {
	// observers is how many observers on other nodes are asked; 0 turns confirmation off, so
	// that the manager's probes alone decide. Defaults to 2.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=5
	// +optional
	Observers *int32 `json:"observers,omitempty"`

	// zones says how observers are chosen by their nodes' topology.kubernetes.io/zone:
	// Prefer (the default) asks observers in other zones first, Require only observers in
	// other zones (with none, the manager's probes alone decide), Ignore any other node.
	// +optional
	Zones ConfirmZones `json:"zones,omitempty"`
}

// ConfirmZones says how observers are chosen by zone.
// +kubebuilder:validation:Enum=Prefer;Require;Ignore
type ConfirmZones string

const (
	ConfirmZonesPrefer  ConfirmZones = "Prefer"
	ConfirmZonesRequire ConfirmZones = "Require"
	ConfirmZonesIgnore  ConfirmZones = "Ignore"
)

// NoDataPolicy says what a query evaluation that returns nothing counts as.
// +kubebuilder:validation:Enum=Ignore;Failure
type NoDataPolicy string

const (
	// NoDataIgnore: an empty result neither holds nor breaks a run of evaluations that held.
	NoDataIgnore NoDataPolicy = "Ignore"
	// NoDataFailure: an empty result counts as an evaluation that holds.
	NoDataFailure NoDataPolicy = "Failure"
)

// QueryRule trips the breaker when a PromQL query's value stays above (or below) a bound for
// a number of consecutive evaluations. The query must return one number: a scalar, or an
// instant vector with one series (aggregate with sum() and the like).
// +kubebuilder:validation:XValidation:rule="has(self.above) != has(self.below)",message="set exactly one of above and below"
type QueryRule struct {
	// name identifies the rule in status, events and metrics.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +required
	Name string `json:"name"`

	// query is the PromQL expression. With the manager's --query-namespace-label set, every
	// series selector in it is confined to the breaker's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	// +required
	Query string `json:"query"`

	// above: the rule holds while the value is greater than this decimal number.
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$`
	// +optional
	Above *string `json:"above,omitempty"`

	// below: the rule holds while the value is less than this decimal number.
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$`
	// +optional
	Below *string `json:"below,omitempty"`

	// for is how many consecutive evaluations must hold to trip. Defaults to 3, so that one
	// noisy evaluation (a scrape that came late, a rate over few requests) never trips the
	// breaker for every caller.
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	For int32 `json:"for,omitempty"`

	// noData says what an evaluation that returns nothing (or NaN, as a ratio without traffic
	// gives) counts as: Ignore, the default, or Failure.
	// +kubebuilder:default=Ignore
	// +optional
	NoData NoDataPolicy `json:"noData,omitempty"`
}

// RateRule trips when a share of the last window probe outcomes reaches percent.
// +kubebuilder:validation:XValidation:rule="!has(self.minimumProbes) || self.window >= self.minimumProbes",message="window must be at least minimumProbes"
type RateRule struct {
	// percent is the share of outcomes, 1 to 100, that trips the breaker.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +required
	Percent int32 `json:"percent"`

	// window is how many of the most recent counted outcomes (neutral ones are not counted)
	// the rate is computed over.
	// +kubebuilder:default=20
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Window int32 `json:"window,omitempty"`

	// minimumProbes is how many outcomes the window must hold before the rate is judged.
	// Defaults to window.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MinimumProbes *int32 `json:"minimumProbes,omitempty"`
}

// RecoverySpec says how the breaker leaves Open.
// +kubebuilder:validation:XValidation:rule="!has(self.backoff) || !has(self.backoff.maxOpenDuration) || !has(self.openDuration) || duration(self.backoff.maxOpenDuration) >= duration(self.openDuration)",message="recovery.backoff.maxOpenDuration must not be shorter than recovery.openDuration"
type RecoverySpec struct {
	// openDuration is how long the breaker stays Open before a HalfOpen trial. Defaults to
	// 60s (or the profile's value); at least 1s, at most 1h.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s')",message="recovery.openDuration must be at least 1s"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('1h')",message="recovery.openDuration must be at most 1h"
	// +optional
	OpenDuration *metav1.Duration `json:"openDuration,omitempty"`

	// backoff, when set, multiplies the open duration on every reopen without an
	// intervening Close.
	// +optional
	Backoff *BackoffSpec `json:"backoff,omitempty"`

	// halfOpen says how the target is tested before the breaker closes.
	// +kubebuilder:default={}
	// +optional
	HalfOpen HalfOpenSpec `json:"halfOpen,omitempty"`

	// slowStart, when present, re-admits endpoints in steps rather than all at once: after
	// the breaker closes from HalfOpen (every endpoint but the ones HalfOpen published), and
	// when ejected endpoints return. It needs the endpointSlice gate.
	// +optional
	SlowStart *SlowStartSpec `json:"slowStart,omitempty"`
}

// SlowStartSpec ramps endpoints back in. kube-proxy has no per-endpoint weights, so
// publishing endpoints a few at a time is the only ramp: of the C endpoints coming back, 1 at
// once, a quarter from a third of the window, half from two thirds, and all at its end.
type SlowStartSpec struct {
	// window is how long the ramp takes; at least 1s, at most 1h.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s')",message="recovery.slowStart.window must be at least 1s"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('1h')",message="recovery.slowStart.window must be at most 1h"
	// +required
	Window metav1.Duration `json:"window"`
}

// BackoffSpec grows the open duration: openDuration × factor^(openStreak−1), capped at
// maxOpenDuration, then spread by ± jitterPercent.
type BackoffSpec struct {
	// factor multiplies the open duration on each reopen.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	// +optional
	Factor int32 `json:"factor,omitempty"`

	// maxOpenDuration caps the grown open duration; at most 24h, and not shorter than the
	// open duration in use: recovery.openDuration, or when that is unset the profile's (30s
	// aggressive, 60s balanced or no profile, 120s conservative). Defaults to 10m, or to
	// openDuration when that is longer.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s')",message="recovery.backoff.maxOpenDuration must be at least 1s"
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('24h')",message="recovery.backoff.maxOpenDuration must be at most 24h"
	// +optional
	MaxOpenDuration *metav1.Duration `json:"maxOpenDuration,omitempty"`

	// jitterPercent spreads each open duration randomly by up to ± this share, so that
	// breakers that tripped together don't all retry together.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=50
	// +optional
	JitterPercent int32 `json:"jitterPercent,omitempty"`
}

// HalfOpenSpec says how a HalfOpen breaker tests the target.
// +kubebuilder:validation:XValidation:rule="!has(self.successThreshold) || !has(self.trialProbes) || self.successThreshold <= self.trialProbes",message="halfOpen.successThreshold must not exceed halfOpen.trialProbes"
type HalfOpenSpec struct {
	// trialProbes is how many probe outcomes one HalfOpen attempt admits. Defaults to
	// successThreshold.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	TrialProbes *int32 `json:"trialProbes,omitempty"`

	// successThreshold is how many consecutive successful trials close the breaker; any
	// failed trial reopens it. Defaults to 1.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	SuccessThreshold *int32 `json:"successThreshold,omitempty"`
}

// GateSpec says how the breaker's state reaches traffic. At least one gate is needed.
// +kubebuilder:validation:XValidation:rule="has(self.endpointSlice) || (has(self.annotations) && size(self.annotations) > 0)",message="gate needs endpointSlice, annotations, or both"
type GateSpec struct {
	// endpointSlice, when present, publishes the target's endpoints behind a selectorless
	// front Service according to the breaker's state.
	// +optional
	EndpointSlice *EndpointSliceGate `json:"endpointSlice,omitempty"`

	// annotations lists objects in the breaker's namespace that get the annotations
	// tripswitch.io/state and tripswitch.io/breaker.
	// +kubebuilder:validation:MaxItems=16
	// +listType=map
	// +listMapKey=apiVersion
	// +listMapKey=kind
	// +listMapKey=name
	// +optional
	Annotations []AnnotatedObjectReference `json:"annotations,omitempty"`
}

// EndpointSliceGate publishes the target's endpoints behind a front Service.
// +kubebuilder:validation:XValidation:rule="!has(self.fallback) || !has(self.service) || self.fallback.service != self.service",message="gate.endpointSlice.fallback.service must differ from the front Service"
type EndpointSliceGate struct {
	// service is the selectorless front Service that clients call. Defaults to the breaker's
	// name; it must differ from target.service. A missing Service is created with the
	// target's ports; an existing selectorless one is adopted.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	// +optional
	Service string `json:"service,omitempty"`

	// halfOpenEndpoints is how many of the target's ready endpoints are published while
	// the breaker is HalfOpen.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	HalfOpenEndpoints int32 `json:"halfOpenEndpoints,omitempty"`

	// fallback, when set, has its ready endpoints published while the breaker is Open,
	// instead of none.
	// +optional
	Fallback *FallbackReference `json:"fallback,omitempty"`

	// whenOpen says what clients of the front get while the breaker is Open and has no
	// fallback. Respond (the default) publishes tripswitch's responder, which answers at once:
	// HTTP with 503 and Retry-After, gRPC with UNAVAILABLE, and any other TCP port with a
	// reset; while HalfOpen the responder also takes a share of new connections beside the
	// trial endpoints. Reject publishes no ready endpoints: kube-proxy then refuses with ICMP
	// port-unreachable, which the kernel rate-limits per client, so pod clients that open more
	// than about one connection a second wait for SYN retransmits (1 s, then 3 s). While no
	// responder endpoint is ready, Respond behaves like Reject and the Responder condition
	// says so.
	// +kubebuilder:default=Respond
	// +optional
	WhenOpen WhenOpen `json:"whenOpen,omitempty"`

	// cutConnections says whether tripswitch's node agent cuts the established connections
	// that clients keep to endpoints the front stops publishing: when the breaker opens
	// (also when it reopens after a failed trial) and when an endpoint is ejected. kube-proxy
	// steers only new connections, so without the cut a pooled keep-alive, HTTP/2 or gRPC
	// client goes on reaching a failing endpoint until it happens to reconnect. The cut
	// clients' next packet on such a connection draws a TCP reset, and they reconnect to what
	// the front publishes now. Closing the breaker cuts nothing, and nothing is cut where no
	// agent runs. Set false for a target whose clients hold long streams that must never be
	// cut, even when it fails.
	// +kubebuilder:default=true
	// +optional
	CutConnections *bool `json:"cutConnections,omitempty"`
}

// FallbackReference names a Service port whose endpoints serve traffic while Open.
// +kubebuilder:validation:XValidation:rule="!has(self.port) || (type(self.port) == int ? (self.port >= 1 && self.port <= 65535) : (size(self.port) <= 15 && self.port.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')))",message="fallback.port must be a number in 1-65535 or a Service port name"
type FallbackReference struct {
	// service is the name of a Service in the breaker's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	// +required
	Service string `json:"service"`

	// port is the fallback Service's port, by name or number. Defaults to target.port (target.external.port for an external target).
	// +kubebuilder:validation:XIntOrString
	// +optional
	Port *intstr.IntOrString `json:"port,omitempty"`
}

// AnnotatedObjectReference names an object in the breaker's namespace. The kinds are a fixed
// list, because the operator needs permission to patch each: Ingress (networking.k8s.io/v1),
// Service (v1), and HTTPRoute or GRPCRoute (gateway.networking.k8s.io/v1).
// +kubebuilder:validation:XValidation:rule="(self.apiVersion == 'networking.k8s.io/v1' && self.kind == 'Ingress') || (self.apiVersion == 'v1' && self.kind == 'Service') || (self.apiVersion == 'gateway.networking.k8s.io/v1' && (self.kind == 'HTTPRoute' || self.kind == 'GRPCRoute'))",message="annotations can target Ingress (networking.k8s.io/v1), Service (v1), HTTPRoute or GRPCRoute (gateway.networking.k8s.io/v1)"
type AnnotatedObjectReference struct {
	// apiVersion of the object, for example networking.k8s.io/v1.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?v[0-9]+((alpha|beta)[0-9]+)?$`
	// +required
	APIVersion string `json:"apiVersion"`

	// kind of the object, for example Ingress.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[A-Z][A-Za-z0-9]*$`
	// +required
	Kind string `json:"kind"`

	// name of the object.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	// +required
	Name string `json:"name"`
}

// CircuitBreakerStatus is the breaker's observed state; it is the source of truth that a
// restarted or new leader resumes from.
type CircuitBreakerStatus struct {
	// observedGeneration is the metadata.generation this status was computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// state is the breaker's state machine state.
	// +optional
	State State `json:"state,omitempty"`

	// gateState is the state applied to traffic; it differs from state under ForceOpen,
	// ForceClosed and Observe.
	// +optional
	GateState State `json:"gateState,omitempty"`

	// mode is the mode in effect: spec.mode, or Auto once spec.modeUntil has passed.
	// +optional
	Mode Mode `json:"mode,omitempty"`

	// reason says why the last transition happened, for example ConsecutiveFailures,
	// FailureRate, SlowRate, OpenTimeout, TrialSucceeded, TrialFailed, Reset or Forced.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Reason string `json:"reason,omitempty"`

	// transitionMessage says what decided the last transition, in words: the deciding probe's
	// result and endpoint ("HTTP 503 from 10.0.0.7:8080"), or the query rule and the value it
	// saw ("error-rate 0.31 > 0.05 for 3 evaluations"); empty when a deadline or the user
	// decided it.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	TransitionMessage string `json:"transitionMessage,omitempty"`

	// lastTransitionTime is when state last changed.
	// +optional
	LastTransitionTime *metav1.Time `json:"lastTransitionTime,omitempty"`

	// confirmation is the newest second opinion on a trip (spec.trip.confirm): who was asked
	// and what each saw.
	// +optional
	Confirmation *ConfirmationStatus `json:"confirmation,omitempty"`

	// openUntil is when the next HalfOpen trial starts; set only while Open.
	// +optional
	OpenUntil *metav1.Time `json:"openUntil,omitempty"`

	// trips counts how many times the breaker has opened, all time.
	// +optional
	Trips int64 `json:"trips"`

	// openStreak counts reopens since the last Close; it drives backoff.
	// +optional
	OpenStreak int32 `json:"openStreak,omitempty"`

	// consecutiveFailures is the current run of failed probes.
	// +optional
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`

	// consecutiveSuccesses is the current run of successful probes.
	// +optional
	ConsecutiveSuccesses int32 `json:"consecutiveSuccesses,omitempty"`

	// window summarises the outcomes the rate rules are judged over.
	// +optional
	Window *WindowStatus `json:"window,omitempty"`

	// endpoints counts the target's ready endpoints and those published to the front Service.
	// +optional
	Endpoints *EndpointsStatus `json:"endpoints,omitempty"`

	// ejection says which endpoints are ejected or wait for slow start, present while the
	// spec asks for ejection or slow start.
	// +optional
	Ejection *EjectionStatus `json:"ejection,omitempty"`

	// queries are the newest evaluations of spec.trip.queries.
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=10
	// +optional
	Queries []QueryStatus `json:"queries,omitempty"`

	// frontService is the name of the front Service whose EndpointSlices the breaker owns.
	// +optional
	FrontService string `json:"frontService,omitempty"`

	// target names what the breaker protects, for kubectl get: the target Service's name, or
	// an external target's host:port.
	// +kubebuilder:validation:MaxLength=260
	// +optional
	Target string `json:"target,omitempty"`

	// external is what the manager knows of an external target's host: the addresses it
	// resolved, the last resolution, and the DNS stanza that sends callers to the front.
	// +optional
	External *ExternalStatus `json:"external,omitempty"`

	// lastProbe is the most recent probe result.
	// +optional
	LastProbe *ProbeResult `json:"lastProbe,omitempty"`

	// annotatedObjects are the objects that carry the breaker's annotations now, so that
	// the annotations can be removed when an object leaves spec.gate.annotations.
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	AnnotatedObjects []AnnotatedObjectReference `json:"annotatedObjects,omitempty"`

	// lastResetToken is the last value of the tripswitch.io/reset annotation that was acted on.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	LastResetToken string `json:"lastResetToken,omitempty"`

	// conditions are Ready, and the kstatus conditions Reconciling and Stalled when they apply.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ExternalStatus describes an external target's resolution.
type ExternalStatus struct {
	// host is the host these addresses belong to.
	// +kubebuilder:validation:MaxLength=253
	Host string `json:"host"`

	// addresses are the host's addresses that are probed and published: every address an
	// answer named within the last few minutes (answers that rotate through a CDN's
	// addresses must not flap the front), at most target.external.maxAddresses. They survive
	// failed resolutions: DNS trouble never empties the front.
	// +kubebuilder:validation:MaxItems=64
	// +listType=atomic
	// +optional
	Addresses []ExternalAddress `json:"addresses,omitempty"`

	// refused are addresses that answers named but that are never published: addresses of
	// the cluster's own Services (a cluster DNS that already answers the host with the front),
	// loopback, link-local, multicast, or outside the manager's --probe-allowed-cidrs.
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	Refused []string `json:"refused,omitempty"`

	// server is the DNS server that gave the last answer.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Server string `json:"server,omitempty"`

	// lastResolution is when the host was last resolved, successfully or not.
	// +optional
	LastResolution *metav1.Time `json:"lastResolution,omitempty"`

	// lastSuccess is when the host was last resolved successfully.
	// +optional
	LastSuccess *metav1.Time `json:"lastSuccess,omitempty"`

	// nextResolution is when the host is resolved again: at the answer's TTL, clamped to
	// 5s-5m, or sooner after a failure.
	// +optional
	NextResolution *metav1.Time `json:"nextResolution,omitempty"`

	// error says why the last resolution failed; empty when it succeeded.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Error string `json:"error,omitempty"`

	// clusterName is the front Service's name in the cluster's DNS, such as
	// payments.shop.svc.cluster.local, which the host's name must be rewritten to.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	ClusterName string `json:"clusterName,omitempty"`

	// dnsRewrite is the CoreDNS stanza that answers the host's name with the front Service,
	// for the cluster admin to add to the Corefile's server block (or to a coredns-custom
	// ConfigMap as an .override), anywhere in the block (CoreDNS orders its plugins itself).
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	DNSRewrite string `json:"dnsRewrite,omitempty"`
}

// ExternalAddress is one resolved address of an external target.
type ExternalAddress struct {
	// address is the IPv4 or IPv6 address.
	// +kubebuilder:validation:MaxLength=45
	Address string `json:"address"`
	// lastSeen is when an answer last named it.
	LastSeen metav1.Time `json:"lastSeen"`
	// ttlSeconds is the TTL of the answer that last named it.
	// +optional
	TTLSeconds int32 `json:"ttlSeconds,omitempty"`
}

// WindowStatus summarises the rate window.
type WindowStatus struct {
	// probes is how many counted outcomes the window holds.
	Probes int32 `json:"probes"`
	// failures is how many of them failed.
	Failures int32 `json:"failures"`
	// slow is how many of them were Slow.
	Slow int32 `json:"slow"`
}

// EndpointsStatus counts endpoints.
type EndpointsStatus struct {
	// target is how many ready endpoints the target Service has on the chosen port.
	Target int32 `json:"target"`
	// published is how many ready endpoints of the target (or, while Open, of the fallback)
	// the front Service's slices publish; responder endpoints are not counted here.
	Published int32 `json:"published"`
	// responders is how many of tripswitch's responder endpoints the front Service's slices
	// publish (gate.endpointSlice.whenOpen Respond, while Open or HalfOpen).
	// +optional
	Responders int32 `json:"responders,omitempty"`
}

// EjectionStatus is the endpoint level of the breaker: counts, and the first endpoints that
// are not simply published.
type EjectionStatus struct {
	// ejected is how many endpoints are ejected now, including those whose ejection time
	// ended and that wait for their trial probe.
	Ejected int32 `json:"ejected"`
	// capped is how many endpoints fail their ejection rule but stay published, because
	// maxEjected endpoints are ejected already (or the observer guard held the ejection).
	// +optional
	Capped int32 `json:"capped,omitempty"`
	// maxEjected is how many endpoints maxEjectedPercent allows to be ejected at once now.
	// +optional
	MaxEjected int32 `json:"maxEjected,omitempty"`
	// slowStart is how many healthy endpoints wait for their step of the slow-start ramp.
	// +optional
	SlowStart int32 `json:"slowStart,omitempty"`
	// panic says that fewer endpoints are healthy than panicThresholdPercent asks, so
	// ejections are ignored and every endpoint is published.
	// +optional
	Panic bool `json:"panic,omitempty"`
	// endpoints lists the first 20 endpoints that are ejected (oldest first), then those
	// waiting for slow start (next to be admitted first); the counts above cover the rest.
	// +kubebuilder:validation:MaxItems=20
	// +listType=atomic
	// +optional
	Endpoints []EjectedEndpoint `json:"endpoints,omitempty"`
}

// EjectedEndpoint is one endpoint that is ejected or waits for slow start.
type EjectedEndpoint struct {
	// endpoint is the probed address and port.
	// +kubebuilder:validation:MaxLength=64
	Endpoint string `json:"endpoint"`
	// phase is Ejected or SlowStart.
	// +kubebuilder:validation:Enum=Ejected;SlowStart
	Phase string `json:"phase"`
	// reason says why an ejected endpoint was ejected: ConsecutiveFailures, FailureRate, or
	// TrialFailed when the trial probe at the end of an ejection failed.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Reason string `json:"reason,omitempty"`
	// since is when it was ejected, or began waiting for slow start.
	Since metav1.Time `json:"since"`
	// until is when its ejection ends; then one trial probe decides whether it returns.
	// +optional
	Until *metav1.Time `json:"until,omitempty"`
	// ejections is how many times it was ejected, which sets how long an ejection lasts.
	// +optional
	Ejections int32 `json:"ejections,omitempty"`
	// message describes the probe that decided the ejection, such as "HTTP 503".
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Message string `json:"message,omitempty"`
}

// QueryStatus is the newest evaluation of one query rule.
type QueryStatus struct {
	// name is the rule's name.
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`
	// value is what the query returned, as a decimal number; absent for no data or an error.
	// +kubebuilder:validation:MaxLength=32
	// +optional
	Value string `json:"value,omitempty"`
	// holding is how many consecutive evaluations held.
	// +optional
	Holding int32 `json:"holding,omitempty"`
	// lastEvaluation is when the query was last sent.
	// +optional
	LastEvaluation *metav1.Time `json:"lastEvaluation,omitempty"`
	// error is why the last evaluation failed; a failed evaluation never trips.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Error string `json:"error,omitempty"`
	// settlingUntil, set after the breaker closes, is when the rule is judged again: until
	// then its window (the longest range in the query) reaches back to before the close, to
	// the errors that tripped it and the refusals of the Open time.
	// +optional
	SettlingUntil *metav1.Time `json:"settlingUntil,omitempty"`
}

// ProbeResult is one probe's result.
type ProbeResult struct {
	// time is when the probe finished.
	Time metav1.Time `json:"time"`
	// endpoint is the probed address and port.
	// +kubebuilder:validation:MaxLength=64
	Endpoint string `json:"endpoint"`
	// outcome is how the breaker counted the probe.
	Outcome Outcome `json:"outcome"`
	// latencyMilliseconds is how long the probe took.
	LatencyMilliseconds int64 `json:"latencyMilliseconds"`
	// message is a short human description, such as "HTTP 503" or "connection refused".
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Message string `json:"message,omitempty"`
}

// CircuitBreaker probes a target Service and gates traffic to it cluster-wide: while the
// breaker is Open, its front Service publishes no ready endpoints, so connections are
// rejected at once instead of timing out.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=cb;breaker,categories=tripswitch
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`,description="Breaker state"
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.status.target`,description="Protected Service, or external host:port"
// +kubebuilder:printcolumn:name="Front",type=string,JSONPath=`.status.frontService`,description="Front Service that clients call"
// +kubebuilder:printcolumn:name="Trips",type=integer,JSONPath=`.status.trips`,description="Times opened, all time"
// +kubebuilder:printcolumn:name="Last Change",type=date,JSONPath=`.status.lastTransitionTime`,description="Time since the last state change"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.status.mode`,priority=1,description="Mode in effect: Auto, ForceOpen, ForceClosed or Observe (Auto once spec.modeUntil has passed)"
// +kubebuilder:printcolumn:name="Gate",type=string,JSONPath=`.status.gateState`,priority=1,description="State applied to traffic"
// +kubebuilder:printcolumn:name="Failures",type=integer,JSONPath=`.status.consecutiveFailures`,priority=1,description="Consecutive failed probes"
// +kubebuilder:printcolumn:name="Window Failures",type=integer,JSONPath=`.status.window.failures`,priority=1,description="Failures in the rate window"
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=`.status.endpoints.target`,priority=1,description="Ready target endpoints"
// +kubebuilder:printcolumn:name="Published",type=integer,JSONPath=`.status.endpoints.published`,priority=1,description="Endpoints published to the front Service"
// +kubebuilder:printcolumn:name="Ejected",type=integer,JSONPath=`.status.ejection.ejected`,priority=1,description="Endpoints ejected now (spec.ejection)"
// +kubebuilder:validation:XValidation:rule="!has(self.spec.ejection) || !has(self.spec.gate) || has(self.spec.gate.endpointSlice)",message="spec.ejection needs the endpointSlice gate: ejected endpoints are left out of the front Service's slices"
// +kubebuilder:validation:XValidation:rule="!has(self.spec.recovery) || !has(self.spec.recovery.slowStart) || !has(self.spec.gate) || has(self.spec.gate.endpointSlice)",message="spec.recovery.slowStart needs the endpointSlice gate: it ramps the endpoints of the front Service's slices"
// +kubebuilder:validation:XValidation:rule="!has(self.spec.gate) || !has(self.spec.gate.endpointSlice) || !has(self.spec.target.service) || (has(self.spec.gate.endpointSlice.service) ? self.spec.gate.endpointSlice.service : self.metadata.name) != self.spec.target.service",message="the front Service (gate.endpointSlice.service, default metadata.name) must differ from target.service"
// +kubebuilder:validation:XValidation:rule="!has(self.spec.gate) || !has(self.spec.gate.endpointSlice) || has(self.spec.gate.endpointSlice.service) || (size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$'))",message="metadata.name is not a valid Service name; set gate.endpointSlice.service"
// +kubebuilder:validation:XValidation:rule="!has(self.spec.gate) || !has(self.spec.gate.endpointSlice) || !has(self.spec.gate.endpointSlice.fallback) || has(self.spec.gate.endpointSlice.service) || self.spec.gate.endpointSlice.fallback.service != self.metadata.name",message="gate.endpointSlice.fallback.service must differ from the front Service"
type CircuitBreaker struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec describes the breaker.
	// +required
	Spec CircuitBreakerSpec `json:"spec"`

	// status is the breaker's observed state.
	// +optional
	Status CircuitBreakerStatus `json:"status,omitempty"`
}

// CircuitBreakerList is a list of CircuitBreakers.
//
// +kubebuilder:object:root=true
type CircuitBreakerList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the CircuitBreakers.
	Items []CircuitBreaker `json:"items"`
}

// ConfirmationStatus is one second opinion on a trip.
type ConfirmationStatus struct {
	// time is when the manager's probes made the trip suspect and the observers were asked.
	// +required
	Time metav1.Time `json:"time"`

	// outcome is Asking while answers are due; then Confirmed (the breaker tripped, or the
	// observer guard decided), Refuted (the trip is held and traffic keeps flowing) or
	// Unconfirmed (nobody answered in time, so the manager's probes alone decided).
	// +kubebuilder:validation:Enum=Asking;Confirmed;Refuted;Unconfirmed
	// +required
	Outcome string `json:"outcome"`

	// rule is the trip rule, or with endpoint the ejection rule, that held on the manager's
	// probes.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Rule string `json:"rule,omitempty"`

	// endpoint is the one endpoint (ip:port) whose ejection was in question; empty when the
	// breaker's trip was.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// message says the outcome in words, naming who saw what.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Message string `json:"message,omitempty"`

	// heldUntil is, for a refuted trip, when the observers are asked again if the manager's
	// probes still hold the rule.
	// +optional
	HeldUntil *metav1.Time `json:"heldUntil,omitempty"`

	// votes are the observers' votes, the manager's own node first.
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=6
	// +optional
	Votes []ObserverVote `json:"votes,omitempty"`
}

// ObserverVote is what one observer saw.
type ObserverVote struct {
	// observer is the observer's node.
	// +kubebuilder:validation:MaxLength=253
	// +required
	Observer string `json:"observer"`

	// zone is the node's topology.kubernetes.io/zone, if it has one.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Zone string `json:"zone,omitempty"`

	// verdict is Failing, Healthy, or Silent (no usable answer in time).
	// +kubebuilder:validation:Enum=Failing;Healthy;Silent
	// +required
	Verdict string `json:"verdict"`

	// degraded says the observer's vote weighed half: it alone saw several unrelated targets
	// failing that its peers reached.
	// +optional
	Degraded bool `json:"degraded,omitempty"`

	// detail is what it saw fail, such as "HTTP 503 from 10.0.0.7:8080".
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Detail string `json:"detail,omitempty"`
}
