// Command fairness measures whether probes that hang delay anybody else's: one breaker with
// many endpoints that accept TCP and never answer (Observe mode), beside many healthy
// breakers and one quick breaker whose target starts failing now and then. It prints the
// healthy breakers' start lateness (goal: p99 under 50 ms) and how long the quick breaker
// takes to trip (goal: within its floor, failures × interval, plus 100 ms). Every server is
// on loopback, in this process.
//
//	go run ./test/bench/fairness -hanging 300 -healthy 1000 -duration 20s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/probe"
	"github.com/tripswitch/tripswitch/internal/runner"
)

type config struct {
	hanging, hangingBreakers      int
	healthy                       int
	hangInterval, healthyInterval time.Duration
	tripInterval                  time.Duration
	tripFailures                  int
	duration                      time.Duration
	concurrency                   int
	trips                         int
}

func main() {
	var c config
	flag.IntVar(&c.hanging, "hanging", 300, "endpoints of the breaker whose probes hang")
	flag.IntVar(&c.hangingBreakers, "hanging-breakers", 1, "breakers the hanging endpoints are spread over (a dead node hosts pods of many Services)")
	flag.IntVar(&c.healthy, "healthy", 1000, "healthy breakers, one endpoint each")
	flag.DurationVar(&c.hangInterval, "hanging-interval", time.Second, "interval and timeout of the hanging breaker")
	flag.DurationVar(&c.healthyInterval, "healthy-interval", time.Second, "interval of the healthy breakers")
	flag.DurationVar(&c.tripInterval, "trip-interval", 100*time.Millisecond, "interval (and timeout) of the breaker that trips")
	flag.IntVar(&c.tripFailures, "trip-failures", 3, "consecutive failures that trip it")
	flag.IntVar(&c.trips, "trips", 20, "times its target starts failing")
	flag.DurationVar(&c.duration, "duration", 20*time.Second, "measured time")
	flag.IntVar(&c.concurrency, "max-concurrent-probes", 256, "the scheduler's concurrency bound")
	flag.Parse()
	ctrllog.SetLogger(logr.Discard()) // the bench prints only its figures
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// latenesses keeps every start lateness of a group of breakers, exactly.
type latenesses struct {
	mu   sync.Mutex
	late []time.Duration
	on   atomic.Bool
}

func (l *latenesses) ObserveStart(d time.Duration) {
	if !l.on.Load() {
		return
	}
	l.mu.Lock()
	l.late = append(l.late, d)
	l.mu.Unlock()
}

func (l *latenesses) ObserveProbe(int, time.Duration) {}

// quantiles returns the q-quantiles (nearest rank) and the count.
func (l *latenesses) quantiles(qs ...float64) ([]time.Duration, int) {
	l.mu.Lock()
	late := slices.Clone(l.late)
	l.mu.Unlock()
	slices.Sort(late)
	out := make([]time.Duration, len(qs))
	for i, q := range qs {
		if len(late) > 0 {
			out[i] = late[min(len(late)-1, int(q*float64(len(late))))]
		}
	}
	return out, len(late)
}

func listen() (net.Listener, netip.AddrPort, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	return l, netip.MustParseAddrPort(l.Addr().String()), nil
}

// serveSilently accepts connections and reads whatever comes, never answering, until the
// client gives up.
func serveSilently(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			_, _ = io.Copy(io.Discard, c)
			_ = c.Close()
		}()
	}
}

