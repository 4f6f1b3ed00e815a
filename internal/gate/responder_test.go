package gate

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
)

func TestResponderListener(t *testing.T) {
	svcPort := func(name, appProtocol string, protocol corev1.Protocol) corev1.ServicePort {
		p := corev1.ServicePort{Name: name, Protocol: protocol}
		if appProtocol != "" {
			p.AppProtocol = ptr.To(appProtocol)
		}
		return p
	}
	for _, tt := range []struct {
		name      string
		port      corev1.ServicePort
		probeHTTP bool
		want      string
	}{
		{"appProtocol http", svcPort("web", "http", corev1.ProtocolTCP), false, ResponderHTTPPort},
		{"appProtocol is case-insensitive", svcPort("web", "HTTP", ""), false, ResponderHTTPPort},
		{"kubernetes.io/h2c", svcPort("api", "kubernetes.io/h2c", corev1.ProtocolTCP), false, ResponderHTTPPort},
		{"grpc", svcPort("api", "grpc", corev1.ProtocolTCP), false, ResponderHTTPPort},
		{"kubernetes.io/ws upgrades from HTTP", svcPort("ws", "kubernetes.io/ws", corev1.ProtocolTCP), false, ResponderHTTPPort},
		{"https holds a certificate the responder lacks", svcPort("http", "https", corev1.ProtocolTCP), true, ResponderResetPort},
		{"kubernetes.io/wss", svcPort("ws", "kubernetes.io/wss", corev1.ProtocolTCP), false, ResponderResetPort},
		{"an unknown appProtocol beats an http name", svcPort("http", "postgresql", corev1.ProtocolTCP), true, ResponderResetPort},
		{"name http", svcPort("http", "", corev1.ProtocolTCP), false, ResponderHTTPPort},
		{"name grpc-api", svcPort("grpc-api", "", corev1.ProtocolTCP), false, ResponderHTTPPort},
		{"name https is no http- prefix", svcPort("https", "", corev1.ProtocolTCP), false, ResponderResetPort},
		{"name httpx is no http- prefix", svcPort("httpx", "", corev1.ProtocolTCP), false, ResponderResetPort},
		{"the probed port of an HTTP probe", svcPort("web", "", corev1.ProtocolTCP), true, ResponderHTTPPort},
		{"another port of an HTTP probe's target", svcPort("db", "", corev1.ProtocolTCP), false, ResponderResetPort},
		{"UDP cannot be answered", svcPort("dns", "", corev1.ProtocolUDP), true, ""},
		{"SCTP cannot be answered", svcPort("http", "http", corev1.ProtocolSCTP), true, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			probed := "web"
			if tt.port.Name != "web" && tt.probeHTTP {
				probed = tt.port.Name
			}
			if got := ResponderListener(tt.port, probed, tt.probeHTTP); got != tt.want {
				t.Errorf("ResponderListener = %q, want %q", got, tt.want)
			}
		})
	}
	if got := ResponderListener(svcPort("db", "", corev1.ProtocolTCP), "web", true); got != ResponderResetPort {
		t.Errorf("an HTTP probe on another port made %q of port db", got)
	}
}

func respEP(addr string, ready bool) discoveryv1.Endpoint {
	e := ep(addr, ready)
	e.NodeName = ptr.To("node-" + addr)
	e.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}}
	return e
}

var responder = []discoveryv1.EndpointSlice{
	src(discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{port("http", 8480), port("reset", 8481), port("metrics", 8483)},
		respEP("10.7.0.2", true), respEP("10.7.0.1", true), respEP("10.7.0.3", false)),
}

func withResponder(state breaker.State, whenOpen tripswitchv1alpha1.WhenOpen) Input {
	in := input(state)
	in.Target = target[:1]
	in.WhenOpen, in.Responder, in.ProbeSpeaksHTTP = whenOpen, responder, true
	in.FrontPorts = []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP}, {Name: "db", Protocol: corev1.ProtocolTCP},
		{Name: "dns", Protocol: corev1.ProtocolUDP}}
	in.Target = []discoveryv1.EndpointSlice{src(discoveryv1.AddressTypeIPv4,
		[]discoveryv1.EndpointPort{port("http", 8080), port("db", 5432)}, ep("10.0.0.2", true), ep("10.0.0.1", true))}
	return in
}

