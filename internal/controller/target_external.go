package controller

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/external"
)

// +kubebuilder:rbac:groups=networking.k8s.io,resources=servicecidrs,verbs=get;list;watch

// serviceCIDRListTimeout bounds the wait for the ServiceCIDR cache.
const serviceCIDRListTimeout = 10 * time.Second

// ExternalTargets is what the reconciler needs for external targets.
type ExternalTargets struct {
	// Tracker resolves the hosts; nil refuses every external target.
	Tracker *external.Tracker
	// Allowed are the hosts that may be resolved and probed (--allowed-external-hosts).
	Allowed external.HostPatterns
	// Refused are ranges whose addresses are never published besides those tripswitch knows
	// of (--external-refused-cidrs): cluster ranges the API does not tell, such as pods'.
	Refused []netip.Prefix
	// ClusterDomain is the cluster's DNS domain, for status.external's stanza.
	ClusterDomain string
}

// reconcileExternalTarget stands an external host in for the target Service: its addresses,
// as the resolver last found them, become the target's ready endpoints on the external port,
// and a Service shape with that one port is what a new front gets. The addresses never come
// from a failed lookup: the Tracker keeps the last good ones, and a manager that starts anew
// starts from those status holds.
func (r *CircuitBreakerReconciler) reconcileExternalTarget(ctx context.Context, st *reconcileState,
	ext *tripswitchv1alpha1.ExternalTarget) error {
	cb := st.cb
	key := client.ObjectKeyFromObject(cb)
	cb.Status.Target = fmt.Sprintf("%s:%d", ext.Host, ext.Port)
	if r.External.Tracker == nil || !r.External.Allowed.Allows(ext.Host) {
		if r.External.Tracker != nil {
			r.External.Tracker.Forget(key)
		}
		message := fmt.Sprintf("the external host %q is not allowed by the manager's --allowed-external-hosts (%s); "+
			"the front Service keeps what it publishes", ext.Host, describeAllowed(r.External.Allowed))
		setCondition(&cb.Status, tripswitchv1alpha1.ConditionResolved, metav1.ConditionFalse,
			tripswitchv1alpha1.ReasonExternalHostNotAllowed, message, cb.Generation)
		// No target: the engine keeps probing what it had (nothing, for a breaker never
		// allowed) and the gate leaves the front alone.
		return &stalledError{reason: tripswitchv1alpha1.ReasonExternalHostNotAllowed, message: message}
	}
	refuse, err := r.refuser(ctx, st)
	if err != nil {
		return err
	}
	state := r.External.Tracker.Track(key, external.Spec{
		Host: ext.Host, MaxAddresses: int(ptr.Deref(ext.MaxAddresses, tripswitchv1alpha1.DefaultMaxExternalAddresses)), Refuse: refuse,
	}, stateFromStatus(cb.Status.External))
	// What was refused when it was answered never got into the state; what became refusable
	// since (the front got its IP families, a Service range was added) is left out now.
	state.Addresses = slices.DeleteFunc(state.Addresses, func(a external.Address) bool { return refuse(a.Addr) != "" })
	front := ""
	if es := st.spec.Gate.EndpointSlice; es != nil {
		front = es.Service
	}
	cb.Status.External = externalStatus(&state, front, cb.Namespace, r.External.ClusterDomain)
	reportResolution(cb, &state)
	if r.Metrics != nil {
		r.Metrics.SetExternalAddresses(cb.Namespace, cb.Name, len(state.Addresses))
	}

	if !state.Resolved() && len(state.Addresses) == 0 {
		// Nothing is known of the host yet, in this process or in status: unknown is not
		// empty. A leader that died after publishing addresses and before writing them to
		// status left the front serving them; with DNS down too, publishing "no addresses"
		// would empty it. The front keeps what it publishes until the first answer.
		message := fmt.Sprintf("waiting for the first resolution of %s; the front Service keeps what it publishes", ext.Host)
		if state.Err != "" {
			message += ": " + state.Err
		}
		return &waitingError{reason: tripswitchv1alpha1.ReasonResolutionFailed, message: message}
	}
	port := corev1.ServicePort{Protocol: corev1.ProtocolTCP, Port: ext.Port, TargetPort: intstr.FromInt32(ext.Port)}
	ready := state.AddrPorts(uint16(ext.Port))
	shape := &corev1.Service{Spec: corev1.ServiceSpec{
		IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyPreferDualStack), Ports: []corev1.ServicePort{port},
	}}
	st.target = &target{service: shape, port: port, slices: externalSlices(ready), ready: ready, probed: ready, resolved: true}
	return nil
}

func describeAllowed(h external.HostPatterns) string {
	if h.Empty() {
		return "none are allowed"
	}
	return "allowed: " + h.String()
}

