package runner

import (
	"context"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/confirm"
	"github.com/tripswitch/tripswitch/internal/ejection"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// observers is a Confirmer whose observers all vote the same way after a delay; silent ones
// let the deadline pass.
type observers struct {
	verdict confirm.Verdict
	delay   time.Duration

	mu    sync.Mutex
	asked []Suspicion
}

func (o *observers) Confirm(ctx context.Context, q Suspicion) confirm.Result {
	o.mu.Lock()
	o.asked = append(o.asked, q)
	o.mu.Unlock()
	leader := confirm.Ballot{Observer: confirm.Observer{Name: "leader"}}
	ballots := make([]confirm.Ballot, q.Observers)
	for i := range ballots {
		ballots[i] = confirm.Ballot{Observer: confirm.Observer{Name: string(rune('b' + i))}, Verdict: confirm.Silent}
	}
	if o.verdict == confirm.Silent {
		<-ctx.Done()
		return confirm.Tally(leader, ballots, true)
	}
	select {
	case <-time.After(o.delay):
	case <-ctx.Done():
		return confirm.Tally(leader, ballots, true)
	}
	for i := range ballots {
		ballots[i].Verdict = o.verdict
	}
	return confirm.Tally(leader, ballots, true)
}

func (o *observers) questions() []Suspicion {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]Suspicion(nil), o.asked...)
}

// confirmed registers a gated breaker on two endpoints of one recorder, whose trips wait
// for 2 observers, under a guard that allows them.
func confirmed(t *testing.T, o *observers) (*Scheduler, *recorder, []probe.Endpoint) {
	t.Helper()
	sick := &recorder{}
	ep1, _ := serve(t, "127.0.0.1", sick)
	ep2, _ := serve(t, "127.0.0.2", sick)
	gd := guard.New(guard.Config{MaxTripFraction: 1, Window: time.Minute}, clock.RealClock{})
	s := startScheduler(t, Options{MaxConcurrentProbes: 16, Guard: gd, Confirmer: o})
	reg := registration(t, 50*time.Millisecond, ep1, ep2)
	reg.Spec.Timeout = 200 * time.Millisecond
	reg.Config.ConsecutiveFailures = 2
	reg.Gated = true
	reg.Confirm = ConfirmConfig{Observers: 2, Zones: confirm.ZonesPrefer}
	NewWithT(t).Expect(s.Upsert(key(1), reg)).To(Succeed())
	return s, sick, []probe.Endpoint{ep1, ep2}
}

func TestSchedulerHoldsATripTheObserversRefute(t *testing.T) {
	g := NewWithT(t)
	o := &observers{verdict: confirm.Healthy, delay: 20 * time.Millisecond}
	s, sick, eps := confirmed(t, o)
	sick.failing.Store(true)

	g.Eventually(func() *Confirmation { v, _ := s.View(key(1)); return v.Confirmation }, 5*time.Second).Should(
		And(Not(BeNil()), HaveField("Last", Not(BeNil()))), "the observers were asked")
	g.Consistently(state(s, key(1)), time.Second).Should(Equal(breaker.Closed), "nothing is taken away while they see it healthy")
	v, _ := s.View(key(1))
	g.Expect(v.Confirmation.Last.Outcome).To(Equal(confirm.Refuted))
	g.Expect(v.Confirmation.Last.Message("shop/b1")).To(HavePrefix("held: 2 of 3 observers see shop/b1 healthy"))
	g.Expect(v.Confirmation.HeldUntil).To(BeTemporally(">", time.Now()), "held for a while before the observers are asked again")
	g.Expect(v.Held).To(BeNil(), "the guard was never asked: a refuted trip spends none of its budget")
	q := o.questions()
	g.Expect(q).To(HaveLen(1), "one question while held, not one per probe")
	g.Expect(q[0].Endpoints).To(ConsistOf(eps), "the endpoints that failed on the leader")
	g.Expect(q[0]).To(And(HaveField("Reason", breaker.ConsecutiveFailures), HaveField("Observers", 2),
		HaveField("Zones", confirm.ZonesPrefer), HaveField("Rule", confirm.Rule{})))
}

func TestSchedulerTripsWhenTheObserversConfirm(t *testing.T) {
	for _, tc := range []struct {
		name    string
		verdict confirm.Verdict
		want    confirm.Outcome
	}{
		{"confirmed", confirm.Failing, confirm.Confirmed},
		{"nobody answers in one probe timeout: the single-observer rule", confirm.Silent, confirm.Unconfirmed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			o := &observers{verdict: tc.verdict, delay: 20 * time.Millisecond}
			s, sick, _ := confirmed(t, o)
			sick.failing.Store(true)
			failedAt := time.Now()
			g.Eventually(state(s, key(1)), 5*time.Second).Should(Equal(breaker.Open))
			// Two failures at 50 ms, then at most one probe timeout (200 ms) and the slack.
			g.Expect(time.Since(failedAt)).To(BeNumerically("<", 2*time.Second))
			var trip *Change
			for _, c := range s.TakeChanges(key(1)) {
				if c.To == breaker.Open {
					trip = &c
				}
			}
			g.Expect(trip).NotTo(BeNil())
			g.Expect(trip.Reason).To(Equal(breaker.ConsecutiveFailures))
			g.Expect(trip.Confirmation).To(HaveField("Outcome", tc.want), "the event can say who voted what")
			g.Expect(o.questions()).To(HaveLen(1))
		})
	}
}

