package envtest_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/test/apifault"
)

// allFrontEndpoints counts the ready endpoints of every slice of a Service, whoever manages
// it: what kube-proxy would route to.
func allFrontEndpoints(ctx context.Context, ns, name string) func(Gomega) int {
	return func(g Gomega) int {
		var list discoveryv1.EndpointSliceList
		g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{
			discoveryv1.LabelServiceName: name})).To(Succeed())
		return countEndpoints(list.Items).Ready
	}
}

// service reads a Service.
func service(ctx context.Context, ns, name string) func(Gomega) *corev1.Service {
	return func(g Gomega) *corev1.Service {
		svc := &corev1.Service{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, svc)).To(Succeed())
		return svc
	}
}

// gone says whether a breaker no longer exists.
func gone(ctx context.Context, ns, name string) func() bool {
	return func() bool {
		return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &tripswitchv1alpha1.CircuitBreaker{}))
	}
}

// writeManagedSlice writes a slice for service as another controller would, such as
// Kubernetes' own EndpointSlice controller once a front Service has a selector again.
func writeManagedSlice(ctx context.Context, ns, service, name, managedBy string, port int32, addrs ...string) {
	GinkgoHelper()
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			discoveryv1.LabelServiceName: service, discoveryv1.LabelManagedBy: managedBy}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, a := range addrs {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)}})
	}
	Expect(k8sClient.Create(ctx, slice)).To(Succeed())
}

// condition finds a condition of a breaker's status by type.
func condition(condType string, matchers ...any) OmegaMatcher {
	all := []OmegaMatcher{HaveField("Type", condType)}
	for i := 0; i+1 < len(matchers); i += 2 {
		all = append(all, HaveField(matchers[i].(string), matchers[i+1]))
	}
	return HaveField("Conditions", ContainElement(And(all...)))
}

