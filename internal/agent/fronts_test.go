package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/flows"
	"github.com/tripswitch/tripswitch/internal/gate"
)

var start = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

var payments = types.NamespacedName{Namespace: "shop", Name: "payments"}

func tcpPort(name string, n int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(n), Protocol: ptr.To(corev1.ProtocolTCP)}
}

func readyEP(addr string, ready bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{addr},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(ready)}}
}

// targetOf is a target Service's slice: n ready endpoints 10.0.0.1... on http 8080 and grpc 9090.
func targetOf(n int) []discoveryv1.EndpointSlice {
	s := discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{tcpPort("http", 8080), tcpPort("grpc", 9090)}}
	for i := range n {
		s.Endpoints = append(s.Endpoints, readyEP(fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), true))
	}
	return []discoveryv1.EndpointSlice{s}
}

var responderSlices = []discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4,
	Ports:     []discoveryv1.EndpointPort{tcpPort("http", 8480), tcpPort("reset", 8481)},
	Endpoints: []discoveryv1.Endpoint{readyEP("10.7.0.1", true), readyEP("10.7.0.2", true)}}}

// node is a front as the agent sees it: a gate input, the slices the manager last wrote,
// and the agent's view of them, with a fake clock for both.
type node struct {
	t      *testing.T
	clk    *testingclock.FakeClock
	fronts *Fronts
	in     gate.Input
	slices []discoveryv1.EndpointSlice
}

func newNode(t *testing.T, in gate.Input) *node {
	n := &node{t: t, clk: testingclock.NewFakeClock(start), in: in}
	n.fronts = NewFronts(n.clk, 10*time.Second)
	n.fronts.ObserveService(paymentsService(), false)
	return n
}

func paymentsService() *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments",
			Annotations: map[string]string{tripswitchv1alpha1.ClaimAnnotation: "payments"}},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, ExternalIPs: []string{"192.0.2.50"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, NodePort: 30080}, {Name: "grpc", Port: 9090},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "203.0.113.7"}}}},
	}
}

func gateInput(state breaker.State, target []discoveryv1.EndpointSlice) gate.Input {
	return gate.Input{Namespace: "shop", Breaker: "payments", Front: "payments", State: state, Target: target,
		GatedPort: "http", HalfOpenEndpoints: 1, WhenOpen: tripswitchv1alpha1.WhenOpenRespond, Responder: responderSlices,
		FrontPorts: []corev1.ServicePort{{Name: "http"}, {Name: "grpc"}}, ProbeSpeaksHTTP: true}
}

// write has the manager write the front's slices for in, in the order its syncSlices applies
// them (slices that go and publish nothing first, then creates and updates in order, then the
// other slices that go), stamping changed ones as it does, and feeds each write to the agent.
func (n *node) write(in gate.Input) Result {
	n.t.Helper()
	n.in = in
	desired, _ := gate.Slices(in)
	var res Result
	observe := func(s discoveryv1.EndpointSlice, deleted bool) {
		r := n.fronts.ObserveSlice(&s, deleted)
		res.Cuts = append(res.Cuts, r.Cuts...)
		res.Skips = append(res.Skips, r.Skips...)
		if r.Gone != nil {
			res.Gone = r.Gone
		}
	}
	byName := map[string]discoveryv1.EndpointSlice{}
	for _, s := range n.slices {
		byName[s.Name] = s
	}
	wanted := map[string]bool{}
	for _, s := range desired {
		wanted[s.Name] = true
	}
	for _, s := range n.slices {
		if !wanted[s.Name] && !slices.ContainsFunc(s.Endpoints, routable) {
			observe(s, true)
			delete(byName, s.Name)
		}
	}
	changedAt := n.clk.Now().UTC().Format(time.RFC3339Nano)
	var written []discoveryv1.EndpointSlice
	for _, want := range desired {
		have, ok := byName[want.Name]
		delete(byName, want.Name)
		if !ok || !cmp.Equal(have.Endpoints, want.Endpoints) || !cmp.Equal(have.Ports, want.Ports) {
			want.Annotations[corev1.EndpointsLastChangeTriggerTime] = changedAt
		} else {
			want.Annotations[corev1.EndpointsLastChangeTriggerTime] = have.Annotations[corev1.EndpointsLastChangeTriggerTime]
		}
		written = append(written, want)
		if !ok || !cmp.Equal(have, want) {
			observe(want, false)
		}
	}
	for _, s := range n.slices {
		if _, left := byName[s.Name]; left {
			observe(s, true)
		}
	}
	n.slices = written
	return res
}

// cut summarises cuts as "reason: addr/port ..." lines.
func cut(res Result) []string {
	var out []string
	for _, c := range res.Cuts {
		line := string(c.Reason) + ":"
		for _, ep := range c.Endpoints {
			line += fmt.Sprintf(" %s/%s", ep.Addr, ep.PortName)
		}
		out = append(out, line)
	}
	return out
}

