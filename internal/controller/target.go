package controller

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/endpoints"
)

// target is what the target Service, or an external target's host, offers the breaker.
type target struct {
	// service is nil when the target Service does not exist. For an external target it is no
	// API object, only the shape a new front Service takes: its port and IP families.
	service *corev1.Service
	port    corev1.ServicePort
	slices  []discoveryv1.EndpointSlice
	ready   []netip.AddrPort
	// probed are the ready endpoints inside the manager's --probe-allowed-cidrs.
	probed []netip.AddrPort
	// resolved says that service, port and slices are all known.
	resolved bool
}

// reconcileTarget resolves the target Service, its port and its ready endpoints. A missing
// target or port yields a target with no endpoints and a waitingError, so the engine keeps
// its state and a watch brings the breaker back; an API error leaves st.target nil, so that
// nothing downstream mistakes "unknown" for "empty".
func (r *CircuitBreakerReconciler) reconcileTarget(ctx context.Context, st *reconcileState) error {
	if ext := st.spec.Target.External; ext != nil {
		return r.reconcileExternalTarget(ctx, st, ext)
	}
	if r.External.Tracker != nil {
		r.External.Tracker.Forget(client.ObjectKeyFromObject(st.cb))
	}
	st.cb.Status.External = nil
	meta.RemoveStatusCondition(&st.cb.Status.Conditions, tripswitchv1alpha1.ConditionResolved)
	name := st.spec.Target.Service
	st.cb.Status.Target = name
	svc, err := r.lookupService(ctx, st.cb.Namespace, name)
	if err != nil {
		return err
	}
	if svc == nil {
		st.target = &target{}
		return &waitingError{reason: tripswitchv1alpha1.ReasonTargetNotFound,
			message: fmt.Sprintf("target Service %q not found", name)}
	}
	port, err := endpoints.ServicePort(svc, ptr.Deref(st.spec.Target.Port, intstr.IntOrString{}))
	if err != nil {
		st.target = &target{service: svc}
		return &waitingError{reason: tripswitchv1alpha1.ReasonTargetPortNotFound, message: "target " + err.Error()}
	}
	slices, err := r.slicesOf(ctx, st.cb.Namespace, name)
	if err != nil {
		return err
	}
	ready := endpoints.Ready(port, slices)
	probed, refused := endpoints.Allowed(ready, r.ProbeAllowedCIDRs)
	st.target = &target{service: svc, port: port, slices: slices, ready: ready, probed: probed, resolved: true}
	r.reportNotProbed(ctx, st.cb, len(ready), refused)
	return nil
}

// maxNamedNotProbed bounds how many endpoints the EndpointsNotProbed condition names.
const maxNamedNotProbed = 5

// reportNotProbed keeps the EndpointsNotProbed condition in step with the ready endpoints
// outside --probe-allowed-cidrs. Anyone who may write EndpointSlices labelled with the target's
// name can add addresses to it, such as a node's kubelet or another tenant's pods; probing
// them would send the manager there and bring their answers back into status. They are skipped
// as if not ready, so that a foreign address can neither trip a healthy target nor be probed.
// The gate leaves them alone: the front publishes what the target's slices publish, as the
// target Service itself does, so a wrong flag cannot take traffic away.
func (r *CircuitBreakerReconciler) reportNotProbed(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, ready int,
	refused []netip.AddrPort) {
	if len(refused) == 0 {
		meta.RemoveStatusCondition(&cb.Status.Conditions, tripswitchv1alpha1.ConditionEndpointsNotProbed)
		return
	}
	named := make([]string, 0, maxNamedNotProbed)
	for _, ep := range refused[:min(len(refused), maxNamedNotProbed)] {
		named = append(named, ep.String())
	}
	more := ""
	if len(refused) > maxNamedNotProbed {
		more = fmt.Sprintf(" and %d more", len(refused)-maxNamedNotProbed)
	}
	message := fmt.Sprintf("%d of the target's %d ready endpoints are outside the manager's --probe-allowed-cidrs, so they "+
		"are not probed and count as if not ready: %s%s. The front Service still publishes them, as the target Service does.",
		len(refused), ready, strings.Join(named, ", "), more)
	if meta.FindStatusCondition(cb.Status.Conditions, tripswitchv1alpha1.ConditionEndpointsNotProbed) == nil {
		log.FromContext(ctx).Info("Ready endpoints of the target are outside --probe-allowed-cidrs and are not probed",
			"count", len(refused), "endpoints", named)
	}
	meta.SetStatusCondition(&cb.Status.Conditions, metav1.Condition{
		Type: tripswitchv1alpha1.ConditionEndpointsNotProbed, Status: metav1.ConditionTrue,
		Reason: tripswitchv1alpha1.ReasonOutsideProbeAllowedCIDRs, Message: message, ObservedGeneration: cb.Generation,
	})
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

// slicesOf lists a Service's EndpointSlices from the cache, whole: slices that the cache holds
// as stubs (see SliceCache) are read live instead.
func (r *CircuitBreakerReconciler) slicesOf(ctx context.Context, namespace, service string) ([]discoveryv1.EndpointSlice, error) {
	var list discoveryv1.EndpointSliceList
	if err := r.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{sliceServiceIndex: service},
		client.MatchingLabels{discoveryv1.LabelServiceName: service}); err != nil {
		return nil, fmt.Errorf("listing EndpointSlices of Service %q: %w", service, err)
	}
	if r.SliceCache == nil {
		return list.Items, nil
	}
	return r.SliceCache.complete(ctx, namespace, service, list.Items)
}
