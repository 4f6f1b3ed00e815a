package gate

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
)

func port(name string, n int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(n), Protocol: ptr.To(corev1.ProtocolTCP)}
}

func ep(addr string, ready bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{addr}, Zone: ptr.To("zone-a"),
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(ready)}}
}

func src(at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) discoveryv1.EndpointSlice {
	return discoveryv1.EndpointSlice{AddressType: at, Ports: ports, Endpoints: eps}
}

var (
	httpPort = []discoveryv1.EndpointPort{port("http", 8080)}
	target   = []discoveryv1.EndpointSlice{
		src(discoveryv1.AddressTypeIPv4, httpPort, ep("10.0.0.3", true), ep("10.0.0.1", true), ep("10.0.0.2", false)),
		src(discoveryv1.AddressTypeIPv6, httpPort, ep("fd00::1", true)),
		src(discoveryv1.AddressTypeFQDN, httpPort, ep("db.example", true)),
	}
)

func input(state breaker.State) Input {
	return Input{Namespace: "shop", Breaker: "payments", Front: "payments", State: state, Target: target,
		GatedPort: "http", HalfOpenEndpoints: 1}
}

// summary is "family ports: address(ready,serving) ..." per slice, for readable wants.
func summary(out []discoveryv1.EndpointSlice) []string {
	var s []string
	for _, sl := range out {
		line := fmt.Sprintf("%s %s %s", sl.Name, sl.AddressType, portsKey(sl.Ports))
		for _, e := range sl.Endpoints {
			line += fmt.Sprintf(" %s(%v,%v)", e.Addresses[0], ptr.Deref(e.Conditions.Ready, true), ptr.Deref(e.Conditions.Serving, true))
		}
		s = append(s, line)
	}
	return s
}

func TestSlices(t *testing.T) {
	fallback := []discoveryv1.EndpointSlice{src(discoveryv1.AddressTypeIPv4,
		[]discoveryv1.EndpointPort{port("web", 9090), port("metrics", 9100)}, ep("10.9.0.1", true), ep("10.9.0.2", true))}
	for _, tt := range []struct {
		name      string
		in        Input
		want      []string
		published int
	}{
		{"closed mirrors every endpoint of both families, with conditions", input(breaker.Closed), []string{
			"payments-tripswitch-0 IPv4 http/8080/TCP 10.0.0.1(true,true) 10.0.0.2(false,false) 10.0.0.3(true,true)",
			"payments-tripswitch-1 IPv6 http/8080/TCP fd00::1(true,true)",
		}, 3},
		{"half-open publishes halfOpenEndpoints ready endpoints", input(breaker.HalfOpen), []string{
			"payments-tripswitch-0 IPv4 http/8080/TCP 10.0.0.1(true,true)",
		}, 1},
		{"open publishes no ready and no serving endpoint", input(breaker.Open), []string{
			"payments-tripswitch-0 IPv4 http/8080/TCP 10.0.0.1(false,false) 10.0.0.2(false,false) 10.0.0.3(false,false)",
			"payments-tripswitch-1 IPv6 http/8080/TCP fd00::1(false,false)",
		}, 0},
		{"open with a fallback publishes the fallback's port under the gated port's name", func() Input {
			in := input(breaker.Open)
			in.HasFallback, in.Fallback, in.FallbackPort = true, fallback, "web"
			return in
		}(), []string{"payments-tripswitch-0 IPv4 http/9090/TCP 10.9.0.1(true,true) 10.9.0.2(true,true)"}, 2},
		{"closed ignores the fallback", func() Input {
			in := input(breaker.Closed)
			in.HasFallback, in.Fallback, in.FallbackPort, in.Target = true, fallback, "web", target[:1]
			return in
		}(), []string{"payments-tripswitch-0 IPv4 http/8080/TCP 10.0.0.1(true,true) 10.0.0.2(false,false) 10.0.0.3(true,true)"}, 2},
		{"no target endpoints still give one empty slice", func() Input {
			in := input(breaker.Closed)
			in.Target = nil
			return in
		}(), []string{"payments-tripswitch-0 IPv4 "}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, published := Slices(tt.in)
			if diff := cmp.Diff(tt.want, summary(out)); diff != "" {
				t.Errorf("slices (-want +got):\n%s", diff)
			}
			if published.Endpoints != tt.published || published.Responders != 0 {
				t.Errorf("published = %+v, want %d endpoints", published, tt.published)
			}
			for _, sl := range out {
				if sl.Labels[discoveryv1.LabelServiceName] != "payments" || sl.Labels[discoveryv1.LabelManagedBy] != "tripswitch.io" ||
					sl.Labels[BreakerLabel] != "payments" || sl.Namespace != "shop" {
					t.Errorf("slice %s labels %v", sl.Name, sl.Labels)
				}
				for _, e := range sl.Endpoints {
					if ptr.Deref(e.Zone, "") != "zone-a" {
						t.Errorf("zone not mirrored on %v", e.Addresses)
					}
				}
			}
		})
	}
}