func TestSchedulerDropsAConfirmationThatCameAfterTheTargetRecovered(t *testing.T) {
	g := NewWithT(t)
	o := &observers{verdict: confirm.Failing, delay: 150 * time.Millisecond}
	s, sick, _ := confirmed(t, o)
	sick.failing.Store(true)
	g.Eventually(func() int { return len(o.questions()) }, 5*time.Second).Should(Equal(1))
	sick.failing.Store(false)
	g.Consistently(state(s, key(1)), time.Second).Should(Equal(breaker.Closed),
		"the leader's own probes stopped holding the rule before the answer came")
}

func TestSchedulerTripsAloneWithoutObserversOrWhenUngated(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Registration)
	}{
		{"observers: 0", func(r *Registration) { r.Confirm.Observers = 0 }},
		{"Observe mode", func(r *Registration) { r.Gated = false; r.Config.Mode = breaker.Observe }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			o := &observers{verdict: confirm.Healthy}
			rec := &recorder{}
			ep, _ := serve(t, "127.0.0.1", rec)
			s := startScheduler(t, Options{MaxConcurrentProbes: 16, Confirmer: o})
			reg := registration(t, 50*time.Millisecond, ep)
			reg.Gated = true
			reg.Confirm = ConfirmConfig{Observers: 2}
			tc.edit(&reg)
			g.Expect(s.Upsert(key(1), reg)).To(Succeed())
			rec.failing.Store(true)
			g.Eventually(state(s, key(1)), 5*time.Second).Should(Equal(breaker.Open))
			g.Expect(o.questions()).To(BeEmpty())
			v, _ := s.View(key(1))
			g.Expect(v.Confirmation).To(BeNil())
		})
	}
}

func TestSchedulerAsksAboutTheEndpointsThatFailedByTheRatesOwnRule(t *testing.T) {
	g := NewWithT(t)
	o := &observers{verdict: confirm.Healthy}
	sick, healthy := &recorder{}, &recorder{}
	sick.failing.Store(true)
	ep1, _ := serve(t, "127.0.0.1", sick)
	ep2, _ := serve(t, "127.0.0.2", sick)
	ep3, _ := serve(t, "127.0.0.3", healthy)
	s := startScheduler(t, Options{MaxConcurrentProbes: 16, Confirmer: o})
	reg := registration(t, 50*time.Millisecond, ep1, ep2, ep3)
	reg.Config.ConsecutiveFailures = 0
	reg.Config.FailureRate = breaker.RateRule{Percent: 50, Window: 6, MinimumProbes: 6}
	reg.Gated = true
	reg.Confirm = ConfirmConfig{Observers: 2, FailurePercent: 50}
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())

	g.Eventually(func() int { return len(o.questions()) }, 5*time.Second).Should(Equal(1))
	q := o.questions()[0]
	g.Expect(q.Reason).To(Equal(breaker.FailureRate))
	g.Expect(q.Endpoints).To(ConsistOf(ep1, ep2), "not the endpoint whose last probe succeeded")
	g.Expect(q.Rule).To(Equal(confirm.Rule{Percent: 50}), "observers judge by the rate's own percent")
	g.Consistently(state(s, key(1)), 500*time.Millisecond).Should(Equal(breaker.Closed))
}

// confirmedEjections registers a gated breaker that ejects after 2 failures on 3 endpoints,
// whose ejections wait for 2 observers; the second endpoint fails.
func confirmedEjections(t *testing.T, o *observers) (*Scheduler, []probe.Endpoint) {
	t.Helper()
	recs, eps := backends(t, 3)
	gd := guard.New(guard.Config{MaxTripFraction: 1, Window: time.Minute}, clock.RealClock{})
	s := startScheduler(t, Options{MaxConcurrentProbes: 16, Guard: gd, Confirmer: o})
	reg := ejecting(t, 50*time.Millisecond, ejection.Config{ConsecutiveFailures: 2, BaseEjectionTime: time.Hour,
		MaxEjectionTime: time.Hour, MaxEjectedPercent: 50}, eps...)
	reg.Spec.Timeout = 200 * time.Millisecond
	reg.Gated = true
	reg.Confirm = ConfirmConfig{Observers: 2}
	NewWithT(t).Expect(s.Upsert(key(1), reg)).To(Succeed())
	recs[1].failing.Store(true)
	return s, eps
}

