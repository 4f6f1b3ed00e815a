package runner

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// fakeProbes answers every probe of every breaker on a fake clock: a hanging endpoint holds
// its probe until the scheduler cancels it, any other succeeds at once. It keeps the peak of
// probes in flight per endpoint group (the address without the port).
type fakeProbes struct {
	mu       sync.Mutex
	hanging  map[netip.Addr]bool
	inflight map[netip.Addr]int
	peak     map[netip.Addr]int
	started  map[netip.Addr]int
	hangFor  time.Duration // when set, a hanging probe ends after this long on clk
	clk      *testingclock.FakeClock
}

func newFakeProbes() *fakeProbes {
	return &fakeProbes{hanging: map[netip.Addr]bool{}, inflight: map[netip.Addr]int{}, peak: map[netip.Addr]int{},
		started: map[netip.Addr]int{}}
}

func (f *fakeProbes) New(probe.Spec) (probe.Prober, error) { return f, nil }
func (f *fakeProbes) Forget(probe.Endpoint)                {}
func (f *fakeProbes) Close()                               {}

func (f *fakeProbes) Probe(ctx context.Context, ep probe.Endpoint) probe.Result {
	group := ep.Addr()
	f.mu.Lock()
	f.started[group]++
	f.inflight[group]++
	f.peak[group] = max(f.peak[group], f.inflight[group])
	hang := f.hanging[group]
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inflight[group]--
		f.mu.Unlock()
	}()
	if hang {
		var timeout <-chan time.Time
		if f.hangFor > 0 {
			timeout = f.clk.After(f.hangFor)
		}
		select {
		case <-ctx.Done():
		case <-timeout:
		}
		return probe.Result{Endpoint: ep, Outcome: breaker.Failure, Message: "timeout"}
	}
	return probe.Result{Endpoint: ep, Outcome: breaker.Success, Message: "ok"}
}

func (f *fakeProbes) hang(group netip.Addr, hang bool) {
	f.mu.Lock()
	f.hanging[group] = hang
	f.mu.Unlock()
}

func (f *fakeProbes) count(m map[netip.Addr]int, group netip.Addr) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return m[group]
}

// endpoints are n endpoints of one group: the same address, ports 1 to n.
func endpoints(group netip.Addr, n int) []probe.Endpoint {
	eps := make([]probe.Endpoint, n)
	for i := range eps {
		eps[i] = netip.AddrPortFrom(group, uint16(i+1))
	}
	return eps
}

var (
	hangingGroup = netip.MustParseAddr("192.0.2.1")
	healthyGroup = netip.MustParseAddr("192.0.2.2")
	trialGroup   = netip.MustParseAddr("192.0.2.3")
)

// fakeRun is a scheduler on a fake clock with fake probes, and each breaker's start
// latenesses.
type fakeRun struct {
	s      *Scheduler
	clk    *testingclock.FakeClock
	probes *fakeProbes
	mu     sync.Mutex
	starts map[types.NamespacedName]*starts
}