func TestSlicesSplitsAtTheAPILimitAndIgnoresSourceSlicing(t *testing.T) {
	var eps []discoveryv1.Endpoint
	for i := range 1200 {
		eps = append(eps, ep(fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), true))
	}
	one := input(breaker.Closed)
	one.Target = []discoveryv1.EndpointSlice{src(discoveryv1.AddressTypeIPv4, httpPort, eps...)}
	many := input(breaker.Closed)
	many.Target = nil
	for i := 0; i < len(eps); i += 100 {
		many.Target = append(many.Target, src(discoveryv1.AddressTypeIPv4, httpPort, eps[i:i+100]...))
	}
	a, pa := Slices(one)
	b, pb := Slices(many)
	if len(a) != 2 || len(a[0].Endpoints) != 1000 || len(a[1].Endpoints) != 200 || pa.Endpoints != 1200 {
		t.Fatalf("want 1000+200 endpoints in two slices, got %d slices, %d published", len(a), pa)
	}
	if diff := cmp.Diff(a, b); diff != "" || pa != pb {
		t.Errorf("output depends on how the target was sliced:\n%s", diff)
	}
}

func TestBreakerLabelValueAlwaysFits(t *testing.T) {
	short := "payments"
	if got := BreakerLabelValue(short); got != short {
		t.Fatalf("a name that fits is its own label value, got %q", got)
	}
	exact := strings.Repeat("a", 63)
	if got := BreakerLabelValue(exact); got != exact {
		t.Fatalf("63 characters fit, got %q", got)
	}
	long := strings.Repeat("payments-eu-west.", 14) + "x" // 239 characters, a valid object name
	other := long[:len(long)-1] + "y"
	a, b := BreakerLabelValue(long), BreakerLabelValue(other)
	for _, v := range []string{a, b} {
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			t.Fatalf("label value %q is invalid: %v", v, errs)
		}
	}
	if a == b {
		t.Fatalf("two long names that differ only at the end share the label value %q", a)
	}
	slices, _ := Slices(Input{Namespace: "shop", Breaker: long, Front: "payments", State: breaker.Closed})
	if got := slices[0].Labels[BreakerLabel]; got != a {
		t.Fatalf("slices carry %q, want %q", got, a)
	}
}

func TestSlicesHoldBackEjectedEndpoints(t *testing.T) {
	held := func(state breaker.State, addrs ...string) Input {
		in := input(state)
		in.HeldBack = map[string]bool{}
		for _, a := range addrs {
			in.HeldBack[a] = true
		}
		return in
	}
	for _, tt := range []struct {
		name      string
		in        Input
		want      []string
		published int
	}{
		{"closed publishes a held-back endpoint neither ready nor serving", held(breaker.Closed, "10.0.0.3"), []string{
			"payments-tripswitch-0 IPv4 http/8080/TCP 10.0.0.1(true,true) 10.0.0.2(false,false) 10.0.0.3(false,false)",
			"payments-tripswitch-1 IPv6 http/8080/TCP fd00::1(true,true)",
		}, 2},
		{"an IPv6 address spelled another way in the slice is still held back", held(breaker.Closed, "fd00::1"), []string{
			"payments-tripswitch-0 IPv4 http/8080/TCP 10.0.0.1(true,true) 10.0.0.2(false,false) 10.0.0.3(true,true)",
			"payments-tripswitch-1 IPv6 http/8080/TCP fd00::1(false,false)",
		}, 2},
		{"half-open picks its trial endpoints among those not held back", held(breaker.HalfOpen, "10.0.0.1"), []string{
			"payments-tripswitch-0 IPv4 http/8080/TCP 10.0.0.3(true,true)",
		}, 1},
		{"holding back every ready endpoint holds back none", held(breaker.Closed, "10.0.0.1", "10.0.0.3", "fd00::1"), []string{
			"payments-tripswitch-0 IPv4 http/8080/TCP 10.0.0.1(true,true) 10.0.0.2(false,false) 10.0.0.3(true,true)",
			"payments-tripswitch-1 IPv6 http/8080/TCP fd00::1(true,true)",
		}, 3},
		{"open ignores held-back endpoints", held(breaker.Open, "10.0.0.1"), []string{
			"payments-tripswitch-0 IPv4 http/8080/TCP 10.0.0.1(false,false) 10.0.0.2(false,false) 10.0.0.3(false,false)",
			"payments-tripswitch-1 IPv6 http/8080/TCP fd00::1(false,false)",
		}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "an IPv6 address spelled another way in the slice is still held back" {
				tt.in.Target = []discoveryv1.EndpointSlice{target[0], src(discoveryv1.AddressTypeIPv6, httpPort, ep("FD00:0::1", true))}
				tt.want[1] = "payments-tripswitch-1 IPv6 http/8080/TCP FD00:0::1(false,false)"
			}
			out, published := Slices(tt.in)
			if diff := cmp.Diff(tt.want, summary(out)); diff != "" {
				t.Errorf("slices (-want +got):\n%s", diff)
			}
			if published.Endpoints != tt.published {
				t.Errorf("published %d ready endpoints, want %d", published.Endpoints, tt.published)
			}
		})
	}
}

