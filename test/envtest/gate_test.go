package envtest_test

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

var _ = Describe("The EndpointSlice gate", func() {
	var ns string
	BeforeEach(func() {
		ns = newNamespace()
		startManager(managerOptions{})
	})

	It("trips on consecutive failures, so the front Service has no ready or serving endpoint", func(ctx SpecContext) {
		bs := newBackends(2)
		createTarget(ctx, ns, "payments-backend", bs[0].port, bs...)
		createBreaker(ctx, ns, "payments", `{target: {service: payments-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 3}, recovery: {openDuration: 1h}}`)

		Eventually(front(ctx, ns, "payments")).Should(Equal(frontEndpoints{Ready: 2, Serving: 2, All: 2, Slices: 1}),
			"Closed mirrors the target")
		Eventually(status(ctx, ns, "payments")).Should(And(
			HaveField("State", tripswitchv1alpha1.StateClosed), HaveField("FrontService", "payments"),
			HaveField("Endpoints.Target", BeEquivalentTo(2)), HaveField("Endpoints.Published", BeEquivalentTo(2))))

		for _, b := range bs {
			b.failing.Store(true)
		}
		Eventually(front(ctx, ns, "payments")).Should(Equal(frontEndpoints{Ready: 0, Serving: 0, All: 2, Slices: 1}))
		// The slice changes first and status follows in the same reconcile, one write later.
		Eventually(status(ctx, ns, "payments")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
		st := status(ctx, ns, "payments")(Default)
		Expect(st.GateState).To(Equal(tripswitchv1alpha1.StateOpen))
		Expect(st.Reason).To(Equal("ConsecutiveFailures"))
		Expect(st.Trips).To(BeEquivalentTo(1))
		Expect(st.OpenUntil).NotTo(BeNil())
		Expect(st.LastProbe.Message).To(Equal("HTTP 503"))
		Expect(st.Endpoints.Published).To(BeZero())

		Eventually(func(g Gomega) []string {
			var events eventsv1.EventList
			g.Expect(k8sClient.List(ctx, &events, client.InNamespace(ns))).To(Succeed())
			var reasons []string
			for _, e := range events.Items {
				reasons = append(reasons, e.Type+"/"+e.Reason+": "+e.Note)
			}
			return reasons
		}).Should(ContainElement(And(HavePrefix("Warning/ConsecutiveFailures:"), ContainSubstring("Closed -> Open"),
			ContainSubstring("HTTP 503"))))
	})

	It("recovers through HalfOpen, publishing one endpoint, then all of them", func(ctx SpecContext) {
		bs := createLingeringHalfOpen(ctx, ns, "inventory", 3)
		Eventually(status(ctx, ns, "inventory")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
		Eventually(front(ctx, ns, "inventory")).Should(And(HaveField("Slices", 1), HaveField("Ready", 0)))
		seen := watchFront(ctx, ns, "inventory")
		for _, b := range bs {
			b.failing.Store(false)
		}
		Eventually(front(ctx, ns, "inventory"), 10*time.Second).Should(Equal(frontEndpoints{Ready: 3, Serving: 3, All: 3, Slices: 1}))
		Eventually(readyCounts(seen)).Should(Equal([]int{0, 1, 3}), "Open publishes none, HalfOpen one endpoint, then Closed all three")
		Eventually(status(ctx, ns, "inventory")).Should(HaveField("State", tripswitchv1alpha1.StateClosed))
		st := status(ctx, ns, "inventory")(Default)
		Expect(st.Reason).To(Equal("TrialSucceeded"))
		Expect(st.OpenStreak).To(BeZero())
	})

	It("reopens after a failed trial, for twice as long", func(ctx SpecContext) {
		a := newBackend()
		a.failing.Store(true)
		createTarget(ctx, ns, "orders-backend", a.port, a)
		createBreaker(ctx, ns, "orders", `{target: {service: orders-backend, port: http},
			probe: {interval: 200ms, timeout: 200ms}, trip: {consecutiveFailures: 1},
			recovery: {openDuration: 2s, backoff: {factor: 2, maxOpenDuration: 1m}}}`)
		Eventually(status(ctx, ns, "orders"), 15*time.Second).Should(And(
			HaveField("State", tripswitchv1alpha1.StateOpen), HaveField("OpenStreak", BeEquivalentTo(2))))
		st := status(ctx, ns, "orders")(Default)
		Expect(st.Reason).To(Equal("TrialFailed"))
		Expect(st.Trips).To(BeEquivalentTo(2))
		// 2s × 2, rounded up to the second that status keeps, from a transition time that
		// status keeps truncated to the second.
		Expect(st.OpenUntil.Sub(st.LastTransitionTime.Time)).To(And(
			BeNumerically(">=", 4*time.Second), BeNumerically("<=", 6*time.Second)))
	})

	It("trips on the failure rate when 1 of 3 endpoints fails and failures are never consecutive enough", func(ctx SpecContext) {
		bs := newBackends(3)
		createTarget(ctx, ns, "search-backend", bs[0].port, bs...)
		createBreaker(ctx, ns, "search", `{target: {service: search-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms},
			trip: {consecutiveFailures: 50, failureRate: {percent: 30, window: 30, minimumProbes: 30}},
			recovery: {openDuration: 1h}}`)
		Eventually(status(ctx, ns, "search")).Should(HaveField("Window.Probes", BeNumerically(">", 5)))
		bs[1].failing.Store(true)
		Eventually(status(ctx, ns, "search"), 10*time.Second).Should(And(
			HaveField("State", tripswitchv1alpha1.StateOpen), HaveField("Reason", "FailureRate")))
		Expect(front(ctx, ns, "search")(Default).Ready).To(BeZero())
	})
})
