package agent

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/flows"
)

// fakeTable records when it was asked to cut what, and cuts one flow per backend.
type fakeTable struct {
	clk   *testingclock.FakeClock
	mu    sync.Mutex
	calls []time.Time
	asked [][]flows.Target
	err   error
}

func (f *fakeTable) CutEach(targets []flows.Target, each func([]flows.Flow)) ([]flows.Flow, error) {
	cut, err := f.cut(targets)
	for _, flow := range cut {
		each([]flows.Flow{flow})
	}
	return cut, err
}

func (f *fakeTable) cut(targets []flows.Target) ([]flows.Flow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, f.clk.Now())
	f.asked = append(f.asked, targets)
	var out []flows.Flow
	for _, t := range targets {
		for _, b := range t.Backends {
			out = append(out, flows.Flow{Key: t.Key, Client: netip.MustParseAddrPort("10.244.0.9:40000"),
				Destination: t.Destinations[0], Backend: b})
		}
	}
	return out, f.err
}

func (f *fakeTable) sweeps() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.calls...)
}

type fakeGuard struct {
	mu            sync.Mutex
	armed, probed int
	probedUnarmed bool
}

func (g *fakeGuard) Arm(cut []flows.Flow) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed += len(cut)
	return nil
}

func (g *fakeGuard) Probe(cut []flows.Flow) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probed += len(cut)
	g.probedUnarmed = g.probedUnarmed || g.probed > g.armed
	return nil
}

// fakeProxy reports kube-proxy synced from syncedAt on, or fails.
type fakeProxy struct {
	clk      *testingclock.FakeClock
	syncedAt time.Time
	err      error
	asked    []corev1.IPFamily
}

func (p *fakeProxy) SyncedSince(_ context.Context, since time.Time, families []corev1.IPFamily) (bool, error) {
	p.asked = families
	if p.err != nil {
		return false, p.err
	}
	return !p.clk.Now().Before(p.syncedAt) && !p.syncedAt.Before(since), nil
}

// sweeping starts a sweeper over a front that has just opened, and returns it with its fakes.
func sweeping(t *testing.T, proxy *fakeProxy) (*Sweeper, *fakeTable, *fakeGuard, []Cut, *Metrics) {
	t.Helper()
	n := newNode(t, gateInput(breaker.Closed, targetOf(2)))
	n.write(n.in)
	n.clk.Step(time.Second)
	cuts := n.write(gateInput(breaker.Open, targetOf(2))).Cuts
	if len(cuts) != 1 {
		t.Fatalf("want one cut, got %+v", cuts)
	}
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	table, guard := &fakeTable{clk: n.clk}, &fakeGuard{}
	s := &Sweeper{Fronts: n.fronts, Table: table, Guard: guard, Clock: n.clk, Metrics: m, ProxyWait: 2 * time.Second}
	if proxy != nil {
		proxy.clk = n.clk
		s.Proxy = proxy
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s, table, guard, cuts, m
}

// advance steps the fake clock by d in steps of at most step, each once the sweeper waits on
// the clock, or after 50 ms of real time when it does not (it has nothing left to wait for).
func advance(t *testing.T, clk *testingclock.FakeClock, d, step time.Duration) {
	t.Helper()
	for end := clk.Now().Add(d); clk.Now().Before(end); {
		for deadline := time.Now().Add(50 * time.Millisecond); !clk.HasWaiters() && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond) //nolint:forbidigo // waiting for the goroutine under test to block on the fake clock
		}
		clk.Step(min(step, end.Sub(clk.Now())))
	}
}

func eventuallySweeps(t *testing.T, table *fakeTable, n int) []time.Time {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(table.sweeps()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("want %d sweeps, got %d", n, len(table.sweeps()))
		}
		time.Sleep(time.Millisecond) //nolint:forbidigo // polling the goroutine under test
	}
	return table.sweeps()
}

