package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/endpoints"
	"github.com/tripswitch/tripswitch/internal/gate"
)

// reconcileEndpointSliceGate makes sure the front Service is ours and publishes the slices
// that the gate state calls for, putting back any edit made by someone else. When the front
// cannot be ours, it changes nothing: whatever the front published stays (fail static).
func (r *CircuitBreakerReconciler) reconcileEndpointSliceGate(ctx context.Context, st *reconcileState) error {
	es := st.spec.Gate.EndpointSlice
	if es == nil {
		meta.RemoveStatusCondition(&st.cb.Status.Conditions, tripswitchv1alpha1.ConditionResponder)
		return nil
	}
	cb, tgt := st.cb, st.target
	front, err := r.claimFrontService(ctx, cb, es.Service, tgt)
	if err != nil {
		return err
	}
	in := gate.Input{
		Namespace: cb.Namespace, Breaker: cb.Name, Front: es.Service, Owner: ownerRef(front), State: st.view.Gate,
		Target: tgt.slices, GatedPort: tgt.port.Name, HalfOpenEndpoints: int(es.HalfOpenEndpoints),
		WhenOpen: es.WhenOpen, FrontPorts: front.Spec.Ports, ProbeSpeaksHTTP: probeSpeaksHTTP(st.spec),
		HeldBack: heldBack(st.view, st.spec.Mode), KeepConnections: !ptr.Deref(es.CutConnections, true),
	}
	if f := es.Fallback; f != nil && st.view.Gate == breaker.Open {
		fallback, err := r.lookupService(ctx, cb.Namespace, f.Service)
		switch {
		case err != nil:
			return err
		case fallback == nil:
			log.FromContext(ctx).Info("Fallback Service not found; publishing no endpoints while Open", "fallback", f.Service)
		default:
			port, err := endpoints.ServicePort(fallback, *f.Port)
			if err != nil {
				return &waitingError{reason: tripswitchv1alpha1.ReasonFallbackPortNotFound, message: "fallback " + err.Error()}
			}
			if in.Fallback, err = r.slicesOf(ctx, cb.Namespace, f.Service); err != nil {
				return err
			}
			in.HasFallback, in.FallbackPort = true, port.Name
		}
	}
	if in.Responder, err = r.responderSlices(ctx, in); err != nil {
		return err
	}
	desired, published := gate.Slices(in)
	released, err := r.releasedCopies(ctx, cb.Namespace, es.Service)
	if err != nil {
		return err
	}
	// A last copy that a deleted breaker left here is taken over in place, slice by slice,
	// so the front never goes without endpoints in between.
	if err := r.applySlices(ctx, cb, es.Service, desired, released...); err != nil {
		return err
	}
	cb.Status.Endpoints.Published, cb.Status.Endpoints.Responders = int32(published.Endpoints), int32(published.Responders)
	r.setResponderCondition(cb, in, published)
	return nil
}

// ownerRef makes the front Service the owner of its slices. Kubernetes' own slices belong to
// their Service the same way. Owned by the breaker, they would be garbage-collected whenever
// the breaker vanished without its finalizer (a removed CRD, a forced deletion), emptying the
// front for every client; owned by the front, they outlive any trouble of tripswitch's and go
// only with the Service itself. Neither controller nor blockOwnerDeletion is set: tripswitch
// needs no rights on Services' finalizers.
func ownerRef(front *corev1.Service) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "v1", Kind: "Service", Name: front.Name, UID: front.UID}
}

// reserved says why a Service may never be a front, or "".
func reserved(namespace, name string) string {
	if namespace == metav1.NamespaceDefault && name == "kubernetes" {
		return "the Service kubernetes in default is the API server's own; choose another front Service"
	}
	return ""
}