func startFake(t *testing.T, bound int) *fakeRun {
	t.Helper()
	r := &fakeRun{clk: testingclock.NewFakeClock(time.Date(2026, 5, 17, 12, 0, 0, 0, time.UTC)), probes: newFakeProbes(),
		starts: map[types.NamespacedName]*starts{}}
	r.s = New(Options{NewProber: r.probes.New, Clock: r.clk, MaxConcurrentProbes: bound,
		Observers: func(key types.NamespacedName) ProbeObserver {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.starts[key] = &starts{}
			return r.starts[key]
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.s.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func (r *fakeRun) lateness(key types.NamespacedName) *starts {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.starts[key]
}

// caughtUp says whether the dispatcher has handed out every turn due by now, and every probe
// that does not hang has returned and given its place back.
func (r *fakeRun) caughtUp() bool {
	r.s.mu.Lock()
	dispatched := r.s.ctx != nil && (r.s.turns.Len() == 0 || r.s.turns[0].due.After(r.clk.Now()))
	inflight := r.s.inflight
	r.s.mu.Unlock()
	r.probes.mu.Lock()
	defer r.probes.mu.Unlock()
	hanging := 0
	for group, n := range r.probes.inflight {
		if r.probes.hanging[group] {
			hanging += n
		}
	}
	return dispatched && inflight == hanging
}

// run steps the fake clock through d, letting the dispatcher catch up after every step.
func (r *fakeRun) run(t *testing.T, d, step time.Duration) {
	t.Helper()
	for elapsed := time.Duration(0); elapsed < d; elapsed += step {
		r.clk.Step(step)
		// The dispatcher arms its timer from the time it read; a step in between would leave
		// it asleep past a due turn, so it is woken until it has caught up.
		for deadline := time.Now().Add(5 * time.Second); !r.caughtUp(); time.Sleep(20 * time.Microsecond) {
			r.s.kick()
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("the dispatcher did not catch up with the clock:\n%s", buf[:runtime.Stack(buf, true)])
			}
		}
	}
}

func fakeRegistration(interval time.Duration, eps []probe.Endpoint) Registration {
	return Registration{
		Spec:      probe.Spec{Timeout: interval, TCP: true},
		Interval:  interval,
		Endpoints: eps,
		Config:    breaker.Config{Mode: breaker.Observe, ConsecutiveFailures: 3, OpenDuration: time.Minute, TrialProbes: 1, SuccessThreshold: 1},
	}
}

// TestAHangingBreakerHoldsItsShareOnly: one breaker with 20 endpoints that never answer,
// beside 10 healthy ones, under a bound of 8. Before fairness, the hanging probes took all 8
// places and the healthy breakers were never probed again. Now the hanging breaker holds a
// quarter of the bound, skips its other turns, and every healthy turn starts on time.
func TestAHangingBreakerHoldsItsShareOnly(t *testing.T) {
	g := NewWithT(t)
	r := startFake(t, 8)
	r.probes.hang(hangingGroup, true)
	hanging := types.NamespacedName{Namespace: "dead-node", Name: "hanging"}
	g.Expect(r.s.Upsert(hanging, fakeRegistration(time.Second, endpoints(hangingGroup, 20)))).To(Succeed())
	for i := range 10 {
		g.Expect(r.s.Upsert(key(i), fakeRegistration(100*time.Millisecond, []probe.Endpoint{netip.AddrPortFrom(healthyGroup, uint16(i+1))}))).To(Succeed())
	}

	const step = 5 * time.Millisecond
	r.run(t, 2*time.Second, step)

	limits := LimitsFor(8)
	g.Expect(r.probes.count(r.probes.peak, hangingGroup)).To(Equal(limits.PerBreaker), "the hanging breaker holds its share, no more")
	g.Expect(r.s.Stats().SkippedAtCap).To(BeNumerically(">", 0), "its other turns are skipped, not queued")
	g.Expect(r.probes.count(r.probes.started, healthyGroup)).To(BeNumerically(">=", 10*19), "every healthy breaker probes every 100ms")
	for i := range 10 {
		g.Expect(r.lateness(key(i)).max()).To(BeNumerically("<=", step), "a healthy probe waited for a place")
	}
}

// TestTrialsGoFirst fills the bound with probes that hang, with a Closed breaker's turns
// waiting for a place: a breaker that reaches HalfOpen sends its trial at once all the same,
// from the trial reserve, and closes.
func TestTrialsGoFirst(t *testing.T) {
	g := NewWithT(t)
	r := startFake(t, 4)
	for i := range 4 { // one endpoint each: within their share, together the whole bound
		k := types.NamespacedName{Namespace: "dead-node", Name: fmt.Sprintf("hanging-%d", i)}
		g.Expect(r.s.Upsert(k, fakeRegistration(time.Second, []probe.Endpoint{netip.AddrPortFrom(hangingGroup, uint16(i+1))}))).To(Succeed())
	}
	closed := types.NamespacedName{Namespace: "shop", Name: "closed"}
	g.Expect(r.s.Upsert(closed, fakeRegistration(100*time.Millisecond, endpoints(healthyGroup, 1)))).To(Succeed())
	// They answer quickly first, so they may take the quick reserve too, and then hang.
	r.run(t, time.Second, 5*time.Millisecond)
	r.probes.hang(hangingGroup, true)
	r.run(t, time.Second, 5*time.Millisecond)
	// Once the four hang, no Closed probe can be in flight unseen: the bound is 4.
	g.Eventually(func() int { return r.probes.count(r.probes.inflight, hangingGroup) }).Should(Equal(4))
	closedProbes := r.probes.count(r.probes.started, healthyGroup)
	r.run(t, 300*time.Millisecond, 5*time.Millisecond)
	g.Expect(r.probes.count(r.probes.started, healthyGroup)).To(Equal(closedProbes), "the bound is full: Closed turns wait")

	trial := types.NamespacedName{Namespace: "shop", Name: "recovering"}
	reg := fakeRegistration(time.Second, endpoints(trialGroup, 1))
	reg.Config.Mode = breaker.Auto
	openUntil := r.clk.Now().Add(200 * time.Millisecond)
	reg.Restore = &breaker.Snapshot{State: breaker.Open, Reason: breaker.ConsecutiveFailures, Since: r.clk.Now(), OpenUntil: openUntil}
	g.Expect(r.s.Upsert(trial, reg)).To(Succeed())
	r.run(t, 195*time.Millisecond, 5*time.Millisecond)
	r.clk.Step(openUntil.Sub(r.clk.Now())) // and the clock stops there

	g.Eventually(func() breaker.State { v, _ := r.s.View(trial); return v.Snapshot.State }).Should(Equal(breaker.Closed))
	changes := r.s.TakeChanges(trial)
	g.Expect(changes).To(HaveLen(2))
	g.Expect(changes[1].Reason).To(Equal(breaker.TrialSucceeded))
	g.Expect(changes[1].At).To(Equal(openUntil), "the trial went out at once")
	r.run(t, 100*time.Millisecond, 5*time.Millisecond)
	g.Expect(r.probes.count(r.probes.started, healthyGroup)).To(Equal(closedProbes), "the trial did not free a place for Closed turns")
}

// TestTheFairQueueOrder checks who gets the next free place, as a table over the queue alone.
func TestTheFairQueueOrder(t *testing.T) {
	t0 := time.Date(2026, 5, 17, 12, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	type breakerState struct {
		ns, name string
		inflight int
		hold     time.Duration
		due      time.Duration // of its one queued turn, after t0
	}
	for _, tt := range []struct {
		name     string
		nsBusy   map[string]int // probes in flight per namespace, besides the breakers' own
		breakers []breakerState
		want     []string
	}{
		{"the oldest turn first, all else alike", nil,
			[]breakerState{{"a", "late", 0, 0, 20 * ms}, {"a", "early", 0, 0, 10 * ms}},
			[]string{"early", "late"}},
		{"fewest in flight first", nil,
			[]breakerState{{"a", "busy", 2, 0, 0}, {"a", "idle", 0, 0, 50 * ms}},
			[]string{"idle", "busy"}},
		{"a breaker whose probes hang yields to turns due within its hold", nil,
			[]breakerState{{"a", "hanging", 0, time.Second, 0}, {"a", "quick", 0, ms, 500 * ms}},
			[]string{"quick", "hanging"}},
		{"but not to turns due after it: delayed, never starved", nil,
			[]breakerState{{"a", "hanging", 0, time.Second, 0}, {"a", "quick", 0, ms, 1500 * ms}},
			[]string{"hanging", "quick"}},
		{"the namespace with fewest in flight first", map[string]int{"crowded": 10},
			[]breakerState{{"crowded", "first-due", 0, 0, 0}, {"quiet", "later-due", 1, 0, 100 * ms}},
			[]string{"later-due", "first-due"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var q fairQueue
			namespaces := map[string]*namespace{}
			for _, b := range tt.breakers {
				ns, ok := namespaces[b.ns]
				if !ok {
					ns = &namespace{name: b.ns, index: -1, inflight: tt.nsBusy[b.ns]}
					namespaces[b.ns] = ns
				}
				ns.inflight += b.inflight
				e := &entry{key: types.NamespacedName{Namespace: b.ns, Name: b.name}, ns: ns, waitIndex: -1,
					inflight: b.inflight, hold: b.hold}
				q.push(&slot{entry: e, index: -1}, t0.Add(b.due), false)
			}
			var got []string
			for sl := q.next(); sl != nil; sl = q.next() {
				got = append(got, sl.entry.key.Name)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("places go to %v, want %v", got, tt.want)
			}
		})
	}
}

// TestManyHangingBreakersLeaveTheQuickReserve: 30 breakers of one endpoint each that hang
// (a dead node hosting pods of many Services) want more places than the bound of 8 has.
// Places then come free only as hanging probes time out, in bunches; without the quick
// reserve, healthy turns waited most of a second for one. Now a healthy breaker waits only
// for its first probe, before it is known to be quick.
func TestManyHangingBreakersLeaveTheQuickReserve(t *testing.T) {
	g := NewWithT(t)
	r := startFake(t, 8)
	r.probes.hang(hangingGroup, true)
	r.probes.hangFor, r.probes.clk = time.Second, r.clk // they end at their timeout
	for i := range 30 {
		k := types.NamespacedName{Namespace: fmt.Sprintf("team-%d", i%3), Name: fmt.Sprintf("hanging-%d", i)}
		g.Expect(r.s.Upsert(k, fakeRegistration(time.Second, []probe.Endpoint{netip.AddrPortFrom(hangingGroup, uint16(i+1))}))).To(Succeed())
	}
	for i := range 10 {
		g.Expect(r.s.Upsert(key(i), fakeRegistration(time.Second, []probe.Endpoint{netip.AddrPortFrom(healthyGroup, uint16(i+1))}))).To(Succeed())
	}
	const step = 5 * time.Millisecond
	r.run(t, 5*time.Second, step)
	for i := range 10 {
		st := r.lateness(key(i))
		st.mu.Lock()
		late := st.late
		st.mu.Unlock()
		g.Expect(len(late)).To(BeNumerically(">=", 4))
		for _, d := range late[1:] {
			g.Expect(d).To(BeNumerically("<=", step), "a healthy turn waited for a hanging probe to time out: %v", late)
		}
	}
}
