package controller

import (
	"context"
	"errors"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// TestAnnotatedObjectsAreReadOnlyWhenSomethingChanged: annotated objects are read live (the
// cache holds no arbitrary kinds), so a reconcile that changes neither the gate state, nor the
// list, nor the spec must not read them: at 10,000 breakers, every counter refresh would
// otherwise cost API requests.
func TestAnnotatedObjectsAreReadOnlyWhenSomethingChanged(t *testing.T) {
	g := NewWithT(t)
	web := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	cb := openBreaker()
	cb.Spec.Gate = &tripswitchv1alpha1.GateSpec{Annotations: []tripswitchv1alpha1.AnnotatedObjectReference{
		{APIVersion: "v1", Kind: "Service", Name: "web"}}}
	f := newFixture(t, cb, web)
	reads := 0
	var applyFails bool
	f.r.Client = interceptor.NewClient(f.c.(client.WithWatch), interceptor.Funcs{
		Apply: func(ctx context.Context, c client.WithWatch, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
			if applyFails {
				return errors.New("the API server is unwell")
			}
			return c.Apply(ctx, obj, opts...)
		},
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if _, ok := obj.(*unstructured.Unstructured); ok {
				reads++
			}
			return c.Get(ctx, key, obj, opts...)
		},
	})
	annotations := func() map[string]string {
		got := &corev1.Service{}
		g.Expect(f.c.Get(context.Background(), client.ObjectKeyFromObject(web), got)).To(Succeed())
		return got.Annotations
	}

	// The fake API runs no generation counter: a spec edit bumps it here.
	editSpec := func(change func(*tripswitchv1alpha1.CircuitBreaker)) {
		f.edit(t, func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Generation++; change(cb) })
	}
	setMode := func(mode tripswitchv1alpha1.Mode) {
		editSpec(func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Mode = mode })
	}

	f.reconcile(t)
	g.Expect(annotations()).To(HaveKeyWithValue(tripswitchv1alpha1.StateAnnotation, "Open"))
	g.Expect(reads).To(Equal(1))

	f.reconcile(t)
	f.reconcile(t)
	g.Expect(reads).To(Equal(1), "nothing changed: no read")

	// A spec change reads again, and puts back what somebody else took off.
	patch := client.MergeFrom(web.DeepCopy())
	web.Annotations = map[string]string{tripswitchv1alpha1.StateAnnotation: "Closed"}
	g.Expect(f.c.Patch(context.Background(), web, patch)).To(Succeed())
	setMode(tripswitchv1alpha1.ModeForceOpen)
	f.reconcile(t)
	g.Expect(reads).To(Equal(2))
	g.Expect(annotations()).To(HaveKeyWithValue(tripswitchv1alpha1.StateAnnotation, "Open"))

	// A gate change reads again and writes the new state.
	setMode(tripswitchv1alpha1.ModeForceClosed)
	f.reconcile(t)
	g.Expect(reads).To(Equal(3))
	g.Expect(annotations()).To(HaveKeyWithValue(tripswitchv1alpha1.StateAnnotation, "Closed"))
	f.reconcile(t)
	g.Expect(reads).To(Equal(3))

	// A gate change whose write failed is tried again at the next reconcile, though status
	// already holds the new gate state and the spec did not change.
	setMode(tripswitchv1alpha1.ModeAuto)
	f.reconcile(t)
	g.Expect(annotations()).To(HaveKeyWithValue(tripswitchv1alpha1.StateAnnotation, "Open"))
	g.Expect(reads).To(Equal(4))
	applyFails = true
	f.edit(t, func(cb *tripswitchv1alpha1.CircuitBreaker) {
		cb.Annotations = map[string]string{tripswitchv1alpha1.ResetAnnotation: "1"}
	})
	key := client.ObjectKey{Namespace: "shop", Name: "payments"}
	_, err := f.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: key})
	g.Expect(err).To(MatchError(ContainSubstring("unwell")))
	applyFails = false
	got := f.reconcile(t)
	g.Expect(got.Status.GateState).To(Equal(tripswitchv1alpha1.StateClosed))
	g.Expect(annotations()).To(HaveKeyWithValue(tripswitchv1alpha1.StateAnnotation, "Closed"))
	g.Expect(reads).To(Equal(6))
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, tripswitchv1alpha1.ConditionAnnotationsApplied)).To(BeTrue())

	// A missing object is looked for again at every reconcile, until it exists.
	editSpec(func(cb *tripswitchv1alpha1.CircuitBreaker) {
		cb.Spec.Gate.Annotations = append(cb.Spec.Gate.Annotations,
			tripswitchv1alpha1.AnnotatedObjectReference{APIVersion: "v1", Kind: "Service", Name: "later"})
	})
	f.reconcile(t)
	f.reconcile(t)
	g.Expect(reads).To(Equal(6 + 2*2))

	// An emptied list takes the annotations off and the condition away, once.
	editSpec(func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Gate.Annotations = nil })
	got = f.reconcile(t)
	g.Expect(annotations()).NotTo(HaveKey(tripswitchv1alpha1.StateAnnotation))
	g.Expect(meta.FindStatusCondition(got.Status.Conditions, tripswitchv1alpha1.ConditionAnnotationsApplied)).To(BeNil())
}