// refuser says which addresses are never published: loopback, link-local, multicast and
// unspecified ones; the cluster's Service ranges and the front's own ClusterIPs (a cluster DNS
// that already rewrites the host answers with those); --external-refused-cidrs; and what lies
// outside --probe-allowed-cidrs.
func (r *CircuitBreakerReconciler) refuser(ctx context.Context, st *reconcileState) (external.Refuser, error) {
	type refusedRange struct {
		prefix netip.Prefix
		why    string
	}
	var ranges []refusedRange
	// served says which families (by Is6) the cluster routes to the front: the front's own IP
	// families once it exists, before that the families of the cluster's Service ranges. An
	// IPv6 address behind an IPv4-only front is ignored by kube-proxy, and a manager on an
	// IPv4-only network cannot probe it: its failures would trip a healthy provider.
	served, servedBy := map[bool]bool{}, "the cluster's Service ranges"
	var cidrs networkingv1.ServiceCIDRList
	// The first List starts the cache's informer and waits for it: bounded, so that a manager
	// whose ClusterRole lacks ServiceCIDRs fails this breaker's reconcile (and keeps its front)
	// instead of hanging a worker.
	listCtx, cancel := context.WithTimeout(ctx, serviceCIDRListTimeout)
	defer cancel()
	switch err := r.List(listCtx, &cidrs); {
	case err == nil:
		for _, c := range cidrs.Items {
			for _, s := range c.Spec.CIDRs {
				if p, err := netip.ParsePrefix(s); err == nil {
					ranges = append(ranges, refusedRange{p.Masked(), "the cluster's Service range " + p.Masked().String()})
					served[p.Addr().Is6()] = true
				}
			}
		}
	case meta.IsNoMatchError(err):
		// A cluster without the ServiceCIDR API: the front's ClusterIPs below still count.
	default:
		return nil, fmt.Errorf("listing ServiceCIDRs (may the manager list and watch servicecidrs?): %w", err)
	}
	for _, p := range r.External.Refused {
		ranges = append(ranges, refusedRange{p, "--external-refused-cidrs " + p.String()})
	}
	var frontIPs []netip.Addr
	if es := st.spec.Gate.EndpointSlice; es != nil {
		front, err := r.lookupService(ctx, st.cb.Namespace, es.Service)
		if err != nil {
			return nil, err
		}
		if front != nil && len(front.Spec.ClusterIPs) > 0 {
			served, servedBy = map[bool]bool{}, "the front Service"
			for _, ip := range front.Spec.ClusterIPs {
				if a, err := netip.ParseAddr(ip); err == nil {
					frontIPs = append(frontIPs, a.Unmap())
					served[a.Unmap().Is6()] = true
				}
			}
		}
	}
	allowed := r.ProbeAllowedCIDRs
	return func(a netip.Addr) string {
		switch {
		case a.IsLoopback(), a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(),
			a.IsMulticast(), a.IsUnspecified():
			return "not a routable unicast address"
		case slices.Contains(frontIPs, a):
			return "the front Service's own ClusterIP"
		case len(served) > 0 && !served[a.Is6()]:
			return servedBy + " has no " + map[bool]string{false: "IPv4", true: "IPv6"}[a.Is6()] + " address"
		}
		for _, rr := range ranges {
			if rr.prefix.Contains(a) {
				return rr.why
			}
		}
		if allowed != nil && !slices.ContainsFunc(allowed, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return "outside --probe-allowed-cidrs"
		}
		return ""
	}, nil
}

// externalSlices are an external target's addresses as the target slices a Service would
// have: one slice per family, every endpoint ready, on the one unnamed port.
func externalSlices(ready []netip.AddrPort) []discoveryv1.EndpointSlice {
	var v4, v6 []discoveryv1.Endpoint
	for _, ap := range ready {
		ep := discoveryv1.Endpoint{Addresses: []string{ap.Addr().String()}, Conditions: discoveryv1.EndpointConditions{
			Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}}
		if ap.Addr().Is4() {
			v4 = append(v4, ep)
		} else {
			v6 = append(v6, ep)
		}
	}
	var out []discoveryv1.EndpointSlice
	for _, f := range []struct {
		addressType discoveryv1.AddressType
		endpoints   []discoveryv1.Endpoint
	}{{discoveryv1.AddressTypeIPv4, v4}, {discoveryv1.AddressTypeIPv6, v6}} {
		if len(f.endpoints) == 0 {
			continue
		}
		out = append(out, discoveryv1.EndpointSlice{AddressType: f.addressType, Endpoints: f.endpoints,
			Ports: []discoveryv1.EndpointPort{{Name: ptr.To(""), Port: ptr.To(int32(ready[0].Port())), Protocol: ptr.To(corev1.ProtocolTCP)}}})
	}
	return out
}

