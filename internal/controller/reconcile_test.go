package controller

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/gate"
	"github.com/tripswitch/tripswitch/internal/probe"
	"github.com/tripswitch/tripswitch/internal/runner"
)

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// fixture is a reconciler on a fake API with a target Service of one ready endpoint, and a
// scheduler that is never started: these tests drive the reconciler, not the probes.
type fixture struct {
	r   *CircuitBreakerReconciler
	c   client.Client
	clk *testingclock.FakeClock
}

func newFixture(t *testing.T, cb *tripswitchv1alpha1.CircuitBreaker, objects ...client.Object) *fixture {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := tripswitchv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	target := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments-backend"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "payments"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments-backend-x",
			Labels: map[string]string{discoveryv1.LabelServiceName: "payments-backend"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080))}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.10"}}},
	}
	builder := fake.NewClientBuilder().WithScheme(scheme).WithStatusSubresource(&tripswitchv1alpha1.CircuitBreaker{}).
		WithObjects(append(objects, target, slice, cb)...)
	for name, index := range sliceIndexes {
		builder = builder.WithIndex(&discoveryv1.EndpointSlice{}, name, index)
	}
	c := builder.Build()
	clk := testingclock.NewFakeClock(now)
	refuse := func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("no network in unit tests")
	}
	return &fixture{c: c, clk: clk, r: &CircuitBreakerReconciler{
		Client: c, Scheduler: runner.New(runner.Options{NewProber: probe.NewFactory(refuse, clk).New, Clock: clk, MaxConcurrentProbes: 4}), Clock: clk,
		StatusSyncPeriod: 10 * time.Second, HandBackTimeout: DefaultHandBackTimeout,
	}}
}

func (f *fixture) reconcile(t *testing.T) *tripswitchv1alpha1.CircuitBreaker {
	t.Helper()
	key := client.ObjectKey{Namespace: "shop", Name: "payments"}
	if _, err := f.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: key}); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	cb := &tripswitchv1alpha1.CircuitBreaker{}
	if err := f.c.Get(context.Background(), key, cb); err != nil {
		t.Fatal(err)
	}
	return cb
}

func (f *fixture) edit(t *testing.T, change func(*tripswitchv1alpha1.CircuitBreaker)) {
	t.Helper()
	cb := &tripswitchv1alpha1.CircuitBreaker{}
	if err := f.c.Get(context.Background(), client.ObjectKey{Namespace: "shop", Name: "payments"}, cb); err != nil {
		t.Fatal(err)
	}
	change(cb)
	if err := f.c.Update(context.Background(), cb); err != nil {
		t.Fatal(err)
	}
}

// readyFront counts the ready endpoints the breaker publishes on its front.
func (f *fixture) readyFront(t *testing.T) int {
	t.Helper()
	var list discoveryv1.EndpointSliceList
	if err := f.c.List(context.Background(), &list, client.MatchingLabels{discoveryv1.LabelServiceName: "payments",
		gate.BreakerLabel: "payments"}); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) == 0 {
		t.Fatal("the front has no slices at all")
	}
	return readyEndpoints(list.Items, "")
}

// openBreaker is a breaker that a previous leader left Open for another hour.
func openBreaker() *tripswitchv1alpha1.CircuitBreaker {
	until := metav1.NewTime(now.Add(time.Hour))
	since := metav1.NewTime(now)
	return &tripswitchv1alpha1.CircuitBreaker{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments", UID: "u1", Generation: 1},
		Spec: tripswitchv1alpha1.CircuitBreakerSpec{Target: tripswitchv1alpha1.TargetReference{Service: "payments-backend",
			Port: ptr.To(intstr.FromString("http"))}},
		Status: tripswitchv1alpha1.CircuitBreakerStatus{State: tripswitchv1alpha1.StateOpen, GateState: tripswitchv1alpha1.StateOpen,
			Reason: "ConsecutiveFailures", LastTransitionTime: &since, OpenUntil: &until, Trips: 1, OpenStreak: 1},
	}
}

// unrunnable makes a spec the engine refuses but the fake API (which runs no CEL) accepts:
// a rate rule judged before its window could hold enough outcomes.
func unrunnable(cb *tripswitchv1alpha1.CircuitBreaker) {
	cb.Spec.Trip.FailureRate = &tripswitchv1alpha1.RateRule{Percent: 50, Window: 5, MinimumProbes: ptr.To(int32(10))}
}

