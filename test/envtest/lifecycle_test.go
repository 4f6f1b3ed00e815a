package envtest_test

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/cli"
)

// patchBreaker edits a breaker with a merge patch.
func patchBreaker(ctx SpecContext, ns, name string, edit func(*tripswitchv1alpha1.CircuitBreaker)) {
	GinkgoHelper()
	cb := &tripswitchv1alpha1.CircuitBreaker{}
	Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, cb)).To(Succeed())
	patch := client.MergeFrom(cb.DeepCopy())
	edit(cb)
	Expect(k8sClient.Patch(ctx, cb, patch)).To(Succeed())
}

var _ = Describe("A breaker's life", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	Context("with a manager running", func() {
		BeforeEach(func() { startManager(managerOptions{}) })

		It("publishes the fallback's endpoints while Open", func(ctx SpecContext) {
			bs := newBackends(2)
			createTarget(ctx, ns, "payments-backend", bs[0].port, bs[0])
			createTarget(ctx, ns, "payments-degraded", bs[1].port, bs[1])
			createBreaker(ctx, ns, "payments", `{target: {service: payments-backend, port: http},
				probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 2}, recovery: {openDuration: 1h},
				gate: {endpointSlice: {fallback: {service: payments-degraded}}}}`)
			Eventually(front(ctx, ns, "payments")).Should(HaveField("Ready", 1))
			bs[0].failing.Store(true)
			Eventually(func(g Gomega) []string {
				var list discoveryv1.EndpointSliceList
				g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{
					discoveryv1.LabelServiceName: "payments"})).To(Succeed())
				var addrs []string
				for _, s := range list.Items {
					for _, e := range s.Endpoints {
						if ptr.Deref(e.Conditions.Ready, true) {
							addrs = append(addrs, fmt.Sprintf("%s:%d", e.Addresses[0], *s.Ports[0].Port))
						}
					}
				}
				return addrs
			}).Should(Equal([]string{fmt.Sprintf("%s:%d", bs[1].address(), bs[1].port)}))
			Eventually(status(ctx, ns, "payments")).Should(And(HaveField("State", tripswitchv1alpha1.StateOpen),
				HaveField("TransitionMessage", MatchRegexp(`^HTTP 5[0-9][0-9] from %s:%d$`, regexp.QuoteMeta(bs[0].address()), bs[0].port))))
		})

		It("lets ForceOpen and ForceClosed pin the gate, and Observe never touch it", func(ctx SpecContext) {
			bs := newBackends(2)
			createTarget(ctx, ns, "cart-backend", bs[0].port, bs...)
			createBreaker(ctx, ns, "cart", `{target: {service: cart-backend, port: http},
				probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 2}, recovery: {openDuration: 1h}}`)
			Eventually(front(ctx, ns, "cart")).Should(HaveField("Ready", 2))

			patchBreaker(ctx, ns, "cart", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Mode = tripswitchv1alpha1.ModeForceOpen })
			Eventually(front(ctx, ns, "cart")).Should(HaveField("Ready", 0))
			Eventually(status(ctx, ns, "cart")).Should(And(HaveField("State", tripswitchv1alpha1.StateClosed),
				HaveField("GateState", tripswitchv1alpha1.StateOpen), HaveField("Reason", "Forced")))

			patchBreaker(ctx, ns, "cart", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Mode = tripswitchv1alpha1.ModeForceClosed })
			Eventually(front(ctx, ns, "cart")).Should(HaveField("Ready", 2))
			for _, b := range bs {
				b.failing.Store(true)
			}
			Eventually(status(ctx, ns, "cart")).Should(And(HaveField("State", tripswitchv1alpha1.StateOpen),
				HaveField("GateState", tripswitchv1alpha1.StateClosed)), "the machine runs on while the gate is pinned")
			Consistently(front(ctx, ns, "cart"), time.Second).Should(HaveField("Ready", 2))

			patchBreaker(ctx, ns, "cart", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Mode = tripswitchv1alpha1.ModeObserve })
			Consistently(front(ctx, ns, "cart"), time.Second).Should(HaveField("Ready", 2), "Observe never changes the slice")
			Expect(status(ctx, ns, "cart")(Default).State).To(Equal(tripswitchv1alpha1.StateOpen))

			patchBreaker(ctx, ns, "cart", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Mode = tripswitchv1alpha1.ModeAuto })
			Eventually(front(ctx, ns, "cart")).Should(HaveField("Ready", 0))
		})

		It("returns a forced mode to Auto at spec.modeUntil by itself, and leaves the spec alone", func(ctx SpecContext) {
			bs := newBackends(2)
			createTarget(ctx, ns, "basket-backend", bs[0].port, bs...)
			// A long refresh period: the end of the mode must not wait for a counter refresh.
			// Probes with room to spare: a loaded CI machine must not trip the healthy target, which
			// would keep the front empty past modeUntil for a reason this story is not about.
			createBreaker(ctx, ns, "basket", `{target: {service: basket-backend, port: http},
				probe: {interval: 200ms, timeout: 200ms}, trip: {consecutiveFailures: 3}}`)
			Eventually(front(ctx, ns, "basket")).Should(HaveField("Ready", 2))
			// The slices are written first and status just after, in the same reconcile: a read
			// right after the front filled can come before status.mode (it did on a cold CI run).
			Eventually(status(ctx, ns, "basket")).Should(HaveField("Mode", tripswitchv1alpha1.ModeAuto))

			// The plugin's own command forces it Open for five seconds, with the real clock; the
			// rest of the story is the manager's: Auto again at spec.modeUntil.
			var out, errOut bytes.Buffer
			Expect(cli.Execute(ctx, cli.Options{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut},
				Clock: clock.RealClock{}, Getenv: func(string) string { return "" }},
				[]string{"--kubeconfig", kubeconfigFile(), "-n", ns, "trip", "basket", "--for", "5s", "--yes"})).To(Equal(0), errOut.String())
			Expect(out.String()).To(HavePrefix("circuitbreaker.tripswitch.io/basket set to ForceOpen for 5s, until "))
			var forced tripswitchv1alpha1.CircuitBreaker
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "basket"}, &forced)).To(Succeed())
			Expect(forced.Spec.ModeUntil).NotTo(BeNil())
			until := *forced.Spec.ModeUntil
			Eventually(front(ctx, ns, "basket")).Should(HaveField("Ready", 0))
			Eventually(status(ctx, ns, "basket")).Should(HaveField("Mode", tripswitchv1alpha1.ModeForceOpen))
			Eventually(front(ctx, ns, "basket"), 10*time.Second, 20*time.Millisecond).Should(HaveField("Ready", 2))
			late := time.Since(until.Time)
			fmt.Fprintf(GinkgoWriter, "the front served again %s after modeUntil\n", late)
			// The last status write was the force, about 5 s before modeUntil, so the next counter
			// refresh (every 10 s here) would come 5 s or more after it: 3 s tells the two apart
			// with room for a loaded machine (20 and 28 ms measured here, idle and busy).
			Expect(late).To(BeNumerically("<", 3*time.Second), "at modeUntil, not at the next refresh")
			Eventually(status(ctx, ns, "basket")).Should(And(HaveField("Mode", tripswitchv1alpha1.ModeAuto),
				HaveField("GateState", tripswitchv1alpha1.StateClosed)))
			var cb tripswitchv1alpha1.CircuitBreaker
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "basket"}, &cb)).To(Succeed())
			Expect(cb.Spec.Mode).To(Equal(tripswitchv1alpha1.ModeForceOpen), "the spec stays as written")
		})

		It("closes once when the reset annotation gets a new value", func(ctx SpecContext) {
			b := newBackend()
			createTarget(ctx, ns, "auth-backend", b.port, b)
			b.failing.Store(true)
			createBreaker(ctx, ns, "auth", `{target: {service: auth-backend, port: http},
				probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 2}, recovery: {openDuration: 1h}}`)
			Eventually(status(ctx, ns, "auth")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
			b.failing.Store(false)
			patchBreaker(ctx, ns, "auth", func(cb *tripswitchv1alpha1.CircuitBreaker) {
				metav1.SetMetaDataAnnotation(&cb.ObjectMeta, tripswitchv1alpha1.ResetAnnotation, "1")
			})
			Eventually(status(ctx, ns, "auth")).Should(And(HaveField("State", tripswitchv1alpha1.StateClosed),
				HaveField("Reason", "Reset"), HaveField("LastResetToken", "1")))
			Eventually(front(ctx, ns, "auth")).Should(HaveField("Ready", 1))

			// The same token again does nothing: a failing target trips it and it stays Open.
			b.failing.Store(true)
			Eventually(status(ctx, ns, "auth")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
			patchBreaker(ctx, ns, "auth", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Labels = map[string]string{"touched": "yes"} })
			Consistently(status(ctx, ns, "auth"), time.Second).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
		})

		It("hands the front Service back to Kubernetes when deleted", func(ctx SpecContext) {
			b := newBackend()
			createTarget(ctx, ns, "catalog-backend", b.port, b)
			createBreaker(ctx, ns, "catalog", `{target: {service: catalog-backend, port: http}, probe: {interval: 100ms, timeout: 100ms}}`)
			Eventually(front(ctx, ns, "catalog")).Should(HaveField("Ready", 1))
			Expect(k8sClient.Delete(ctx, breakerFromYAML(ns, "catalog", `{}`))).To(Succeed())
			// Kubernetes' EndpointSlice controller (envtest runs none) publishes for the front
			// once it has a selector; tripswitch's slices stay until then.
			Eventually(func(g Gomega) map[string]string { return service(ctx, ns, "catalog")(g).Spec.Selector }).ShouldNot(BeEmpty())
			writeManagedSlice(ctx, ns, "catalog", "catalog-kube", "endpointslice-controller.k8s.io", b.port, b.address())

			Eventually(func() bool {
				return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "catalog"}, &tripswitchv1alpha1.CircuitBreaker{}))
			}).Should(BeTrue())
			svc := &corev1.Service{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "catalog"}, svc)).To(Succeed())
			Expect(svc.Spec.Selector).To(Equal(map[string]string{"app": "catalog-backend"}))
			Expect(svc.Annotations).NotTo(HaveKey(tripswitchv1alpha1.ClaimAnnotation))
			Expect(front(ctx, ns, "catalog")(Default).Slices).To(BeZero())
		})

		It("creates the front Service once a missing target appears", func(ctx SpecContext) {
			createBreaker(ctx, ns, "reviews", `{target: {service: reviews-backend, port: http}}`)
			Eventually(status(ctx, ns, "reviews")).Should(HaveField("Conditions",
				ContainElement(And(HaveField("Type", "Ready"), HaveField("Reason", tripswitchv1alpha1.ReasonTargetNotFound)))))
			Expect(apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "reviews"}, &corev1.Service{}))).To(BeTrue())
			b := newBackend()
			createTarget(ctx, ns, "reviews-backend", b.port, b)
			Eventually(front(ctx, ns, "reviews")).Should(HaveField("Ready", 1))
			svc := &corev1.Service{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "reviews"}, svc)).To(Succeed())
			Expect(svc.Spec.Selector).To(BeEmpty())
			Expect(svc.Spec.Ports).To(ConsistOf(HaveField("Name", "http")))
		})

		It("refuses a front Service that another breaker gates, or that has a selector", func(ctx SpecContext) {
			b := newBackend()
			createTarget(ctx, ns, "ads-backend", b.port, b)
			createBreaker(ctx, ns, "ads", `{target: {service: ads-backend, port: http}, gate: {endpointSlice: {service: shared}}}`)
			Eventually(front(ctx, ns, "shared")).Should(HaveField("Ready", 1))
			createBreaker(ctx, ns, "ads-too", `{target: {service: ads-backend, port: http}, gate: {endpointSlice: {service: shared}}}`)
			createBreaker(ctx, ns, "ads-selector", `{target: {service: ads-backend, port: http}, gate: {endpointSlice: {service: ads-backend-2}}}`)
			Expect(k8sClient.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ads-backend-2"},
				Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "x"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}})).To(Succeed())

			for name, reason := range map[string]string{"ads-too": tripswitchv1alpha1.ReasonFrontServiceClaimed,
				"ads-selector": tripswitchv1alpha1.ReasonFrontServiceHasSelector} {
				Eventually(status(ctx, ns, name)).Should(HaveField("Conditions", ContainElements(
					And(HaveField("Type", "Ready"), HaveField("Status", metav1.ConditionFalse), HaveField("Reason", reason)),
					And(HaveField("Type", "Stalled"), HaveField("Status", metav1.ConditionTrue)))), name)
			}
			Consistently(front(ctx, ns, "shared"), time.Second).Should(HaveField("Slices", 1), "the first breaker's slices stay alone")
		})

		It("mirrors a target scaled from 3 to 1,200 endpoints and back, split across slices", func(ctx SpecContext) {
			createTarget(ctx, ns, "feed-backend", 8080)
			// Observe keeps the gate Closed whatever the probes say; the suite's dialer refuses
			// these unmapped addresses, so no packet leaves the machine.
			createBreaker(ctx, ns, "feed", `{target: {service: feed-backend, port: http}, mode: Observe,
				probe: {interval: 1s, timeout: 100ms}}`)
			scale := func(n int) {
				for i := 0; i*100 < 1200; i++ {
					var addrs []string
					for j := i * 100; j < min(n, (i+1)*100); j++ {
						addrs = append(addrs, fmt.Sprintf("198.18.%d.%d", j/250, j%250+1))
					}
					writeSlice(ctx, ns, "feed-backend", fmt.Sprintf("feed-backend-%02d", i), 8080, addrs...)
				}
			}
			scale(3)
			Eventually(front(ctx, ns, "feed")).Should(Equal(frontEndpoints{Ready: 3, Serving: 3, All: 3, Slices: 1}))
			scale(1200)
			Eventually(front(ctx, ns, "feed"), 20*time.Second).Should(Equal(frontEndpoints{Ready: 1200, Serving: 1200, All: 1200, Slices: 2}))
			Eventually(status(ctx, ns, "feed")).Should(HaveField("Endpoints.Published", BeEquivalentTo(1200)))
			scale(3)
			Eventually(front(ctx, ns, "feed"), 20*time.Second).Should(Equal(frontEndpoints{Ready: 3, Serving: 3, All: 3, Slices: 1}))
		})

		It("puts back an edit another client made to its slice", func(ctx SpecContext) {
			bs := newBackends(2)
			createTarget(ctx, ns, "music-backend", bs[0].port, bs...)
			createBreaker(ctx, ns, "music", `{target: {service: music-backend, port: http}, probe: {interval: 100ms, timeout: 100ms}}`)
			Eventually(front(ctx, ns, "music")).Should(HaveField("Ready", 2))
			slice := &discoveryv1.EndpointSlice{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "music-tripswitch-0"}, slice)).To(Succeed())
			slice.Endpoints = slice.Endpoints[:1]
			slice.Endpoints[0].Conditions.Ready = ptr.To(false)
			Expect(k8sClient.Update(ctx, slice)).To(Succeed())
			Eventually(front(ctx, ns, "music")).Should(Equal(frontEndpoints{Ready: 2, Serving: 2, All: 2, Slices: 1}))
		})
	})

	It("stays Open across a manager restart, until the same openUntil, with no flap", func(ctx SpecContext) {
		stop := startManager(managerOptions{})
		b := newBackend()
		createTarget(ctx, ns, "billing-backend", b.port, b)
		b.failing.Store(true)
		createBreaker(ctx, ns, "billing", `{target: {service: billing-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 2}, recovery: {openDuration: 6s}}`)
		Eventually(status(ctx, ns, "billing")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
		Eventually(front(ctx, ns, "billing")).Should(And(HaveField("Slices", 1), HaveField("Ready", 0)))
		before := status(ctx, ns, "billing")(Default)
		openUntil := before.OpenUntil.Time

		// Watch the front slices through the whole handover, noting when ready endpoints show.
		seen := watchFront(ctx, ns, "billing")
		Eventually(readyCounts(seen)).Should(Equal([]int{0}), "the watch has begun")

		// The target heals, the manager goes away and a new one takes over: it must wait out
		// the Open period the old one started, then recover.
		b.failing.Store(false)
		stop()
		startManager(managerOptions{})
		Eventually(status(ctx, ns, "billing"), 15*time.Second).Should(HaveField("State", tripswitchv1alpha1.StateClosed))
		after := status(ctx, ns, "billing")(Default)
		Expect(after.Trips).To(Equal(before.Trips), "no new trip: the new leader resumed the old one")
		Expect(after.LastTransitionTime.Time).To(BeTemporally(">=", openUntil), "no trial before the restored openUntil")
		var firstReady time.Time
		for _, c := range seen() {
			if c.Ready > 0 {
				firstReady = c.At
				break
			}
		}
		Expect(firstReady).To(BeTemporally(">=", openUntil), "the front slice showed a ready endpoint before openUntil")
	})
})

