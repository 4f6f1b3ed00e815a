package agent

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/flows"
	"github.com/tripswitch/tripswitch/internal/gate"
)

// Reason says why a target endpoint's connections are cut.
type Reason string

const (
	// ReasonTrip: the front's gate is Open (the breaker tripped, reopened after a failed
	// trial, or is forced Open), and the endpoint is withheld with every other target endpoint.
	ReasonTrip Reason = "trip"
	// ReasonEjection: the endpoint level holds the endpoint back.
	ReasonEjection Reason = "ejection"
)

// SkipReason says why endpoints that a front stopped publishing keep their connections.
type SkipReason string

const (
	// SkipStale: the slice change is older than the agent's maxAge when it arrives, as after
	// an API outage, a resumed watch or a relist: the agent acts only on what happens now.
	SkipStale SkipReason = "stale"
	// SkipDisabled: the breaker's gate.endpointSlice.cutConnections is false.
	SkipDisabled SkipReason = "disabled"
)

// Endpoint is one target endpoint on one port of a front's slices.
type Endpoint struct {
	Addr netip.Addr
	// PortName is the slice port's name, which is the front Service port's name.
	PortName string
	// Port is the target port: the reply source port of the flows kube-proxy sent there.
	Port uint16
}

// Cut is a decision: this node's connections from a front to these endpoints are to be cut.
type Cut struct {
	Front   types.NamespacedName
	Breaker string
	Reason  Reason
	// Endpoints are the target endpoints the front published before this change and
	// withholds now.
	Endpoints []Endpoint
	// SeenAt is when the agent saw the slice change.
	SeenAt time.Time
}

// Skip is a change that withheld published endpoints but cuts nothing.
type Skip struct {
	Front     types.NamespacedName
	Breaker   string
	Why       SkipReason
	Endpoints int
}

// Result is what one slice change decided.
type Result struct {
	Cuts  []Cut
	Skips []Skip
	// Gone names a breaker whose front has no slices left: its metrics go.
	Gone *types.NamespacedName
}

// Fronts is the agent's view of the fronts that tripswitch owns: their EndpointSlices and
// Services, as the informers deliver them, and for each front which of its target
// endpoints were published. It decides, from each slice change, which endpoints the front
// has just stopped publishing because its breaker tripped or ejected them. It is safe for
// concurrent use: the slice and Service informers call it from goroutines of their own.
//
// The rule, per target endpoint and port: a cut needs the endpoint to have been published
// (ready or serving in a target slice of the front) the last time the agent saw it, and to
// be withheld now by the breaker: listed neither ready nor serving in a slice whose gate
// state is Open or which lists it as held back, or gone from every target slice while the
// front is Open (the front's first slice turns into the responder's in one write, and a
// fallback lists no target endpoint at all). An endpoint that is merely unready in the
// target, or gone from a Closed front (a pod deleted in a rollout), is never cut; nor are the
// responder's or a fallback's endpoints, which the agent does not track. Each change is judged
// once against the previous view, so a transition cuts at most once, and a view the agent
// starts with (the informer's first list) cuts nothing.
type Fronts struct {
	clock clock.PassiveClock
	// maxAge is the oldest slice change, by its last-change-trigger-time, that still cuts.
	maxAge time.Duration

	mu     sync.Mutex
	fronts map[types.NamespacedName]*front
}

// NewFronts returns an empty view that cuts on changes at most maxAge old.
func NewFronts(clk clock.PassiveClock, maxAge time.Duration) *Fronts {
	return &Fronts{clock: clk, maxAge: maxAge, fronts: map[types.NamespacedName]*front{}}
}

type front struct {
	slices map[string]*sliceView
	// published holds the target endpoints the slices publish (list as routable).
	published map[Endpoint]bool
	service   *frontService
}

// sliceView is what the agent keeps of one of a front's slices.
type sliceView struct {
	gateState string
	heldBack  map[netip.Addr]bool
	keep      bool
	changedAt time.Time
	// endpoints are the listed target endpoints (target slices only), routable or not.
	endpoints map[Endpoint]bool
}

// frontService is what the agent keeps of a front Service: who claims it and how clients
// dial it.
type frontService struct {
	claim string
	addrs []netip.Addr
	ports map[string]servicePort
}

type servicePort struct {
	port, nodePort uint16
}

// ObserveSlice records a front slice as it is now (deleted: gone) and returns what the
// change decided.
func (fs *Fronts) ObserveSlice(s *discoveryv1.EndpointSlice, deleted bool) Result {
	key, ok := frontOf(s)
	if !ok {
		return Result{}
	}
	now := fs.clock.Now()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := fs.fronts[key]
	if f == nil {
		if deleted {
			return Result{}
		}
		f = &front{slices: map[string]*sliceView{}, published: map[Endpoint]bool{}}
		fs.fronts[key] = f
	}
	breakerLabel := s.Labels[gate.BreakerLabel]
	if deleted {
		delete(f.slices, s.Name)
	} else {
		f.slices[s.Name] = viewOf(s)
	}
	res := f.judge(key, fs.breakerName(f, breakerLabel), now, fs.maxAge)
	if len(f.slices) == 0 {
		res.Gone = &types.NamespacedName{Namespace: key.Namespace, Name: fs.breakerName(f, breakerLabel)}
		if f.service == nil {
			delete(fs.fronts, key)
		}
	}
	return res
}

