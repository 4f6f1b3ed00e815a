// Package gate computes what a breaker publishes: the EndpointSlices of its front Service for
// a gate state. It is pure; the controller applies the result.
package gate

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/endpoints"
)

// MaxEndpointsPerSlice is the API's limit on endpoints in one EndpointSlice.
const MaxEndpointsPerSlice = 1000

// BreakerLabel names the breaker on the slices it owns; its value is BreakerLabelValue.
const BreakerLabel = "tripswitch.io/breaker"

// ReleasedManagedBy is the managed-by value of the last copy a deleted breaker leaves behind
// when there is nobody to hand its front Service back to: no breaker manages those slices any
// more, and nothing garbage-collects them but the front Service's own deletion.
const ReleasedManagedBy = tripswitchv1alpha1.ManagedBy + "-released"

// BreakerLabelValue is the value of BreakerLabel for the breaker called name. A breaker's name
// may be 253 characters long but a label value only 63, and Kubernetes refuses a slice whose
// label is too long; so a long name is cut to 52 characters and completed by a dash and ten
// hex digits of a hash of the whole name, which always fits and stays unique in practice.
func BreakerLabelValue(name string) string {
	if len(name) <= validation.LabelValueMaxLength {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return strings.TrimRight(name[:52], "-.") + "-" + hex.EncodeToString(sum[:])[:10]
}

// Input is everything the front slices depend on.
type Input struct {
	Namespace, Breaker, Front string
	// Owner is the front Service: the slices live and die with it, never with the breaker,
	// so that no breaker's disappearance can garbage-collect a front's endpoints.
	Owner metav1.OwnerReference
	// State is the gate state: what traffic should see.
	State breaker.State
	// Target are the target Service's slices; GatedPort is the name of the probed port.
	Target    []discoveryv1.EndpointSlice
	GatedPort string
	// HalfOpenEndpoints is how many ready endpoints HalfOpen publishes.
	HalfOpenEndpoints int
	// Fallback, when HasFallback, are the fallback Service's slices, of which FallbackPort
	// is published under the gated port's name while Open.
	HasFallback  bool
	Fallback     []discoveryv1.EndpointSlice
	FallbackPort string
	// WhenOpen is the gate's whenOpen. With Respond, the ready endpoints of Responder (the
	// responder Service's slices) are published while Open without a fallback, and beside
	// the trial endpoints while HalfOpen, on the listener that FrontPorts call for.
	WhenOpen  tripswitchv1alpha1.WhenOpen
	Responder []discoveryv1.EndpointSlice
	// FrontPorts are the front Service's ports, which the responder's slices must name.
	FrontPorts []corev1.ServicePort
	// ProbeSpeaksHTTP says the probed port carries cleartext HTTP or gRPC, because the probe
	// does: it counts when the port's appProtocol and name say nothing.
	ProbeSpeaksHTTP bool
	// HeldBack are addresses of target endpoints the endpoint level holds back (ejected, or
	// waiting for slow start): Closed publishes them neither ready nor serving, and HalfOpen
	// does not pick them. Never every ready endpoint: if it would be, none is held back.
	HeldBack map[string]bool
	// KeepConnections is the breaker's gate.endpointSlice.cutConnections turned off: the
	// slices say so, and the node agent cuts no connection to this front.
	KeepConnections bool
}

// Published counts the ready endpoints that slices publish.
type Published struct {
	// Endpoints are the target's (or, while Open, the fallback's).
	Endpoints int
	// Responders are tripswitch's responder's.
	Responders int
}

// WantsResponder says whether the gate state calls for the responder in in's front.
func (in Input) WantsResponder() bool {
	if in.WhenOpen != tripswitchv1alpha1.WhenOpenRespond {
		return false
	}
	return in.State == breaker.HalfOpen || (in.State == breaker.Open && !in.HasFallback)
}

// Slices returns the front Service's slices for in, with deterministic names and order, and
// how many ready endpoints they publish. The responder's slices come first: applied in order,
// a Closed front's first slice turns into the responder's in one write when the breaker
// opens, and back when it closes, so kube-proxy never sees the front without ready endpoints
// in between.
func Slices(in Input) ([]discoveryv1.EndpointSlice, Published) {
	var groups []group
	var counts Published
	// listedHeldBack are the held-back endpoints that the slices list as not ready: only
	// Closed lists them (HalfOpen leaves them out, Open withholds every target endpoint).
	var listedHeldBack map[string]bool
	if in.WantsResponder() {
		groups = tagged(responderGroups(in.Responder, responderPorts(in.FrontPorts, in.GatedPort, in.ProbeSpeaksHTTP)),
			tripswitchv1alpha1.EndpointsOfResponder)
		for _, g := range groups {
			counts.Responders += len(g.endpoints)
		}
	}
	var source []group
	switch {
	case in.State == breaker.Open && in.HasFallback:
		source = groupsOf(in.Fallback, func(ports []discoveryv1.EndpointPort) ([]discoveryv1.EndpointPort, bool) {
			for _, p := range ports {
				if ptr.Deref(p.Name, "") == in.FallbackPort && p.Port != nil {
					return []discoveryv1.EndpointPort{{Name: ptr.To(in.GatedPort), Port: p.Port, Protocol: p.Protocol,
						AppProtocol: p.AppProtocol}}, true
				}
			}
			return nil, false
		})
		source = tagged(source, tripswitchv1alpha1.EndpointsOfFallback)
	default:
		source = tagged(groupsOf(in.Target, func(ports []discoveryv1.EndpointPort) ([]discoveryv1.EndpointPort, bool) {
			return ports, true
		}), tripswitchv1alpha1.EndpointsOfTarget)
		heldBack := in.HeldBack
		if !keepsOneReady(source, heldBack) {
			heldBack = nil
		}
		switch in.State {
		case breaker.Closed:
			holdBack(source, heldBack)
			listedHeldBack = heldBack
		case breaker.HalfOpen:
			source = keepReady(source, in.HalfOpenEndpoints, heldBack)
		case breaker.Open:
			for _, g := range source {
				for i := range g.endpoints {
					// Neither ready nor serving: kube-proxy rejects new connections at once, and
					// the endpoints stay visible to whoever looks at the slice.
					g.endpoints[i].Conditions = discoveryv1.EndpointConditions{
						Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(false)}
				}
			}
		}
	}

	for _, g := range source {
		for _, ep := range g.endpoints {
			if endpoints.IsReady(ep) {
				counts.Endpoints++
			}
		}
	}
	groups = append(groups, source...)

	var out []discoveryv1.EndpointSlice
	for _, g := range groups {
		for start := 0; start < len(g.endpoints); start += MaxEndpointsPerSlice {
			chunk := g.endpoints[start:min(start+MaxEndpointsPerSlice, len(g.endpoints))]
			out = append(out, in.slice(len(out), g, chunk, listedHeldBack))
		}
	}
	if len(out) == 0 {
		// Always one slice, even an empty one, so that the front Service visibly has no
		// endpoints rather than nobody managing them.
		empty := group{addressType: discoveryv1.AddressTypeIPv4, source: tripswitchv1alpha1.EndpointsOfTarget}
		if len(groups) > 0 {
			empty = groups[0]
		}
		out = append(out, in.slice(0, empty, nil, nil))
	}
	return out, counts
}

// OwnedAnnotations are the annotation keys that tripswitch alone writes on its slices: an
// update removes the ones the desired slice no longer has, where other annotations are merged.
var OwnedAnnotations = []string{
	tripswitchv1alpha1.HeldBackAnnotation,
	tripswitchv1alpha1.CutConnectionsAnnotation,
	tripswitchv1alpha1.HandBackAnnotation,
}

// slice makes one front slice of eps. Its annotations tell the node agent why endpoints it
// lists are not published (the gate state, the held-back addresses among eps) and whether it
// may cut connections at all: a slice is read alone, and must say all of that by itself.
func (in Input) slice(i int, g group, eps []discoveryv1.Endpoint, heldBack map[string]bool) discoveryv1.EndpointSlice {
	annotations := map[string]string{
		tripswitchv1alpha1.GateStateAnnotation:   in.State.String(),
		tripswitchv1alpha1.EndpointsOfAnnotation: g.source,
	}
	if in.KeepConnections {
		annotations[tripswitchv1alpha1.CutConnectionsAnnotation] = "false"
	}
	var held []string
	for _, ep := range eps {
		if isHeld(heldBack, ep.Addresses[0]) {
			held = append(held, ep.Addresses[0])
		}
	}
	if len(held) > 0 {
		annotations[tripswitchv1alpha1.HeldBackAnnotation] = strings.Join(held, ",")
	}
	return discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s-tripswitch-%d", in.Front, i),
			Namespace: in.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: in.Front,
				discoveryv1.LabelManagedBy:   tripswitchv1alpha1.ManagedBy,
				BreakerLabel:                 BreakerLabelValue(in.Breaker),
			},
			Annotations:     annotations,
			OwnerReferences: []metav1.OwnerReference{in.Owner},
		},
		AddressType: g.addressType,
		Ports:       g.ports,
		Endpoints:   slices.Clone(eps),
	}
}

