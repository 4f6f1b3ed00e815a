package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/endpoints"
	"github.com/tripswitch/tripswitch/internal/gate"
)

// DefaultHandBackTimeout is how long tripswitch keeps its slices on a front Service it hands
// back to Kubernetes, waiting for Kubernetes' EndpointSlice controller to publish ready
// endpoints of its own. That usually takes well under a second; the timeout covers a
// kube-controller-manager that is restarting or changing leader. Past it, tripswitch deletes
// its slices anyway: a copy that nobody maintains would keep sending traffic to pods long gone.
const DefaultHandBackTimeout = time.Minute

// endpointSliceControllerName is the managed-by value of Kubernetes' own EndpointSlice
// controller, the one that takes over a front Service once it has a selector.
const endpointSliceControllerName = "endpointslice-controller.k8s.io"

// finalize hands every front Service the breaker gates, or was handing back, to Kubernetes,
// removes its annotations, and only then lets the breaker go.
func (r *CircuitBreakerReconciler) finalize(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker) (ctrl.Result, error) {
	r.forget(client.ObjectKeyFromObject(cb))
	if !controllerutil.ContainsFinalizer(cb, tripswitchv1alpha1.Finalizer) {
		return ctrl.Result{}, nil
	}
	fronts, err := r.frontsOf(ctx, cb, "")
	if err != nil {
		return ctrl.Result{}, err
	}
	if front := cb.FrontServiceName(); front != "" && !slices.Contains(fronts, front) {
		fronts = append(fronts, front)
	}
	var pending []string
	for _, front := range fronts {
		done, err := r.handBack(ctx, cb, front)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !done {
			pending = append(pending, front)
		}
	}
	if len(pending) > 0 {
		if err := r.reportHandingBack(ctx, cb, pending); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: handBackPoll}, nil
	}
	for _, ref := range cb.Status.AnnotatedObjects {
		if _, err := r.applyAnnotations(ctx, cb, ref, nil); err != nil {
			return ctrl.Result{}, err
		}
	}
	patch := client.MergeFrom(cb.DeepCopy())
	controllerutil.RemoveFinalizer(cb, tripswitchv1alpha1.Finalizer)
	if err := r.Patch(ctx, cb, patch); client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, fmt.Errorf("removing finalizer: %w", err)
	}
	return ctrl.Result{}, nil
}

// reportHandingBack says in status what a terminating breaker waits for.
func (r *CircuitBreakerReconciler) reportHandingBack(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, fronts []string) error {
	original := cb.DeepCopy()
	message := fmt.Sprintf("handing front Services %q back to Kubernetes; tripswitch's EndpointSlices stay until "+
		"Kubernetes publishes ready endpoints, or for %s at most", fronts, r.HandBackTimeout)
	setCondition(&cb.Status, tripswitchv1alpha1.ConditionReconciling, metav1.ConditionTrue, tripswitchv1alpha1.ReasonHandingBack,
		message, cb.Generation)
	return r.patchStatus(ctx, original, cb)
}

// handBackFormerFronts hands back every front Service the breaker no longer gates, after
// gate.endpointSlice.service was renamed or gate.endpointSlice removed, exactly as deletion
// would: the old front keeps tripswitch's slices until Kubernetes serves it.
func (r *CircuitBreakerReconciler) handBackFormerFronts(ctx context.Context, st *reconcileState) error {
	current := ""
	if es := st.spec.Gate.EndpointSlice; es != nil {
		current = es.Service
	}
	fronts, err := r.frontsOf(ctx, st.cb, current)
	if err != nil {
		return err
	}
	var pending []string
	for _, front := range fronts {
		done, err := r.handBack(ctx, st.cb, front)
		if err != nil {
			return err
		}
		if !done {
			pending = append(pending, front)
		}
	}
	if len(pending) > 0 {
		st.requeueWithin(handBackPoll)
		return &waitingError{reason: tripswitchv1alpha1.ReasonHandingBack,
			message: fmt.Sprintf("handing former front Services %q back to Kubernetes", pending)}
	}
	return nil
}

// frontsOf lists the front Services that hold this breaker's slices, and the front that status
// last named, except the one given.
func (r *CircuitBreakerReconciler) frontsOf(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, except string) ([]string, error) {
	var list discoveryv1.EndpointSliceList
	label := gate.BreakerLabelValue(cb.Name)
	if err := r.List(ctx, &list, client.InNamespace(cb.Namespace), client.MatchingFields{sliceBreakerIndex: label},
		client.MatchingLabels{discoveryv1.LabelManagedBy: tripswitchv1alpha1.ManagedBy, gate.BreakerLabel: label}); err != nil {
		return nil, fmt.Errorf("listing the breaker's EndpointSlices: %w", err)
	}
	seen := map[string]bool{}
	for _, s := range list.Items {
		seen[s.Labels[discoveryv1.LabelServiceName]] = true
	}
	if f := cb.Status.FrontService; f != "" {
		seen[f] = true
	}
	delete(seen, except)
	delete(seen, "")
	fronts := slices.Collect(maps.Keys(seen))
	slices.Sort(fronts)
	return fronts, nil
}

