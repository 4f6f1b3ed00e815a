package controller

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/endpoints"
)

// target is what the target Service offers the breaker.
type target struct {
	// service is nil when the target Service does not exist.
	service *corev1.Service
	port    corev1.ServicePort
	slices  []discoveryv1.EndpointSlice
	ready   []netip.AddrPort
	// resolved says that service, port and slices are all known.
	resolved bool
}

// reconcileTarget resolves the target Service, its port and its ready endpoints. A missing
// target or port yields a target with no endpoints and a waitingError, so the engine keeps
// its state and a watch brings the breaker back; an API error leaves st.target nil, so that
// nothing downstream mistakes "unknown" for "empty".
func (r *CircuitBreakerReconciler) reconcileTarget(ctx context.Context, st *reconcileState) error {
	name := st.spec.Target.Service
	svc, err := r.lookupService(ctx, st.cb.Namespace, name)
	if err != nil {
		return err
	}
	if svc == nil {
		st.target = &target{}
		return &waitingError{reason: tripswitchv1alpha1.ReasonTargetNotFound,
			message: fmt.Sprintf("target Service %q not found", name)}
	}
	port, err := endpoints.ServicePort(svc, st.spec.Target.Port)
	if err != nil {
		st.target = &target{service: svc}
		return &waitingError{reason: tripswitchv1alpha1.ReasonTargetPortNotFound, message: "target " + err.Error()}
	}
	slices, err := r.slicesOf(ctx, st.cb.Namespace, name)
	if err != nil {
		return err
	}
	st.target = &target{service: svc, port: port, slices: slices, ready: endpoints.Ready(port, slices), resolved: true}
	return nil
}

// lookupService gets a Service from the cache, or nil when it does not exist.
func (r *CircuitBreakerReconciler) lookupService(ctx context.Context, namespace, name string) (*corev1.Service, error) {
	svc := &corev1.Service{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, svc); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("getting Service %q: %w", name, err)
	}
	return svc, nil
}

// slicesOf lists a Service's EndpointSlices from the cache.
func (r *CircuitBreakerReconciler) slicesOf(ctx context.Context, namespace, service string) ([]discoveryv1.EndpointSlice, error) {
	var list discoveryv1.EndpointSliceList
	if err := r.List(ctx, &list, client.InNamespace(namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: service}); err != nil {
		return nil, fmt.Errorf("listing EndpointSlices of Service %q: %w", service, err)
	}
	return list.Items, nil
}