func TestFrontsCutOnlyWhatATripOrAnEjectionWithholds(t *testing.T) {
	three := targetOf(3)
	allThree := []string{"trip: 10.0.0.1/grpc 10.0.0.1/http 10.0.0.2/grpc 10.0.0.2/http 10.0.0.3/grpc 10.0.0.3/http"}
	with := func(state breaker.State, change func(*gate.Input)) gate.Input {
		in := gateInput(state, three)
		if change != nil {
			change(&in)
		}
		return in
	}
	reject := func(in *gate.Input) { in.WhenOpen = tripswitchv1alpha1.WhenOpenReject }
	fallback := func(in *gate.Input) {
		in.HasFallback, in.FallbackPort = true, "web"
		in.Fallback = []discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{tcpPort("web", 8080)}, Endpoints: []discoveryv1.Endpoint{readyEP("10.9.0.1", true)}}}
	}
	eject := func(addrs ...string) func(*gate.Input) {
		return func(in *gate.Input) {
			in.HeldBack = map[string]bool{}
			for _, a := range addrs {
				in.HeldBack[a] = true
			}
		}
	}
	type step struct {
		in   gate.Input
		want []string
	}
	for _, tt := range []struct {
		name  string
		steps []step
	}{
		{"the first view cuts nothing, whatever it shows", []step{{with(breaker.Open, nil), nil}}},
		{"Closed to Open with the responder cuts every target endpoint once, over the manager's several writes", []step{
			{with(breaker.Closed, nil), nil}, {with(breaker.Open, nil), allThree}, {with(breaker.Open, nil), nil}}},
		{"Closed to Open with whenOpen Reject", []step{{with(breaker.Closed, nil), nil}, {with(breaker.Open, reject), allThree}}},
		{"Closed to Open with a fallback, whose slices list no target endpoint", []step{
			{with(breaker.Closed, nil), nil}, {with(breaker.Open, fallback), allThree}}},
		{"Open to HalfOpen to Closed cuts nothing", []step{
			{with(breaker.Open, nil), nil}, {with(breaker.HalfOpen, nil), nil}, {with(breaker.Closed, nil), nil}}},
		{"a failed trial cuts the trial endpoint: HalfOpen to Open", []step{
			{with(breaker.Open, nil), nil}, {with(breaker.HalfOpen, nil), nil},
			{with(breaker.Open, nil), []string{"trip: 10.0.0.1/grpc 10.0.0.1/http"}}}},
		{"an ejection cuts that endpoint alone, and its return cuts nothing", []step{
			{with(breaker.Closed, nil), nil},
			{with(breaker.Closed, eject("10.0.0.2")), []string{"ejection: 10.0.0.2/grpc 10.0.0.2/http"}},
			{with(breaker.Closed, eject("10.0.0.2", "10.0.0.3")), []string{"ejection: 10.0.0.3/grpc 10.0.0.3/http"}},
			{with(breaker.Closed, nil), nil}}},
		{"a trip after an ejection cuts only the endpoints still published", []step{
			{with(breaker.Closed, eject("10.0.0.2")), nil},
			{with(breaker.Open, nil), []string{"trip: 10.0.0.1/grpc 10.0.0.1/http 10.0.0.3/grpc 10.0.0.3/http"}}}},
		{"a target pod that turns unready, or goes, while Closed is kube-proxy's business", []step{
			{with(breaker.Closed, nil), nil},
			{with(breaker.Closed, func(in *gate.Input) {
				in.Target = targetOf(3)
				in.Target[0].Endpoints[1] = readyEP("10.0.0.2", false)
			}), nil},
			{with(breaker.Closed, func(in *gate.Input) { in.Target = targetOf(1) }), nil}}},
		{"the responder turning unready while Open is not cut", []step{
			{with(breaker.Open, nil), nil},
			{with(breaker.Open, func(in *gate.Input) { in.Responder = nil }), nil}}},
		{"Observe and ForceClosed keep the gate Closed: ejections cut nothing", []step{
			{with(breaker.Closed, nil), nil}, {with(breaker.Closed, nil), nil}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t, tt.steps[0].in)
			for i, s := range tt.steps {
				n.clk.Step(time.Second)
				res := n.write(s.in)
				if diff := cmp.Diff(s.want, cut(res)); diff != "" {
					t.Errorf("step %d (%s): cuts (-want +got):\n%s", i, s.in.State, diff)
				}
				if len(res.Skips) > 0 {
					t.Errorf("step %d: skips %+v", i, res.Skips)
				}
			}
		})
	}
}

func TestFrontsCutAThousandEndpointsOnceAcrossSlices(t *testing.T) {
	n := newNode(t, gateInput(breaker.Closed, targetOf(1200)))
	n.write(n.in)
	n.clk.Step(time.Second)
	res := n.write(gateInput(breaker.Open, targetOf(1200)))
	if len(res.Cuts) == 0 {
		t.Fatal("no cut")
	}
	seen := map[Endpoint]int{}
	for _, c := range res.Cuts {
		for _, ep := range c.Endpoints {
			seen[ep]++
		}
	}
	if len(seen) != 2400 {
		t.Errorf("cut %d endpoint ports, want 1200 endpoints x 2 ports", len(seen))
	}
	for ep, times := range seen {
		if times != 1 {
			t.Errorf("%v cut %d times", ep, times)
		}
	}
}