func TestSlicesWithTheResponder(t *testing.T) {
	fallback := []discoveryv1.EndpointSlice{src(discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{port("web", 9090)}, ep("10.9.0.1", true))}
	for _, tt := range []struct {
		name string
		in   Input
		want []string
		pub  Published
	}{
		{"open publishes the ready responders first, each front port on its listener",
			withResponder(breaker.Open, tripswitchv1alpha1.WhenOpenRespond), []string{
				"payments-tripswitch-0 IPv4 db/8481/TCP,http/8480/TCP 10.7.0.1(true,true) 10.7.0.2(true,true)",
				"payments-tripswitch-1 IPv4 db/5432/TCP,http/8080/TCP 10.0.0.1(false,false) 10.0.0.2(false,false)",
			}, Published{Endpoints: 0, Responders: 2}},
		{"half-open shares new connections between trial endpoints and responders",
			withResponder(breaker.HalfOpen, tripswitchv1alpha1.WhenOpenRespond), []string{
				"payments-tripswitch-0 IPv4 db/8481/TCP,http/8480/TCP 10.7.0.1(true,true) 10.7.0.2(true,true)",
				"payments-tripswitch-1 IPv4 db/5432/TCP,http/8080/TCP 10.0.0.1(true,true)",
			}, Published{Endpoints: 1, Responders: 2}},
		{"closed never publishes the responder",
			withResponder(breaker.Closed, tripswitchv1alpha1.WhenOpenRespond), []string{
				"payments-tripswitch-0 IPv4 db/5432/TCP,http/8080/TCP 10.0.0.1(true,true) 10.0.0.2(true,true)",
			}, Published{Endpoints: 2}},
		{"reject publishes no responder", withResponder(breaker.Open, tripswitchv1alpha1.WhenOpenReject), []string{
			"payments-tripswitch-0 IPv4 db/5432/TCP,http/8080/TCP 10.0.0.1(false,false) 10.0.0.2(false,false)",
		}, Published{}},
		{"a fallback beats the responder while Open", func() Input {
			in := withResponder(breaker.Open, tripswitchv1alpha1.WhenOpenRespond)
			in.HasFallback, in.Fallback, in.FallbackPort = true, fallback, "web"
			return in
		}(), []string{"payments-tripswitch-0 IPv4 http/9090/TCP 10.9.0.1(true,true)"}, Published{Endpoints: 1}},
		{"no ready responder leaves today's reject", func() Input {
			in := withResponder(breaker.Open, tripswitchv1alpha1.WhenOpenRespond)
			in.Responder = []discoveryv1.EndpointSlice{src(discoveryv1.AddressTypeIPv4, responder[0].Ports, respEP("10.7.0.3", false))}
			return in
		}(), []string{
			"payments-tripswitch-0 IPv4 db/5432/TCP,http/8080/TCP 10.0.0.1(false,false) 10.0.0.2(false,false)",
		}, Published{}},
		{"a responder slice without a needed listener is skipped", func() Input {
			in := withResponder(breaker.Open, tripswitchv1alpha1.WhenOpenRespond)
			in.Responder = []discoveryv1.EndpointSlice{src(discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{port("http", 8480)},
				respEP("10.7.0.1", true))}
			return in
		}(), []string{
			"payments-tripswitch-0 IPv4 db/5432/TCP,http/8080/TCP 10.0.0.1(false,false) 10.0.0.2(false,false)",
		}, Published{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, pub := Slices(tt.in)
			if diff := cmp.Diff(tt.want, summary(out)); diff != "" {
				t.Errorf("slices (-want +got):\n%s", diff)
			}
			if pub != tt.pub {
				t.Errorf("published = %+v, want %+v", pub, tt.pub)
			}
			for _, sl := range out {
				for _, e := range sl.Endpoints {
					if e.Hints != nil {
						t.Errorf("%v carries topology hints", e.Addresses)
					}
				}
			}
		})
	}
}

// TestOpeningSwapsTheFirstSliceInOneWrite holds the order that keeps kube-proxy from ever
// seeing the front without ready endpoints: the slice that published the target while Closed
// is, by name, the one that publishes the responder while Open.
func TestOpeningSwapsTheFirstSliceInOneWrite(t *testing.T) {
	closed, _ := Slices(withResponder(breaker.Closed, tripswitchv1alpha1.WhenOpenRespond))
	open, _ := Slices(withResponder(breaker.Open, tripswitchv1alpha1.WhenOpenRespond))
	if closed[0].Name != open[0].Name || closed[0].AddressType != open[0].AddressType {
		t.Fatalf("closed's first slice %s/%s is not open's %s/%s", closed[0].Name, closed[0].AddressType, open[0].Name, open[0].AddressType)
	}
	if len(open[0].Endpoints) == 0 || !ptr.Deref(open[0].Endpoints[0].Conditions.Ready, false) {
		t.Fatalf("open's first slice publishes no ready responder: %v", summary(open))
	}
}
