package endpoints

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func slice(family discoveryv1.AddressType, portName *string, port int32, eps ...discoveryv1.Endpoint) discoveryv1.EndpointSlice {
	return discoveryv1.EndpointSlice{
		AddressType: family,
		Ports:       []discoveryv1.EndpointPort{{Name: portName, Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   eps,
	}
}

func ep(ready *bool, addrs ...string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
}

func TestServicePortAndReady(t *testing.T) {
	svc := &corev1.Service{Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
		{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
		{Name: "metrics", Port: 9090},
		{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
	}}}
	byName, err := ServicePort(svc, intstr.FromString("http"))
	if err != nil || byName.Port != 80 {
		t.Fatalf("by name: %+v %v", byName, err)
	}
	byNumber, err := ServicePort(svc, intstr.FromInt32(80))
	if err != nil || byNumber.Name != "http" {
		t.Fatalf("by number: %+v %v", byNumber, err)
	}
	for _, bad := range []intstr.IntOrString{intstr.FromString("grpc"), intstr.FromInt32(8080), intstr.FromString("dns")} {
		if _, err := ServicePort(svc, bad); err == nil {
			t.Errorf("ServicePort(%s) found a port", bad.String())
		}
	}

	got := Ready(byName, []discoveryv1.EndpointSlice{
		slice(discoveryv1.AddressTypeIPv4, ptr.To("http"), 8080,
			ep(nil, "10.0.0.2"), ep(ptr.To(true), "10.0.0.1", "10.0.0.9"), ep(ptr.To(false), "10.0.0.3"), ep(ptr.To(true))),
		// A second slice with a different target port for the same Service port, and a repeat.
		slice(discoveryv1.AddressTypeIPv4, ptr.To("http"), 8081, ep(nil, "10.0.1.1")),
		slice(discoveryv1.AddressTypeIPv4, ptr.To("http"), 8080, ep(nil, "10.0.0.2")),
		slice(discoveryv1.AddressTypeIPv6, ptr.To("http"), 8080, ep(nil, "fd00::1")),
		slice(discoveryv1.AddressTypeIPv4, ptr.To("metrics"), 9090, ep(nil, "10.0.0.4")),
		slice(discoveryv1.AddressTypeFQDN, ptr.To("http"), 8080, ep(nil, "db.example")),
	})
	want := []netip.AddrPort{
		netip.MustParseAddrPort("10.0.0.1:8080"), netip.MustParseAddrPort("10.0.0.2:8080"),
		netip.MustParseAddrPort("10.0.1.1:8081"), netip.MustParseAddrPort("[fd00::1]:8080"),
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("Ready() (-want +got):\n%s", diff)
	}

	unnamed := corev1.ServicePort{Port: 80}
	if got := Ready(unnamed, []discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, nil, 8080, ep(nil, "10.0.0.1"))}); len(got) != 1 {
		t.Errorf("an unnamed single port should match the slice's unnamed port, got %v", got)
	}
}

func TestAllowed(t *testing.T) {
	eps := []netip.AddrPort{
		netip.MustParseAddrPort("10.244.1.7:8080"), netip.MustParseAddrPort("10.0.0.5:10250"),
		netip.MustParseAddrPort("[fd00:10:244::7]:8080"), netip.MustParseAddrPort("[2001:db8::1]:8080"),
	}
	for _, tt := range []struct {
		prefixes string
		in, out  []string
	}{
		{AllAddresses, []string{"10.244.1.7:8080", "10.0.0.5:10250", "[fd00:10:244::7]:8080", "[2001:db8::1]:8080"}, nil},
		{"10.244.0.0/16, fd00:10:244::/48", []string{"10.244.1.7:8080", "[fd00:10:244::7]:8080"},
			[]string{"10.0.0.5:10250", "[2001:db8::1]:8080"}},
		// A prefix with host bits is its network, as the API's CIDR fields read it.
		{"10.244.1.1/24", []string{"10.244.1.7:8080"}, []string{"10.0.0.5:10250", "[fd00:10:244::7]:8080", "[2001:db8::1]:8080"}},
		{"0.0.0.0/0", []string{"10.244.1.7:8080", "10.0.0.5:10250"}, []string{"[fd00:10:244::7]:8080", "[2001:db8::1]:8080"}},
	} {
		prefixes, err := ParsePrefixes(tt.prefixes)
		if err != nil {
			t.Fatal(err)
		}
		in, out := Allowed(eps, prefixes)
		str := func(eps []netip.AddrPort) []string {
			var s []string
			for _, ep := range eps {
				s = append(s, ep.String())
			}
			return s
		}
		if diff := cmp.Diff(tt.in, str(in)); diff != "" {
			t.Errorf("%s: allowed (-want +got):\n%s", tt.prefixes, diff)
		}
		if diff := cmp.Diff(tt.out, str(out)); diff != "" {
			t.Errorf("%s: refused (-want +got):\n%s", tt.prefixes, diff)
		}
	}
	if in, out := Allowed(eps, nil); len(in) != len(eps) || out != nil {
		t.Errorf("nil prefixes must allow everything")
	}
	for _, bad := range []string{"", " , ", "10.0.0.0", "10.0.0.0/33", "pods"} {
		if _, err := ParsePrefixes(bad); err == nil {
			t.Errorf("ParsePrefixes(%q) accepted it", bad)
		}
	}
}