// group is the endpoints that share an address family and a port list, so they can share
// slices, and whose they are (a slice never mixes the target's endpoints with others).
type group struct {
	addressType discoveryv1.AddressType
	ports       []discoveryv1.EndpointPort
	key         string
	endpoints   []discoveryv1.Endpoint
	source      string
}

// tagged marks groups as holding source's endpoints.
func tagged(groups []group, source string) []group {
	for i := range groups {
		groups[i].source = source
	}
	return groups
}

// groupsOf merges source slices by address family and (mapped) ports, drops duplicates by
// first address and sorts, so that the output doesn't depend on how the source was sliced.
func groupsOf(src []discoveryv1.EndpointSlice, mapPorts func([]discoveryv1.EndpointPort) ([]discoveryv1.EndpointPort, bool)) []group {
	byKey := map[string]*group{}
	for i := range src {
		s := &src[i]
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports, ok := mapPorts(s.Ports)
		if !ok {
			continue
		}
		key := string(s.AddressType) + "|" + portsKey(ports)
		g := byKey[key]
		if g == nil {
			g = &group{addressType: s.AddressType, ports: ports, key: key}
			byKey[key] = g
		}
		for _, ep := range s.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			g.endpoints = append(g.endpoints, discoveryv1.Endpoint{
				Addresses: ep.Addresses, Conditions: ep.Conditions, Hostname: ep.Hostname, TargetRef: ep.TargetRef,
				NodeName: ep.NodeName, Zone: ep.Zone, Hints: ep.Hints,
			})
		}
	}
	groups := make([]group, 0, len(byKey))
	for _, g := range byKey {
		slices.SortFunc(g.endpoints, func(a, b discoveryv1.Endpoint) int { return compareAddresses(a.Addresses[0], b.Addresses[0]) })
		g.endpoints = slices.CompactFunc(g.endpoints, func(a, b discoveryv1.Endpoint) bool { return a.Addresses[0] == b.Addresses[0] })
		groups = append(groups, *g)
	}
	slices.SortFunc(groups, func(a, b group) int { return cmp.Compare(a.key, b.key) })
	return groups
}

