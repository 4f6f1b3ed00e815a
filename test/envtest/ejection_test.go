package envtest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/metrics"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// readySet is the set of addresses a front's slices published ready at one moment.
type readySet struct {
	Ready []string
	At    time.Time
}

// watchReady records, from a watch, every change of the addresses the front publishes ready
// (over all its tripswitch slices), starting with what it showed when the watch began.
func watchReady(ctx context.Context, ns, name string) func() []readySet {
	bySlice := map[string][]string{}
	var last []string
	first := true
	return watchSlices(ctx, ns, client.MatchingLabels{discoveryv1.LabelServiceName: name,
		discoveryv1.LabelManagedBy: tripswitchv1alpha1.ManagedBy},
		func(ev watch.EventType, slice *discoveryv1.EndpointSlice) (readySet, bool) {
			var ready []string
			if ev != watch.Deleted {
				for _, e := range slice.Endpoints {
					if ptr.Deref(e.Conditions.Ready, true) {
						ready = append(ready, e.Addresses[0])
					}
				}
			}
			bySlice[slice.Name] = ready
			var all []string
			for _, r := range bySlice {
				all = append(all, r...)
			}
			slices.Sort(all)
			if !first && slices.Equal(last, all) {
				return readySet{}, false
			}
			first, last = false, all
			return readySet{Ready: all, At: time.Now()}, true
		})
}

// readyCountsOf are the sizes of the sets seen, without their times.
func readyCountsOf(seen func() []readySet) func() []int {
	return func() []int {
		var out []int
		for _, s := range seen() {
			out = append(out, len(s.Ready))
		}
		return out
	}
}

// firstWithout is when the front first published a set without addr, after since.
func firstWithout(seen []readySet, addr string, since time.Time) (time.Time, bool) {
	for _, s := range seen {
		if s.At.After(since) && !slices.Contains(s.Ready, addr) {
			return s.At, true
		}
	}
	return time.Time{}, false
}

// ejectionCondition reads the breaker's Ejection condition, as "Status/Reason: message".
func ejectionCondition(ctx context.Context, ns, name string) func(Gomega) string {
	return func(g Gomega) string {
		c := meta.FindStatusCondition(status(ctx, ns, name)(g).Conditions, tripswitchv1alpha1.ConditionEjection)
		if c == nil {
			return ""
		}
		return string(c.Status) + "/" + c.Reason + ": " + c.Message
	}
}

// ejection reads the breaker's status.ejection, or an empty one.
func ejection(ctx context.Context, ns, name string) func(Gomega) tripswitchv1alpha1.EjectionStatus {
	return func(g Gomega) tripswitchv1alpha1.EjectionStatus {
		if e := status(ctx, ns, name)(g).Ejection; e != nil {
			return *e
		}
		return tripswitchv1alpha1.EjectionStatus{}
	}
}

// eventNotes lists the notes of the namespace's events with a reason.
func eventNotes(ctx context.Context, ns, reason string) func(Gomega) []string {
	return func(g Gomega) []string {
		var events eventsv1.EventList
		g.Expect(k8sClient.List(ctx, &events, client.InNamespace(ns))).To(Succeed())
		var out []string
		for _, e := range events.Items {
			if e.Reason == reason {
				out = append(out, e.Type+": "+e.Note)
			}
		}
		return out
	}
}

// A service-level trip rule that never holds while only some endpoints fail, so that the
// stories see the endpoint level alone.
const noServiceTrip = `trip: {failureRate: {percent: 100, window: 100, minimumProbes: 100}}`

