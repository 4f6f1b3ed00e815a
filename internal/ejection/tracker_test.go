package ejection

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func addr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 8080)
}

func addrs(n int) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = addr(i + 1)
	}
	return out
}

// envoyish is a configuration close to Envoy's defaults, with a cap of half the endpoints.
func envoyish(edit ...func(*Config)) Config {
	c := Config{ConsecutiveFailures: 3, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 5 * time.Minute,
		MaxEjectedPercent: 50, PanicThresholdPercent: 0}
	for _, e := range edit {
		e(&c)
	}
	return c
}

func newTracker(t *testing.T, cfg Config, n int) (*Tracker, *testingclock.FakeClock) {
	t.Helper()
	clk := testingclock.NewFakeClock(t0)
	tr, err := New(cfg, clk)
	if err != nil {
		t.Fatal(err)
	}
	tr.SetEndpoints(addrs(n))
	return tr, clk
}

func fail(tr *Tracker, i, times int) {
	for range times {
		tr.Record(addr(i), breaker.Failure, "HTTP 503")
	}
}

func TestEjectsAfterConsecutiveFailuresAndReturnsAfterATrial(t *testing.T) {
	g := NewWithT(t)
	tr, clk := newTracker(t, envoyish(), 3)
	fail(tr, 2, 2)
	tr.Record(addr(2), breaker.Success, "")
	fail(tr, 2, 2)
	g.Expect(tr.View().Ejected).To(BeZero(), "a success in between starts the count again")
	tr.Record(addr(2), breaker.Neutral, "HTTP 429")
	fail(tr, 2, 1)
	v := tr.View()
	g.Expect(v.Ejected).To(Equal(1), "a Neutral outcome counts for nothing")
	g.Expect(v.HeldBack).To(Equal([]netip.AddrPort{addr(2)}))
	g.Expect(v.Listed).To(Equal([]EndpointStatus{{Endpoint: addr(2), Phase: Ejected, Reason: ConsecutiveFailures,
		Since: t0, Until: t0.Add(30 * time.Second), Ejections: 1, Message: "HTTP 503"}}))
	g.Expect(tr.TakeEvents()).To(Equal([]Event{{Kind: EventEjected, Endpoint: addr(2), Reason: ConsecutiveFailures, At: t0,
		Until: t0.Add(30 * time.Second), Ejections: 1, Message: "HTTP 503"}}))
	at, ok := tr.NextDeadline()
	g.Expect(ok).To(BeTrue())
	g.Expect(at).To(Equal(t0.Add(30 * time.Second)))

	// Outcomes during the ejection change nothing.
	tr.Record(addr(2), breaker.Success, "")
	g.Expect(tr.IsEjected(addr(2))).To(BeTrue())
	g.Expect(tr.DueTrials()).To(BeEmpty())

	clk.Step(30 * time.Second)
	tr.Tick()
	g.Expect(tr.DueTrials()).To(Equal([]netip.AddrPort{addr(2)}))
	_, ok = tr.NextDeadline()
	g.Expect(ok).To(BeFalse(), "an ejection that ended waits for its trial, not for a timer")
	tr.Record(addr(2), breaker.Success, "HTTP 200")
	g.Expect(tr.View().Ejected).To(BeZero())
	g.Expect(tr.TakeEvents()).To(Equal([]Event{{Kind: EventReturned, Endpoint: addr(2), At: t0.Add(30 * time.Second),
		Ejections: 1, Message: "HTTP 200"}}))
}

func TestAFailedTrialEjectsForLongerUpToTheCapAndTheCountDecays(t *testing.T) {
	g := NewWithT(t)
	tr, clk := newTracker(t, envoyish(func(c *Config) { c.MaxEjectionTime = 100 * time.Second }), 2)
	fail(tr, 1, 3)
	for i, want := range []time.Duration{60, 90, 100, 100} {
		clk.Step(time.Hour)
		tr.Record(addr(1), breaker.Failure, "HTTP 503")
		l := tr.View().Listed[0]
		g.Expect(l.Reason).To(Equal(TrialFailed), "trial %d", i)
		g.Expect(l.Ejections).To(Equal(i + 2))
		g.Expect(l.Until.Sub(l.Since)).To(Equal(want * time.Second))
	}
	clk.Step(time.Hour)
	tr.Record(addr(1), breaker.Success, "")
	// 5 ejections; 70 s in takes 2 off (a base of 30 s each), so the next is the 4th: 100 s (capped).
	clk.Step(70 * time.Second)
	fail(tr, 1, 3)
	g.Expect(tr.View().Listed[0].Ejections).To(Equal(4))
	clk.Step(time.Hour)
	tr.Record(addr(1), breaker.Success, "")
	clk.Step(time.Hour) // long enough to forget every ejection
	fail(tr, 1, 3)
	l := tr.View().Listed[0]
	g.Expect(l.Ejections).To(Equal(1))
	g.Expect(l.Until.Sub(l.Since)).To(Equal(30 * time.Second))
}

