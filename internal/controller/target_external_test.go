package controller

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/external"
)

// TestRefuser: what an external target's answers may never publish, on an IPv4-only cluster
// before and after its front exists, and on a dual-stack one.
func TestRefuser(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	serviceCIDR := func(cidrs ...string) client.Object {
		return &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: cidrs}}
	}
	front := func(ips ...string) client.Object {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "stripe"},
			Spec: corev1.ServiceSpec{ClusterIP: ips[0], ClusterIPs: ips}}
	}
	cb := &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "stripe"},
		Spec: tripswitchv1alpha1.CircuitBreakerSpec{Target: tripswitchv1alpha1.TargetReference{
			External: &tripswitchv1alpha1.ExternalTarget{Host: "api.stripe.com", Port: 443}}}}
	tests := []struct {
		name    string
		objects []client.Object
		// want maps an address to whether it is refused.
		want map[string]bool
	}{{
		name:    "an IPv4 cluster before the front exists",
		objects: []client.Object{serviceCIDR("10.96.0.0/16")},
		want: map[string]bool{"203.0.113.7": false, "10.96.0.10": true, "2001:db8::7": true, "127.0.0.1": true,
			"169.254.169.254": true, "224.0.0.1": true, "0.0.0.0": true, "192.168.1.5": true},
	}, {
		name:    "an IPv4-only front on a dual-stack cluster",
		objects: []client.Object{serviceCIDR("10.96.0.0/16", "fd00:96::/108"), front("10.96.0.10")},
		want:    map[string]bool{"203.0.113.7": false, "2001:db8::7": true, "fd00:96::10": true, "10.96.0.10": true},
	}, {
		name:    "a dual-stack front",
		objects: []client.Object{serviceCIDR("10.96.0.0/16", "fd00:96::/108"), front("10.96.0.10", "fd00:96::10")},
		want:    map[string]bool{"203.0.113.7": false, "2001:db8::7": false, "fd00:96::10": true},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			r := &CircuitBreakerReconciler{
				Client:            fake.NewClientBuilder().WithScheme(scheme).WithObjects(tt.objects...).Build(),
				ProbeAllowedCIDRs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
				External:          ExternalTargets{Refused: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}},
			}
			st := &reconcileState{cb: cb, spec: cb.Resolve()}
			refuse, err := r.refuser(context.Background(), st)
			g.Expect(err).NotTo(HaveOccurred())
			for addr, refused := range tt.want {
				why := refuse(netip.MustParseAddr(addr))
				g.Expect(why != "").To(Equal(refused), "%s: %q", addr, why)
			}
		})
	}
}

// failingResolver fails every lookup, as DNS does in an outage.
type failingResolver struct{}

func (failingResolver) Lookup(context.Context, string) (external.Answer, error) {
	return external.Answer{}, errors.New("SERVFAIL")
}

// answeringResolver answers with fixed addresses.
type answeringResolver []netip.Addr

func (a answeringResolver) Lookup(context.Context, string) (external.Answer, error) {
	return external.Answer{Addresses: a, TTL: time.Minute}, nil
}

// A leader that published an external target's addresses and died before it wrote them to
// status: the next leader, with DNS failing, must not empty the front.
func TestANewLeaderWithoutAddressesKeepsTheFront(t *testing.T) {
	cb := &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments"},
		Spec: tripswitchv1alpha1.CircuitBreakerSpec{Target: tripswitchv1alpha1.TargetReference{
			External: &tripswitchv1alpha1.ExternalTarget{Host: "api.example.test", Port: 443}},
			Probe: tripswitchv1alpha1.ProbeSpec{TCP: &tripswitchv1alpha1.TCPProbe{}}}}
	f := newFixture(t, cb)
	allowed, err := external.ParseHostPatterns("api.example.test")
	if err != nil {
		t.Fatal(err)
	}
	withResolver := func(r external.Resolver) {
		tracker := external.NewTracker(r, f.clk, time.Second, func(types.NamespacedName) {}, nil)
		t.Cleanup(tracker.Stop)
		f.r.External = ExternalTargets{Tracker: tracker, Allowed: allowed, ClusterDomain: "cluster.local"}
	}

	withResolver(answeringResolver{netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2")})
	NewWithT(t).Eventually(func() int {
		f.reconcile(t)
		var list discoveryv1.EndpointSliceList
		_ = f.c.List(context.Background(), &list, client.MatchingLabels{discoveryv1.LabelServiceName: "payments"})
		return readyEndpoints(list.Items, "")
	}).Should(Equal(2), "the first leader publishes both addresses")

	// The status write was lost with the leader; the next one's DNS fails.
	f.edit(t, func(*tripswitchv1alpha1.CircuitBreaker) {})
	got := &tripswitchv1alpha1.CircuitBreaker{}
	if err := f.c.Get(context.Background(), client.ObjectKeyFromObject(cb), got); err != nil {
		t.Fatal(err)
	}
	got.Status.External = nil
	if err := f.c.Status().Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	withResolver(failingResolver{})
	for range 3 {
		after := f.reconcile(t)
		if n := f.readyFront(t); n != 2 {
			t.Fatalf("the new leader left %d ready endpoints on the front, want the 2 it found", n)
		}
		if c := meta.FindStatusCondition(after.Status.Conditions, tripswitchv1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionFalse {
			t.Fatalf("Ready = %+v, want False while the host was never resolved", c)
		}
	}
}