var _ = Describe("Two-level breaking: ejecting endpoints", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("ejects the one failing endpoint of three within its floor + 100 ms, keeps the other two, and re-admits it after its ejection time", func(ctx SpecContext) {
		startManager(managerOptions{})
		bs := newBackends(3)
		createTarget(ctx, ns, "payments-backend", bs[0].port, bs...)
		createBreaker(ctx, ns, "payments", `{target: {service: payments-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, `+noServiceTrip+`,
			ejection: {consecutiveFailures: 3, baseEjectionTime: 2s}}`)
		Eventually(front(ctx, ns, "payments")).Should(HaveField("Ready", 3))
		Eventually(ejectionCondition(ctx, ns, "payments")).Should(HavePrefix("False/NoEndpointsEjected"))
		seen := watchReady(ctx, ns, "payments")
		Eventually(seen).ShouldNot(BeEmpty())

		bad := bs[1]
		failedAt := time.Now()
		bad.failing.Store(true)
		Eventually(func() bool { _, ok := firstWithout(seen(), bad.address(), failedAt); return ok }).Should(BeTrue())
		ejectedAt, _ := firstWithout(seen(), bad.address(), failedAt)
		latency := ejectedAt.Sub(failedAt)
		// The floor: the 3rd failure comes at most 3 intervals after the backend starts
		// failing (the first probe up to one interval later, then two more).
		const floor = 300 * time.Millisecond
		AddReportEntry("ejection latency (floor 300 ms)", latency.String())
		fmt.Fprintf(GinkgoWriter, "ejected %s after the backend started failing\n", latency)
		Expect(latency).To(BeNumerically("<=", floor+100*time.Millisecond))

		// Only the bad one went: the other two never left the front.
		for _, s := range seen() {
			Expect(s.Ready).To(ContainElements(bs[0].address(), bs[2].address()), "the healthy endpoints stay published")
		}
		Expect(front(ctx, ns, "payments")(Default)).To(Equal(frontEndpoints{Ready: 2, Serving: 2, All: 3, Slices: 1}),
			"the ejected endpoint is published neither ready nor serving")
		Eventually(ejection(ctx, ns, "payments")).Should(And(HaveField("Ejected", BeEquivalentTo(1)),
			HaveField("Endpoints", ConsistOf(And(HaveField("Endpoint", HavePrefix(bad.address()+":")),
				HaveField("Phase", "Ejected"), HaveField("Reason", "ConsecutiveFailures"), HaveField("Ejections", BeEquivalentTo(1)),
				HaveField("Until", Not(BeNil())), HaveField("Message", "HTTP 503"))))))
		Expect(ejectionCondition(ctx, ns, "payments")(Default)).To(And(HavePrefix("True/EndpointsEjected"),
			ContainSubstring("1 of 3 endpoints ejected")))
		Expect(status(ctx, ns, "payments")(Default).State).To(Equal(tripswitchv1alpha1.StateClosed), "the service breaker stays Closed")
		Eventually(eventNotes(ctx, ns, "EndpointEjected")).Should(ConsistOf(And(HavePrefix("Warning: Endpoint "+bad.address()),
			ContainSubstring("ConsecutiveFailures"), ContainSubstring("HTTP 503"))))
		Expect(metricValue(metrics.EjectedName, map[string]string{"namespace": ns, "name": "payments"})).To(Equal(1.0))
		Expect(metricValue(metrics.EjectionsName, map[string]string{"namespace": ns, "name": "payments",
			"reason": "ConsecutiveFailures"})).To(Equal(1.0))

		// Still failing at the end of its 2 s: the trial fails and it stays out for 4 s.
		Eventually(ejection(ctx, ns, "payments"), 5*time.Second).Should(HaveField("Endpoints",
			ConsistOf(And(HaveField("Reason", "TrialFailed"), HaveField("Ejections", BeEquivalentTo(2))))))
		healedAt := time.Now()
		bad.failing.Store(false)
		Eventually(front(ctx, ns, "payments"), 8*time.Second).Should(HaveField("Ready", 3))
		back := time.Since(healedAt)
		fmt.Fprintf(GinkgoWriter, "returned %s after the backend healed\n", back)
		Expect(back).To(BeNumerically("<=", 4*time.Second+time.Second), "it returns at the end of its second ejection")
		Eventually(ejectionCondition(ctx, ns, "payments")).Should(HavePrefix("False/NoEndpointsEjected"))
		Eventually(eventNotes(ctx, ns, "EndpointReturned")).Should(ContainElement(HavePrefix("Normal: Endpoint " + bad.address())))
		Expect(metricValue(metrics.EjectedName, map[string]string{"namespace": ns, "name": "payments"})).To(Equal(0.0))
	})

	It("never ejects more than maxEjectedPercent: 3 of 4 fail with 50, 2 are ejected and the third stays published", func(ctx SpecContext) {
		startManager(managerOptions{})
		bs := newBackends(4)
		createTarget(ctx, ns, "orders-backend", bs[0].port, bs...)
		createBreaker(ctx, ns, "orders", `{target: {service: orders-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, `+noServiceTrip+`,
			ejection: {consecutiveFailures: 2, baseEjectionTime: 1h, maxEjectedPercent: 50, panicThresholdPercent: 0}}`)
		Eventually(front(ctx, ns, "orders")).Should(HaveField("Ready", 4))
		seen := watchReady(ctx, ns, "orders")
		for _, b := range bs[:3] {
			b.failing.Store(true)
		}
		Eventually(ejection(ctx, ns, "orders")).Should(And(HaveField("Ejected", BeEquivalentTo(2)),
			HaveField("Capped", BeEquivalentTo(1)), HaveField("MaxEjected", BeEquivalentTo(2))))
		Consistently(front(ctx, ns, "orders"), 2*time.Second).Should(HaveField("Ready", 2))
		for _, s := range seen() {
			Expect(len(s.Ready)).To(BeNumerically(">=", 2), "never more than 2 of 4 ejected, at any moment: %v", s)
			Expect(s.Ready).To(ContainElement(bs[3].address()), "the healthy endpoint is never ejected")
		}
		Expect(ejectionCondition(ctx, ns, "orders")(Default)).To(And(HavePrefix("True/EjectionCapped"),
			ContainSubstring("2 of 4 endpoints ejected (at most 2 at once)"), ContainSubstring("1 more fail")))
	})

	It("panics when fewer endpoints are healthy than the threshold: with all failing, all are published and the condition says so", func(ctx SpecContext) {
		startManager(managerOptions{})
		bs := newBackends(3)
		createTarget(ctx, ns, "search-backend", bs[0].port, bs...)
		createBreaker(ctx, ns, "search", `{target: {service: search-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, `+noServiceTrip+`,
			ejection: {consecutiveFailures: 2, baseEjectionTime: 1h, panicThresholdPercent: 30}}`)
		Eventually(front(ctx, ns, "search")).Should(HaveField("Ready", 3))
		for _, b := range bs {
			b.failing.Store(true)
		}
		Eventually(ejectionCondition(ctx, ns, "search")).Should(And(HavePrefix("True/Panic"),
			ContainSubstring("only 0 of 3 endpoints are healthy"), ContainSubstring("every endpoint is published")))
		Expect(ejection(ctx, ns, "search")(Default)).To(And(HaveField("Panic", true), HaveField("Ejected", BeEquivalentTo(1)),
			HaveField("Capped", BeEquivalentTo(2))))
		Consistently(front(ctx, ns, "search"), time.Second).Should(HaveField("Ready", 3), "panic publishes every endpoint")
		Eventually(eventNotes(ctx, ns, tripswitchv1alpha1.ReasonPanic)).Should(ContainElement(HavePrefix("Warning: Panic")))
		Expect(metricValue(metrics.PanicName, map[string]string{"namespace": ns, "name": "search"})).To(Equal(1.0))

		// The two that are not ejected heal: 2 of 3 healthy is above the threshold, so the
		// ejection of the one still failing applies again.
		ejected := ejection(ctx, ns, "search")(Default).Endpoints[0].Endpoint
		for _, b := range bs {
			if !strings.HasPrefix(ejected, b.address()+":") {
				b.failing.Store(false)
			}
		}
		Eventually(ejectionCondition(ctx, ns, "search")).Should(HavePrefix("True/EndpointsEjected"))
		Eventually(front(ctx, ns, "search")).Should(HaveField("Ready", 2))
		Eventually(eventNotes(ctx, ns, tripswitchv1alpha1.ReasonPanic)).Should(ContainElement(HavePrefix("Normal: Ejection panic ended")))
	})

	It("re-admits endpoints step by step after HalfOpen closes, as a watch sees", func(ctx SpecContext) {
		startManager(managerOptions{})
		bs := newBackends(8)
		createTarget(ctx, ns, "catalog-backend", bs[0].port, bs...)
		for _, b := range bs {
			b.failing.Store(true)
		}
		createBreaker(ctx, ns, "catalog", `{target: {service: catalog-backend, port: http},
			probe: {interval: 200ms, timeout: 200ms}, trip: {consecutiveFailures: 3},
			recovery: {openDuration: 3s, slowStart: {window: 3s}}}`)
		Eventually(status(ctx, ns, "catalog")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
		seen := watchReady(ctx, ns, "catalog")
		Eventually(seen).ShouldNot(BeEmpty())
		// The backends heal while the breaker is still Open: the Open time must outlast the
		// status read and the watch's start on a loaded machine, or the half-open trial fails
		// and the breaker opens again (0, 1, 0, ...) before the story has begun.
		Expect(status(ctx, ns, "catalog")(Default).State).To(Equal(tripswitchv1alpha1.StateOpen))
		for _, b := range bs {
			b.failing.Store(false)
		}
		// HalfOpen publishes one endpoint while its trial runs, but the trial is one probe to a
		// healthy backend (a few ms): when the reconcile that follows the half-open tick comes
		// after the trial's result, as it can on a loaded machine, both transitions land in one
		// reconcile and the front goes from none to the ramp's first step. Both are right;
		// what this story checks is the ramp after the close.
		steps := func() []readySet {
			s := seen()
			if len(s) > 1 && len(s[1].Ready) == 1 {
				s = append(s[:1:1], s[2:]...)
			}
			return s
		}
		Eventually(func() []int { return readyCountsOf(steps)() }, 20*time.Second).Should(Equal([]int{0, 2, 3, 5, 8}), func() string {
			return fmt.Sprintf("Open none, (HalfOpen 1,) then of the 7 others: 1 at once, 2 from a third of the window, "+
				"4 from two thirds, all at its end; seen %v, breaker %+v", seen(), status(ctx, ns, "catalog")(Default))
		})
		if all := seen(); len(all) == 6 {
			fmt.Fprintf(GinkgoWriter, "HalfOpen's step was seen\n")
			Expect(all[2].Ready).To(ContainElement(all[1].Ready[0]), "the endpoint HalfOpen published stays published")
		} else {
			fmt.Fprintf(GinkgoWriter, "HalfOpen's step was not seen\n")
		}
		ramp := steps()
		start := ramp[1].At // the close: the first ramp step
		for i, offset := range map[int]time.Duration{2: time.Second, 3: 2 * time.Second, 4: 3 * time.Second} {
			at := ramp[i].At.Sub(start)
			fmt.Fprintf(GinkgoWriter, "ramp step to %d ready at %s (planned %s)\n", len(ramp[i].Ready), at, offset)
			// ±600 ms: the steps are a second apart and their order is checked above; a loaded
			// machine delays the watch and the close's own write by a few hundred ms.
			Expect(at).To(BeNumerically("~", offset, 600*time.Millisecond))
		}
		Eventually(ejectionCondition(ctx, ns, "catalog")).Should(HavePrefix("False/NoEndpointsEjected"))
	})

	It("keeps its ejections across a leader change, restored from status", func(ctx SpecContext) {
		stop := startManager(managerOptions{})
		bs := newBackends(3)
		createTarget(ctx, ns, "cart-backend", bs[0].port, bs...)
		createBreaker(ctx, ns, "cart", `{target: {service: cart-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, `+noServiceTrip+`,
			ejection: {consecutiveFailures: 2, baseEjectionTime: 6s}}`)
		Eventually(front(ctx, ns, "cart")).Should(HaveField("Ready", 3))
		bs[2].failing.Store(true)
		Eventually(ejection(ctx, ns, "cart")).Should(HaveField("Ejected", BeEquivalentTo(1)))
		until := ejection(ctx, ns, "cart")(Default).Endpoints[0].Until.Time
		// The backend heals at once, so a leader that forgot the ejection would publish it again
		// at its first probe; one that restored it waits for the end of the ejection.
		bs[2].failing.Store(false)
		stop()
		seen := watchReady(ctx, ns, "cart")
		startManager(managerOptions{})
		Consistently(readyCountsOf(seen), time.Until(until)-time.Second).Should(HaveEach(2),
			"the new leader keeps the endpoint ejected until its time ends")
		Eventually(front(ctx, ns, "cart"), 5*time.Second).Should(HaveField("Ready", 3))
		// The slices change first, status in the same reconcile just after: on a loaded machine
		// a read can fall between the two.
		Eventually(ejection(ctx, ns, "cart")).Should(HaveField("Ejected", BeZero()))
	})

	It("lets the observer guard hold ejections when the manager's own network fails for one address everywhere", func(ctx SpecContext) {
		// The manager can no longer reach one address (say, a node it has no route to), which
		// every breaker's target has an endpoint on. With a budget of 1 of 4 breakers, one may
		// start ejecting; the others' ejections are held and their endpoints stay published.
		var sick atomic.Bool
		bs := newBackends(9)
		shared := bs[0] // one address behind every target
		sickAddress := shared.address()
		startManager(managerOptions{guard: guard.Config{MaxTripFraction: 0.25, Window: 30 * time.Second,
			ReleaseTimeout: time.Hour}, dial: func(next probe.DialFunc) probe.DialFunc {
			return func(ctx context.Context, network, address string) (net.Conn, error) {
				if !strings.HasPrefix(address, sickAddress+":") {
					return next(ctx, network, address)
				}
				// Connections kept alive to the sick address die with it, as in breakableDial.
				return failingDial(&sick, func(context.Context) error { return errors.New("no route to host") })(next)(ctx, network, address)
			}
		}})
		var names []string
		for i := range 4 {
			name := fmt.Sprintf("shard-%d", i)
			names = append(names, name)
			createTarget(ctx, ns, name+"-backend", shared.port, shared, bs[1+2*i], bs[2+2*i])
			createBreaker(ctx, ns, name, fmt.Sprintf(`{target: {service: %s-backend, port: http},
				probe: {interval: 100ms, timeout: 100ms}, %s, ejection: {consecutiveFailures: 2, baseEjectionTime: 5m}}`,
				name, noServiceTrip))
		}
		for _, name := range names {
			Eventually(front(ctx, ns, name)).Should(HaveField("Ready", 3))
		}
		sick.Store(true)
		ejected := func(g Gomega) (n int) {
			for _, name := range names {
				n += int(ejection(ctx, ns, name)(g).Ejected)
			}
			return n
		}
		heldCount := func(g Gomega) (n int) {
			for _, name := range names {
				if strings.HasPrefix(ejectionCondition(ctx, ns, name)(g), "True/EjectionHeld") {
					n++
				}
			}
			return n
		}
		Eventually(heldCount).Should(Equal(3), "3 of 4 breakers' first ejections are held")
		Consistently(ejected, 2*time.Second).Should(Equal(1), "only the budget's one breaker ejects")
		for _, name := range names {
			if strings.HasPrefix(ejectionCondition(ctx, ns, name)(Default), "True/EjectionHeld") {
				Expect(front(ctx, ns, name)(Default).Ready).To(Equal(3), "a held ejection leaves every endpoint published")
				c := meta.FindStatusCondition(status(ctx, ns, name)(Default).Conditions, tripswitchv1alpha1.ConditionObserverGuard)
				Expect(c).NotTo(BeNil())
				Expect(c.Status).To(Equal(metav1.ConditionTrue))
				Expect(c.Message).To(HavePrefix("Ejection held since"))
			}
		}
		sick.Store(false)
		Eventually(heldCount).Should(BeZero(), "the holds end when the probes succeed again")
	})
})
