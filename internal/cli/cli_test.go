package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata from the commands' output")

// now is the fake clock's time in every test: the fixtures' times are relative to it, so the
// countdowns and ages in the golden files never change.
var now = time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)

var (
	k8s        client.Client
	restConfig *rest.Config
	kubeconfig string
)

// mustClient is a client of the test's API server, as a session holds one.
func mustClient(t *testing.T) client.WithWatch {
	t.Helper()
	c, err := client.NewWithWatch(restConfig, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run the tests with `make test`")
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "internal/cli: skipped: KUBEBUILDER_ASSETS is not set; `make test` builds the control plane and runs these tests")
		os.Exit(0)
	}
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("..", "..", "config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	restConfig = cfg
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer func() { _ = env.Stop() }()
		if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		dir, err := os.MkdirTemp("", "kubectl-tripswitch")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		// The plugin reads the API server through a kubeconfig, as it does for a user: envtest's
		// own for an admin it provisions.
		user, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		contents, err := user.KubeConfig()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		kubeconfig = filepath.Join(dir, "kubeconfig")
		if err := os.WriteFile(kubeconfig, contents, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// syncBuffer is a buffer that a running command writes while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// run is one command line, on terminals or not, with what it printed.
type run struct {
	stdin         string
	terminal      bool
	noColorEnv    bool
	out, errOut   *syncBuffer
	code          int
	ctx           context.Context
	clockOverride *clocktesting.FakeClock
}

// kubectl runs `kubectl tripswitch args...` against envtest with the fake clock at now, on
// no terminal.
func kubectl(t *testing.T, args ...string) *run {
	t.Helper()
	r := &run{}
	r.exec(args...)
	return r
}

func (r *run) options() Options {
	// A test that reads the output of a running command makes the buffers before it starts.
	if r.out == nil {
		r.out, r.errOut = &syncBuffer{}, &syncBuffer{}
	}
	clock := r.clockOverride
	if clock == nil {
		clock = clocktesting.NewFakeClock(now)
	}
	return Options{
		Streams: genericiooptions.IOStreams{In: strings.NewReader(r.stdin), Out: r.out, ErrOut: r.errOut},
		Clock:   clock,
		IsTerminal: func(any) bool {
			return r.terminal
		},
		Getenv: func(key string) string {
			if key == "NO_COLOR" && r.noColorEnv {
				return "1"
			}
			return ""
		},
	}
}

func (r *run) exec(args ...string) {
	ctx := r.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	r.code = Execute(ctx, r.options(), append([]string{"--kubeconfig", kubeconfig}, args...))
}

// golden compares got with testdata/name.golden, or rewrites that file under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./internal/cli -update writes it)", err)
	}
	if string(want) != got {
		t.Errorf("output differs from %s (go test ./internal/cli -update rewrites it after a deliberate change)\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}

func at(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }

// fixture creates a namespace holding a shop: the target Service payments-backend with three
// ready endpoints, and breakers in several states with their front Services' slices.
type fixture struct {
	ns string
}

func newFixture(t *testing.T, ns string) *fixture {
	t.Helper()
	g := NewWithT(t)
	ctx := context.Background()
	g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	return &fixture{ns: ns}
}

// target creates a Service with port http (80 → 8080) and a slice of ready endpoints.
func (f *fixture) target(t *testing.T, name string, addresses ...string) {
	t.Helper()
	g := NewWithT(t)
	ctx := context.Background()
	g.Expect(k8s.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}})).To(Succeed())
	f.slice(t, name+"-abcde", name, "endpointslice-controller.k8s.io", addresses, nil)
}

