package flows

import (
	"net/netip"
)

// Target is one front Service's flows to cut.
type Target struct {
	// Key says who asked (the agent uses "namespace/breaker/reason"); every Flow cut for this
	// Target carries it.
	Key string
	// Destinations are the front's addresses as clients dial them (ClusterIPs, external IPs,
	// load-balancer IPs), each with a service port.
	Destinations []netip.AddrPort
	// NodePorts are the front's node ports: a flow to one of them counts whatever its
	// destination address, as kube-proxy answers node ports on every local address.
	NodePorts []uint16
	// Backends are the reply sources to cut: endpoint address and target port.
	Backends []netip.AddrPort
}

// Flow is one cut TCP flow.
type Flow struct {
	// Key is the Key of the Target the flow was cut for; of the first such Target in the order
	// given, when several claim the flow.
	Key string
	// Client is the flow's original source.
	Client netip.AddrPort
	// Destination is the flow's original destination: the front as the client dialled it.
	Destination netip.AddrPort
	// Backend is the flow's reply source: the endpoint kube-proxy had sent it to.
	Backend netip.AddrPort
}

// index answers, for one conntrack entry, which Target claims it. It costs two map look-ups
// per entry however many breakers tripped at once, since the kernel may hold hundreds of
// thousands of entries; its size is targets × (destinations + node ports) × backends.
type index struct {
	byDestination map[frontToBackend]int
	byNodePort    map[nodePortToBackend]int
	// ipv4 and ipv6 say whether any Target can claim an entry of that family: a family no
	// Target needs is not dumped at all.
	ipv4, ipv6 bool
}

type frontToBackend struct{ front, backend netip.AddrPort }

type nodePortToBackend struct {
	port    uint16
	backend netip.AddrPort
}

func newIndex(targets []Target) *index {
	ix := &index{byDestination: map[frontToBackend]int{}, byNodePort: map[nodePortToBackend]int{}}
	for i, target := range targets {
		for _, backend := range target.Backends {
			backend = canonical(backend)
			if !backend.Addr().IsValid() {
				continue
			}
			claimed := false
			for _, front := range target.Destinations {
				front = canonical(front)
				if !front.Addr().IsValid() || front.Addr().Is4() != backend.Addr().Is4() {
					continue // conntrack's NAT never changes the family of a flow
				}
				claim(ix.byDestination, frontToBackend{front, backend}, i)
				claimed = true
			}
			for _, port := range target.NodePorts {
				if port != 0 {
					claim(ix.byNodePort, nodePortToBackend{port, backend}, i)
					claimed = true
				}
			}
			if claimed {
				ix.ipv4 = ix.ipv4 || backend.Addr().Is4()
				ix.ipv6 = ix.ipv6 || backend.Addr().Is6()
			}
		}
	}
	return ix
}

// claim keeps the first Target's claim, so that a flow several Targets want carries the Key
// of the first.
func claim[K comparable](claims map[K]int, key K, target int) {
	if _, taken := claims[key]; !taken {
		claims[key] = target
	}
}

// match returns the index of the Target that claims a flow with this original destination
// and reply source.
func (ix *index) match(destination, replySource netip.AddrPort) (int, bool) {
	target, ok := ix.byDestination[frontToBackend{destination, replySource}]
	if other, nodePort := ix.byNodePort[nodePortToBackend{destination.Port(), replySource}]; nodePort && (!ok || other < target) {
		return other, true
	}
	return target, ok
}

// canonical makes equal endpoints compare equal: an IPv4-mapped IPv6 address is the IPv4
// address it maps, as conntrack reports it, and a zone is not part of a conntrack tuple.
func canonical(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}
