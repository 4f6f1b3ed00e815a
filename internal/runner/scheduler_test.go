package runner

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"go.uber.org/goleak"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// recorder is an HTTP backend that logs when each request arrived and can be switched
// between healthy and failing.
type recorder struct {
	mu       sync.Mutex
	arrivals []time.Time
	failing  atomic.Bool
	delay    time.Duration
	// hanging holds each request until its client gives up.
	hanging  atomic.Bool
	inflight atomic.Int32
	peak     atomic.Int32
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := rec.inflight.Add(1)
	defer rec.inflight.Add(-1)
	for p := rec.peak.Load(); n > p && !rec.peak.CompareAndSwap(p, n); p = rec.peak.Load() {
	}
	rec.mu.Lock()
	rec.arrivals = append(rec.arrivals, time.Now())
	rec.mu.Unlock()
	if rec.hanging.Load() {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		return
	}
	time.Sleep(rec.delay)
	if rec.failing.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
}

func (rec *recorder) count() int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return len(rec.arrivals)
}

func (rec *recorder) times() []time.Time {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]time.Time(nil), rec.arrivals...)
}

func registration(t *testing.T, interval time.Duration, eps ...probe.Endpoint) Registration {
	return Registration{
		Spec:      httpSpec(t, func(s *probe.Spec) { s.HTTP.Path = "/"; s.Timeout = min(time.Second, interval) }),
		Interval:  interval,
		Endpoints: eps,
		Config:    breaker.Config{ConsecutiveFailures: 3, OpenDuration: time.Hour, TrialProbes: 1, SuccessThreshold: 1},
	}
}