func stalledInvalid(g Gomega, cb *tripswitchv1alpha1.CircuitBreaker, how string) {
	c := meta.FindStatusCondition(cb.Status.Conditions, tripswitchv1alpha1.ConditionStalled)
	g.Expect(c).NotTo(BeNil(), "an unrunnable spec is Stalled")
	g.Expect(c.Reason).To(Equal(tripswitchv1alpha1.ReasonInvalidSpec))
	g.Expect(c.Message).To(ContainSubstring(how))
}

func TestAnUnrunnableSpecKeepsTheLastGoodConfigurationAndTheGate(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t, openBreaker())
	cb := f.reconcile(t)
	g.Expect(cb.Status.State).To(Equal(tripswitchv1alpha1.StateOpen), "resumed from status")
	g.Expect(f.readyFront(t)).To(BeZero())

	f.edit(t, unrunnable)
	cb = f.reconcile(t)
	stalledInvalid(g, cb, "keeps its last good configuration")
	g.Expect(cb.Status.State).To(Equal(tripswitchv1alpha1.StateOpen))
	g.Expect(f.readyFront(t)).To(BeZero(), "the gate keeps following the engine")

	f.edit(t, func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Mode = tripswitchv1alpha1.ModeForceClosed })
	cb = f.reconcile(t)
	g.Expect(cb.Status.GateState).To(Equal(tripswitchv1alpha1.StateClosed), "the mode still works")
	g.Expect(f.readyFront(t)).To(Equal(1))

	f.edit(t, func(cb *tripswitchv1alpha1.CircuitBreaker) {
		cb.Spec.Mode = tripswitchv1alpha1.ModeAuto
		cb.Annotations = map[string]string{tripswitchv1alpha1.ResetAnnotation: "now"}
	})
	cb = f.reconcile(t)
	g.Expect(cb.Status.State).To(Equal(tripswitchv1alpha1.StateClosed), "a reset still works")
	g.Expect(cb.Status.LastResetToken).To(Equal("now"))
	g.Expect(f.readyFront(t)).To(Equal(1))
	stalledInvalid(g, cb, "keeps its last good configuration")

	f.edit(t, func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Trip.FailureRate = nil })
	cb = f.reconcile(t)
	g.Expect(meta.FindStatusCondition(cb.Status.Conditions, tripswitchv1alpha1.ConditionStalled)).To(BeNil())
	g.Expect(meta.IsStatusConditionTrue(cb.Status.Conditions, tripswitchv1alpha1.ConditionReady)).To(BeTrue())
}

func TestABreakerThatNeverRanOnlyObservesUntilItsSpecIsFixed(t *testing.T) {
	g := NewWithT(t)
	cb := openBreaker()
	unrunnable(cb)
	f := newFixture(t, cb)
	cb = f.reconcile(t)
	stalledInvalid(g, cb, "only observes")
	g.Expect(cb.Status.State).To(Equal(tripswitchv1alpha1.StateOpen), "the state machine is restored and reported")
	g.Expect(cb.Status.GateState).To(Equal(tripswitchv1alpha1.StateClosed), "but it takes no traffic away")
	g.Expect(f.readyFront(t)).To(Equal(1))

	f.edit(t, func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Mode = tripswitchv1alpha1.ModeForceOpen })
	cb = f.reconcile(t)
	stalledInvalid(g, cb, "pinned ForceOpen")
	g.Expect(f.readyFront(t)).To(BeZero(), "an explicit ForceOpen is honoured")
}

func TestTheBuiltInDefaultsCompile(t *testing.T) {
	g := NewWithT(t)
	r := &CircuitBreakerReconciler{}
	run, how := r.fallback(client.ObjectKey{Name: "x"}, &tripswitchv1alpha1.CircuitBreakerSpec{
		Target: tripswitchv1alpha1.TargetReference{Service: "t", Port: ptr.To(intstr.FromInt32(80))}})
	g.Expect(how).To(ContainSubstring("only observes"))
	g.Expect(run.Engine.Validate()).To(Succeed())
	g.Expect(run.Probe.Validate()).To(Succeed())
}