// stateFromStatus is what a previous leader (or this one, before a restart) last wrote: the
// addresses to start from until the first answer.
func stateFromStatus(st *tripswitchv1alpha1.ExternalStatus) *external.State {
	if st == nil {
		return nil
	}
	s := &external.State{Host: st.Host, Server: st.Server, Err: st.Error}
	for _, a := range st.Addresses {
		addr, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		s.Addresses = append(s.Addresses, external.Address{Addr: addr, LastSeen: a.LastSeen.Time,
			TTL: time.Duration(a.TTLSeconds) * time.Second})
	}
	slices.SortFunc(s.Addresses, func(x, y external.Address) int { return x.Addr.Compare(y.Addr) })
	if st.LastSuccess != nil {
		s.LastSuccess = st.LastSuccess.Time
	}
	if st.LastResolution != nil {
		s.LastResolution = st.LastResolution.Time
	}
	return s
}

// externalStatus is status.external for a state.
func externalStatus(s *external.State, front, namespace, clusterDomain string) *tripswitchv1alpha1.ExternalStatus {
	out := &tripswitchv1alpha1.ExternalStatus{Host: s.Host, Server: s.Server, Error: cut(s.Err, 512)}
	for _, a := range s.Addresses {
		out.Addresses = append(out.Addresses, tripswitchv1alpha1.ExternalAddress{Address: a.Addr.String(),
			LastSeen: metav1.NewTime(a.LastSeen.Truncate(time.Second)), TTLSeconds: int32(a.TTL / time.Second)})
	}
	for _, r := range s.Refused[:min(len(s.Refused), 16)] {
		out.Refused = append(out.Refused, r.Addr.String())
	}
	stamp := func(t time.Time) *metav1.Time {
		if t.IsZero() {
			return nil
		}
		return ptr.To(metav1.NewTime(t.Truncate(time.Second)))
	}
	out.LastResolution, out.LastSuccess, out.NextResolution = stamp(s.LastResolution), stamp(s.LastSuccess), stamp(s.NextResolution)
	if front != "" {
		out.ClusterName = external.ClusterName(front, namespace, clusterDomain)
		out.DNSRewrite = external.DNSRewrite(s.Host, out.ClusterName)
	}
	return out
}

// reportResolution sets the Resolved condition.
func reportResolution(cb *tripswitchv1alpha1.CircuitBreaker, s *external.State) {
	kept := fmt.Sprintf("; the last good %d addresses stay published", len(s.Addresses))
	if len(s.Addresses) == 0 {
		kept = "; no address is known yet, so the front Service keeps what it publishes"
	}
	switch {
	case s.Problem == external.ResolutionFailed:
		setCondition(&cb.Status, tripswitchv1alpha1.ConditionResolved, metav1.ConditionFalse,
			tripswitchv1alpha1.ReasonResolutionFailed, cut(s.Err+kept, 1024), cb.Generation)
	case s.Problem == external.AddressesRefused:
		setCondition(&cb.Status, tripswitchv1alpha1.ConditionResolved, metav1.ConditionFalse,
			tripswitchv1alpha1.ReasonAddressesRefused, cut(s.Err+kept+
				". Does the manager's DNS server (--external-dns-server) answer with the cluster's own rewrite?", 1024), cb.Generation)
	case s.Resolved():
		message := fmt.Sprintf("%s resolved to %d addresses", s.Host, len(s.Addresses))
		if s.Server != "" {
			message += " via " + s.Server
		}
		if len(s.Refused) > 0 {
			refused := make([]string, 0, len(s.Refused))
			for _, r := range s.Refused {
				refused = append(refused, fmt.Sprintf("%s (%s)", r.Addr, r.Why))
			}
			message += "; refused " + strings.Join(refused, ", ")
		}
		if s.Incomplete != "" {
			message += "; " + s.Incomplete
		}
		setCondition(&cb.Status, tripswitchv1alpha1.ConditionResolved, metav1.ConditionTrue,
			tripswitchv1alpha1.ReasonResolved, cut(message, 1024), cb.Generation)
	default:
		meta.RemoveStatusCondition(&cb.Status.Conditions, tripswitchv1alpha1.ConditionResolved)
	}
}

// ExternalTargetSlices are the target slices of an external target as its status last named
// the addresses: what a front handed back keeps (see handBack), also on helm uninstall.
func ExternalTargetSlices(cb *tripswitchv1alpha1.CircuitBreaker) []discoveryv1.EndpointSlice {
	ext, st := cb.Spec.Target.External, cb.Status.External
	if ext == nil || st == nil || st.Host != ext.Host {
		return nil
	}
	return externalSlices(stateFromStatus(st).AddrPorts(uint16(ext.Port)))
}
