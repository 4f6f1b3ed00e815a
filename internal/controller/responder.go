package controller

import (
	"context"
	"fmt"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/gate"
)

// probeSpeaksHTTP says the probed port carries cleartext HTTP or gRPC because the probe does:
// the responder's HTTP listener can then answer it even when the port's appProtocol and name
// say nothing.
func probeSpeaksHTTP(spec tripswitchv1alpha1.CircuitBreakerSpec) bool {
	p := spec.Probe
	return (p.HTTP != nil && p.HTTP.Scheme != tripswitchv1alpha1.SchemeHTTPS) || p.GRPC != nil
}

// responderSlices reads the responder Service's slices, when the gate calls for them. Without
// a configured responder there are none, and the gate behaves as whenOpen Reject.
func (r *CircuitBreakerReconciler) responderSlices(ctx context.Context, in gate.Input) ([]discoveryv1.EndpointSlice, error) {
	if !in.WantsResponder() || r.Responder.Name == "" {
		return nil, nil
	}
	return r.slicesOf(ctx, r.Responder.Namespace, r.Responder.Name)
}

// setResponderCondition reports whether the front publishes the responder while the gate
// calls for it, and drops the condition otherwise.
func (r *CircuitBreakerReconciler) setResponderCondition(cb *tripswitchv1alpha1.CircuitBreaker, in gate.Input, published gate.Published) {
	if !in.WantsResponder() {
		meta.RemoveStatusCondition(&cb.Status.Conditions, tripswitchv1alpha1.ConditionResponder)
		return
	}
	c := metav1.Condition{Type: tripswitchv1alpha1.ConditionResponder, ObservedGeneration: cb.Generation}
	switch {
	case published.Responders > 0:
		c.Status, c.Reason = metav1.ConditionTrue, tripswitchv1alpha1.ReasonResponderPublished
		c.Message = fmt.Sprintf("front Service %q publishes %d responder endpoints of %s, which answer its clients at once",
			in.Front, published.Responders, r.Responder)
	case r.Responder.Name == "":
		c.Status, c.Reason = metav1.ConditionFalse, tripswitchv1alpha1.ReasonNoReadyResponder
		c.Message = "the manager runs without --responder-service, so clients of front Service " + fmt.Sprintf("%q", in.Front) +
			" get kube-proxy's reject, ICMP that the kernel rate-limits per client"
	default:
		c.Status, c.Reason = metav1.ConditionFalse, tripswitchv1alpha1.ReasonNoReadyResponder
		c.Message = fmt.Sprintf("no ready endpoint of the responder Service %s answers front Service %q's ports, so its clients "+
			"get kube-proxy's reject, ICMP that the kernel rate-limits per client", r.Responder, in.Front)
	}
	meta.SetStatusCondition(&cb.Status.Conditions, c)
}

// breakersUsingResponder maps an event on one of the responder Service's slices to the
// breakers whose gate publishes, or would publish, the responder now: those Open or HalfOpen.
// Closed breakers don't care until they trip, when they read the responder afresh.
func (r *CircuitBreakerReconciler) breakersUsingResponder(ctx context.Context, obj client.Object) []reconcile.Request {
	if r.Responder.Name == "" || obj.GetNamespace() != r.Responder.Namespace ||
		obj.GetLabels()[discoveryv1.LabelServiceName] != r.Responder.Name {
		return nil
	}
	var list tripswitchv1alpha1.CircuitBreakerList
	if err := r.List(ctx, &list); err != nil {
		log.FromContext(ctx).Error(err, "Listing CircuitBreakers for a responder change failed")
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		if s := list.Items[i].Status.GateState; s == tripswitchv1alpha1.StateOpen || s == tripswitchv1alpha1.StateHalfOpen {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return reqs
}
