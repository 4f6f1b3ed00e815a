package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/endpoints"
	"github.com/tripswitch/tripswitch/internal/gate"
)

// reconcileEndpointSliceGate makes sure the front Service is ours and publishes the slices
// that the gate state calls for, putting back any edit made by someone else.
func (r *CircuitBreakerReconciler) reconcileEndpointSliceGate(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker,
	spec *tripswitchv1alpha1.CircuitBreakerSpec, tgt *target, gateState breaker.State) error {
	es := spec.Gate.EndpointSlice
	if err := r.claimFrontService(ctx, cb, es.Service, tgt); err != nil {
		return err
	}
	in := gate.Input{
		Namespace: cb.Namespace, Breaker: cb.Name, Front: es.Service, Owner: ownerRef(cb), State: gateState,
		Target: tgt.slices, GatedPort: tgt.port.Name, HalfOpenEndpoints: int(es.HalfOpenEndpoints),
	}
	if f := es.Fallback; f != nil && gateState == breaker.Open {
		fallback := &corev1.Service{}
		err := r.Get(ctx, types.NamespacedName{Namespace: cb.Namespace, Name: f.Service}, fallback)
		switch {
		case apierrors.IsNotFound(err):
			log.FromContext(ctx).Info("Fallback Service not found; publishing no endpoints while Open", "fallback", f.Service)
		case err != nil:
			return fmt.Errorf("getting fallback Service %q: %w", f.Service, err)
		default:
			port, err := endpoints.ServicePort(fallback, *f.Port)
			if err != nil {
				return &waitError{reason: tripswitchv1alpha1.ReasonFallbackPortNotFound, message: "fallback " + err.Error()}
			}
			if in.Fallback, err = r.slicesOf(ctx, cb.Namespace, f.Service); err != nil {
				return err
			}
			in.HasFallback, in.FallbackPort = true, port.Name
		}
	}
	desired, published := gate.Slices(in)
	if err := r.applySlices(ctx, cb, es.Service, desired); err != nil {
		return err
	}
	cb.Status.Endpoints.Published = int32(published)
	return nil
}

func ownerRef(cb *tripswitchv1alpha1.CircuitBreaker) metav1.OwnerReference {
	return *metav1.NewControllerRef(cb, tripswitchv1alpha1.GroupVersion.WithKind("CircuitBreaker"))
}

// claimFrontService creates the front Service with the target's ports when it is missing,
// adopts a selectorless one, and refuses one with a selector or one that another breaker
// gates.
func (r *CircuitBreakerReconciler) claimFrontService(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker,
	name string, tgt *target) error {
	front := &corev1.Service{}
	err := r.Get(ctx, types.NamespacedName{Namespace: cb.Namespace, Name: name}, front)
	if apierrors.IsNotFound(err) {
		front = &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: cb.Namespace, Name: name,
				Labels:      map[string]string{"app.kubernetes.io/managed-by": "tripswitch"},
				Annotations: map[string]string{tripswitchv1alpha1.BreakerAnnotation: cb.Name}},
			Spec: corev1.ServiceSpec{
				Type:           corev1.ServiceTypeClusterIP,
				IPFamilyPolicy: tgt.service.Spec.IPFamilyPolicy,
				IPFamilies:     tgt.service.Spec.IPFamilies,
			},
		}
		for _, p := range tgt.service.Spec.Ports {
			front.Spec.Ports = append(front.Spec.Ports, corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port,
				TargetPort: p.TargetPort, AppProtocol: p.AppProtocol})
		}
		if err := r.Create(ctx, front); err != nil {
			return fmt.Errorf("creating front Service %q: %w", name, err)
		}
		log.FromContext(ctx).Info("Created front Service", "service", name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("getting front Service %q: %w", name, err)
	}
	owner := front.Annotations[tripswitchv1alpha1.BreakerAnnotation]
	switch {
	case owner != "" && owner != cb.Name:
		return &waitError{reason: tripswitchv1alpha1.ReasonFrontServiceClaimed, stalled: true,
			message: fmt.Sprintf("front Service %q is gated by breaker %q", name, owner)}
	case len(front.Spec.Selector) > 0:
		return &waitError{reason: tripswitchv1alpha1.ReasonFrontServiceHasSelector, stalled: true,
			message: fmt.Sprintf("front Service %q has a selector, so Kubernetes manages its endpoints; remove it or choose another front Service", name)}
	case !slices.ContainsFunc(front.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == tgt.port.Name }):
		return &waitError{reason: tripswitchv1alpha1.ReasonFrontServicePortMismatch, stalled: true,
			message: fmt.Sprintf("front Service %q has no port named %q like the target's", name, tgt.port.Name)}
	case owner == "":
		patch := client.MergeFrom(front.DeepCopy())
		metav1.SetMetaDataAnnotation(&front.ObjectMeta, tripswitchv1alpha1.BreakerAnnotation, cb.Name)
		if err := r.Patch(ctx, front, patch); err != nil {
			return fmt.Errorf("adopting front Service %q: %w", name, err)
		}
		log.FromContext(ctx).Info("Adopted front Service", "service", name)
	}
	return nil
}