var _ = Describe("Fail-safe: tripswitch is never the outage", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	Context("with a manager running", func() {
		BeforeEach(func() { startManager(managerOptions{}) })

		It("ends HalfOpen when the probe is edited while a trial hangs in flight", func(ctx SpecContext) {
			b := newBackend()
			createTarget(ctx, ns, "ledger-backend", b.port, b)
			b.failing.Store(true)
			createBreaker(ctx, ns, "ledger", `{target: {service: ledger-backend, port: http},
				probe: {interval: 3s, timeout: 2s, http: {path: /healthz}}, trip: {consecutiveFailures: 1},
				recovery: {openDuration: 1s}}`)
			Eventually(status(ctx, ns, "ledger")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
			b.failing.Store(false)
			b.hanging.Store(true)
			Eventually(status(ctx, ns, "ledger")).Should(HaveField("State", tripswitchv1alpha1.StateHalfOpen))
			Eventually(b.inflight.Load).Should(BeNumerically(">=", 1), "the trial hangs in flight")

			patchBreaker(ctx, ns, "ledger", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Probe.HTTP.Path = "/ready" })
			b.hanging.Store(false)
			Eventually(status(ctx, ns, "ledger"), 10*time.Second).Should(And(
				HaveField("State", tripswitchv1alpha1.StateClosed), HaveField("Reason", "TrialSucceeded")),
				"the edited probe's trial decides; the old one's slot was given back")
			Eventually(front(ctx, ns, "ledger")).Should(HaveField("Ready", 1))
		})

		It("keeps its front when another breaker annotates it, and hands it back when deleted", func(ctx SpecContext) {
			bs := newBackends(2)
			createTarget(ctx, ns, "wallet-backend", bs[0].port, bs[0])
			createTarget(ctx, ns, "promo-backend", bs[1].port, bs[1])
			createBreaker(ctx, ns, "wallet", `{target: {service: wallet-backend, port: http}, probe: {interval: 100ms, timeout: 100ms}}`)
			Eventually(front(ctx, ns, "wallet")).Should(HaveField("Ready", 1))
			createBreaker(ctx, ns, "promo", `{target: {service: promo-backend, port: http}, probe: {interval: 100ms, timeout: 100ms},
				gate: {endpointSlice: {}, annotations: [{apiVersion: v1, kind: Service, name: wallet}]}}`)
			Eventually(func(g Gomega) map[string]string { return service(ctx, ns, "wallet")(g).Annotations }).Should(And(
				HaveKeyWithValue(tripswitchv1alpha1.BreakerAnnotation, "promo"),
				HaveKeyWithValue(tripswitchv1alpha1.StateAnnotation, "Closed")), "promo's annotation gate writes on wallet's front")
			Consistently(status(ctx, ns, "wallet"), 2*time.Second).Should(
				condition(tripswitchv1alpha1.ConditionReady, "Status", metav1.ConditionTrue), "wallet keeps its claim")

			slice := &discoveryv1.EndpointSlice{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "wallet-tripswitch-0"}, slice)).To(Succeed())
			Expect(slice.OwnerReferences).To(ConsistOf(And(HaveField("Kind", "Service"), HaveField("Name", "wallet"))),
				"the slices belong to the front Service, so no breaker's disappearance can garbage-collect them")

			Expect(k8sClient.Delete(ctx, breakerFromYAML(ns, "wallet", `{}`))).To(Succeed())
			Eventually(func(g Gomega) map[string]string { return service(ctx, ns, "wallet")(g).Spec.Selector }).Should(
				Equal(map[string]string{"app": "wallet-backend"}))
			writeManagedSlice(ctx, ns, "wallet", "wallet-kube", "endpointslice-controller.k8s.io", bs[0].port, bs[0].address())
			Eventually(gone(ctx, ns, "wallet")).Should(BeTrue())
			Expect(front(ctx, ns, "wallet")(Default).Slices).To(BeZero())
		})

		It("leaves a last copy that publishes the target's ready endpoints when the target has no selector", func(ctx SpecContext) {
			b := newBackend()
			Expect(k8sClient.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "vault-backend"},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}})).To(Succeed())
			writeSlice(ctx, ns, "vault-backend", "vault-backend-manual", b.port, b.address())
			b.failing.Store(true)
			createBreaker(ctx, ns, "vault", `{target: {service: vault-backend, port: http},
				probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 2}, recovery: {openDuration: 1h}}`)
			Eventually(front(ctx, ns, "vault")).Should(And(HaveField("Slices", 1), HaveField("Ready", 0)))
			Eventually(status(ctx, ns, "vault")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))

			Expect(k8sClient.Delete(ctx, breakerFromYAML(ns, "vault", `{}`))).To(Succeed())
			Eventually(gone(ctx, ns, "vault")).Should(BeTrue())
			Eventually(allFrontEndpoints(ctx, ns, "vault")).Should(Equal(1),
				"nobody can take the front over, so the copy left behind mirrors the target as if Closed")
			Expect(service(ctx, ns, "vault")(Default).Annotations).NotTo(HaveKey(tripswitchv1alpha1.ClaimAnnotation))

			// A breaker that adopts the front again takes the last copy over in place.
			b.failing.Store(false)
			createBreaker(ctx, ns, "vault", `{target: {service: vault-backend, port: http}, probe: {interval: 100ms, timeout: 100ms}}`)
			Eventually(front(ctx, ns, "vault")).Should(Equal(frontEndpoints{Ready: 1, Serving: 1, All: 1, Slices: 1}))
			Expect(allFrontEndpoints(ctx, ns, "vault")(Default)).To(Equal(1), "no copy is left beside the breaker's own")
		})

		It("keeps its slices on a handed-back front until Kubernetes publishes ready endpoints", func(ctx SpecContext) {
			b := newBackend()
			createTarget(ctx, ns, "catalog-backend", b.port, b)
			createBreaker(ctx, ns, "catalog", `{target: {service: catalog-backend, port: http}, probe: {interval: 100ms, timeout: 100ms}}`)
			Eventually(front(ctx, ns, "catalog")).Should(HaveField("Ready", 1))

			Expect(k8sClient.Delete(ctx, breakerFromYAML(ns, "catalog", `{}`))).To(Succeed())
			Eventually(func(g Gomega) map[string]string { return service(ctx, ns, "catalog")(g).Spec.Selector }).Should(
				Equal(map[string]string{"app": "catalog-backend"}))
			Consistently(allFrontEndpoints(ctx, ns, "catalog"), 2*time.Second).Should(Equal(1),
				"until Kubernetes' EndpointSlice controller publishes, tripswitch's slices carry the traffic")
			Expect(gone(ctx, ns, "catalog")()).To(BeFalse(), "the finalizer waits")
			Expect(status(ctx, ns, "catalog")(Default)).To(condition(tripswitchv1alpha1.ConditionReconciling,
				"Reason", tripswitchv1alpha1.ReasonHandingBack))

			writeManagedSlice(ctx, ns, "catalog", "catalog-kube", "endpointslice-controller.k8s.io", b.port, b.address())
			Eventually(gone(ctx, ns, "catalog")).Should(BeTrue())
			Expect(front(ctx, ns, "catalog")(Default).Slices).To(BeZero())
			Expect(allFrontEndpoints(ctx, ns, "catalog")(Default)).To(Equal(1))
			Expect(service(ctx, ns, "catalog")(Default).Annotations).NotTo(HaveKey(tripswitchv1alpha1.ClaimAnnotation))
		})

		It("hands the old front back when gate.endpointSlice.service is renamed, and when the gate is removed", func(ctx SpecContext) {
			b := newBackend()
			createTarget(ctx, ns, "maps-backend", b.port, b)
			createBreaker(ctx, ns, "maps", `{target: {service: maps-backend, port: http}, probe: {interval: 100ms, timeout: 100ms},
				gate: {endpointSlice: {service: maps-v1}}}`)
			Eventually(front(ctx, ns, "maps-v1")).Should(HaveField("Ready", 1))

			patchBreaker(ctx, ns, "maps", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Gate.EndpointSlice.Service = "maps-v2" })
			Eventually(front(ctx, ns, "maps-v2")).Should(HaveField("Ready", 1))
			Eventually(func(g Gomega) map[string]string { return service(ctx, ns, "maps-v1")(g).Spec.Selector }).Should(
				Equal(map[string]string{"app": "maps-backend"}), "the old front goes back to Kubernetes")
			Consistently(allFrontEndpoints(ctx, ns, "maps-v1"), time.Second).Should(Equal(1))
			writeManagedSlice(ctx, ns, "maps-v1", "maps-v1-kube", "endpointslice-controller.k8s.io", b.port, b.address())
			Eventually(front(ctx, ns, "maps-v1")).Should(HaveField("Slices", 0))
			Eventually(func(g Gomega) map[string]string { return service(ctx, ns, "maps-v1")(g).Annotations }).ShouldNot(
				HaveKey(tripswitchv1alpha1.ClaimAnnotation), "the claim goes right after the slices")
			Eventually(status(ctx, ns, "maps")).Should(And(HaveField("FrontService", "maps-v2"),
				condition(tripswitchv1alpha1.ConditionReady, "Status", metav1.ConditionTrue)))

			patchBreaker(ctx, ns, "maps", func(cb *tripswitchv1alpha1.CircuitBreaker) {
				cb.Spec.Gate = &tripswitchv1alpha1.GateSpec{Annotations: []tripswitchv1alpha1.AnnotatedObjectReference{
					{APIVersion: "v1", Kind: "Service", Name: "maps-backend"}}}
			})
			Eventually(func(g Gomega) map[string]string { return service(ctx, ns, "maps-v2")(g).Spec.Selector }).Should(
				Equal(map[string]string{"app": "maps-backend"}))
			Consistently(allFrontEndpoints(ctx, ns, "maps-v2"), time.Second).Should(Equal(1))
			writeManagedSlice(ctx, ns, "maps-v2", "maps-v2-kube", "endpointslice-controller.k8s.io", b.port, b.address())
			Eventually(front(ctx, ns, "maps-v2")).Should(HaveField("Slices", 0))
		})

		It("refuses a front Service whose EndpointSlices somebody else publishes", func(ctx SpecContext) {
			b := newBackend()
			createTarget(ctx, ns, "legacy-backend", b.port, b)
			Expect(k8sClient.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "legacy"},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}})).To(Succeed())
			writeManagedSlice(ctx, ns, "legacy", "legacy-other", "mirror.example.com", b.port, b.address())
			createBreaker(ctx, ns, "legacy-cb", `{target: {service: legacy-backend, port: http},
				probe: {interval: 100ms, timeout: 100ms}, gate: {endpointSlice: {service: legacy}}}`)
			Eventually(status(ctx, ns, "legacy-cb")).Should(And(
				condition(tripswitchv1alpha1.ConditionStalled, "Reason", tripswitchv1alpha1.ReasonFrontServiceHasForeignEndpointSlices,
					"Message", ContainSubstring("mirror.example.com")),
				condition(tripswitchv1alpha1.ConditionReady, "Status", metav1.ConditionFalse)))
			Consistently(front(ctx, ns, "legacy"), time.Second).Should(HaveField("Slices", 0))
			Expect(service(ctx, ns, "legacy")(Default).Annotations).NotTo(HaveKey(tripswitchv1alpha1.ClaimAnnotation))
		})

		It("never adopts the API server's own Service", func(ctx SpecContext) {
			Eventually(service(ctx, "default", "kubernetes")).ShouldNot(BeNil())
			b := newBackend()
			createTarget(ctx, "default", "apiserver-guard-backend", b.port, b)
			DeferCleanup(func(ctx SpecContext) {
				Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, breakerFromYAML("default", "apiserver-guard", `{}`)))).To(Succeed())
				Eventually(gone(ctx, "default", "apiserver-guard")).Should(BeTrue())
				Expect(k8sClient.Delete(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default",
					Name: "apiserver-guard-backend"}})).To(Succeed())
			})
			createBreaker(ctx, "default", "apiserver-guard", `{target: {service: apiserver-guard-backend, port: http},
				gate: {endpointSlice: {service: kubernetes}}}`)
			Eventually(status(ctx, "default", "apiserver-guard")).Should(
				condition(tripswitchv1alpha1.ConditionStalled, "Reason", tripswitchv1alpha1.ReasonFrontServiceReserved))
			Expect(service(ctx, "default", "kubernetes")(Default).Annotations).NotTo(HaveKey(tripswitchv1alpha1.ClaimAnnotation))
			Expect(front(ctx, "default", "kubernetes")(Default).Slices).To(BeZero())
		})

		It("gates a breaker whose name is longer than a label value may be", func(ctx SpecContext) {
			b := newBackend()
			createTarget(ctx, ns, "reports-backend", b.port, b)
			name := "reports-" + strings.Repeat("quarterly-", 7) + "eu"
			Expect(len(name)).To(BeNumerically(">", 63))
			createBreaker(ctx, ns, name, `{target: {service: reports-backend, port: http}, probe: {interval: 100ms, timeout: 100ms},
				gate: {endpointSlice: {service: reports}}}`)
			Eventually(front(ctx, ns, "reports")).Should(HaveField("Ready", 1))
			b.failing.Store(true)
			Eventually(front(ctx, ns, "reports")).Should(And(HaveField("Ready", 0), HaveField("Slices", 1)))
		})
	})

	It("deletes its slices of a handed-back front once the hand-back timeout has passed", func(ctx SpecContext) {
		startManager(managerOptions{handBackTimeout: 2 * time.Second})
		b := newBackend()
		createTarget(ctx, ns, "news-backend", b.port, b)
		createBreaker(ctx, ns, "news", `{target: {service: news-backend, port: http}, probe: {interval: 100ms, timeout: 100ms}}`)
		Eventually(front(ctx, ns, "news")).Should(HaveField("Ready", 1))
		deleted := time.Now()
		Expect(k8sClient.Delete(ctx, breakerFromYAML(ns, "news", `{}`))).To(Succeed())
		Eventually(gone(ctx, ns, "news"), 10*time.Second).Should(BeTrue())
		Expect(time.Since(deleted)).To(BeNumerically(">=", time.Second), "it waited for Kubernetes first")
		Expect(front(ctx, ns, "news")(Default).Slices).To(BeZero())
	})

	It("converges the gate within seconds once the API server accepts writes again", func(ctx SpecContext) {
		proxy, err := apifault.Start(cfg)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(proxy.Close)
		startManager(managerOptions{config: proxy.Config()})
		b := newBackend()
		createTarget(ctx, ns, "stock-backend", b.port, b)
		createBreaker(ctx, ns, "stock", `{target: {service: stock-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 2}, recovery: {openDuration: 1h}}`)
		Eventually(front(ctx, ns, "stock")).Should(HaveField("Ready", 1))

		// TRIPSWITCH_FAILING_WRITES lengthens the outage, to measure what the README reports.
		outage := 30 * time.Second
		if d, err := time.ParseDuration(os.Getenv("TRIPSWITCH_FAILING_WRITES")); err == nil {
			outage = d
		}
		proxy.BreakWrites("endpointslices")
		b.failing.Store(true)
		Eventually(status(ctx, ns, "stock")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
		Consistently(front(ctx, ns, "stock"), outage).Should(HaveField("Ready", 1), "the slice writes really fail")
		Expect(proxy.Refused()).To(BeNumerically(">", 3), "the manager kept retrying")

		healed := time.Now()
		proxy.Heal()
		Eventually(front(ctx, ns, "stock"), outage+30*time.Second, 10*time.Millisecond).Should(HaveField("Ready", 0))
		lag := time.Since(healed)
		fmt.Fprintf(GinkgoWriter, "the gate converged %s after the API server healed, after %s of failing slice writes (%d refused)\n",
			lag, outage, proxy.Refused())
		Expect(lag).To(BeNumerically("<", 5*time.Second))
	})
})