func run(c config) error {
	codes, _ := probe.ParseCodes("200-399")
	httpSpec := func(timeout time.Duration) probe.Spec {
		return probe.Spec{Timeout: timeout, HTTP: &probe.HTTPSpec{Path: "/healthz", Success: codes}}
	}
	var closers []io.Closer
	defer func() {
		for _, cl := range closers {
			_ = cl.Close()
		}
	}()
	serveHTTP := func(h http.Handler) (netip.AddrPort, error) {
		l, ep, err := listen()
		if err != nil {
			return ep, err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(l) }()
		closers = append(closers, srv)
		return ep, nil
	}

	hangingEPs := make([]probe.Endpoint, c.hanging)
	for i := range hangingEPs {
		l, ep, err := listen()
		if err != nil {
			return err
		}
		closers = append(closers, l)
		go serveSilently(l)
		hangingEPs[i] = ep
	}
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	healthyEPs := make([]probe.Endpoint, c.healthy)
	for i := range healthyEPs {
		ep, err := serveHTTP(ok)
		if err != nil {
			return err
		}
		healthyEPs[i] = ep
	}
	var failing atomic.Bool
	tripEP, err := serveHTTP(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	if err != nil {
		return err
	}

	hangingKey := func(i int) types.NamespacedName {
		return types.NamespacedName{Namespace: "dead-node", Name: fmt.Sprintf("hanging-%d", i)}
	}
	tripKey := types.NamespacedName{Namespace: "shop", Name: "tripper"}
	healthyLate, hangingLate, tripLate := &latenesses{}, &latenesses{}, &latenesses{}
	opened := make(chan time.Time, 1)
	var sched *runner.Scheduler
	var localErrors sync.Map // reason -> *atomic.Int64
	sched = runner.New(runner.Options{
		NewProber:           probe.NewFactory(nil, clock.RealClock{}).New,
		MaxConcurrentProbes: c.concurrency,
		Observers: func(key types.NamespacedName) runner.ProbeObserver {
			switch {
			case key.Namespace == "dead-node":
				return hangingLate
			case key == tripKey:
				return tripLate
			}
			return healthyLate
		},
		LocalErrors: func(reason string) {
			n, _ := localErrors.LoadOrStore(reason, &atomic.Int64{})
			n.(*atomic.Int64).Add(1)
		},
		OnChange: func(key types.NamespacedName) {
			if key != tripKey {
				return
			}
			if v, _ := sched.View(key); v.Snapshot.State == breaker.Open {
				select {
				case opened <- time.Now():
				default:
				}
			}
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = sched.Start(ctx) }()
	defer func() { cancel(); <-done }()

	// The hanging breaker never trips, so its probes keep hanging: the worst case. (A real one
	// would trip and stop probing, or keep going under a failure rate it does not reach.)
	observe := breaker.Config{Mode: breaker.Observe, ConsecutiveFailures: math.MaxInt32, OpenDuration: time.Minute,
		TrialProbes: 1, SuccessThreshold: 1}
	for b := range max(1, c.hangingBreakers) {
		var eps []probe.Endpoint
		for i := b; i < len(hangingEPs); i += max(1, c.hangingBreakers) {
			eps = append(eps, hangingEPs[i])
		}
		if err := sched.Upsert(hangingKey(b), runner.Registration{Spec: httpSpec(c.hangInterval), Interval: c.hangInterval,
			Endpoints: eps, Config: observe, Seed: uint64(b)}); err != nil {
			return err
		}
	}
	for i, ep := range healthyEPs {
		if err := sched.Upsert(types.NamespacedName{Namespace: fmt.Sprintf("team-%d", i%20), Name: fmt.Sprintf("healthy-%d", i)},
			runner.Registration{Spec: httpSpec(time.Second), Interval: c.healthyInterval, Endpoints: []probe.Endpoint{ep},
				Config: breaker.Config{ConsecutiveFailures: 5, OpenDuration: time.Minute, TrialProbes: 1, SuccessThreshold: 1},
				Seed:   uint64(i)}); err != nil {
			return err
		}
	}
	if err := sched.Upsert(tripKey, runner.Registration{Spec: httpSpec(c.tripInterval), Interval: c.tripInterval,
		Endpoints: []probe.Endpoint{tripEP},
		Config:    breaker.Config{ConsecutiveFailures: c.tripFailures, OpenDuration: time.Hour, TrialProbes: 1, SuccessThreshold: 1}}); err != nil {
		return err
	}

	limits := runner.LimitsFor(c.concurrency)
	fmt.Printf("%d endpoints that never answer in %d breaker(s) (interval and timeout %s, Observe, never trip) beside %d healthy breakers "+
		"(1 endpoint, %s) in 20 namespaces, and 1 breaker at %s / %d failures; bound %d (per breaker %d, trial reserve %d), "+
		"%s measured, GOMAXPROCS=%d\n", c.hanging, max(1, c.hangingBreakers), c.hangInterval, c.healthy, c.healthyInterval, c.tripInterval, c.tripFailures,
		limits.MaxInFlight, limits.PerBreaker, limits.TrialReserve, c.duration, runtime.GOMAXPROCS(0))

	// Warm up: every breaker has had its turn and the hanging probes fill their share.
	time.Sleep(2 * max(c.hangInterval, c.healthyInterval))
	healthyLate.on.Store(true)
	hangingLate.on.Store(true)
	before, t0 := sched.Stats(), time.Now()

	// The quick breaker's target fails c.trips times, spread over the measured time.
	var tripTimes []time.Duration
	gap := c.duration / time.Duration(c.trips)
	for range c.trips {
		start := time.Now()
		failing.Store(true)
		select {
		case at := <-opened:
			tripTimes = append(tripTimes, at.Sub(start))
		case <-time.After(max(10*c.tripInterval*time.Duration(c.tripFailures), time.Second)):
			tripTimes = append(tripTimes, -1) // did not trip
		}
		failing.Store(false)
		sched.Reset(tripKey)
		sched.TakeChanges(tripKey)
		time.Sleep(time.Until(start.Add(gap)))
	}
	elapsed, after := time.Since(t0), sched.Stats()
	healthyLate.on.Store(false)
	hangingLate.on.Store(false)

	q, n := healthyLate.quantiles(0.5, 0.99, 1)
	scheduled := float64(c.healthy) * elapsed.Seconds() / c.healthyInterval.Seconds()
	_, hangingStarts := hangingLate.quantiles()
	floor := c.tripInterval * time.Duration(c.tripFailures)
	slices.Sort(tripTimes)
	missed := 0
	for _, d := range tripTimes {
		if d < 0 {
			missed++
		}
	}
	tripTimes = tripTimes[missed:]
	var tp50, tmax time.Duration
	if len(tripTimes) > 0 {
		tp50, tmax = tripTimes[len(tripTimes)/2], tripTimes[len(tripTimes)-1]
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	late := int64(0)
	if v, ok := localErrors.Load(probe.LocalStartedLate); ok {
		late = v.(*atomic.Int64).Load()
	}

	fmt.Println()
	fmt.Println("| what | measured | goal |")
	fmt.Println("|---|---|---|")
	fmt.Printf("| healthy breakers: probes started / scheduled | %d / %.0f | all |\n", n, scheduled)
	fmt.Printf("| healthy breakers: start lateness p50 / p99 / max | %s / %s / %s | p99 < 50ms: %s |\n",
		q[0].Round(10*time.Microsecond), q[1].Round(10*time.Microsecond), q[2].Round(10*time.Microsecond), verdict(q[1] < 50*time.Millisecond))
	fmt.Printf("| hanging breakers: probes started / turns skipped at their share | %d / %d | at most %d in flight each |\n",
		hangingStarts, after.SkippedAtCap-before.SkippedAtCap, limits.PerBreaker)
	fmt.Printf("| probes not sent because they could only start past their deadline | %d | 0 |\n", late)
	fmt.Printf("| %s / %d-failure breaker: time to trip p50 / max over %d (%d did not trip) | %s / %s | ≤ floor %s + 100ms: %s |\n",
		c.tripInterval, c.tripFailures, len(tripTimes), missed, tp50.Round(time.Millisecond), tmax.Round(time.Millisecond), floor,
		verdict(missed == 0 && tmax <= floor+100*time.Millisecond))
	return nil
}