// claimedBy is the breaker that gates a front Service: the one its claim names or, for a front
// claimed by an earlier release (whose claim key the annotation gate could overwrite), the
// breaker whose slices are on it. self's own slices prove self's claim.
func claimedBy(front *corev1.Service, fronted []discoveryv1.EndpointSlice, self string) string {
	if name := front.Annotations[tripswitchv1alpha1.ClaimAnnotation]; name != "" {
		return name
	}
	publishes := func(name string) bool {
		label := gate.BreakerLabelValue(name)
		return slices.ContainsFunc(fronted, func(s discoveryv1.EndpointSlice) bool {
			return s.Labels[discoveryv1.LabelManagedBy] == tripswitchv1alpha1.ManagedBy && s.Labels[gate.BreakerLabel] == label
		})
	}
	if publishes(self) {
		return self
	}
	if legacy := front.Annotations[tripswitchv1alpha1.LegacyClaimAnnotation]; legacy != "" && publishes(legacy) {
		return legacy
	}
	return ""
}

// handBack takes one step of handing a front Service back to Kubernetes and reports whether
// nothing of the breaker's is left on it. It never leaves the front without endpoints that
// the target could serve:
//   - a front that another breaker claims keeps a last copy of ours until that breaker
//     replaces it;
//   - when the target has a selector, our slices first mirror the target as if Closed, the
//     front gets the selector, and our slices go only once Kubernetes' own slices show ready
//     endpoints (or HandBackTimeout after the hand-back began);
//   - when the target has no selector or is gone, nobody could take over, so the last copy,
//     mirroring the target as if Closed, stays for good.
func (r *CircuitBreakerReconciler) handBack(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, name string) (bool, error) {
	logger := log.FromContext(ctx).WithValues("front", name)
	ours, err := r.ownSlices(ctx, cb, name)
	if err != nil {
		return false, err
	}
	front, err := r.lookupService(ctx, cb.Namespace, name)
	if err != nil {
		return false, err
	}
	if front == nil {
		return true, r.deleteSlices(ctx, ours)
	}
	fronted, err := r.slicesOf(ctx, cb.Namespace, name)
	if err != nil {
		return false, err
	}
	tgt, err := r.handBackTarget(ctx, cb)
	if err != nil {
		return false, err
	}
	if owner := claimedBy(front, fronted, cb.Name); owner != cb.Name {
		if len(ours) > 0 {
			logger.Info("The front Service is claimed by someone else; leaving a last copy of the target's endpoints", "claim", owner)
			return true, r.writeLastCopy(ctx, cb, front, tgt, ours)
		}
		return true, nil
	}
	if tgt.service == nil || len(tgt.service.Spec.Selector) == 0 {
		if err := r.writeLastCopy(ctx, cb, front, tgt, ours); err != nil {
			return false, err
		}
		logger.Info("The target has no selector or is gone; left the front Service a last copy of its endpoints, mirrored as if Closed")
		return true, r.dropClaim(ctx, front, cb.Name)
	}

	since := r.Clock.Now()
	for _, s := range ours {
		if t, err := time.Parse(time.RFC3339, s.Annotations[tripswitchv1alpha1.HandBackAnnotation]); err == nil && t.Before(since) {
			since = t
		}
	}
	if len(ours) > 0 {
		desired := closedMirror(cb, front, tgt)
		for i := range desired {
			metav1.SetMetaDataAnnotation(&desired[i].ObjectMeta, tripswitchv1alpha1.HandBackAnnotation, since.UTC().Format(time.RFC3339))
		}
		if err := r.applySlices(ctx, cb, name, desired); err != nil {
			return false, err
		}
	}
	if !maps.Equal(front.Spec.Selector, tgt.service.Spec.Selector) {
		patch := client.MergeFrom(front.DeepCopy())
		front.Spec.Selector = maps.Clone(tgt.service.Spec.Selector)
		if err := r.Patch(ctx, front, patch); err != nil {
			return false, fmt.Errorf("handing front Service %q back: %w", name, err)
		}
		logger.Info("Gave the front Service the target's selector; Kubernetes will maintain its endpoints")
	}
	kubeReady := readyEndpoints(fronted, endpointSliceControllerName)
	timedOut := r.Clock.Since(since) >= r.HandBackTimeout
	if len(ours) > 0 && kubeReady == 0 && tgt.ready > 0 && !timedOut {
		return false, nil
	}
	if timedOut && kubeReady == 0 && tgt.ready > 0 {
		logger.Info("Kubernetes published no ready endpoints in time; deleting tripswitch's slices anyway", "timeout", r.HandBackTimeout)
	}
	if err := r.deleteSlices(ctx, ours); err != nil {
		return false, err
	}
	return true, r.dropClaim(ctx, front, cb.Name)
}

// handBackView is what a hand-back needs of the target: its Service (nil when gone), its
// slices, and how many ready endpoints they hold on any port.
type handBackView struct {
	service *corev1.Service
	slices  []discoveryv1.EndpointSlice
	ready   int
}

