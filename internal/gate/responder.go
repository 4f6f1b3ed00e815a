package gate

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/tripswitch/tripswitch/internal/endpoints"
)

// The responder's listeners, named as the ports of its Service.
const (
	// ResponderHTTPPort answers HTTP/1.1, cleartext HTTP/2 and gRPC: 503 with Retry-After,
	// or UNAVAILABLE.
	ResponderHTTPPort = "http"
	// ResponderResetPort resets every TCP connection at once.
	ResponderResetPort = "reset"
)

// httpAppProtocols are the appProtocol values of ports that carry HTTP in cleartext, which
// the responder's HTTP listener can answer: Kubernetes' own names, and the IANA and mesh
// names that users put there. TLS (https, kubernetes.io/wss) is not among them: the
// responder holds no certificate, so a reset is the honest answer.
var httpAppProtocols = []string{"http", "http2", "h2c", "grpc", "grpc-web", "kubernetes.io/h2c", "kubernetes.io/ws"}

// httpPortNames are port names that say HTTP by the convention of Istio and Linkerd: the
// protocol, alone or followed by a dash and a suffix.
var httpPortNames = []string{"http", "http2", "h2c", "grpc", "grpc-web"}

// ResponderListener says which of the responder's listeners answers a front port, or "" when
// none can (UDP and SCTP: the responder answers TCP only, so such ports get kube-proxy's
// reject). The rule, first match wins:
//   - appProtocol, when set: one of httpAppProtocols is HTTP, anything else a reset;
//   - the port's name: http, http2, h2c, grpc or grpc-web, alone or with a dash and a suffix,
//     is HTTP;
//   - the probed port, when the probe speaks cleartext HTTP or gRPC, is HTTP;
//   - everything else is a reset.
func ResponderListener(p corev1.ServicePort, probedPort string, probeSpeaksHTTP bool) string {
	if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
		return ""
	}
	if ap := strings.ToLower(ptr.Deref(p.AppProtocol, "")); ap != "" {
		if slices.Contains(httpAppProtocols, ap) {
			return ResponderHTTPPort
		}
		return ResponderResetPort
	}
	name := strings.ToLower(p.Name)
	for _, prefix := range httpPortNames {
		if name == prefix || strings.HasPrefix(name, prefix+"-") {
			return ResponderHTTPPort
		}
	}
	if p.Name == probedPort && probeSpeaksHTTP {
		return ResponderHTTPPort
	}
	return ResponderResetPort
}

// responderPorts maps each front port to the responder listener that answers it, as named
// slice ports; the port numbers are filled per responder slice.
func responderPorts(front []corev1.ServicePort, probedPort string, probeSpeaksHTTP bool) map[string]string {
	out := map[string]string{}
	for _, p := range front {
		if l := ResponderListener(p, probedPort, probeSpeaksHTTP); l != "" {
			out[p.Name] = l
		}
	}
	return out
}

// responderGroups turns the responder Service's slices into groups for the front: their ready
// endpoints only (an unready responder must not be published), with the front's port names
// on the responder's listening ports. A slice that lacks a listener some front port needs is
// skipped, as a responder of another version would be.
func responderGroups(src []discoveryv1.EndpointSlice, listeners map[string]string) []group {
	if len(listeners) == 0 {
		return nil
	}
	names := make([]string, 0, len(listeners))
	for name := range listeners {
		names = append(names, name)
	}
	slices.Sort(names)
	var ready []discoveryv1.EndpointSlice
	for _, s := range src {
		numbers := map[string]*int32{}
		for _, p := range s.Ports {
			if ptr.Deref(p.Protocol, corev1.ProtocolTCP) == corev1.ProtocolTCP && p.Port != nil {
				numbers[ptr.Deref(p.Name, "")] = p.Port
			}
		}
		ports := make([]discoveryv1.EndpointPort, 0, len(names))
		for _, name := range names {
			number := numbers[listeners[name]]
			if number == nil {
				ports = nil
				break
			}
			ports = append(ports, discoveryv1.EndpointPort{Name: ptr.To(name), Port: number, Protocol: ptr.To(corev1.ProtocolTCP)})
		}
		if ports == nil {
			continue
		}
		s.Ports = ports
		s.Endpoints = slices.DeleteFunc(slices.Clone(s.Endpoints), func(ep discoveryv1.Endpoint) bool { return !endpoints.IsReady(ep) })
		ready = append(ready, s)
	}
	groups := groupsOf(ready, func(ports []discoveryv1.EndpointPort) ([]discoveryv1.EndpointPort, bool) { return ports, true })
	for _, g := range groups {
		for i := range g.endpoints {
			// Only what kube-proxy needs and what tells a reader whose endpoint it is: no
			// topology hints, which would hold only beside hints on every other endpoint.
			ep := &g.endpoints[i]
			ep.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}
			ep.Hints, ep.Hostname = nil, nil
		}
	}
	return groups
}