// ObserveService records a Service as it is now (deleted: gone). Any Service may come: only
// those whose slices tripswitch publishes are kept.
func (fs *Fronts) ObserveService(svc *corev1.Service, deleted bool) {
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := fs.fronts[key]
	switch {
	case deleted || svc.Annotations[tripswitchv1alpha1.ClaimAnnotation] == "":
		if f != nil {
			f.service = nil
			if len(f.slices) == 0 {
				delete(fs.fronts, key)
			}
		}
		return
	case f == nil:
		f = &front{slices: map[string]*sliceView{}, published: map[Endpoint]bool{}}
		fs.fronts[key] = f
	}
	f.service = serviceOf(svc)
}

// Targets turns cuts into what the conntrack table is asked to cut now: for each cut, the
// endpoints its front still withholds (one that the front publishes again is left alone),
// and the front's addresses as its Service says now. A cut whose front Service is unknown or
// no longer claimed by the breaker yields nothing: the agent cuts only flows to fronts that
// tripswitch owns.
func (fs *Fronts) Targets(cuts []Cut) []flows.Target {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var out []flows.Target
	for _, c := range cuts {
		f := fs.fronts[c.Front]
		if f == nil || f.service == nil || f.service.claim != c.Breaker {
			continue
		}
		t := flows.Target{Key: TargetKey(c.Front.Namespace, c.Breaker, c.Reason)}
		ports := map[string]bool{}
		for _, ep := range c.Endpoints {
			if f.published[ep] {
				continue
			}
			sp, ok := f.service.ports[ep.PortName]
			if !ok {
				continue
			}
			t.Backends = append(t.Backends, netip.AddrPortFrom(ep.Addr, ep.Port))
			if ports[ep.PortName] {
				continue
			}
			ports[ep.PortName] = true
			for _, a := range f.service.addrs {
				t.Destinations = append(t.Destinations, netip.AddrPortFrom(a, sp.port))
			}
			if sp.nodePort != 0 {
				t.NodePorts = append(t.NodePorts, sp.nodePort)
			}
		}
		if len(t.Backends) > 0 && (len(t.Destinations) > 0 || len(t.NodePorts) > 0) {
			out = append(out, t)
		}
	}
	return out
}

// TargetKey is the flows.Target key of a breaker's cut: namespace/name/reason.
func TargetKey(namespace, breaker string, reason Reason) string {
	return namespace + "/" + breaker + "/" + string(reason)
}

// breakerName is the breaker's full name: the front Service's claim when known, since the
// slices' label is cut short for long names.
func (fs *Fronts) breakerName(f *front, label string) string {
	if f.service != nil && gate.BreakerLabelValue(f.service.claim) == label {
		return f.service.claim
	}
	return label
}

// withheld is one target endpoint's state across a front's slices.
type withheld struct {
	routable bool
	reason   Reason
	keep     bool
}

// judge compares the front's target endpoints now with what they were, records now, and
// returns the cuts (or the skips) for endpoints that were published and are withheld now.
func (f *front) judge(key types.NamespacedName, breaker string, now time.Time, maxAge time.Duration) Result {
	current := map[Endpoint]withheld{}
	open, keepWhenOpen := false, false
	var newest time.Time
	for _, sv := range f.slices {
		if sv.changedAt.After(newest) {
			newest = sv.changedAt
		}
		if sv.gateState == string(tripswitchv1alpha1.StateOpen) {
			open = true
			keepWhenOpen = keepWhenOpen || sv.keep
		}
		for ep, routable := range sv.endpoints {
			w := current[ep]
			switch {
			case routable:
				// kube-proxy routes to an endpoint that any slice lists as ready or serving.
				w = withheld{routable: true}
			case w.routable || w.reason != "":
			case sv.gateState == string(tripswitchv1alpha1.StateOpen):
				w = withheld{reason: ReasonTrip, keep: sv.keep}
			case sv.heldBack[ep.Addr]:
				w = withheld{reason: ReasonEjection, keep: sv.keep}
			}
			current[ep] = w
		}
	}

	byReason := map[Reason][]Endpoint{}
	kept := map[Reason]bool{}
	for ep := range f.published {
		w, listed := current[ep]
		switch {
		case listed && w.routable:
		case listed && w.reason != "":
			byReason[w.reason] = append(byReason[w.reason], ep)
			kept[w.reason] = kept[w.reason] || w.keep
		case !listed && open:
			byReason[ReasonTrip] = append(byReason[ReasonTrip], ep)
			kept[ReasonTrip] = kept[ReasonTrip] || keepWhenOpen
		}
	}
	f.published = make(map[Endpoint]bool, len(current))
	for ep, w := range current {
		if w.routable {
			f.published[ep] = true
		}
	}

	var res Result
	stale := newest.IsZero() || now.Sub(newest) > maxAge
	for _, reason := range []Reason{ReasonTrip, ReasonEjection} {
		eps := byReason[reason]
		if len(eps) == 0 {
			continue
		}
		switch {
		case stale:
			res.Skips = append(res.Skips, Skip{Front: key, Breaker: breaker, Why: SkipStale, Endpoints: len(eps)})
		case kept[reason]:
			res.Skips = append(res.Skips, Skip{Front: key, Breaker: breaker, Why: SkipDisabled, Endpoints: len(eps)})
		default:
			slices.SortFunc(eps, compareEndpoints)
			res.Cuts = append(res.Cuts, Cut{Front: key, Breaker: breaker, Reason: reason, Endpoints: eps, SeenAt: now})
		}
	}
	return res
}