var _ = Describe("The annotation gate", func() {
	It("sets and clears the state annotations, and reports a missing object", func(ctx SpecContext) {
		ns := newNamespace()
		startManager(managerOptions{})
		b := newBackend()
		createTarget(ctx, ns, "shop-backend", b.port, b)
		ingress := func(name string) *networkingv1.Ingress {
			return &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec: networkingv1.IngressSpec{DefaultBackend: &networkingv1.IngressBackend{
					Service: &networkingv1.IngressServiceBackend{Name: "shop", Port: networkingv1.ServiceBackendPort{Number: 80}}}}}
		}
		Expect(k8sClient.Create(ctx, ingress("shop"))).To(Succeed())
		annotations := func(name string) func(Gomega) map[string]string {
			return func(g Gomega) map[string]string {
				ing := &networkingv1.Ingress{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ing)).To(Succeed())
				return ing.Annotations
			}
		}
		createBreaker(ctx, ns, "shop", `{target: {service: shop-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 2}, recovery: {openDuration: 1h},
			gate: {annotations: [{apiVersion: networking.k8s.io/v1, kind: Ingress, name: shop},
			                     {apiVersion: networking.k8s.io/v1, kind: Ingress, name: later}]}}`)
		Eventually(annotations("shop")).Should(And(HaveKeyWithValue(tripswitchv1alpha1.StateAnnotation, "Closed"),
			HaveKeyWithValue(tripswitchv1alpha1.BreakerAnnotation, "shop")))
		Eventually(status(ctx, ns, "shop")).Should(HaveField("Conditions", ContainElement(And(
			HaveField("Type", tripswitchv1alpha1.ConditionAnnotationsApplied), HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", tripswitchv1alpha1.ReasonAnnotatedObjectNotFound), HaveField("Message", ContainSubstring("Ingress/later"))))))
		Expect(apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "later"}, &networkingv1.Ingress{}))).
			To(BeTrue(), "a missing object is never created")
		Expect(front(ctx, ns, "shop")(Default).Slices).To(BeZero(), "an annotation-only breaker owns no slices")

		b.failing.Store(true)
		Eventually(annotations("shop")).Should(HaveKeyWithValue(tripswitchv1alpha1.StateAnnotation, "Open"))
		Expect(k8sClient.Create(ctx, ingress("later"))).To(Succeed())
		patchBreaker(ctx, ns, "shop", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Labels = map[string]string{"nudge": "1"} })
		Eventually(annotations("later")).Should(HaveKeyWithValue(tripswitchv1alpha1.StateAnnotation, "Open"))

		// An object that leaves the list loses the annotations; deletion clears the rest.
		patchBreaker(ctx, ns, "shop", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Gate.Annotations = cb.Spec.Gate.Annotations[1:] })
		Eventually(annotations("shop")).ShouldNot(Or(HaveKey(tripswitchv1alpha1.StateAnnotation), HaveKey(tripswitchv1alpha1.BreakerAnnotation)))
		Expect(k8sClient.Delete(ctx, breakerFromYAML(ns, "shop", `{}`))).To(Succeed())
		Eventually(annotations("later")).ShouldNot(HaveKey(tripswitchv1alpha1.StateAnnotation))
	})
})