func (r *CircuitBreakerReconciler) handBackTarget(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker) (handBackView, error) {
	if cb.Spec.Target.External != nil {
		// Nobody can take over an external target's front: the last copy holds the addresses
		// status last named, for callers whose DNS still sends them to the front.
		slices := ExternalTargetSlices(cb)
		return handBackView{slices: slices, ready: readyEndpoints(slices, "")}, nil
	}
	svc, err := r.lookupService(ctx, cb.Namespace, cb.Spec.Target.Service)
	if err != nil {
		return handBackView{}, err
	}
	slices, err := r.slicesOf(ctx, cb.Namespace, cb.Spec.Target.Service)
	if err != nil {
		return handBackView{}, err
	}
	return handBackView{service: svc, slices: slices, ready: readyEndpoints(slices, "")}, nil
}

// closedMirror is the breaker's slices for a front as if it were Closed: the target's
// endpoints, whatever the gate last published, which is what a front handed back serves.
func closedMirror(cb *tripswitchv1alpha1.CircuitBreaker, front *corev1.Service, tgt handBackView) []discoveryv1.EndpointSlice {
	desired, _ := gate.Slices(gate.Input{Namespace: cb.Namespace, Breaker: cb.Name, Front: front.Name, Owner: ownerRef(front),
		State: breaker.Closed, Target: tgt.slices})
	return desired
}

// readyEndpoints counts the ready endpoints in slices managed by manager, or in all of them.
func readyEndpoints(list []discoveryv1.EndpointSlice, manager string) int {
	n := 0
	for _, s := range list {
		if manager != "" && s.Labels[discoveryv1.LabelManagedBy] != manager {
			continue
		}
		for _, ep := range s.Endpoints {
			if endpoints.IsReady(ep) {
				n++
			}
		}
	}
	return n
}

// writeLastCopy turns the breaker's slices of a front into a last copy that no breaker
// manages: the target's endpoints mirrored as if Closed, labelled managed-by
// tripswitch.io-released and owned by the front Service, so that they stay until the Service
// goes or a breaker adopts it again.
func (r *CircuitBreakerReconciler) writeLastCopy(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, front *corev1.Service,
	tgt handBackView, ours []discoveryv1.EndpointSlice) error {
	desired := closedMirror(cb, front, tgt)
	for i := range desired {
		desired[i].Labels[discoveryv1.LabelManagedBy] = gate.ReleasedManagedBy
		delete(desired[i].Labels, gate.BreakerLabel)
	}
	if err := r.syncSlices(ctx, ours, desired, true); err != nil {
		return fmt.Errorf("writing the last copy: %w", err)
	}
	return nil
}

// WriteLastCopy turns a breaker's slices on a front Service (ours) into the last copy, as a
// deleted breaker's finalizer leaves it: the target's endpoints (from targetSlices) mirrored
// as if Closed, labelled managed-by tripswitch.io-released and owned by the front. It is for
// callers that run without a manager (internal/release, on helm uninstall); c is a plain
// client, and nothing but c is used.
func WriteLastCopy(ctx context.Context, c client.Client, cb *tripswitchv1alpha1.CircuitBreaker, front *corev1.Service,
	targetSlices, ours []discoveryv1.EndpointSlice) error {
	r := &CircuitBreakerReconciler{Client: c, Clock: clock.RealClock{}}
	return r.writeLastCopy(ctx, cb, front, handBackView{slices: targetSlices}, ours)
}

// hasLegacyClaim says whether a front carries an earlier release's claim for the breaker
// called name. The annotation gate writes the same key beside tripswitch.io/state, and that
// is no claim: the gate owns it and would only put it back.
func hasLegacyClaim(front *corev1.Service, name string) bool {
	return front.Annotations[tripswitchv1alpha1.LegacyClaimAnnotation] == name &&
		front.Annotations[tripswitchv1alpha1.StateAnnotation] == ""
}

// dropClaim removes the breaker's claim from a front Service it no longer gates.
func (r *CircuitBreakerReconciler) dropClaim(ctx context.Context, front *corev1.Service, name string) error {
	claim := front.Annotations[tripswitchv1alpha1.ClaimAnnotation] == name
	legacy := hasLegacyClaim(front, name)
	if !claim && !legacy {
		return nil
	}
	patch := client.MergeFrom(front.DeepCopy())
	if claim {
		delete(front.Annotations, tripswitchv1alpha1.ClaimAnnotation)
	}
	if legacy {
		delete(front.Annotations, tripswitchv1alpha1.LegacyClaimAnnotation)
	}
	if err := r.Patch(ctx, front, patch); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("releasing front Service %q: %w", front.Name, err)
	}
	return nil
}

func (r *CircuitBreakerReconciler) deleteSlices(ctx context.Context, list []discoveryv1.EndpointSlice) error {
	for i := range list {
		if err := r.Delete(ctx, &list[i]); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting EndpointSlice %q: %w", list[i].Name, err)
		}
	}
	return nil
}