// compareAddresses orders addresses numerically, as the endpoint level orders endpoints (so
// that the endpoints HalfOpen published are the ones slow start keeps when the breaker
// closes), and anything that does not parse after everything that does, as text.
func compareAddresses(a, b string) int {
	pa, errA := netip.ParseAddr(a)
	pb, errB := netip.ParseAddr(b)
	switch {
	case errA == nil && errB == nil:
		return pa.Compare(pb)
	case errA == nil:
		return -1
	case errB == nil:
		return 1
	}
	return cmp.Compare(a, b)
}

func portsKey(ports []discoveryv1.EndpointPort) string {
	parts := make([]string, 0, len(ports))
	for _, p := range ports {
		parts = append(parts, fmt.Sprintf("%s/%d/%s", ptr.Deref(p.Name, ""), ptr.Deref(p.Port, 0),
			ptr.Deref(p.Protocol, corev1.ProtocolTCP)))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// keepsOneReady says whether some ready endpoint is not held back.
func keepsOneReady(groups []group, heldBack map[string]bool) bool {
	for _, g := range groups {
		for _, ep := range g.endpoints {
			if endpoints.IsReady(ep) && !isHeld(heldBack, ep.Addresses[0]) {
				return true
			}
		}
	}
	return false
}

// isHeld looks addr up in heldBack, whose keys are canonical (netip.Addr.String): a slice may
// spell an IPv6 address another way.
func isHeld(heldBack map[string]bool, addr string) bool {
	if len(heldBack) == 0 {
		return false
	}
	if heldBack[addr] {
		return true
	}
	a, err := netip.ParseAddr(addr)
	return err == nil && a.String() != addr && heldBack[a.String()]
}

// holdBack publishes held-back endpoints neither ready nor serving: kube-proxy stops picking
// them for new connections (established ones are left alone), and they stay visible to
// whoever reads the slice.
func holdBack(groups []group, heldBack map[string]bool) {
	if len(heldBack) == 0 {
		return
	}
	for _, g := range groups {
		for i := range g.endpoints {
			if isHeld(heldBack, g.endpoints[i].Addresses[0]) {
				g.endpoints[i].Conditions = discoveryv1.EndpointConditions{
					Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(false)}
			}
		}
	}
}

// keepReady keeps the first n ready endpoints across all groups, in group order, that are
// not held back.
func keepReady(groups []group, n int, heldBack map[string]bool) []group {
	for i := range groups {
		var kept []discoveryv1.Endpoint
		for _, ep := range groups[i].endpoints {
			if n > 0 && endpoints.IsReady(ep) && !isHeld(heldBack, ep.Addresses[0]) {
				kept = append(kept, ep)
				n--
			}
		}
		groups[i].endpoints = kept
	}
	return groups
}