func TestFailureRateNeedsItsMinimumProbes(t *testing.T) {
	g := NewWithT(t)
	tr, _ := newTracker(t, envoyish(func(c *Config) {
		c.ConsecutiveFailures = 0
		c.FailureRate = breaker.RateRule{Percent: 50, Window: 10, MinimumProbes: 6}
	}), 2)
	for _, o := range []breaker.Outcome{breaker.Failure, breaker.Success, breaker.Failure, breaker.Success, breaker.Failure} {
		tr.Record(addr(1), o, "")
	}
	g.Expect(tr.View().Ejected).To(BeZero(), "3 of 5 fail, but the window holds fewer than 6")
	tr.Record(addr(1), breaker.Slow, "")
	g.Expect(tr.View().Ejected).To(Equal(1), "3 of 6 is 50%: Slow counts as a success, and the window is full enough")
}

func TestTheCapAndThePanicThreshold(t *testing.T) {
	g := NewWithT(t)
	tr, clk := newTracker(t, envoyish(), 4)
	for i := 1; i <= 3; i++ {
		fail(tr, i, 3)
	}
	v := tr.View()
	g.Expect([]int{v.Ejected, v.Capped, v.MaxEjected}).To(Equal([]int{2, 1, 2}), "3 of 4 fail with 50%: 2 ejected")
	g.Expect(v.HeldBack).To(Equal([]netip.AddrPort{addr(1), addr(2)}))
	g.Expect(v.Panic).To(BeFalse(), "panicThresholdPercent 0 never panics")

	// Room is made when one returns; the capped one is ejected at its next failure.
	clk.Step(30 * time.Second)
	tr.Record(addr(1), breaker.Success, "")
	g.Expect(tr.View().Capped).To(Equal(1))
	fail(tr, 3, 1)
	v = tr.View()
	g.Expect([]int{v.Ejected, v.Capped}).To(Equal([]int{2, 0}))
	g.Expect(v.HeldBack).To(Equal([]netip.AddrPort{addr(2), addr(3)}))

	// With a threshold, 3 failing of 4 is 25% healthy: panic publishes everything.
	g.Expect(tr.Reconfigure(envoyish(func(c *Config) { c.PanicThresholdPercent = 30 }))).To(Succeed())
	fail(tr, 1, 3)
	v = tr.View()
	g.Expect(v.Panic).To(BeTrue())
	g.Expect(v.HeldBack).To(BeEmpty())
	g.Expect(v.Ejected).To(Equal(2), "ejections go on underneath")
}

func TestTheCapNeverEjectsTheLastEndpoint(t *testing.T) {
	for n, want := range map[int]int{1: 0, 2: 1, 3: 1, 4: 2, 10: 5} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			g := NewWithT(t)
			tr, _ := newTracker(t, envoyish(func(c *Config) { c.MaxEjectedPercent = 100 }), n)
			for i := 1; i <= n; i++ {
				fail(tr, i, 3)
			}
			if n > 1 {
				want = n - 1
			}
			g.Expect(tr.View().Ejected).To(Equal(want))
			g.Expect(len(tr.View().HeldBack)).To(BeNumerically("<", n))
		})
	}
}

func TestSlowStartStepsAfterAClose(t *testing.T) {
	for _, tt := range []struct {
		n, keep int
		steps   [4]int // held back at 0, W/3, 2W/3 and W
	}{
		{n: 2, keep: 1, steps: [4]int{0, 0, 0, 0}},  // C = 1: it comes back at once
		{n: 5, keep: 1, steps: [4]int{3, 3, 2, 0}},  // C = 4: 1, 1, 2, 4
		{n: 11, keep: 1, steps: [4]int{9, 7, 5, 0}}, // C = 10: 1, 3, 5, 10
		{n: 8, keep: 1, steps: [4]int{6, 5, 3, 0}},  // C = 7: 1, 2, 4, 7
	} {
		t.Run(fmt.Sprintf("%d endpoints", tt.n), func(t *testing.T) {
			g := NewWithT(t)
			tr, clk := newTracker(t, Config{SlowStart: 30 * time.Second}, tt.n)
			tr.StartRamp(tt.keep)
			var got [4]int
			for i := range got {
				if i > 0 {
					at, ok := tr.NextDeadline()
					if tt.steps[i-1] > 0 {
						g.Expect(ok).To(BeTrue())
						g.Expect(at).To(Equal(clk.Now().Add(10*time.Second)), "the step's deadline")
					}
					clk.Step(10 * time.Second)
					tr.Tick()
				}
				got[i] = len(tr.View().HeldBack)
			}
			g.Expect(got).To(Equal(tt.steps))
			g.Expect(tr.View().HeldBack).NotTo(ContainElement(addr(1)), "the endpoint HalfOpen published stays")
			_, ok := tr.NextDeadline()
			g.Expect(ok).To(BeFalse())
		})
	}
}

