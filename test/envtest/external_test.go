package envtest_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/testdns"
)

// providerHost is the third-party API the stories protect; its certificate, from the suite's
// test CA, names only this host, so a probe that did not send it as SNI would fail.
const providerHost = "api.example.test"

// newProvider starts n HTTPS backends that stand for one provider's addresses, and a DNS
// server that answers the host with them (as 192.0.2.N, which the manager's dialer maps to
// the loopback servers).
func newProvider(n int) ([]*backend, *testdns.Server) {
	GinkgoHelper()
	cert := envtestCA.Issue(time.Now().Add(time.Hour), providerHost)
	bs := newBackendsOn(n, func(l net.Listener) net.Listener {
		return tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	})
	server := testdns.Start(GinkgoT())
	records := make([]testdns.Record, len(bs))
	for i, b := range bs {
		records[i] = testdns.A(b.address(), 5*time.Second)
	}
	server.Set(providerHost, records...)
	return bs, server
}

// externalBreaker is a breaker for the provider's HTTPS API on the backends' port.
func externalBreaker(ctx context.Context, ns, name string, port int32) {
	GinkgoHelper()
	createBreaker(ctx, ns, name, fmt.Sprintf(`{target: {external: {host: %s, port: %d}},
		probe: {interval: 200ms, timeout: 150ms, http: {scheme: HTTPS, tls: {caBundle: %q}}},
		trip: {consecutiveFailures: 2}, recovery: {openDuration: 1s}}`, providerHost, port, envtestCA.PEM))
}

// resolvedReason is the reason of the Resolved condition, or "".
func resolvedReason(st tripswitchv1alpha1.CircuitBreakerStatus) string {
	if c := meta.FindStatusCondition(st.Conditions, tripswitchv1alpha1.ConditionResolved); c != nil {
		return c.Reason
	}
	return ""
}

func externalAddresses(st tripswitchv1alpha1.CircuitBreakerStatus) []string {
	if st.External == nil {
		return nil
	}
	out := make([]string, len(st.External.Addresses))
	for i, a := range st.External.Addresses {
		out[i] = a.Address
	}
	return out
}

