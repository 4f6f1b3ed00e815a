package runner

import (
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/ejection"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// backends starts n recorders on 127.0.0.2, 127.0.0.3, ... and returns them with their
// endpoints.
func backends(t *testing.T, n int) ([]*recorder, []probe.Endpoint) {
	var recs []*recorder
	var eps []probe.Endpoint
	for i := range n {
		rec := &recorder{}
		ep, _ := serve(t, fmt.Sprintf("127.0.0.%d", i+2), rec)
		recs = append(recs, rec)
		eps = append(eps, ep)
	}
	return recs, eps
}

// ejecting is a registration whose service level never trips while some endpoints answer,
// with the endpoint level ej.
func ejecting(t *testing.T, interval time.Duration, ej ejection.Config, eps ...probe.Endpoint) Registration {
	reg := registration(t, interval, eps...)
	reg.Config.ConsecutiveFailures = 1000
	reg.Ejection = ej
	return reg
}

func endpointEvents(s *Scheduler, k int) func() []ejection.Event {
	var all []ejection.Event
	return func() []ejection.Event {
		all = append(all, s.TakeEndpointEvents(key(k))...)
		return all
	}
}

func TestSchedulerSendsTheTrialAtTheEndOfAnEjectionAtOnce(t *testing.T) {
	g := NewWithT(t)
	recs, eps := backends(t, 3)
	s := startScheduler(t, Options{MaxConcurrentProbes: 8})
	// Turns every 3 s, ejections of 1 s: a trial that waited for the endpoint's next turn
	// would come 2 s late.
	reg := ejecting(t, 3*time.Second, ejection.Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Second,
		MaxEjectionTime: 10 * time.Second, MaxEjectedPercent: 50}, eps...)
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	recs[1].failing.Store(true)
	events := endpointEvents(s, 1)
	g.Eventually(events, 5*time.Second).Should(HaveLen(1))
	ejected := events()[0]
	g.Expect(ejected.Kind).To(Equal(ejection.EventEjected))
	g.Expect(ejected.Endpoint).To(Equal(eps[1]))
	v, _ := s.View(key(1))
	g.Expect(v.Ejection.HeldBack).To(Equal([]probe.Endpoint{eps[1]}))
	g.Expect(v.Snapshot.State).To(Equal(breaker.Closed))

	recs[1].failing.Store(false)
	g.Eventually(events, 5*time.Second).Should(HaveLen(2))
	returned := events()[1]
	g.Expect(returned.Kind).To(Equal(ejection.EventReturned))
	g.Expect(returned.At.Sub(ejected.At)).To(BeNumerically("~", time.Second, 300*time.Millisecond),
		"the trial goes out when the ejection ends, not at the endpoint's next turn")
	v, _ = s.View(key(1))
	g.Expect(v.Ejection.HeldBack).To(BeEmpty())
}

func TestSchedulerSendsNoHalfOpenTrialToAnEjectedEndpoint(t *testing.T) {
	g := NewWithT(t)
	recs, eps := backends(t, 2)
	s := startScheduler(t, Options{MaxConcurrentProbes: 8})
	reg := ejecting(t, 100*time.Millisecond, ejection.Config{ConsecutiveFailures: 1, BaseEjectionTime: time.Hour,
		MaxEjectionTime: time.Hour, MaxEjectedPercent: 50}, eps...)
	reg.Config.ConsecutiveFailures = 3
	reg.Config.OpenDuration = time.Second
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	recs[1].failing.Store(true)
	g.Eventually(func() []probe.Endpoint { v, _ := s.View(key(1)); return v.Ejection.HeldBack }, 5*time.Second).
		Should(Equal([]probe.Endpoint{eps[1]}))
	recs[0].failing.Store(true)
	g.Eventually(state(s, key(1)), 5*time.Second).Should(Equal(breaker.Open))
	recs[0].failing.Store(false) // the ejected one keeps failing

	var changes []Change
	g.Eventually(func() []Change { changes = append(changes, s.TakeChanges(key(1))...); return changes }, 5*time.Second).
		Should(ContainElement(HaveField("Reason", breaker.TrialSucceeded)))
	for _, c := range changes {
		g.Expect(c.Reason).NotTo(Equal(breaker.TrialFailed), "no trial went to the ejected endpoint: %v", c)
		if c.Reason == breaker.TrialSucceeded {
			g.Expect(c.Probe.Endpoint).To(Equal(eps[0]))
		}
	}
}