// startScheduler runs a scheduler until the test ends, probing through a real net.Dialer
// unless o says otherwise.
func startScheduler(t *testing.T, o Options) *Scheduler {
	t.Helper()
	if o.NewProber == nil {
		o.NewProber = probe.NewFactory(nil, clock.RealClock{}).New
	}
	s := New(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Start(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s
}

func key(i int) types.NamespacedName {
	return types.NamespacedName{Namespace: "shop", Name: fmt.Sprintf("b%d", i)}
}

func TestSchedulerSpreadsProbesAcrossTheInterval(t *testing.T) {
	g := NewWithT(t)
	rec := &recorder{}
	ep, _ := serve(t, "127.0.0.1", rec)
	s := startScheduler(t, Options{MaxConcurrentProbes: 64})
	const breakers, interval = 50, 500 * time.Millisecond
	start := time.Now()
	for i := range breakers {
		g.Expect(s.Upsert(key(i), registration(t, interval, ep))).To(Succeed())
	}
	g.Eventually(rec.count, 5*time.Second).Should(BeNumerically(">=", 3*breakers))

	// Every breaker probes once per interval: the first round fills the whole interval, as
	// phases; the largest gap between neighbours is small, not half the circle.
	var phases []float64
	for _, at := range rec.times()[:breakers] {
		phases = append(phases, float64(at.Sub(start)%interval)/float64(interval))
	}
	sort.Float64s(phases)
	maxGap := 1 - phases[len(phases)-1] + phases[0]
	for i := 1; i < len(phases); i++ {
		maxGap = max(maxGap, phases[i]-phases[i-1])
	}
	g.Expect(maxGap).To(BeNumerically("<", 0.3), "probes bunch up: phases %v", phases)

	// And keeps that rhythm: 200 more probes take about two seconds at 100 per second.
	before, t0 := rec.count(), time.Now()
	g.Eventually(rec.count, 5*time.Second).Should(BeNumerically(">=", before+200))
	g.Expect(time.Since(t0)).To(BeNumerically("~", 2*time.Second, 400*time.Millisecond))
}

func TestSchedulerRespectsTheConcurrencyBound(t *testing.T) {
	g := NewWithT(t)
	rec := &recorder{delay: 100 * time.Millisecond}
	ep, _ := serve(t, "127.0.0.1", rec)
	late := &starts{}
	s := startScheduler(t, Options{MaxConcurrentProbes: 3, Observers: func(types.NamespacedName) ProbeObserver { return late }})
	for i := range 20 {
		g.Expect(s.Upsert(key(i), registration(t, 200*time.Millisecond, ep))).To(Succeed())
	}
	g.Eventually(rec.count, 5*time.Second).Should(BeNumerically(">=", 30))
	g.Expect(rec.peak.Load()).To(BeEquivalentTo(3), "the bound should be reached and never exceeded")
	g.Expect(late.max()).To(BeNumerically(">", 50*time.Millisecond),
		"a saturated scheduler probes late instead of exceeding its bound")
}

func TestSchedulerOpenBreakerSendsNoProbes(t *testing.T) {
	g := NewWithT(t)
	rec := &recorder{}
	rec.failing.Store(true)
	ep, _ := serve(t, "127.0.0.1", rec)
	var notified atomic.Int32
	s := startScheduler(t, Options{MaxConcurrentProbes: 8, OnChange: func(k types.NamespacedName) {
		if k == key(1) {
			notified.Add(1)
		}
	}})
	g.Expect(s.Upsert(key(1), registration(t, 50*time.Millisecond, ep))).To(Succeed())

	g.Eventually(notified.Load).Should(BeEquivalentTo(1))
	changes := s.TakeChanges(key(1))
	v, ok := s.View(key(1))
	g.Expect(ok).To(BeTrue())
	g.Expect(v.Snapshot.State).To(Equal(breaker.Open))
	g.Expect(changes).To(HaveLen(1))
	g.Expect(changes[0].Reason).To(Equal(breaker.ConsecutiveFailures))
	g.Expect(changes[0].Probe.Message).To(Equal("HTTP 503"))
	g.Expect(v.LastProbe.Endpoint).To(Equal(ep))
	g.Expect(v.Probes[breaker.Failure]).To(BeEquivalentTo(3))

	g.Consistently(rec.count, time.Second).Should(Equal(3), "an Open breaker must not probe")
	g.Expect(notified.Load()).To(BeEquivalentTo(1), "steady Open state must not notify the controller")
	g.Expect(s.TakeChanges(key(1))).To(BeEmpty(), "TakeChanges forgets the changes it returns")
}

func TestSchedulerRecoversThroughAnImmediateTrial(t *testing.T) {
	g := NewWithT(t)
	rec := &recorder{}
	rec.failing.Store(true)
	ep, _ := serve(t, "127.0.0.1", rec)
	s := startScheduler(t, Options{MaxConcurrentProbes: 8})
	reg := registration(t, 2*time.Second, ep)
	reg.Config.ConsecutiveFailures = 1
	reg.Config.OpenDuration = time.Second
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())

	var changes []Change
	collect := func() []Change {
		changes = append(changes, s.TakeChanges(key(1))...)
		return changes
	}
	g.Eventually(collect, 5*time.Second).Should(HaveLen(1))
	rec.failing.Store(false)
	g.Eventually(collect, 5*time.Second).Should(HaveLen(3))
	g.Expect([]breaker.Reason{changes[0].Reason, changes[1].Reason, changes[2].Reason}).To(Equal(
		[]breaker.Reason{breaker.ConsecutiveFailures, breaker.OpenTimeout, breaker.TrialSucceeded}))
	g.Expect(changes[1].At.Sub(changes[0].At)).To(BeNumerically("~", time.Second, 100*time.Millisecond),
		"HalfOpen comes by timer at openUntil")
	g.Expect(changes[2].At.Sub(changes[1].At)).To(BeNumerically("<", 300*time.Millisecond),
		"the first trial goes out at once, not at the endpoint's next turn 2s later")
}

func TestSchedulerFollowsEndpointChanges(t *testing.T) {
	g := NewWithT(t)
	a, b := &recorder{}, &recorder{}
	epA, _ := serve(t, "127.0.0.1", a)
	epB, _ := serve(t, "127.0.0.2", b)
	s := startScheduler(t, Options{MaxConcurrentProbes: 8})
	g.Expect(s.Upsert(key(1), registration(t, 50*time.Millisecond, epA))).To(Succeed())
	g.Eventually(a.count).Should(BeNumerically(">=", 2))
	g.Expect(b.count()).To(BeZero())

	g.Expect(s.Upsert(key(1), registration(t, 50*time.Millisecond, epB))).To(Succeed())
	g.Eventually(b.count).Should(BeNumerically(">=", 2))
	seenA := a.count()
	g.Consistently(a.count, 500*time.Millisecond).Should(BeNumerically("<=", seenA+1), "a removed endpoint is not probed")

	s.Remove(key(1))
	seenB := b.count()
	g.Consistently(b.count, 500*time.Millisecond).Should(BeNumerically("<=", seenB+1), "a removed breaker is not probed")
	_, ok := s.View(key(1))
	g.Expect(ok).To(BeFalse())
}

func TestSchedulerResumesAnOpenBreakerFromStatus(t *testing.T) {
	g := NewWithT(t)
	rec := &recorder{}
	ep, _ := serve(t, "127.0.0.1", rec)
	s := startScheduler(t, Options{MaxConcurrentProbes: 8})
	reg := registration(t, 50*time.Millisecond, ep)
	openUntil := time.Now().Add(700 * time.Millisecond)
	reg.Restore = &breaker.Snapshot{State: breaker.Open, Reason: breaker.ConsecutiveFailures, Since: time.Now(),
		OpenUntil: openUntil, OpenStreak: 2, Trips: 5}
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())

	g.Consistently(rec.count, 500*time.Millisecond).Should(BeZero(), "no probe before openUntil")
	g.Eventually(func() breaker.State { v, _ := s.View(key(1)); return v.Snapshot.State }).Should(Equal(breaker.Closed))
	v, _ := s.View(key(1))
	g.Expect(v.Snapshot.Trips).To(BeEquivalentTo(5))
	g.Expect(rec.times()[0]).To(BeTemporally(">=", openUntil))
}