func compareEndpoints(a, b Endpoint) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if c := strings.Compare(a.PortName, b.PortName); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

// frontOf returns the front Service a slice belongs to, if tripswitch manages it.
func frontOf(s *discoveryv1.EndpointSlice) (types.NamespacedName, bool) {
	name := s.Labels[discoveryv1.LabelServiceName]
	if s.Labels[discoveryv1.LabelManagedBy] != tripswitchv1alpha1.ManagedBy || name == "" {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: s.Namespace, Name: name}, true
}

// viewOf reads what the agent needs of a slice. Only target slices' endpoints are kept, and
// only on TCP ports: kube-proxy clears UDP flows of endpoints that go itself, and SCTP is left
// alone.
func viewOf(s *discoveryv1.EndpointSlice) *sliceView {
	a := s.Annotations
	sv := &sliceView{
		gateState: a[tripswitchv1alpha1.GateStateAnnotation],
		keep:      a[tripswitchv1alpha1.CutConnectionsAnnotation] == "false",
	}
	if t, err := time.Parse(time.RFC3339Nano, a[corev1.EndpointsLastChangeTriggerTime]); err == nil {
		sv.changedAt = t
	}
	for _, addr := range strings.Split(a[tripswitchv1alpha1.HeldBackAnnotation], ",") {
		if ip, err := netip.ParseAddr(strings.TrimSpace(addr)); err == nil {
			if sv.heldBack == nil {
				sv.heldBack = map[netip.Addr]bool{}
			}
			sv.heldBack[ip.Unmap()] = true
		}
	}
	if a[tripswitchv1alpha1.EndpointsOfAnnotation] != tripswitchv1alpha1.EndpointsOfTarget {
		return sv
	}
	sv.endpoints = map[Endpoint]bool{}
	for _, p := range s.Ports {
		if ptr.Deref(p.Protocol, corev1.ProtocolTCP) != corev1.ProtocolTCP || p.Port == nil || *p.Port < 1 || *p.Port > 65535 {
			continue
		}
		for _, e := range s.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			ip, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				continue
			}
			sv.endpoints[Endpoint{Addr: ip.Unmap(), PortName: ptr.Deref(p.Name, ""), Port: uint16(*p.Port)}] = routable(e)
		}
	}
	return sv
}

// routable says kube-proxy may send new connections to e: ready, or serving (kube-proxy falls
// back to serving endpoints when none is ready). Unset conditions read as true, as the API
// asks consumers to read an unknown state.
func routable(e discoveryv1.Endpoint) bool {
	return ptr.Deref(e.Conditions.Ready, true) || ptr.Deref(e.Conditions.Serving, true)
}

// serviceOf reads a front Service's claim and the addresses and ports clients dial: its
// cluster IPs, external IPs and load balancers' IPs, and its TCP ports with their node ports.
func serviceOf(svc *corev1.Service) *frontService {
	fsvc := &frontService{claim: svc.Annotations[tripswitchv1alpha1.ClaimAnnotation], ports: map[string]servicePort{}}
	add := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil && !slices.Contains(fsvc.addrs, ip.Unmap()) {
			fsvc.addrs = append(fsvc.addrs, ip.Unmap())
		}
	}
	for _, ip := range svc.Spec.ClusterIPs {
		add(ip)
	}
	add(svc.Spec.ClusterIP)
	for _, ip := range svc.Spec.ExternalIPs {
		add(ip)
	}
	for _, in := range svc.Status.LoadBalancer.Ingress {
		add(in.IP)
	}
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		fsvc.ports[p.Name] = servicePort{port: uint16(p.Port), nodePort: uint16(p.NodePort)}
	}
	return fsvc
}