// applySlices makes the front Service's tripswitch slices equal to desired: updates before
// deletions, so that endpoints move rather than vanish, and no write when nothing differs.
func (r *CircuitBreakerReconciler) applySlices(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, front string,
	desired []discoveryv1.EndpointSlice) error {
	existing, err := r.ownSlices(ctx, cb, front)
	if err != nil {
		return err
	}
	byName := map[string]*discoveryv1.EndpointSlice{}
	for i := range existing {
		byName[existing[i].Name] = &existing[i]
	}
	for i := range desired {
		want := &desired[i]
		have, ok := byName[want.Name]
		delete(byName, want.Name)
		switch {
		case !ok:
			if err := r.Create(ctx, want); err != nil {
				return fmt.Errorf("creating EndpointSlice %q: %w", want.Name, err)
			}
		case have.AddressType != want.AddressType:
			// The address type is immutable.
			if err := r.Delete(ctx, have); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("replacing EndpointSlice %q: %w", want.Name, err)
			}
			if err := r.Create(ctx, want); err != nil {
				return fmt.Errorf("replacing EndpointSlice %q: %w", want.Name, err)
			}
		case !sliceEqual(have, want):
			have.Labels = mergeLabels(have.Labels, want.Labels)
			have.OwnerReferences, have.Ports, have.Endpoints = want.OwnerReferences, want.Ports, want.Endpoints
			if err := r.Update(ctx, have); err != nil {
				return fmt.Errorf("updating EndpointSlice %q: %w", want.Name, err)
			}
		}
	}
	for _, extra := range byName {
		if err := r.Delete(ctx, extra); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting EndpointSlice %q: %w", extra.Name, err)
		}
	}
	return nil
}

func (r *CircuitBreakerReconciler) ownSlices(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, front string) ([]discoveryv1.EndpointSlice, error) {
	var list discoveryv1.EndpointSliceList
	if err := r.List(ctx, &list, client.InNamespace(cb.Namespace), client.MatchingLabels{
		discoveryv1.LabelServiceName: front, gate.BreakerLabel: cb.Name,
	}); err != nil {
		return nil, fmt.Errorf("listing EndpointSlices of front Service %q: %w", front, err)
	}
	return list.Items, nil
}

func sliceEqual(have, want *discoveryv1.EndpointSlice) bool {
	for k, v := range want.Labels {
		if have.Labels[k] != v {
			return false
		}
	}
	return equality.Semantic.DeepEqual(have.OwnerReferences, want.OwnerReferences) &&
		equality.Semantic.DeepEqual(have.Ports, want.Ports) &&
		equality.Semantic.DeepEqual(normalized(have.Endpoints), normalized(want.Endpoints))
}