func TestSchedulerLeavesNoGoroutineBehind(t *testing.T) {
	g := NewWithT(t)
	rec := &recorder{}
	httpEP, _ := serve(t, "127.0.0.1", rec)
	tcpL := listenOn(t, "127.0.0.1")
	t.Cleanup(func() { _ = tcpL.Close() })
	go func() {
		for {
			c, err := tcpL.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	tcpEP := netip.MustParseAddrPort(tcpL.Addr().String())
	hang := &recorder{delay: 5 * time.Second}
	hangEP, _ := serve(t, "127.0.0.3", hang)

	baseline := goleak.IgnoreCurrent()
	ctx, cancel := context.WithCancel(context.Background())
	s := New(Options{NewProber: probe.NewFactory(nil, clock.RealClock{}).New, MaxConcurrentProbes: 8})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Start(ctx)
	}()

	g.Expect(s.Upsert(key(1), registration(t, 50*time.Millisecond, httpEP))).To(Succeed())
	tcpReg := registration(t, 50*time.Millisecond, tcpEP)
	tcpReg.Spec = probe.Spec{Timeout: time.Second, TCP: true}
	g.Expect(s.Upsert(key(2), tcpReg)).To(Succeed())
	hangReg := registration(t, time.Second, hangEP)
	g.Expect(s.Upsert(key(3), hangReg)).To(Succeed())
	g.Eventually(func() int { return rec.count() + hang.count() }).Should(BeNumerically(">=", 3))
	g.Eventually(hang.count, 3*time.Second).Should(BeNumerically(">=", 1))

	// Removing every breaker, one with a probe still in flight, leaves nothing of theirs
	// running: only the scheduler itself and the test servers' own goroutines remain.
	for i := 1; i <= 3; i++ {
		s.Remove(key(i))
	}
	g.Eventually(func() error {
		return goleak.Find(baseline,
			goleak.IgnoreTopFunction("github.com/tripswitch/tripswitch/internal/runner.(*Scheduler).Start"),
			goleak.IgnoreAnyFunction("github.com/tripswitch/tripswitch/internal/runner.(*recorder).ServeHTTP"))
	}, 3*time.Second).Should(Succeed())

	// So does stopping the scheduler.
	g.Expect(s.Upsert(key(4), registration(t, 50*time.Millisecond, httpEP))).To(Succeed())
	g.Eventually(rec.count).Should(BeNumerically(">=", rec.count()+2))
	cancel()
	<-done
	g.Eventually(func() error { return goleak.Find(baseline) }, 10*time.Second).Should(Succeed())
}

func state(s *Scheduler, k types.NamespacedName) func() breaker.State {
	return func() breaker.State { v, _ := s.View(k); return v.Snapshot.State }
}

func TestSchedulerGivesATrialSlotBackWhenTheProbeIsEditedMidTrial(t *testing.T) {
	g := NewWithT(t)
	rec := &recorder{}
	rec.failing.Store(true)
	ep, _ := serve(t, "127.0.0.1", rec)
	s := startScheduler(t, Options{MaxConcurrentProbes: 8})
	reg := registration(t, 3*time.Second, ep) // timeout 1s, the next turn 3s away
	reg.Config.ConsecutiveFailures, reg.Config.OpenDuration = 1, time.Second
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	g.Eventually(state(s, key(1)), 5*time.Second).Should(Equal(breaker.Open))

	rec.failing.Store(false)
	rec.hanging.Store(true)
	g.Eventually(state(s, key(1)), 3*time.Second).Should(Equal(breaker.HalfOpen))
	g.Eventually(rec.inflight.Load).Should(BeEquivalentTo(1), "the trial hangs")
	edited := reg
	edited.Spec = httpSpec(t, func(sp *probe.Spec) { sp.HTTP.Path = "/ready"; sp.Timeout = time.Second })
	g.Expect(s.Upsert(key(1), edited)).To(Succeed())
	rec.hanging.Store(false)

	// The old probe times out after 1s and counts for nothing; its slot goes to a trial of
	// the edited probe at once, rather than never (the engine has no TrialTimeout here).
	g.Eventually(state(s, key(1)), 2500*time.Millisecond).Should(Equal(breaker.Closed))
}

func TestSchedulerSkipsAProbeThatCouldOnlyStartPastItsDeadline(t *testing.T) {
	g := NewWithT(t)
	slow, fast := &recorder{}, &recorder{}
	slow.hanging.Store(true)
	slowEP, _ := serve(t, "127.0.0.1", slow)
	fastEP, _ := serve(t, "127.0.0.2", fast)
	var late atomic.Int32
	// One probe at a time, and two breakers whose probes hang take turns to hold it for their
	// whole timeout: the manager is starved.
	s := startScheduler(t, Options{MaxConcurrentProbes: 1, LocalErrors: func(reason string) {
		if reason == probe.LocalStartedLate {
			late.Add(1)
		}
	}})
	g.Expect(s.Upsert(key(1), registration(t, time.Second, slowEP))).To(Succeed())
	g.Expect(s.Upsert(key(3), registration(t, time.Second, slowEP))).To(Succeed())
	g.Eventually(slow.inflight.Load).Should(BeEquivalentTo(1))
	fastReg := registration(t, 100*time.Millisecond, fastEP)
	fastReg.Config.ConsecutiveFailures = 1
	g.Expect(s.Upsert(key(2), fastReg)).To(Succeed())

	g.Eventually(late.Load, 5*time.Second).Should(BeNumerically(">=", 3), "probes that waited past their deadline are not sent")
	v, _ := s.View(key(2))
	g.Expect(v.Snapshot.State).To(Equal(breaker.Closed))
	g.Expect(v.Probes[breaker.Failure]).To(BeZero(), "a starved manager is no evidence against the target")
}

func TestSchedulerCountsTheManagersOwnErrorsAsNeutral(t *testing.T) {
	g := NewWithT(t)
	emfile := func(context.Context, string, string) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}
	}
	var reasons sync.Map
	s := startScheduler(t, Options{NewProber: probe.NewFactory(emfile, clock.RealClock{}).New, MaxConcurrentProbes: 4,
		LocalErrors: func(reason string) { reasons.Store(reason, true) }})
	reg := registration(t, 50*time.Millisecond, netip.MustParseAddrPort("127.0.0.1:9"))
	reg.Config.ConsecutiveFailures = 1
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())

	g.Eventually(func() uint64 { v, _ := s.View(key(1)); return v.Probes[breaker.Neutral] }).Should(BeNumerically(">=", 3))
	v, _ := s.View(key(1))
	g.Expect(v.Snapshot.State).To(Equal(breaker.Closed))
	g.Expect(v.LastProbe.Local).To(Equal(probe.LocalFileDescriptors))
	_, seen := reasons.Load(probe.LocalFileDescriptors)
	g.Expect(seen).To(BeTrue())
}