func TestFrontsSkipWhatTheyMustNotCut(t *testing.T) {
	t.Run("cutConnections false", func(t *testing.T) {
		n := newNode(t, gateInput(breaker.Closed, targetOf(2)))
		n.write(n.in)
		in := gateInput(breaker.Open, targetOf(2))
		in.KeepConnections = true
		n.clk.Step(time.Second)
		res := n.write(in)
		if len(res.Cuts) != 0 || len(res.Skips) == 0 || res.Skips[0].Why != SkipDisabled || res.Skips[0].Breaker != "payments" {
			t.Errorf("want a disabled skip and no cut, got %+v", res)
		}
	})
	t.Run("a change that arrives long after it was made", func(t *testing.T) {
		n := newNode(t, gateInput(breaker.Closed, targetOf(2)))
		n.write(n.in)
		// The manager wrote Open at start; a watch resumed after an outage delivers it 11 s later.
		desired, _ := gate.Slices(gateInput(breaker.Open, targetOf(2)))
		n.clk.Step(11 * time.Second)
		var res Result
		for _, s := range desired {
			s.Annotations[corev1.EndpointsLastChangeTriggerTime] = start.Format(time.RFC3339Nano)
			r := n.fronts.ObserveSlice(&s, false)
			res.Cuts, res.Skips = append(res.Cuts, r.Cuts...), append(res.Skips, r.Skips...)
		}
		if len(res.Cuts) != 0 || len(res.Skips) != 1 || res.Skips[0].Why != SkipStale || res.Skips[0].Endpoints != 4 {
			t.Errorf("want one stale skip of 4 endpoint ports and no cut, got %+v", res)
		}
	})
	t.Run("a slice without a trigger time, as an older manager writes", func(t *testing.T) {
		n := newNode(t, gateInput(breaker.Closed, targetOf(2)))
		n.write(n.in)
		desired, _ := gate.Slices(gateInput(breaker.Open, targetOf(2)))
		res := n.fronts.ObserveSlice(&desired[1], false)
		if len(res.Cuts) != 0 {
			t.Errorf("cut without knowing when the change was made: %+v", res.Cuts)
		}
	})
	t.Run("handing the front back and deleting the slices", func(t *testing.T) {
		n := newNode(t, gateInput(breaker.Open, targetOf(2)))
		n.write(n.in)
		n.clk.Step(time.Second)
		if res := n.write(gateInput(breaker.Closed, targetOf(2))); len(res.Cuts) != 0 {
			t.Errorf("closing cut %v", cut(res))
		}
		var gone *types.NamespacedName
		for _, s := range n.slices {
			if r := n.fronts.ObserveSlice(&s, true); len(r.Cuts) != 0 {
				t.Errorf("deleting slices cut %v", cut(r))
			} else if r.Gone != nil {
				gone = r.Gone
			}
		}
		if gone == nil || *gone != payments {
			t.Errorf("the breaker's front is gone, got %v", gone)
		}
	})
}

func TestFrontsTargetWhatTheFrontStillWithholds(t *testing.T) {
	n := newNode(t, gateInput(breaker.Closed, targetOf(2)))
	n.write(n.in)
	n.clk.Step(time.Second)
	res := n.write(gateInput(breaker.Open, targetOf(2)))
	ap := netip.MustParseAddrPort
	want := []flows.Target{{Key: "shop/payments/trip",
		Destinations: []netip.AddrPort{ap("10.96.0.10:9090"), ap("192.0.2.50:9090"), ap("203.0.113.7:9090"),
			ap("10.96.0.10:80"), ap("192.0.2.50:80"), ap("203.0.113.7:80")},
		NodePorts: []uint16{30080},
		Backends:  []netip.AddrPort{ap("10.0.0.1:9090"), ap("10.0.0.1:8080"), ap("10.0.0.2:9090"), ap("10.0.0.2:8080")},
	}}
	if diff := cmp.Diff(want, n.fronts.Targets(res.Cuts), cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}

	n.clk.Step(time.Second)
	n.write(gateInput(breaker.HalfOpen, targetOf(2)))
	got := n.fronts.Targets(res.Cuts)
	if len(got) != 1 || slices.Contains(got[0].Backends, ap("10.0.0.1:8080")) || len(got[0].Backends) != 2 {
		t.Errorf("the trial endpoint the front publishes again must be left alone: %+v", got)
	}

	other := paymentsService()
	other.Annotations[tripswitchv1alpha1.ClaimAnnotation] = "someone-else"
	n.fronts.ObserveService(other, false)
	if got := n.fronts.Targets(res.Cuts); len(got) != 0 {
		t.Errorf("a front another breaker claims is not cut: %+v", got)
	}
	n.fronts.ObserveService(other, true)
	if got := n.fronts.Targets(res.Cuts); len(got) != 0 {
		t.Errorf("a front whose Service is unknown is not cut: %+v", got)
	}
}