// normalized treats an empty list and no list alike, as the API does when it stores them.
func normalized(eps []discoveryv1.Endpoint) []discoveryv1.Endpoint {
	if len(eps) == 0 {
		return nil
	}
	return eps
}

func mergeLabels(have, want map[string]string) map[string]string {
	out := maps.Clone(have)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, want)
	return out
}

// finalize hands traffic back to Kubernetes before the breaker goes: the front Service gets
// the target's selector, so Kubernetes maintains its endpoints again, and only then are
// tripswitch's slices deleted. A target without a selector leaves the front Service with a
// last mirror of its endpoints that nothing deletes.
func (r *CircuitBreakerReconciler) finalize(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker) error {
	r.forget(client.ObjectKeyFromObject(cb))
	if !controllerutil.ContainsFinalizer(cb, tripswitchv1alpha1.Finalizer) {
		return nil
	}
	if front := cb.FrontServiceName(); front != "" {
		if err := r.handBack(ctx, cb, front); err != nil {
			return err
		}
	}
	for _, ref := range cb.Status.AnnotatedObjects {
		if _, err := r.applyAnnotations(ctx, cb, ref, nil); err != nil {
			return err
		}
	}
	patch := client.MergeFrom(cb.DeepCopy())
	controllerutil.RemoveFinalizer(cb, tripswitchv1alpha1.Finalizer)
	if err := r.Patch(ctx, cb, patch); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("removing finalizer: %w", err)
	}
	return nil
}

func (r *CircuitBreakerReconciler) handBack(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, frontName string) error {
	logger := log.FromContext(ctx)
	front := &corev1.Service{}
	err := r.Get(ctx, types.NamespacedName{Namespace: cb.Namespace, Name: frontName}, front)
	if apierrors.IsNotFound(err) {
		return r.deleteSlices(ctx, cb, frontName)
	}
	if err != nil {
		return fmt.Errorf("getting front Service %q: %w", frontName, err)
	}
	if front.Annotations[tripswitchv1alpha1.BreakerAnnotation] != cb.Name {
		return nil // never ours: another breaker's or the user's
	}
	tgt := &corev1.Service{}
	err = r.Get(ctx, types.NamespacedName{Namespace: cb.Namespace, Name: cb.Spec.Target.Service}, tgt)
	if client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("getting target Service %q: %w", cb.Spec.Target.Service, err)
	}
	patch := client.MergeFrom(front.DeepCopy())
	delete(front.Annotations, tripswitchv1alpha1.BreakerAnnotation)
	if err == nil && len(tgt.Spec.Selector) > 0 {
		front.Spec.Selector = maps.Clone(tgt.Spec.Selector)
		if err := r.Patch(ctx, front, patch); err != nil {
			return fmt.Errorf("handing front Service %q back: %w", frontName, err)
		}
		logger.Info("Handed the front Service back to Kubernetes with the target's selector", "service", frontName)
		return r.deleteSlices(ctx, cb, frontName)
	}
	// Nothing to hand back to: keep the last mirror, and let nothing garbage-collect it.
	if err := r.Patch(ctx, front, patch); err != nil {
		return fmt.Errorf("releasing front Service %q: %w", frontName, err)
	}
	own, err := r.ownSlices(ctx, cb, frontName)
	if err != nil {
		return err
	}
	for i := range own {
		s := &own[i]
		s.OwnerReferences = nil
		delete(s.Labels, gate.BreakerLabel)
		s.Labels[discoveryv1.LabelManagedBy] = "tripswitch.io-released"
		if err := r.Update(ctx, s); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("releasing EndpointSlice %q: %w", s.Name, err)
		}
	}
	logger.Info("The target has no selector; left the front Service with its last endpoints", "service", frontName)
	return nil
}

func (r *CircuitBreakerReconciler) deleteSlices(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, front string) error {
	own, err := r.ownSlices(ctx, cb, front)
	if err != nil {
		return err
	}
	for i := range own {
		if err := r.Delete(ctx, &own[i]); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting EndpointSlice %q: %w", own[i].Name, err)
		}
	}
	return nil
}