// claimFrontService creates the front Service with the target's ports when it is missing,
// adopts a selectorless one, and returns it. It refuses a reserved Service, one with a
// selector, one that another breaker gates, and one whose EndpointSlices somebody else
// publishes: tripswitch could not gate those alone, and taking them would fight their owner.
func (r *CircuitBreakerReconciler) claimFrontService(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker,
	name string, tgt *target) (*corev1.Service, error) {
	if why := reserved(cb.Namespace, name); why != "" {
		return nil, &stalledError{reason: tripswitchv1alpha1.ReasonFrontServiceReserved, message: why}
	}
	front, err := r.lookupService(ctx, cb.Namespace, name)
	if err != nil {
		return nil, err
	}
	if front == nil {
		return r.createFrontService(ctx, cb, name, tgt)
	}
	fronted, err := r.slicesOf(ctx, cb.Namespace, name)
	if err != nil {
		return nil, err
	}
	owner := claimedBy(front, fronted, cb.Name)
	switch {
	case owner != "" && owner != cb.Name:
		return nil, &stalledError{reason: tripswitchv1alpha1.ReasonFrontServiceClaimed,
			message: fmt.Sprintf("front Service %q is gated by breaker %q", name, owner)}
	case len(front.Spec.Selector) > 0:
		return nil, &stalledError{reason: tripswitchv1alpha1.ReasonFrontServiceHasSelector,
			message: fmt.Sprintf("front Service %q has a selector, so Kubernetes manages its endpoints; remove it or choose another front Service", name)}
	case !slices.ContainsFunc(front.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == tgt.port.Name }):
		return nil, &stalledError{reason: tripswitchv1alpha1.ReasonFrontServicePortMismatch,
			message: fmt.Sprintf("front Service %q has no port named %q like the target's", name, tgt.port.Name)}
	}
	if foreign := foreignManagers(fronted, gate.BreakerLabelValue(cb.Name)); len(foreign) > 0 {
		return nil, &stalledError{reason: tripswitchv1alpha1.ReasonFrontServiceHasForeignEndpointSlices,
			message: fmt.Sprintf("front Service %q has EndpointSlices managed by %s, which would keep publishing "+
				"endpoints whatever the breaker decides; delete them (kubectl delete endpointslices -n %s -l "+
				"kubernetes.io/service-name=%s,endpointslice.kubernetes.io/managed-by=%s) or choose another front Service",
				name, strings.Join(foreign, ", "), cb.Namespace, name, foreign[0])}
	}
	if front.Annotations[tripswitchv1alpha1.ClaimAnnotation] == cb.Name {
		return front, nil
	}
	// Adopt the Service, or move an earlier release's claim to the current key.
	patch := client.MergeFrom(front.DeepCopy())
	metav1.SetMetaDataAnnotation(&front.ObjectMeta, tripswitchv1alpha1.ClaimAnnotation, cb.Name)
	if hasLegacyClaim(front, cb.Name) {
		delete(front.Annotations, tripswitchv1alpha1.LegacyClaimAnnotation)
	}
	if err := r.Patch(ctx, front, patch); err != nil {
		return nil, fmt.Errorf("adopting front Service %q: %w", name, err)
	}
	log.FromContext(ctx).Info("Adopted front Service", "service", name, "hadClaim", owner == cb.Name)
	return front, nil
}

// createFrontService creates a selectorless front Service with the target's ports.
func (r *CircuitBreakerReconciler) createFrontService(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker,
	name string, tgt *target) (*corev1.Service, error) {
	front := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: cb.Namespace, Name: name,
			Labels:      map[string]string{"app.kubernetes.io/managed-by": "tripswitch"},
			Annotations: map[string]string{tripswitchv1alpha1.ClaimAnnotation: cb.Name}},
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
		return nil, fmt.Errorf("creating front Service %q: %w", name, err)
	}
	log.FromContext(ctx).Info("Created front Service", "service", name)
	return front, nil
}

// foreignManagers lists, sorted, who else publishes slices for a front: any manager but
// tripswitch, and tripswitch slices of another breaker. A last copy left by a deleted breaker
// (gate.ReleasedManagedBy) is not foreign: the breaker that adopts the front replaces it.
func foreignManagers(fronted []discoveryv1.EndpointSlice, label string) []string {
	seen := map[string]bool{}
	for _, s := range fronted {
		manager := s.Labels[discoveryv1.LabelManagedBy]
		switch {
		case manager == gate.ReleasedManagedBy:
		case manager == tripswitchv1alpha1.ManagedBy && s.Labels[gate.BreakerLabel] == label:
		case manager == tripswitchv1alpha1.ManagedBy:
			seen[manager+" (breaker "+s.Labels[gate.BreakerLabel]+")"] = true
		case manager == "":
			seen["nobody (no managed-by label)"] = true
		default:
			seen[manager] = true
		}
	}
	out := slices.Collect(maps.Keys(seen))
	sort.Strings(out)
	return out
}

// releasedCopies lists the last copy that a deleted breaker left on a front Service.
func (r *CircuitBreakerReconciler) releasedCopies(ctx context.Context, namespace, front string) ([]discoveryv1.EndpointSlice, error) {
	var list discoveryv1.EndpointSliceList
	if err := r.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{sliceServiceIndex: front},
		client.MatchingLabels{discoveryv1.LabelServiceName: front, discoveryv1.LabelManagedBy: gate.ReleasedManagedBy}); err != nil {
		return nil, fmt.Errorf("listing released EndpointSlices of front Service %q: %w", front, err)
	}
	return list.Items, nil
}

// applySlices makes the front Service's tripswitch slices, and any others given to take
// over, equal to desired.
func (r *CircuitBreakerReconciler) applySlices(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, front string,
	desired []discoveryv1.EndpointSlice, takeOver ...discoveryv1.EndpointSlice) error {
	existing, err := r.ownSlices(ctx, cb, front)
	if err != nil {
		return err
	}
	return r.syncSlices(ctx, append(existing, takeOver...), desired, false)
}