func TestSchedulerHoldsTripsUnderTheObserverGuard(t *testing.T) {
	g := NewWithT(t)
	rec := &recorder{}
	ep, _ := serve(t, "127.0.0.1", rec)
	gd := guard.New(guard.Config{MaxTripFraction: 0.5, Window: time.Minute, MinBreakers: 5}, clock.RealClock{})
	var notified sync.Map
	s := startScheduler(t, Options{MaxConcurrentProbes: 16, Guard: gd,
		OnChange: func(k types.NamespacedName) { notified.Store(k, true) }})

	for i := range 6 {
		reg := registration(t, 50*time.Millisecond, ep)
		reg.Gated = true
		g.Expect(s.Upsert(key(i), reg)).To(Succeed())
	}
	observe := registration(t, 50*time.Millisecond, ep) // Observe mode: neither counted nor held
	observe.Config.Mode = breaker.Observe
	g.Expect(s.Upsert(key(9), observe)).To(Succeed())
	rec.failing.Store(true)

	counts := func() (open, held int) {
		for i := range 6 {
			v, _ := s.View(key(i))
			switch {
			case v.Snapshot.State == breaker.Open:
				open++
			case v.Held != nil:
				held++
				g.Expect(v.Held.Reason).To(Equal(breaker.ConsecutiveFailures))
			}
		}
		return open, held
	}
	g.Eventually(func() [2]int { o, h := counts(); return [2]int{o, h} }, 5*time.Second).Should(Equal([2]int{3, 3}))
	g.Expect(gd.Active()).To(BeTrue())
	g.Expect(gd.Stats()).To(Equal(guard.Stats{Gated: 6, TripsInWindow: 3, Budget: 3, Held: 3}))
	g.Eventually(state(s, key(9))).Should(Equal(breaker.Open), "an Observe breaker trips, uncounted")
	for i := range 6 {
		_, ok := notified.Load(key(i))
		g.Expect(ok).To(BeTrue(), "the controller hears of trips and of holds")
	}

	rec.failing.Store(false)
	g.Eventually(gd.Active, 5*time.Second).Should(BeFalse(), "the holds end when the probes succeed")
	g.Eventually(func() [2]int { o, h := counts(); return [2]int{o, h} }).Should(Equal([2]int{3, 0}))
}