func TestHalfOpenPicksEndpointsInNumericAddressOrder(t *testing.T) {
	in := input(breaker.HalfOpen)
	in.Target = []discoveryv1.EndpointSlice{src(discoveryv1.AddressTypeIPv4, httpPort, ep("10.0.0.10", true), ep("10.0.0.9", true))}
	out, _ := Slices(in)
	// As the endpoint level orders them: slow start keeps this one published when the breaker
	// closes, rather than swapping it for another.
	if diff := cmp.Diff([]string{"payments-tripswitch-0 IPv4 http/8080/TCP 10.0.0.9(true,true)"}, summary(out)); diff != "" {
		t.Errorf("slices (-want +got):\n%s", diff)
	}
}

// The node agent reads one slice at a time: each must say whose endpoints it lists, the gate
// state it was written for, which of its own endpoints the endpoint level holds back, and
// whether connections may be cut.
func TestSlicesTellTheNodeAgentWhyEndpointsAreWithheld(t *testing.T) {
	annotations := func(in Input) []map[string]string {
		out, _ := Slices(in)
		var got []map[string]string
		for _, sl := range out {
			got = append(got, sl.Annotations)
		}
		return got
	}
	// of is a slice's annotations: whose endpoints, the gate state, then key/value pairs.
	of := func(source, state string, more ...string) map[string]string {
		m := map[string]string{tripswitchv1alpha1.EndpointsOfAnnotation: source, tripswitchv1alpha1.GateStateAnnotation: state}
		for i := 0; i < len(more); i += 2 {
			m[more[i]] = more[i+1]
		}
		return m
	}
	const tgt, resp, fb = tripswitchv1alpha1.EndpointsOfTarget, tripswitchv1alpha1.EndpointsOfResponder, tripswitchv1alpha1.EndpointsOfFallback
	closedHeld := input(breaker.Closed)
	closedHeld.HeldBack = map[string]bool{"10.0.0.3": true, "10.0.0.1": true}
	halfOpenHeld := input(breaker.HalfOpen)
	halfOpenHeld.HeldBack = closedHeld.HeldBack
	openHeld := input(breaker.Open)
	openHeld.HeldBack = closedHeld.HeldBack
	kept := input(breaker.Open)
	kept.KeepConnections = true
	responding := withResponder(breaker.Open, tripswitchv1alpha1.WhenOpenRespond)
	halfResponding := withResponder(breaker.HalfOpen, tripswitchv1alpha1.WhenOpenRespond)
	falling := input(breaker.Open)
	falling.HasFallback, falling.FallbackPort = true, "web"
	falling.Fallback = []discoveryv1.EndpointSlice{src(discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{port("web", 9090)}, ep("10.9.0.1", true))}
	for _, tt := range []struct {
		name string
		in   Input
		want []map[string]string
	}{
		{"closed", input(breaker.Closed), []map[string]string{of(tgt, "Closed"), of(tgt, "Closed")}},
		{"open", input(breaker.Open), []map[string]string{of(tgt, "Open"), of(tgt, "Open")}},
		{"half-open", input(breaker.HalfOpen), []map[string]string{of(tgt, "HalfOpen")}},
		{"open with the responder: its slice comes first, and says it is the responder's", responding,
			[]map[string]string{of(resp, "Open"), of(tgt, "Open")}},
		{"half-open with the responder beside the trial endpoint", halfResponding,
			[]map[string]string{of(resp, "HalfOpen"), of(tgt, "HalfOpen")}},
		{"open with a fallback lists the fallback's endpoints only", falling, []map[string]string{of(fb, "Open")}},
		{"closed lists the held-back endpoints of each slice, in the slice's order", closedHeld, []map[string]string{
			of(tgt, "Closed", tripswitchv1alpha1.HeldBackAnnotation, "10.0.0.1,10.0.0.3"), of(tgt, "Closed"),
		}},
		{"half-open leaves held-back endpoints out, so lists none", halfOpenHeld, []map[string]string{of(tgt, "HalfOpen")}},
		{"open withholds every target endpoint and lists no held-back one", openHeld,
			[]map[string]string{of(tgt, "Open"), of(tgt, "Open")}},
		{"cutConnections false", kept, []map[string]string{
			of(tgt, "Open", tripswitchv1alpha1.CutConnectionsAnnotation, "false"),
			of(tgt, "Open", tripswitchv1alpha1.CutConnectionsAnnotation, "false"),
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, annotations(tt.in)); diff != "" {
				t.Errorf("annotations (-want +got):\n%s", diff)
			}
		})
	}
}