func TestSchedulerRampsEndpointsBackAfterHalfOpenCloses(t *testing.T) {
	g := NewWithT(t)
	recs, eps := backends(t, 5)
	s := startScheduler(t, Options{MaxConcurrentProbes: 8})
	reg := registration(t, 100*time.Millisecond, eps...)
	reg.Config.ConsecutiveFailures = 1
	reg.Config.OpenDuration = time.Second
	reg.Ejection = ejection.Config{SlowStart: 3 * time.Second}
	reg.RampKeep = 1
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	for _, r := range recs {
		r.failing.Store(true)
	}
	g.Eventually(state(s, key(1)), 5*time.Second).Should(Equal(breaker.Open))
	for _, r := range recs {
		r.failing.Store(false)
	}
	g.Eventually(state(s, key(1)), 5*time.Second).Should(Equal(breaker.Closed))
	waiting := func() int { v, _ := s.View(key(1)); return len(v.Ejection.HeldBack) }
	// Of the 4 that HalfOpen did not publish: 1 at once, still 1 from 1 s (a quarter of 4),
	// 2 from 2 s, all at 3 s.
	closed := time.Now()
	g.Expect(waiting()).To(Equal(3))
	g.Consistently(waiting, 1500*time.Millisecond).Should(Equal(3))
	g.Eventually(waiting, time.Second).Should(Equal(2))
	g.Expect(time.Since(closed)).To(BeNumerically("~", 2*time.Second, 400*time.Millisecond))
	g.Eventually(waiting, 1500*time.Millisecond).Should(BeZero())
	g.Expect(time.Since(closed)).To(BeNumerically("~", 3*time.Second, 400*time.Millisecond))
}

func TestSchedulerHoldsFirstEjectionsUnderTheObserverGuard(t *testing.T) {
	g := NewWithT(t)
	recs, eps := backends(t, 2)
	gd := guard.New(guard.Config{MaxTripFraction: 0.5, Window: time.Minute, MinBreakers: 4}, clock.RealClock{})
	s := startScheduler(t, Options{MaxConcurrentProbes: 16, Guard: gd})
	for i := range 4 {
		reg := ejecting(t, 50*time.Millisecond, ejection.Config{ConsecutiveFailures: 2, BaseEjectionTime: time.Hour,
			MaxEjectionTime: time.Hour, MaxEjectedPercent: 50}, eps...)
		reg.Gated = true
		g.Expect(s.Upsert(key(i), reg)).To(Succeed())
	}
	// One address fails for every breaker: as the manager sees a node it cannot reach.
	recs[1].failing.Store(true)
	counts := func() [2]int {
		var ejected, held int
		for i := range 4 {
			v, _ := s.View(key(i))
			ejected += v.Ejection.Ejected
			if v.Held != nil {
				held++
				g.Expect(v.Held.Ejection).To(BeTrue())
				g.Expect(v.Held.Reason).To(Equal(breaker.NoReason), "no trip is held, only the ejection")
				g.Expect(v.Ejection.HeldBack).To(BeEmpty())
			}
		}
		return [2]int{ejected, held}
	}
	g.Eventually(counts, 5*time.Second).Should(Equal([2]int{2, 2}), "2 of 4 breakers may start ejecting, 2 are held")
	g.Consistently(counts, 500*time.Millisecond).Should(Equal([2]int{2, 2}))

	recs[1].failing.Store(false)
	g.Eventually(func() int { return counts()[1] }, 5*time.Second).Should(BeZero(), "the holds end when the probes succeed")
	g.Eventually(gd.Active).Should(BeFalse())
}

func TestSchedulerKeepsRestoredEjectionsWhileTheTargetIsUnknown(t *testing.T) {
	g := NewWithT(t)
	_, eps := backends(t, 3)
	s := startScheduler(t, Options{MaxConcurrentProbes: 8})
	reg := ejecting(t, time.Second, ejection.Config{ConsecutiveFailures: 3, BaseEjectionTime: time.Minute,
		MaxEjectionTime: time.Minute, MaxEjectedPercent: 50}, eps...)
	reg.RestoreEjections = []ejection.EndpointStatus{{Endpoint: eps[1], Phase: ejection.Ejected,
		Reason: ejection.ConsecutiveFailures, Since: time.Now(), Until: time.Now().Add(time.Minute), Ejections: 1}}
	// A new leader's first reconcile could not read the target.
	unknown := reg
	unknown.Endpoints, unknown.KeepEndpoints = nil, true
	g.Expect(s.Upsert(key(1), unknown)).To(Succeed())
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	v, _ := s.View(key(1))
	g.Expect(v.Ejection.HeldBack).To(Equal([]probe.Endpoint{eps[1]}), "the restored ejection survives")
}

func TestSchedulerResetClearsEveryEjection(t *testing.T) {
	g := NewWithT(t)
	recs, eps := backends(t, 3)
	s := startScheduler(t, Options{MaxConcurrentProbes: 8})
	g.Expect(s.Upsert(key(1), ejecting(t, 50*time.Millisecond, ejection.Config{ConsecutiveFailures: 1,
		BaseEjectionTime: time.Minute, MaxEjectionTime: time.Minute, MaxEjectedPercent: 50}, eps...))).To(Succeed())
	recs[2].failing.Store(true)
	g.Eventually(func() []probe.Endpoint { v, _ := s.View(key(1)); return v.Ejection.HeldBack }, 5*time.Second).
		Should(Equal([]probe.Endpoint{eps[2]}))
	s.TakeEndpointEvents(key(1))
	g.Expect(s.Reset(key(1))).To(BeTrue())
	v, _ := s.View(key(1))
	g.Expect(v.Ejection.HeldBack).To(BeEmpty(), "the reset annotation trusts every endpoint again")
	g.Expect(s.TakeEndpointEvents(key(1))).To(ConsistOf(And(HaveField("Kind", ejection.EventReturned),
		HaveField("Endpoint", eps[2]), HaveField("Message", "reset"))))
}