// outcomes is a ProbeObserver that counts what it hears.
type outcomes struct{ heard [4]atomic.Int32 }

func (o *outcomes) ObserveStart(time.Duration)                {}
func (o *outcomes) ObserveProbe(outcome int, _ time.Duration) { o.heard[outcome].Add(1) }

func (o *outcomes) total() int32 {
	var n int32
	for i := range o.heard {
		n += o.heard[i].Load()
	}
	return n
}

// TestSchedulerRecordsNoProbeItCancelled stops the scheduler, as a shutdown or a lost lease
// does, while a probe hangs: the manager stopped that probe, so it says nothing about the
// target and must leave no trace, neither an outcome nor a local error.
func TestSchedulerRecordsNoProbeItCancelled(t *testing.T) {
	g := NewWithT(t)
	hang := &recorder{}
	hang.hanging.Store(true)
	ep, _ := serve(t, "127.0.0.1", hang)
	heard := &outcomes{}
	var local atomic.Int32
	s := New(Options{NewProber: probe.NewFactory(nil, clock.RealClock{}).New, MaxConcurrentProbes: 4,
		Observers: func(types.NamespacedName) ProbeObserver { return heard }, LocalErrors: func(string) { local.Add(1) }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Start(ctx) }()
	reg := registration(t, 5*time.Second, ep)
	reg.Spec.Timeout = 5 * time.Second
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	g.Eventually(hang.inflight.Load, 7*time.Second).Should(BeEquivalentTo(1))

	cancel()
	<-done
	g.Expect(heard.total()).To(BeZero(), "a probe the manager cancelled was recorded as an outcome")
	g.Expect(local.Load()).To(BeZero(), "a probe the manager cancelled was counted as a local error")
}