// syncSlices turns existing into desired, matched by name, with no write when nothing
// differs. The order keeps kube-proxy from ever seeing the front without the endpoints it
// should route to:
//   - first, slices that go and publish nothing kube-proxy could route to (no endpoint ready
//     or serving): an endpoint that an update is about to make ready elsewhere must not
//     linger in one of them as not ready, because kube-proxy, merging an endpoint listed
//     twice, was seen (1.37) to drop it for a sync, refusing connections, when an Open front
//     with the responder closed;
//   - then creates and updates, in desired's order;
//   - last, the other slices that go, so that ready endpoints move rather than vanish.
//
// An update merges labels and annotations into what is there, unless replaceMeta, which
// makes them exactly desired's (a last copy drops everything that tied the slice to its
// breaker). The annotations only tripswitch writes (gate.OwnedAnnotations) go when desired no
// longer has them. A slice whose endpoints or ports change is stamped with
// endpoints.kubernetes.io/last-change-trigger-time, as Kubernetes' own controller stamps its
// slices: kube-proxy measures its network programming latency from it, and the node agent
// ignores changes that reach it long after they were made (a watch resumed after an outage).
func (r *CircuitBreakerReconciler) syncSlices(ctx context.Context, existing, desired []discoveryv1.EndpointSlice,
	replaceMeta bool) error {
	byName := map[string]*discoveryv1.EndpointSlice{}
	for i := range existing {
		byName[existing[i].Name] = &existing[i]
	}
	wanted := map[string]bool{}
	for _, want := range desired {
		wanted[want.Name] = true
	}
	for name, extra := range byName {
		if wanted[name] || slices.ContainsFunc(extra.Endpoints, routable) {
			continue
		}
		if err := r.Delete(ctx, extra); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting EndpointSlice %q: %w", extra.Name, err)
		}
		delete(byName, name)
	}
	changedAt := r.Clock.Now().UTC().Format(time.RFC3339Nano)
	for i := range desired {
		want := &desired[i]
		have, ok := byName[want.Name]
		delete(byName, want.Name)
		switch {
		case !ok:
			metav1.SetMetaDataAnnotation(&want.ObjectMeta, corev1.EndpointsLastChangeTriggerTime, changedAt)
			if err := r.Create(ctx, want); err != nil {
				return fmt.Errorf("creating EndpointSlice %q: %w", want.Name, err)
			}
		case have.AddressType != want.AddressType:
			// The address type is immutable.
			if err := r.Delete(ctx, have); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("replacing EndpointSlice %q: %w", want.Name, err)
			}
			metav1.SetMetaDataAnnotation(&want.ObjectMeta, corev1.EndpointsLastChangeTriggerTime, changedAt)
			if err := r.Create(ctx, want); err != nil {
				return fmt.Errorf("replacing EndpointSlice %q: %w", want.Name, err)
			}
		case replaceMeta:
			have.Labels, have.Annotations = want.Labels, want.Annotations
			fallthrough
		case !sliceEqual(have, want):
			if !endpointsEqual(have, want) {
				metav1.SetMetaDataAnnotation(&want.ObjectMeta, corev1.EndpointsLastChangeTriggerTime, changedAt)
			}
			have.Labels = mergeLabels(have.Labels, want.Labels)
			have.Annotations = mergeLabels(have.Annotations, want.Annotations)
			for _, key := range gate.OwnedAnnotations {
				if _, wanted := want.Annotations[key]; !wanted {
					delete(have.Annotations, key)
				}
			}
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

// routable says kube-proxy may send connections to ep: it is ready, or serving (kube-proxy
// falls back to serving, terminating endpoints when a Service has no ready one). An unset
// serving counts as serving, as the API asks consumers to read an unknown state.
func routable(ep discoveryv1.Endpoint) bool {
	return endpoints.IsReady(ep) || ptr.Deref(ep.Conditions.Serving, true)
}

// ownSlices lists this breaker's slices of one front Service.
func (r *CircuitBreakerReconciler) ownSlices(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, front string) ([]discoveryv1.EndpointSlice, error) {
	var list discoveryv1.EndpointSliceList
	if err := r.List(ctx, &list, client.InNamespace(cb.Namespace), client.MatchingFields{sliceServiceIndex: front},
		client.MatchingLabels{discoveryv1.LabelServiceName: front, discoveryv1.LabelManagedBy: tripswitchv1alpha1.ManagedBy,
			gate.BreakerLabel: gate.BreakerLabelValue(cb.Name)}); err != nil {
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
	for k, v := range want.Annotations {
		if have.Annotations[k] != v {
			return false
		}
	}
	for _, key := range gate.OwnedAnnotations {
		// One that desired no longer has, such as a hand-back that was given up (the front
		// is gated again) or an ejection that ended, must go.
		if _, stale := have.Annotations[key]; stale && want.Annotations[key] == "" {
			return false
		}
	}
	return equality.Semantic.DeepEqual(have.OwnerReferences, want.OwnerReferences) && endpointsEqual(have, want)
}

// endpointsEqual says whether two slices route alike: the same ports and endpoints.
func endpointsEqual(have, want *discoveryv1.EndpointSlice) bool {
	return equality.Semantic.DeepEqual(have.Ports, want.Ports) &&
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
	if len(want) == 0 {
		return have
	}
	out := maps.Clone(have)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, want)
	return out
}