var _ = Describe("An external target", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("publishes the host's addresses, trips when the provider fails, and recovers, with the provider's certificate checked by name", func(ctx SpecContext) {
		bs, server := newProvider(2)
		startManager(managerOptions{externalHosts: "*.example.test", dnsServer: server.Addr()})
		externalBreaker(ctx, ns, "provider", bs[0].port)

		By("resolving the host and publishing both addresses behind the front")
		Eventually(front(ctx, ns, "provider")).Should(Equal(frontEndpoints{Ready: 2, Serving: 2, All: 2, Slices: 1}))
		// The slices are written before status, in the same reconcile.
		Eventually(status(ctx, ns, "provider")).Should(WithTransform(externalAddresses, ConsistOf(bs[0].address(), bs[1].address())))
		st := status(ctx, ns, "provider")(Default)
		Expect(st.Target).To(Equal(fmt.Sprintf("%s:%d", providerHost, bs[0].port)))
		Expect(resolvedReason(st)).To(Equal(tripswitchv1alpha1.ReasonResolved))
		Expect(st.External.Server).To(Equal(server.Addr()))
		Expect(st.External.ClusterName).To(Equal("provider." + ns + ".svc.cluster.local"))
		Expect(st.External.DNSRewrite).To(ContainSubstring("name exact api.example.test. provider." + ns + ".svc.cluster.local."))
		svc := &corev1.Service{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "provider"}, svc)).To(Succeed())
		Expect(svc.Spec.Selector).To(BeEmpty())
		Expect(svc.Spec.Ports).To(HaveLen(1))
		Expect(svc.Spec.Ports[0].Port).To(Equal(bs[0].port))
		// Probes reach both addresses: a request arrives only after the probe sent the host as
		// SNI and verified the certificate, which names nothing but the host. (status.lastProbe
		// would wait for the counter refresh.)
		for _, b := range bs {
			Eventually(b.hits.Load).Should(BeNumerically(">", 0))
		}

		By("tripping when the provider answers 503 at both addresses")
		for _, b := range bs {
			b.failing.Store(true)
		}
		Eventually(func(g Gomega) tripswitchv1alpha1.State { return status(ctx, ns, "provider")(g).State }).
			Should(Equal(tripswitchv1alpha1.StateOpen))
		Eventually(front(ctx, ns, "provider")).Should(HaveField("Ready", 0))

		By("closing again once the provider heals")
		for _, b := range bs {
			b.failing.Store(false)
		}
		Eventually(func(g Gomega) tripswitchv1alpha1.State { return status(ctx, ns, "provider")(g).State }).
			Should(Equal(tripswitchv1alpha1.StateClosed))
		Eventually(front(ctx, ns, "provider")).Should(HaveField("Ready", 2))
	})

	It("keeps the last good addresses through DNS failures, a manager restart and a rewritten answer", func(ctx SpecContext) {
		bs, server := newProvider(2)
		opts := managerOptions{externalHosts: providerHost, dnsServer: server.Addr()}
		stop := startManager(opts)
		externalBreaker(ctx, ns, "provider", bs[0].port)
		Eventually(front(ctx, ns, "provider")).Should(HaveField("Ready", 2))
		// (A leader that dies before this status write is TestANewLeaderWithoutAddressesKeepsTheFront.)
		Eventually(status(ctx, ns, "provider")).Should(WithTransform(externalAddresses, HaveLen(2)))

		By("a manager that starts while DNS fails starts from the addresses in status, and says why it keeps them")
		server.Fail(providerHost, dns.RcodeServerFailure)
		stop()
		startManager(opts)
		Consistently(front(ctx, ns, "provider"), 1500*time.Millisecond).Should(HaveField("Ready", 2))
		Eventually(func(g Gomega) string {
			c := meta.FindStatusCondition(status(ctx, ns, "provider")(g).Conditions, tripswitchv1alpha1.ConditionResolved)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Reason).To(Equal(tripswitchv1alpha1.ReasonResolutionFailed))
			return c.Message
		}).Should(And(ContainSubstring("SERVFAIL"), ContainSubstring("the last good 2 addresses stay published")))
		Expect(externalAddresses(status(ctx, ns, "provider")(Default))).To(HaveLen(2))

		By("an answer with the front's own ClusterIP (the cluster DNS already rewrites the host) is refused")
		svc := &corev1.Service{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "provider"}, svc)).To(Succeed())
		Expect(netip.MustParseAddr(svc.Spec.ClusterIP).IsValid()).To(BeTrue())
		server.Set(providerHost, testdns.A(svc.Spec.ClusterIP, 5*time.Second))
		Eventually(status(ctx, ns, "provider")).Should(WithTransform(resolvedReason, Equal(tripswitchv1alpha1.ReasonAddressesRefused)))
		Expect(status(ctx, ns, "provider")(Default).External.Refused).To(Equal([]string{svc.Spec.ClusterIP}))
		Consistently(front(ctx, ns, "provider"), time.Second).Should(HaveField("Ready", 2))

		By("a new answer replaces nothing at once: the old addresses stay for their retention")
		server.Set(providerHost, testdns.A(bs[0].address(), 5*time.Second))
		Eventually(status(ctx, ns, "provider")).Should(WithTransform(resolvedReason, Equal(tripswitchv1alpha1.ReasonResolved)))
		Consistently(front(ctx, ns, "provider"), time.Second).Should(HaveField("Ready", 2))
	})

	It("is refused when the manager does not allow the host, and the manager never resolves it", func(ctx SpecContext) {
		bs, server := newProvider(1)
		startManager(managerOptions{externalHosts: "api.other.test", dnsServer: server.Addr()})
		externalBreaker(ctx, ns, "provider", bs[0].port)
		Eventually(func(g Gomega) *metav1.Condition {
			return meta.FindStatusCondition(status(ctx, ns, "provider")(g).Conditions, tripswitchv1alpha1.ConditionStalled)
		}).Should(And(Not(BeNil()), HaveField("Reason", tripswitchv1alpha1.ReasonExternalHostNotAllowed),
			HaveField("Message", ContainSubstring("allowed: api.other.test"))))
		Expect(resolvedReason(status(ctx, ns, "provider")(Default))).To(Equal(tripswitchv1alpha1.ReasonExternalHostNotAllowed))
		Expect(server.Queries(providerHost, dns.TypeA)).To(BeZero())
		Expect(bs[0].hits.Load()).To(BeZero())
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "provider"}, &corev1.Service{})).NotTo(Succeed(),
			"no front Service is created for a refused host")
	})
})
