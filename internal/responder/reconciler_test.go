package responder

import (
	"context"
	"errors"
	"testing"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache/informertest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllertest"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

func testScheme(t *testing.T) *runtime.Scheme {
	s := runtime.NewScheme()
	if err := tripswitchv1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func breaker(ns, name string, state tripswitchv1alpha1.State) *tripswitchv1alpha1.CircuitBreaker {
	return &tripswitchv1alpha1.CircuitBreaker{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       tripswitchv1alpha1.CircuitBreakerSpec{Target: tripswitchv1alpha1.TargetReference{Service: name + "-backend"}},
		Status:     tripswitchv1alpha1.CircuitBreakerStatus{State: state, GateState: state},
	}
}

func TestReconcilerFollowsBreakers(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	cb := breaker("shop", "payments", tripswitchv1alpha1.StateOpen)
	c := fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(cb).WithStatusSubresource(cb).Build()
	r := &Reconciler{Reader: c, Index: NewIndex()}
	key := types.NamespacedName{Namespace: "shop", Name: "payments"}
	reconcileOnce := func() {
		t.Helper()
		res, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: key})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(res).To(Equal(reconcile.Result{}))
	}

	reconcileOnce()
	b, ok := r.Index.Lookup(Host{Service: "payments", Namespace: "shop"})
	g.Expect(ok).To(BeTrue())
	g.Expect(b.State).To(Equal(tripswitchv1alpha1.StateOpen))

	cb.Status.State, cb.Status.GateState = tripswitchv1alpha1.StateHalfOpen, tripswitchv1alpha1.StateHalfOpen
	g.Expect(c.Status().Update(ctx, cb)).To(Succeed())
	reconcileOnce()
	b, _ = r.Index.Lookup(Host{Service: "payments", Namespace: "shop"})
	g.Expect(b.State).To(Equal(tripswitchv1alpha1.StateHalfOpen))

	g.Expect(c.Delete(ctx, cb)).To(Succeed())
	reconcileOnce()
	g.Expect(r.Index.Has(key)).To(BeFalse())
	_, ok = r.Index.Lookup(Host{Service: "payments", Namespace: "shop"})
	g.Expect(ok).To(BeFalse())
}

func TestReconcilerKeepsTheEntryWhenTheCacheFails(t *testing.T) {
	g := NewWithT(t)
	cb := breaker("shop", "payments", tripswitchv1alpha1.StateOpen)
	boom := errors.New("boom")
	c := fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(cb).WithInterceptorFuncs(interceptor.Funcs{
		Get: func(context.Context, client.WithWatch, client.ObjectKey, client.Object, ...client.GetOption) error {
			return boom
		},
	}).Build()
	r := &Reconciler{Reader: c, Index: NewIndex()}
	r.Index.Set(EntryOf(cb))
	_, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: client.ObjectKeyFromObject(cb)})
	g.Expect(err).To(MatchError(boom), "retried by the controller")
	g.Expect(r.Index.Has(client.ObjectKeyFromObject(cb))).To(BeTrue(), "an error is not a deletion")
}

func TestReadyOnlyOnceTheIndexHasCaughtUp(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	scheme := testScheme(t)
	a, b := breaker("shop", "payments", tripswitchv1alpha1.StateOpen), breaker("ops", "annotations-only", tripswitchv1alpha1.StateClosed)
	b.Spec.Gate = &tripswitchv1alpha1.GateSpec{} // no front, but the index must have seen it
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(a, b).Build()
	informer := controllertest.NewFakeInformer()
	gvk := schema.GroupVersionKind{Group: tripswitchv1alpha1.GroupVersion.Group, Version: tripswitchv1alpha1.GroupVersion.Version, Kind: "CircuitBreaker"}
	check := &caughtUp{
		informers: &informertest.FakeInformers{Scheme: scheme, InformersByGVK: map[schema.GroupVersionKind]toolscache.SharedIndexInformer{gvk: informer}},
		reader:    c,
		index:     NewIndex(),
	}
	r := &Reconciler{Reader: c, Index: check.index}

	g.Expect(check.check(ctx)).To(MatchError(ContainSubstring("not synced")))
	informer.Synced()
	g.Expect(check.check(ctx)).To(MatchError(ContainSubstring("2 of 2 CircuitBreakers are not indexed")))
	_, _ = r.Reconcile(ctx, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(a)})
	g.Expect(check.check(ctx)).To(MatchError(ContainSubstring("1 of 2")))
	_, _ = r.Reconcile(ctx, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(b)})
	g.Expect(check.check(ctx)).To(Succeed())

	// Once caught up, it stays ready: a breaker created later is indexed within milliseconds,
	// as at any other time, and is no reason to leave the front Services.
	g.Expect(c.Create(ctx, breaker("shop", "orders", tripswitchv1alpha1.StateClosed))).To(Succeed())
	g.Expect(check.check(ctx)).To(Succeed())
}
