package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// fieldManager owns the annotations tripswitch applies, so that removing them is applying
// without them.
const fieldManager = "tripswitch"

// The annotation gate may patch exactly the kinds that the API's CEL rule admits.
// +kubebuilder:rbac:groups=networking.k8s.io,resources=ingresses,verbs=get;patch
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes;grpcroutes,verbs=get;patch

// reconcileAnnotationGate puts tripswitch.io/state and tripswitch.io/breaker on every listed
// object with server-side apply, and takes them off objects that left the list. A listed
// object that doesn't exist is reported in the AnnotationsApplied condition and retried when
// the breaker is next reconciled; it is never created.
//
// The objects are read live (the cache holds no arbitrary kinds), so they are read only when
// something could have changed what they should carry: the gate state, the list, the spec
// (its generation), or an object that was missing. A counter refresh reads none of them. An
// annotation that somebody else changed is put back at the breaker's next change of those.
func (r *CircuitBreakerReconciler) reconcileAnnotationGate(ctx context.Context, st *reconcileState) error {
	cb := st.cb
	var want []tripswitchv1alpha1.AnnotatedObjectReference
	if st.spec.Gate != nil {
		want = st.spec.Gate.Annotations
	}
	if annotationsCurrent(cb, st.gateWas, want) {
		return nil
	}
	state := string(cb.Status.GateState)
	var applied []tripswitchv1alpha1.AnnotatedObjectReference
	var missing []string
	for _, ref := range want {
		found, err := r.applyAnnotations(ctx, cb, ref, map[string]string{
			tripswitchv1alpha1.StateAnnotation: state, tripswitchv1alpha1.BreakerAnnotation: cb.Name})
		if err != nil {
			return annotationsFailed(cb, err)
		}
		if !found {
			missing = append(missing, ref.Kind+"/"+ref.Name)
			continue
		}
		applied = append(applied, ref)
	}
	for _, ref := range cb.Status.AnnotatedObjects {
		if !slices.Contains(want, ref) {
			if _, err := r.applyAnnotations(ctx, cb, ref, nil); err != nil {
				return annotationsFailed(cb, err)
			}
		}
	}
	cb.Status.AnnotatedObjects = applied
	switch {
	case len(want) == 0:
		meta.RemoveStatusCondition(&cb.Status.Conditions, tripswitchv1alpha1.ConditionAnnotationsApplied)
	case len(missing) > 0:
		setCondition(&cb.Status, tripswitchv1alpha1.ConditionAnnotationsApplied, metav1.ConditionFalse,
			tripswitchv1alpha1.ReasonAnnotatedObjectNotFound, "not found: "+strings.Join(missing, ", "), cb.Generation)
	default:
		setCondition(&cb.Status, tripswitchv1alpha1.ConditionAnnotationsApplied, metav1.ConditionTrue,
			tripswitchv1alpha1.ReasonReconciled, fmt.Sprintf("%d objects carry the state", len(applied)), cb.Generation)
	}
	return nil
}

// annotationsCurrent says that the listed objects carry the gate state already: status says
// that every one of them was found and annotated for this generation, and the gate state is
// the one status held before this reconcile.
func annotationsCurrent(cb *tripswitchv1alpha1.CircuitBreaker, gateWas tripswitchv1alpha1.State,
	want []tripswitchv1alpha1.AnnotatedObjectReference) bool {
	applied := meta.FindStatusCondition(cb.Status.Conditions, tripswitchv1alpha1.ConditionAnnotationsApplied)
	if len(want) == 0 {
		return len(cb.Status.AnnotatedObjects) == 0 && applied == nil
	}
	return gateWas == cb.Status.GateState && slices.Equal(cb.Status.AnnotatedObjects, want) &&
		applied != nil && applied.Status == metav1.ConditionTrue && applied.ObservedGeneration == cb.Generation
}

// annotationsFailed says in the AnnotationsApplied condition that a write failed, so that the
// next reconcile tries again even if nothing else changes.
func annotationsFailed(cb *tripswitchv1alpha1.CircuitBreaker, err error) error {
	setCondition(&cb.Status, tripswitchv1alpha1.ConditionAnnotationsApplied, metav1.ConditionFalse,
		tripswitchv1alpha1.ReasonReconcileError, err.Error(), cb.Generation)
	return err
}

// applyAnnotations makes annotations exactly what tripswitch owns on the object; nil removes
// them. It reads the object first, live, so that apply never creates one, and skips the
// write when nothing would change. It reports whether the object exists.
func (r *CircuitBreakerReconciler) applyAnnotations(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker,
	ref tripswitchv1alpha1.AnnotatedObjectReference, annotations map[string]string) (bool, error) {
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	if err != nil {
		return false, fmt.Errorf("annotated object %s/%s: %w", ref.Kind, ref.Name, err)
	}
	obj := &unstructured.Unstructured{}
	obj.SetGroupVersionKind(gv.WithKind(ref.Kind))
	if err := r.Get(ctx, client.ObjectKey{Namespace: cb.Namespace, Name: ref.Name}, obj); err != nil {
		if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
			return false, nil
		}
		return false, fmt.Errorf("getting %s %q: %w", ref.Kind, ref.Name, err)
	}
	have := obj.GetAnnotations()
	current := have[tripswitchv1alpha1.StateAnnotation] == annotations[tripswitchv1alpha1.StateAnnotation] &&
		have[tripswitchv1alpha1.BreakerAnnotation] == annotations[tripswitchv1alpha1.BreakerAnnotation]
	if current {
		return true, nil
	}
	intent := &unstructured.Unstructured{}
	intent.SetGroupVersionKind(gv.WithKind(ref.Kind))
	intent.SetNamespace(cb.Namespace)
	intent.SetName(ref.Name)
	intent.SetAnnotations(annotations)
	if err := r.Apply(ctx, client.ApplyConfigurationFromUnstructured(intent), client.FieldOwner(fieldManager),
		client.ForceOwnership); err != nil {
		return true, fmt.Errorf("applying annotations to %s %q: %w", ref.Kind, ref.Name, err)
	}
	return true, nil
}
