package envtest_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/testcerts"
)

// newTLSBackend starts a backend that answers HTTPS with cert, on its own loopback address.
func newTLSBackend(cert tls.Certificate) *backend {
	GinkgoHelper()
	b := &backend{n: int(nextHost.Add(1)%250) + 2}
	l, err := tls.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", b.n), &tls.Config{Certificates: []tls.Certificate{cert}})
	Expect(err).NotTo(HaveOccurred())
	b.port = int32(l.Addr().(*net.TCPAddr).Port)
	b.serve(l)
	return b
}

var _ = Describe("Hostile and broken endpoints", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	Context("with a manager running", func() {
		BeforeEach(func() { startManager(managerOptions{}) })

		It("probes an HTTPS target signed by a private CA, and keeps the last good configuration when a CA bundle does not parse",
			func(ctx SpecContext) {
				b := newTLSBackend(envtestCA.Issue(time.Now().Add(time.Hour), "ledger.internal"))
				createTarget(ctx, ns, "ledger-backend", b.port, b)
				createBreaker(ctx, ns, "ledger", fmt.Sprintf(`{target: {service: ledger-backend, port: http},
					probe: {interval: 100ms, timeout: 100ms, http: {scheme: HTTPS, tls: {caBundle: %q, serverName: ledger.internal}}},
					trip: {consecutiveFailures: 2}}`, envtestCA.PEM))
				Eventually(status(ctx, ns, "ledger")).Should(And(
					HaveField("LastProbe.Message", "HTTP 200"), HaveField("State", tripswitchv1alpha1.StateClosed),
					condition(tripswitchv1alpha1.ConditionReady, "Status", metav1.ConditionTrue)))
				Eventually(front(ctx, ns, "ledger")).Should(HaveField("Ready", 1))

				// PEM-shaped, so admission takes it, but its block is no certificate.
				patchBreaker(ctx, ns, "ledger", func(cb *tripswitchv1alpha1.CircuitBreaker) {
					cb.Spec.Probe.HTTP.TLS.CABundle = testcerts.NotParsing
				})
				Eventually(status(ctx, ns, "ledger")).Should(condition(tripswitchv1alpha1.ConditionStalled,
					"Reason", tripswitchv1alpha1.ReasonInvalidSpec,
					"Message", And(ContainSubstring("caBundle: PEM block 1"), ContainSubstring("keeps its last good configuration"))))
				hits := b.hits.Load()
				Consistently(status(ctx, ns, "ledger")).Should(And(
					HaveField("State", tripswitchv1alpha1.StateClosed), HaveField("LastProbe.Message", "HTTP 200")),
					"the last good CA bundle keeps probing, and the target stays trusted")
				Expect(b.hits.Load()).To(BeNumerically(">", hits+5))
				Expect(front(ctx, ns, "ledger")(Default)).To(HaveField("Ready", 1))

				patchBreaker(ctx, ns, "ledger", func(cb *tripswitchv1alpha1.CircuitBreaker) {
					cb.Spec.Probe.HTTP.TLS.CABundle = envtestCA.PEM
				})
				Eventually(status(ctx, ns, "ledger")).Should(And(
					condition(tripswitchv1alpha1.ConditionReady, "Status", metav1.ConditionTrue),
					Not(condition(tripswitchv1alpha1.ConditionStalled))))
			})

		It("trips on a pod that answers 200 OK and then sends headers forever, and names the limit", func(ctx SpecContext) {
			bomb := newBackend()
			bomb.headerBomb.Store(true)
			createTarget(ctx, ns, "vault-backend", bomb.port, bomb)
			createBreaker(ctx, ns, "vault", `{target: {service: vault-backend, port: http},
				probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 3}}`)
			Eventually(status(ctx, ns, "vault")).Should(And(
				HaveField("State", tripswitchv1alpha1.StateOpen),
				HaveField("LastProbe.Outcome", tripswitchv1alpha1.OutcomeFailure),
				HaveField("LastProbe.Message", "response status line and headers exceed 32 KiB")))
		})
	})

	It("never probes a ready endpoint outside --probe-allowed-cidrs, and says so without tripping", func(ctx SpecContext) {
		bs := newBackends(2)
		pod, kubelet := bs[0], bs[1]
		// Only the pod's address is allowed; the other one stands for a node's kubelet, which
		// somebody with rights to write EndpointSlices added to the target's slice.
		startManager(managerOptions{probeAllowedCIDRs: []netip.Prefix{netip.MustParsePrefix(pod.address() + "/32")}})
		kubelet.failing.Store(true)
		createTarget(ctx, ns, "orders-backend", pod.port, pod, kubelet)
		createBreaker(ctx, ns, "orders", `{target: {service: orders-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 1}}`)

		Eventually(status(ctx, ns, "orders")).Should(condition(tripswitchv1alpha1.ConditionEndpointsNotProbed,
			"Status", metav1.ConditionTrue, "Reason", tripswitchv1alpha1.ReasonOutsideProbeAllowedCIDRs,
			"Message", HavePrefix(fmt.Sprintf("1 of the target's 2 ready endpoints are outside the manager's "+
				"--probe-allowed-cidrs, so they are not probed and count as if not ready: %s:%d.", kubelet.address(), kubelet.port))))
		Eventually(pod.hits.Load).Should(BeNumerically(">=", 5))
		Consistently(status(ctx, ns, "orders")).Should(And(
			HaveField("State", tripswitchv1alpha1.StateClosed),
			condition(tripswitchv1alpha1.ConditionReady, "Status", metav1.ConditionTrue)),
			"a failing foreign address must not trip a healthy target")
		Expect(kubelet.hits.Load()).To(BeZero(), "an address outside the allowed CIDRs is never dialled")
		Expect(front(ctx, ns, "orders")(Default)).To(HaveField("Ready", 2),
			"the gate publishes what the target's slices publish, as the target Service does")

		// Once the slice no longer lists it, the condition goes.
		writeSlice(ctx, ns, "orders-backend", "orders-backend-abcde", pod.port, pod.address())
		Eventually(status(ctx, ns, "orders")).ShouldNot(condition(tripswitchv1alpha1.ConditionEndpointsNotProbed))
	})
})