func TestSweeperWaitsForKubeProxyThenSweepsAgainAndStops(t *testing.T) {
	proxy := &fakeProxy{}
	s, table, guard, cuts, m := sweeping(t, proxy)
	seen := cuts[0].SeenAt
	proxy.syncedAt = seen.Add(30 * time.Millisecond)
	s.Add(cuts)
	advance(t, s.Clock.(*testingclock.FakeClock), 40*time.Millisecond, proxyPoll)
	first := eventuallySweeps(t, table, 1)[0]
	if d := first.Sub(seen); d < 30*time.Millisecond || d > 30*time.Millisecond+proxyPoll {
		t.Errorf("first sweep %v after the change, want right after kube-proxy's sync at 30ms", d)
	}
	if len(proxy.asked) != 1 || proxy.asked[0] != corev1.IPv4Protocol {
		t.Errorf("waited for families %v, want IPv4 (the cut's endpoints)", proxy.asked)
	}
	advance(t, s.Clock.(*testingclock.FakeClock), 5*time.Second, 50*time.Millisecond)
	sweeps := eventuallySweeps(t, table, 1+len(Resweeps))
	for i, r := range Resweeps {
		if got := sweeps[i+1].Sub(first); got < r || got > r+50*time.Millisecond {
			t.Errorf("resweep %d at %v after the first, want %v", i, got, r)
		}
	}
	if len(table.sweeps()) != 1+len(Resweeps) {
		t.Errorf("%d sweeps, want %d: resweeps must end", len(table.sweeps()), 1+len(Resweeps))
	}
	if guard.armed != 4*(1+len(Resweeps)) || guard.probed != guard.armed || guard.probedUnarmed {
		t.Errorf("armed %d and probed %d flows, want every flow each sweep cut, armed before it is probed", guard.armed, guard.probed)
	}
	if got := testutil.ToFloat64(m.flowsCut.WithLabelValues("shop", "payments", "trip")); got != float64(4*(1+len(Resweeps))) {
		t.Errorf("flows cut metric %v", got)
	}
	if got := testutil.CollectAndCount(m.latency); got != 1 {
		t.Errorf("latency observed %d times, want once, for the first sweep", got)
	}
}

func TestSweeperCutsAtOnceWhenKubeProxyCannotTell(t *testing.T) {
	s, table, _, cuts, m := sweeping(t, &fakeProxy{err: errors.New("connection refused")})
	s.Add(cuts)
	first := eventuallySweeps(t, table, 1)[0]
	if !first.Equal(cuts[0].SeenAt) {
		t.Errorf("swept %v after the change, want at once", first.Sub(cuts[0].SeenAt))
	}
	if got := testutil.ToFloat64(m.errors.WithLabelValues(OpKubeProxy)); got != 1 {
		t.Errorf("kube_proxy errors %v, want 1", got)
	}
}

func TestSweeperCutsAnywayWhenKubeProxyNeverSyncs(t *testing.T) {
	s, table, _, cuts, _ := sweeping(t, &fakeProxy{syncedAt: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)})
	s.Add(cuts)
	advance(t, s.Clock.(*testingclock.FakeClock), 2100*time.Millisecond, proxyPoll)
	first := eventuallySweeps(t, table, 1)[0]
	if d := first.Sub(cuts[0].SeenAt); d < 2*time.Second || d > 2*time.Second+proxyPoll {
		t.Errorf("swept %v after the change, want after ProxyWait (2s)", d)
	}
}

func TestSweeperBatchesBreakersIntoOneSweep(t *testing.T) {
	s, table, _, cuts, _ := sweeping(t, nil)
	other := cuts[0]
	other.Breaker = "orders" // no front of that name: Targets leaves it out, the sweep is still one
	s.Add([]Cut{cuts[0], other})
	eventuallySweeps(t, table, 1)
	table.mu.Lock()
	defer table.mu.Unlock()
	if len(table.asked[0]) != 1 || table.asked[0][0].Key != "shop/payments/trip" {
		t.Errorf("first sweep asked for %+v", table.asked[0])
	}
}