func TestSchedulerKeepsPublishedAnEndpointTheObserversReach(t *testing.T) {
	g := NewWithT(t)
	o := &observers{verdict: confirm.Healthy, delay: 20 * time.Millisecond}
	s, eps := confirmedEjections(t, o)

	g.Eventually(func() *Confirmation { v, _ := s.View(key(1)); return v.Confirmation }, 5*time.Second).Should(
		And(Not(BeNil()), HaveField("Last", Not(BeNil()))), "the observers were asked")
	g.Consistently(func() int { v, _ := s.View(key(1)); return v.Ejection.Ejected }, time.Second).Should(BeZero(),
		"nothing is taken away while the observers reach the endpoint")
	v, _ := s.View(key(1))
	g.Expect(v.Confirmation).To(And(HaveField("Endpoint", eps[1]), HaveField("Ejection", ejection.ConsecutiveFailures),
		HaveField("HeldUntil", BeTemporally(">", time.Now()))))
	g.Expect(v.Confirmation.Last.Outcome).To(Equal(confirm.Refuted))
	g.Expect(v.Held).To(BeNil(), "the guard was never asked")
	g.Expect(v.Ejection.HeldBack).To(BeEmpty())
	q := o.questions()
	g.Expect(q).To(HaveLen(1), "one question while held, not one per probe")
	g.Expect(q[0]).To(And(HaveField("Endpoints", []probe.Endpoint{eps[1]}), HaveField("Ejection", ejection.ConsecutiveFailures),
		HaveField("Reason", breaker.NoReason)))
}

func TestSchedulerEjectsWhenTheObserversConfirmOrStaySilent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		verdict confirm.Verdict
		want    string
	}{
		{"confirmed", confirm.Failing, "confirmed: 3 of 3 observers see the endpoint failing"},
		{"nobody answers: the single-observer rule", confirm.Silent, "unconfirmed: no observer answered about the endpoint in time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			o := &observers{verdict: tc.verdict, delay: 20 * time.Millisecond}
			s, eps := confirmedEjections(t, o)
			events := endpointEvents(s, 1)
			g.Eventually(events, 5*time.Second).Should(ContainElement(And(HaveField("Kind", ejection.EventEjected),
				HaveField("Endpoint", eps[1]), HaveField("Message", HavePrefix(tc.want)))))
			v, _ := s.View(key(1))
			g.Expect(v.Ejection.HeldBack).To(Equal([]probe.Endpoint{eps[1]}))
			g.Expect(v.Confirmation.Last).To(HaveField("Outcome", Not(Equal(confirm.Refuted))))
			g.Expect(o.questions()).To(HaveLen(1))
			s.mu.Lock()
			e := s.entries[key(1)]
			s.mu.Unlock()
			e.mu.Lock()
			defer e.mu.Unlock()
			g.Expect(e.ejectSuspicions).To(BeEmpty(), "an ejected endpoint's suspicion is forgotten")
		})
	}
}

func TestSchedulerLetsEveryConfirmedTripPastTheGuard(t *testing.T) {
	for _, tc := range []struct {
		name      string
		verdict   confirm.Verdict
		wantOpen  int
		wantHeld  int
		rationale string
	}{
		{"the observers agree", confirm.Failing, 4, 0, "a failure other nodes see is no sick manager: all four trip"},
		{"nobody answers", confirm.Silent, 2, 2, "the manager decides alone, so the guard admits half of them"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			sick := &recorder{}
			ep, _ := serve(t, "127.0.0.1", sick)
			gd := guard.New(guard.Config{MaxTripFraction: 0.5, Window: time.Minute, MinBreakers: 4}, clock.RealClock{})
			o := &observers{verdict: tc.verdict, delay: 20 * time.Millisecond}
			s := startScheduler(t, Options{MaxConcurrentProbes: 16, Guard: gd, Confirmer: o})
			for i := range 4 {
				reg := registration(t, 50*time.Millisecond, ep)
				reg.Spec.Timeout = 200 * time.Millisecond
				reg.Config.ConsecutiveFailures = 2
				reg.Gated = true
				reg.Confirm = ConfirmConfig{Observers: 2}
				g.Expect(s.Upsert(key(i), reg)).To(Succeed())
			}
			sick.failing.Store(true)
			counts := func() [2]int {
				var open, held int
				for i := range 4 {
					v, _ := s.View(key(i))
					if v.Snapshot.State == breaker.Open {
						open++
					}
					if v.Held != nil {
						held++
					}
				}
				return [2]int{open, held}
			}
			g.Eventually(counts, 5*time.Second).Should(Equal([2]int{tc.wantOpen, tc.wantHeld}), tc.rationale)
			g.Consistently(counts, 300*time.Millisecond).Should(Equal([2]int{tc.wantOpen, tc.wantHeld}))
			g.Expect(gd.Stats().TripsInWindow).To(Equal(tc.wantOpen), "confirmed trips still spend the budget")
		})
	}
}

func TestSchedulerAsksNobodyWhileNothingIsSuspect(t *testing.T) {
	g := NewWithT(t)
	o := &observers{verdict: confirm.Failing}
	s, _, _ := confirmed(t, o)
	g.Eventually(func() uint64 { v, _ := s.View(key(1)); return v.Probes[breaker.Success] }, 5*time.Second).Should(
		BeNumerically(">=", 20), "the leader probes a healthy target for a while")
	g.Expect(o.questions()).To(BeEmpty(), "no observer probes anything while nothing is suspect")
	v, _ := s.View(key(1))
	g.Expect(v.Confirmation).To(BeNil())
}