// slice writes an EndpointSlice for service on port http 8080; notReady lists the addresses
// published not ready.
func (f *fixture) slice(t *testing.T, sliceName, service, managedBy string, addresses []string, notReady map[string]bool) {
	t.Helper()
	var eps []discoveryv1.Endpoint
	for _, a := range addresses {
		eps = append(eps, discoveryv1.Endpoint{Addresses: []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(!notReady[a]), Serving: ptr.To(!notReady[a])}})
	}
	NewWithT(t).Expect(k8s.Create(context.Background(), &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: sliceName, Labels: map[string]string{
			discoveryv1.LabelServiceName: service, discoveryv1.LabelManagedBy: managedBy}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	})).To(Succeed())
}

// breaker creates a breaker and writes its status as a manager would have.
func (f *fixture) breaker(t *testing.T, name string, spec tripswitchv1alpha1.CircuitBreakerSpec, status tripswitchv1alpha1.CircuitBreakerStatus,
	labels map[string]string) *tripswitchv1alpha1.CircuitBreaker {
	t.Helper()
	g := NewWithT(t)
	ctx := context.Background()
	cb := &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: name, Labels: labels}, Spec: spec}
	g.Expect(k8s.Create(ctx, cb)).To(Succeed())
	status.ObservedGeneration = cb.Generation
	cb.Status = status
	g.Expect(k8s.Status().Update(ctx, cb)).To(Succeed())
	return cb
}

// event records an events.k8s.io event about cb, as the manager's recorder writes it.
func (f *fixture) event(t *testing.T, cb *tripswitchv1alpha1.CircuitBreaker, when time.Duration, eventType, reason, note string) {
	t.Helper()
	NewWithT(t).Expect(k8s.Create(context.Background(), &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Namespace: f.ns, GenerateName: cb.Name + "-"},
		EventTime:           metav1.NewMicroTime(now.Add(when)),
		ReportingController: "tripswitch",
		ReportingInstance:   "tripswitch-controller-manager-7d9f-xk2lp",
		Action:              "Transition",
		Reason:              reason,
		Type:                eventType,
		Note:                note,
		Regarding: corev1.ObjectReference{APIVersion: tripswitchv1alpha1.GroupVersion.String(), Kind: "CircuitBreaker",
			Namespace: cb.Namespace, Name: cb.Name, UID: cb.UID},
	})).To(Succeed())
}

func target(service string) tripswitchv1alpha1.TargetReference {
	return tripswitchv1alpha1.TargetReference{Service: service, Port: ptr.To(intstr.FromString("http"))}
}