func TestAnotherBreakersAnnotationIsNoClaim(t *testing.T) {
	g := NewWithT(t)
	// Breaker promo lists Service payments in its annotation gate, so payments carries
	// tripswitch.io/breaker: promo, the key that releases before tripswitch.io/gated-by used
	// as the claim. Without promo's slices on it, that is no claim, and payments adopts it.
	front := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments", Annotations: map[string]string{
			tripswitchv1alpha1.BreakerAnnotation: "promo", tripswitchv1alpha1.StateAnnotation: "Closed"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
	cb := openBreaker()
	cb.Status = tripswitchv1alpha1.CircuitBreakerStatus{}
	f := newFixture(t, cb, front)
	cb = f.reconcile(t)
	g.Expect(meta.IsStatusConditionTrue(cb.Status.Conditions, tripswitchv1alpha1.ConditionReady)).To(BeTrue(),
		"conditions: %+v", cb.Status.Conditions)
	g.Expect(f.readyFront(t)).To(Equal(1))
	got := &corev1.Service{}
	g.Expect(f.c.Get(context.Background(), client.ObjectKeyFromObject(front), got)).To(Succeed())
	g.Expect(got.Annotations).To(HaveKeyWithValue(tripswitchv1alpha1.ClaimAnnotation, "payments"))
	g.Expect(got.Annotations).To(HaveKeyWithValue(tripswitchv1alpha1.BreakerAnnotation, "promo"),
		"the annotation gate's annotations are left alone")
}

// frontSlices returns the breaker's slices of its front.
func (f *fixture) frontSlices(t *testing.T) []discoveryv1.EndpointSlice {
	t.Helper()
	var list discoveryv1.EndpointSliceList
	if err := f.c.List(context.Background(), &list, client.MatchingLabels{discoveryv1.LabelServiceName: "payments",
		gate.BreakerLabel: "payments"}); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// The node agent reads why endpoints are withheld, and when that changed, from the slices
// alone: the gate state, cutConnections, and last-change-trigger-time, bumped only when what
// the slices route changes.
func TestSlicesCarryTheGateStateAndWhenTheirEndpointsChanged(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t, openBreaker())
	f.reconcile(t)
	opened := f.frontSlices(t)
	g.Expect(opened).To(HaveLen(1))
	g.Expect(opened[0].Annotations).To(HaveKeyWithValue(tripswitchv1alpha1.GateStateAnnotation, "Open"))
	g.Expect(opened[0].Annotations).NotTo(HaveKey(tripswitchv1alpha1.CutConnectionsAnnotation))
	g.Expect(opened[0].Annotations).To(HaveKeyWithValue(corev1.EndpointsLastChangeTriggerTime, now.Format(time.RFC3339Nano)))

	f.clk.Step(time.Second)
	f.edit(t, func(cb *tripswitchv1alpha1.CircuitBreaker) {
		cb.Spec.Gate = &tripswitchv1alpha1.GateSpec{EndpointSlice: &tripswitchv1alpha1.EndpointSliceGate{CutConnections: ptr.To(false)}}
	})
	f.reconcile(t)
	kept := f.frontSlices(t)[0]
	g.Expect(kept.Annotations).To(HaveKeyWithValue(tripswitchv1alpha1.CutConnectionsAnnotation, "false"))
	g.Expect(kept.Annotations).To(HaveKeyWithValue(corev1.EndpointsLastChangeTriggerTime, now.Format(time.RFC3339Nano)),
		"an annotation alone changed: the endpoints did not")

	f.clk.Step(time.Second)
	f.edit(t, func(cb *tripswitchv1alpha1.CircuitBreaker) {
		cb.Spec.Gate = nil
		cb.Spec.Mode = tripswitchv1alpha1.ModeForceClosed
	})
	f.reconcile(t)
	closed := f.frontSlices(t)[0]
	g.Expect(closed.Annotations).To(HaveKeyWithValue(tripswitchv1alpha1.GateStateAnnotation, "Closed"))
	g.Expect(closed.Annotations).NotTo(HaveKey(tripswitchv1alpha1.CutConnectionsAnnotation), "an owned annotation goes with its cause")
	g.Expect(closed.Annotations).To(HaveKeyWithValue(corev1.EndpointsLastChangeTriggerTime,
		now.Add(2*time.Second).Format(time.RFC3339Nano)), "the endpoints turned ready")

	f.clk.Step(time.Second)
	f.reconcile(t)
	g.Expect(f.frontSlices(t)[0].ResourceVersion).To(Equal(closed.ResourceVersion), "nothing changed, nothing written")
}
