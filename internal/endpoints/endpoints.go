// Package endpoints reads a Service's ready endpoints from its EndpointSlices, and says which
// of them the manager may probe.
package endpoints

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ServicePort finds a Service port by name or by number.
func ServicePort(svc *corev1.Service, port intstr.IntOrString) (corev1.ServicePort, error) {
	for _, p := range svc.Spec.Ports {
		if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.Port == port.IntVal) {
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				return corev1.ServicePort{}, fmt.Errorf("port %s of Service %q is %s; probes need TCP", port.String(), svc.Name, p.Protocol)
			}
			return p, nil
		}
	}
	//nolint:staticcheck // ST1005: "Service" is the Kubernetes kind; the message reaches status as it is.
	return corev1.ServicePort{}, fmt.Errorf("Service %q has no port %s", svc.Name, port.String())
}

// Ready returns the ready endpoints, as address and port, that the slices publish for a
// Service port. Slices name their ports after the Service's, and carry the target port's
// number, which can differ per slice. An endpoint whose ready condition is unset counts as
// ready, as the EndpointSlice API says. FQDN slices are skipped; the result is sorted and
// holds each endpoint once.
func Ready(port corev1.ServicePort, endpointSlices []discoveryv1.EndpointSlice) []netip.AddrPort {
	var out []netip.AddrPort
	for i := range endpointSlices {
		slice := &endpointSlices[i]
		if slice.AddressType != discoveryv1.AddressTypeIPv4 && slice.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		number, ok := slicePort(slice, port.Name)
		if !ok {
			continue
		}
		for _, ep := range slice.Endpoints {
			if !IsReady(ep) || len(ep.Addresses) == 0 {
				continue
			}
			// Addresses of one endpoint are fungible; the API says to use the first.
			addr, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil {
				continue
			}
			out = append(out, netip.AddrPortFrom(addr.Unmap(), uint16(number)))
		}
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return slices.Compact(out)
}

// IsReady reports whether an endpoint is ready; an unset condition means ready.
func IsReady(ep discoveryv1.Endpoint) bool {
	return ep.Conditions.Ready == nil || *ep.Conditions.Ready
}

func slicePort(slice *discoveryv1.EndpointSlice, name string) (int32, bool) {
	for _, p := range slice.Ports {
		if p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
			continue
		}
		if p.Name == nil && name == "" || p.Name != nil && *p.Name == name {
			return *p.Port, true
		}
	}
	return 0, false
}

// AllAddresses allows every IPv4 and IPv6 address: --probe-allowed-cidrs' default.
const AllAddresses = "0.0.0.0/0,::/0"

// ParsePrefixes parses a comma-separated list of CIDR prefixes, such as "10.0.0.0/8,fd00::/8".
// It refuses an empty list, which would allow nothing and so probe nothing.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	if len(out) == 0 {
		return nil, errors.New("no prefix given; " + AllAddresses + " allows every address")
	}
	return out, nil
}

// Allowed splits endpoints into those inside one of the prefixes and those outside all of
// them, keeping their order. Nil prefixes allow every endpoint.
func Allowed(eps []netip.AddrPort, prefixes []netip.Prefix) (in, out []netip.AddrPort) {
	if prefixes == nil {
		return eps, nil
	}
	for _, ep := range eps {
		if slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(ep.Addr()) }) {
			in = append(in, ep)
		} else {
			out = append(out, ep)
		}
	}
	return in, out
}