// shop fills a namespace with three breakers: payments Open after failing probes, with a
// query rule and an ejected endpoint; orders forced Open for ten more minutes; search Closed.
func shop(t *testing.T, ns string) (payments, orders, search *tripswitchv1alpha1.CircuitBreaker) {
	t.Helper()
	f := newFixture(t, ns)
	f.target(t, "payments-backend", "10.0.0.7", "10.0.0.8", "10.0.0.9")
	f.target(t, "orders-backend", "10.0.1.4", "10.0.1.5")
	f.target(t, "search-backend", "10.0.2.10", "10.0.2.11", "10.0.2.9")
	// payments is Open: its front publishes no target endpoint ready.
	f.slice(t, "payments-x7k2p", "payments", tripswitchv1alpha1.ManagedBy, []string{"10.0.0.7", "10.0.0.8", "10.0.0.9"},
		map[string]bool{"10.0.0.7": true, "10.0.0.8": true, "10.0.0.9": true})
	f.slice(t, "orders-9fj3k", "orders", tripswitchv1alpha1.ManagedBy, nil, nil)
	f.slice(t, "search-m2n8q", "search", tripswitchv1alpha1.ManagedBy, []string{"10.0.2.10", "10.0.2.11", "10.0.2.9"}, nil)

	condition := func(typ string, status metav1.ConditionStatus, reason, message string, since time.Duration) metav1.Condition {
		return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: message, LastTransitionTime: *at(since)}
	}
	ready := condition(tripswitchv1alpha1.ConditionReady, metav1.ConditionTrue, tripswitchv1alpha1.ReasonReconciled, "The breaker's spec is in force", -time.Hour)

	payments = f.breaker(t, "payments", tripswitchv1alpha1.CircuitBreakerSpec{Target: target("payments-backend"),
		Trip: tripswitchv1alpha1.TripSpec{Queries: []tripswitchv1alpha1.QueryRule{
			{Name: "error-rate", Query: `sum(rate(http_requests_total{code=~"5.."}[1m])) / sum(rate(http_requests_total[1m]))`, Above: ptr.To("0.05"), For: 3},
			{Name: "p99-latency", Query: `histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[1m])))`, Above: ptr.To("0.5")},
		}},
		Ejection: &tripswitchv1alpha1.EjectionSpec{}},
		tripswitchv1alpha1.CircuitBreakerStatus{
			State: tripswitchv1alpha1.StateOpen, GateState: tripswitchv1alpha1.StateOpen, Mode: tripswitchv1alpha1.ModeAuto,
			Reason: "TrialFailed", TransitionMessage: "HTTP 503 from 10.0.0.8:8080",
			LastTransitionTime: at(-42 * time.Second), OpenUntil: at(18 * time.Second),
			Trips: 4, OpenStreak: 2, ConsecutiveFailures: 5,
			Window:       &tripswitchv1alpha1.WindowStatus{Probes: 20, Failures: 9, Slow: 1},
			Endpoints:    &tripswitchv1alpha1.EndpointsStatus{Target: 3, Published: 0},
			FrontService: "payments",
			LastProbe: &tripswitchv1alpha1.ProbeResult{Time: *at(-2 * time.Second), Endpoint: "10.0.0.8:8080",
				Outcome: tripswitchv1alpha1.OutcomeFailure, LatencyMilliseconds: 3, Message: "HTTP 503"},
			Ejection: &tripswitchv1alpha1.EjectionStatus{Ejected: 1, MaxEjected: 1, Endpoints: []tripswitchv1alpha1.EjectedEndpoint{{
				Endpoint: "10.0.0.7:8080", Phase: "Ejected", Reason: "ConsecutiveFailures", Since: *at(-90 * time.Second),
				Until: at(30 * time.Second), Ejections: 2, Message: "connection refused"}}},
			Queries: []tripswitchv1alpha1.QueryStatus{
				{Name: "error-rate", Value: "0.31", Holding: 3, LastEvaluation: at(-4 * time.Second)},
				{Name: "p99-latency", LastEvaluation: at(-4 * time.Second), Error: "Prometheus: context deadline exceeded"},
			},
			Conditions: []metav1.Condition{ready,
				condition(tripswitchv1alpha1.ConditionEjection, metav1.ConditionTrue, tripswitchv1alpha1.ReasonEndpointsEjected,
					"1 of 3 endpoints ejected (at most 1 at once)", -90*time.Second),
				condition(tripswitchv1alpha1.ConditionQueriesFailing, metav1.ConditionTrue, tripswitchv1alpha1.ReasonQueryFailed,
					"p99-latency: Prometheus: context deadline exceeded", -4*time.Minute),
			},
		}, nil)

	orders = f.breaker(t, "orders", tripswitchv1alpha1.CircuitBreakerSpec{Target: target("orders-backend"),
		Mode: tripswitchv1alpha1.ModeForceOpen, ModeUntil: at(10 * time.Minute)},
		tripswitchv1alpha1.CircuitBreakerStatus{
			State: tripswitchv1alpha1.StateClosed, GateState: tripswitchv1alpha1.StateOpen, Mode: tripswitchv1alpha1.ModeForceOpen,
			Reason: "Forced", LastTransitionTime: at(-5 * time.Minute), Trips: 1,
			Endpoints: &tripswitchv1alpha1.EndpointsStatus{Target: 2}, FrontService: "orders",
			LastProbe: &tripswitchv1alpha1.ProbeResult{Time: *at(-time.Second), Endpoint: "10.0.1.5:8080",
				Outcome: tripswitchv1alpha1.OutcomeSuccess, LatencyMilliseconds: 1, Message: "HTTP 200"},
			Conditions: []metav1.Condition{ready},
		}, map[string]string{"argocd.argoproj.io/instance": "shop"})

	search = f.breaker(t, "search", tripswitchv1alpha1.CircuitBreakerSpec{Target: target("search-backend")},
		tripswitchv1alpha1.CircuitBreakerStatus{
			State: tripswitchv1alpha1.StateClosed, GateState: tripswitchv1alpha1.StateClosed, Mode: tripswitchv1alpha1.ModeAuto,
			Reason: "TrialSucceeded", LastTransitionTime: at(-3 * time.Hour), Trips: 2, ConsecutiveSuccesses: 40,
			Endpoints: &tripswitchv1alpha1.EndpointsStatus{Target: 3, Published: 3}, FrontService: "search",
			// Its manager's node lost its route to the search pods' node a minute ago; the
			// observers on two other nodes reach them.
			Confirmation: &tripswitchv1alpha1.ConfirmationStatus{Time: *at(-time.Minute), Outcome: "Refuted",
				Rule: "ConsecutiveFailures", HeldUntil: at(20 * time.Second),
				Message: "held: 2 of 3 observers see search healthy (node-b, node-c); node-a sees it failing",
				Votes: []tripswitchv1alpha1.ObserverVote{{Observer: "node-a", Zone: "eu-west-1a", Verdict: "Failing"},
					{Observer: "node-b", Zone: "eu-west-1b", Verdict: "Healthy"}, {Observer: "node-c", Zone: "eu-west-1c", Verdict: "Healthy"}}},
			Conditions: []metav1.Condition{ready},
		}, nil)

	f.event(t, payments, -3*time.Hour-time.Minute, corev1.EventTypeWarning, "ConsecutiveFailures",
		"Breaker Closed -> Open, gate Closed -> Open (ConsecutiveFailures) after HTTP 500 from 10.0.0.9:8080")
	f.event(t, payments, -3*time.Hour, corev1.EventTypeNormal, "OpenTimeout", "Breaker Open -> HalfOpen, gate Open -> HalfOpen (OpenTimeout)")
	f.event(t, payments, -3*time.Hour+2*time.Second, corev1.EventTypeNormal, "TrialSucceeded",
		"Breaker HalfOpen -> Closed, gate HalfOpen -> Closed (TrialSucceeded)")
	f.event(t, payments, -90*time.Second, corev1.EventTypeWarning, "EndpointEjected",
		"Endpoint 10.0.0.7:8080 ejected for 1m0s (ConsecutiveFailures, ejection 2) after connection refused")
	f.event(t, payments, -102*time.Second, corev1.EventTypeWarning, "ConsecutiveFailures",
		"Breaker Closed -> Open, gate Closed -> Open (ConsecutiveFailures) after HTTP 503 from 10.0.0.8:8080")
	f.event(t, payments, -72*time.Second, corev1.EventTypeNormal, "OpenTimeout", "Breaker Open -> HalfOpen, gate Open -> HalfOpen (OpenTimeout)")
	f.event(t, payments, -42*time.Second, corev1.EventTypeWarning, "TrialFailed",
		"Breaker HalfOpen -> Open, gate HalfOpen -> Open (TrialFailed) after HTTP 503 from 10.0.0.8:8080")
	f.event(t, search, -3*time.Hour, corev1.EventTypeNormal, "TrialSucceeded", "Breaker HalfOpen -> Closed, gate HalfOpen -> Closed (TrialSucceeded)")
	return payments, orders, search
}

func breakerIn(t *testing.T, ns, name string) *tripswitchv1alpha1.CircuitBreaker {
	t.Helper()
	cb := &tripswitchv1alpha1.CircuitBreaker{}
	NewWithT(t).Expect(k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, cb)).To(Succeed())
	return cb
}