func TestEndpointsReturningFromEjectionRampTogether(t *testing.T) {
	g := NewWithT(t)
	tr, clk := newTracker(t, envoyish(func(c *Config) { c.MaxEjectedPercent = 100; c.SlowStart = 30 * time.Second }), 8)
	for i := 1; i <= 4; i++ {
		fail(tr, i, 3)
	}
	clk.Step(30 * time.Second)
	for i := 1; i <= 4; i++ {
		tr.Record(addr(i), breaker.Success, "")
	}
	v := tr.View()
	g.Expect([]int{v.Ejected, v.SlowStart}).To(Equal([]int{0, 3}), "of 4 back at once, 1 is published")
	g.Expect(v.HeldBack).To(Equal([]netip.AddrPort{addr(2), addr(3), addr(4)}), "in the order they came back")
	g.Expect(v.Listed[0].Phase).To(Equal(SlowStart))
	// A member that fails again leaves the ramp for an ejection.
	fail(tr, 3, 3)
	v = tr.View()
	g.Expect([]int{v.Ejected, v.SlowStart}).To(Equal([]int{1, 2}))
	g.Expect(v.Listed[0].Endpoint).To(Equal(addr(3)), "ejected first, then those waiting")
	clk.Step(30 * time.Second)
	tr.Tick()
	g.Expect(tr.View().SlowStart).To(BeZero())
}

func TestANewEndpointIsPublishedAtOnceAndAGoneOneFreesItsPlace(t *testing.T) {
	g := NewWithT(t)
	tr, _ := newTracker(t, envoyish(func(c *Config) { c.SlowStart = time.Minute }), 2)
	fail(tr, 1, 3)
	fail(tr, 2, 3)
	g.Expect([]int{tr.View().Ejected, tr.View().Capped}).To(Equal([]int{1, 1}))
	tr.SetEndpoints(append(addrs(2), addr(3), addr(4)))
	v := tr.View()
	g.Expect(v.HeldBack).To(Equal([]netip.AddrPort{addr(1)}), "new pods are never ramped")
	g.Expect(v.MaxEjected).To(Equal(2))
	tr.SetEndpoints([]netip.AddrPort{addr(2), addr(3), addr(4)})
	v = tr.View()
	g.Expect([]int{v.Ejected, v.Capped}).To(Equal([]int{0, 1}))
	fail(tr, 2, 1)
	g.Expect(tr.View().HeldBack).To(Equal([]netip.AddrPort{addr(2)}))
}

func TestTheObserverGuardsPermit(t *testing.T) {
	g := NewWithT(t)
	tr, _ := newTracker(t, envoyish(), 4)
	allow := false
	asked := 0
	tr.SetPermit(func() bool { asked++; return allow })
	fail(tr, 1, 3)
	v := tr.View()
	g.Expect([]int{v.Ejected, v.Capped}).To(Equal([]int{0, 1}))
	g.Expect(v.Held).To(BeTrue())
	g.Expect(tr.WantsEjection()).To(BeTrue())
	tr.Record(addr(1), breaker.Success, "")
	g.Expect(tr.View().Held).To(BeFalse(), "no endpoint's rule holds any more")
	fail(tr, 1, 3)
	g.Expect(tr.View().Held).To(BeTrue())
	allow = true
	fail(tr, 1, 1)
	g.Expect(tr.View().Ejected).To(Equal(1))
	g.Expect(tr.View().Held).To(BeFalse())
	before := asked
	fail(tr, 2, 3)
	g.Expect(asked).To(Equal(before), "only the first ejection asks")
}

func TestClearAndReconfigure(t *testing.T) {
	g := NewWithT(t)
	tr, _ := newTracker(t, envoyish(func(c *Config) { c.SlowStart = time.Minute }), 4)
	fail(tr, 1, 3)
	tr.TakeEvents()
	tr.Clear()
	g.Expect(tr.View()).To(Equal(View{Endpoints: 4, MaxEjected: 2}))
	g.Expect(tr.TakeEvents()).To(ConsistOf(HaveField("Message", "reset")))
	fail(tr, 1, 2)
	g.Expect(tr.View().Ejected).To(BeZero(), "the counters were cleared")

	fail(tr, 1, 1)
	tr.StartRamp(1)
	g.Expect(tr.View().SlowStart).To(Equal(1))
	g.Expect(tr.Reconfigure(Config{})).To(Succeed())
	g.Expect(tr.View()).To(Equal(View{Endpoints: 4, MaxEjected: 0}), "ejection and slow start off: every endpoint is published")

	g.Expect(tr.Reconfigure(Config{ConsecutiveFailures: -1})).NotTo(Succeed())
}

func TestRestoreRoundTrip(t *testing.T) {
	g := NewWithT(t)
	cfg := envoyish(func(c *Config) { c.MaxEjectedPercent = 100; c.SlowStart = 30 * time.Second })
	tr, clk := newTracker(t, cfg, 30)
	for i := 1; i <= 22; i++ {
		fail(tr, i, 3)
		clk.Step(time.Second)
	}
	clk.Step(30 * time.Second)
	for i := 1; i <= 5; i++ {
		tr.Record(addr(i), breaker.Success, "")
	}
	want := tr.View()
	g.Expect(want.Listed).To(HaveLen(MaxListed))
	g.Expect([]int{want.Ejected, want.SlowStart}).To(Equal([]int{17, 4}))

	again, err := New(cfg, clk)
	g.Expect(err).NotTo(HaveOccurred())
	again.Restore(want.Listed)
	again.SetEndpoints(addrs(30))
	got := again.View()
	g.Expect(got.Listed).To(Equal(want.Listed), "what status listed comes back as it was")
	g.Expect(got.Ejected).To(Equal(17), "the first 20 listed: 17 ejected, 3 of the 4 waiting")
	g.Expect(got.SlowStart).To(Equal(3))

	// Restored entries for endpoints that are gone are dropped.
	third, _ := New(cfg, clk)
	third.Restore(want.Listed)
	third.SetEndpoints(addrs(30)[22:]) // 23 to 30: none of them was listed
	g.Expect(third.View().Ejected).To(BeZero())
}

func BenchmarkRecord(b *testing.B) {
	clk := testingclock.NewFakeClock(t0)
	tr, _ := New(envoyish(func(c *Config) { c.FailureRate = breaker.RateRule{Percent: 50, Window: 100, MinimumProbes: 10} }), clk)
	tr.SetEndpoints(addrs(100))
	outcomes := []breaker.Outcome{breaker.Success, breaker.Success, breaker.Failure, breaker.Success}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		tr.Record(addr(i%100+1), outcomes[i%len(outcomes)], "")
	}
}

func TestConfirmKeepsASuspectPublishedUntilRetry(t *testing.T) {
	g := NewWithT(t)
	tr, clk := newTracker(t, envoyish(), 4)
	type ask struct {
		ep netip.AddrPort
		r  Reason
	}
	var asked []ask
	allow := false
	tr.SetConfirm(func(ep netip.AddrPort, r Reason) bool { asked = append(asked, ask{ep, r}); return allow })
	guardAsked := 0
	tr.SetPermit(func() bool { guardAsked++; return true })

	fail(tr, 2, 3)
	g.Expect(asked).To(Equal([]ask{{addr(2), ConsecutiveFailures}}))
	g.Expect(tr.IsEjected(addr(2))).To(BeFalse(), "a suspect stays published")
	g.Expect(tr.Summary()).To(Equal(Summary{}), "and counts as neither capped nor held")
	g.Expect(guardAsked).To(BeZero(), "a trip the observers did not agree to spends none of the guard's budget")
	g.Expect(tr.RuleHolds(addr(2))).To(Equal(ConsecutiveFailures))
	g.Expect(tr.RuleHolds(addr(1))).To(Equal(NoReason))

	allow = true
	clk.Step(time.Second)
	g.Expect(tr.Retry(addr(2), "confirmed: 2 of 3 observers see it failing")).To(BeTrue())
	g.Expect(tr.IsEjected(addr(2))).To(BeTrue())
	g.Expect(guardAsked).To(Equal(1))
	g.Expect(tr.TakeEvents()).To(ContainElement(And(HaveField("Kind", EventEjected), HaveField("Endpoint", addr(2)),
		HaveField("Message", "confirmed: 2 of 3 observers see it failing"), HaveField("At", t0.Add(time.Second)))))
	g.Expect(tr.RuleHolds(addr(2))).To(Equal(NoReason), "an ejected endpoint has no rule to hold")
	g.Expect(tr.Retry(addr(2), "again")).To(BeFalse())

	fail(tr, 3, 3)
	tr.Record(addr(3), breaker.Success, "")
	g.Expect(tr.Retry(addr(3), "late")).To(BeFalse(), "an endpoint that recovered before the answer is not ejected")
	g.Expect(tr.Retry(addr(9), "unknown")).To(BeFalse())

	tr.SetConfirm(nil)
	fail(tr, 3, 3)
	g.Expect(tr.IsEjected(addr(3))).To(BeTrue(), "without a confirm function an ejection goes ahead at once")
}
