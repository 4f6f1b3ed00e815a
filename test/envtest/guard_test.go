package envtest_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/metrics"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// metricValue reads a series from the registry the suite's managers serve, by name and
// labels; -1 when it does not exist.
func metricValue(name string, labels map[string]string) float64 {
	families, err := crmetrics.Registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matches(m, labels) {
				if m.Counter != nil {
					return m.Counter.GetValue()
				}
				return m.Gauge.GetValue()
			}
		}
	}
	return -1
}

func guardActive() float64 { return metricValue(metrics.ObserverGuardName, nil) }

// fleet is n breakers, each with a target of its own behind one backend.
type fleet struct {
	ns       string
	names    []string
	backends []*backend
}

func newFleet(ctx context.Context, ns, prefix string, n int, tuning string) *fleet {
	f := &fleet{ns: ns, backends: newBackends(n)}
	for i, b := range f.backends {
		name := fmt.Sprintf("%s-%d", prefix, i)
		createTarget(ctx, ns, name+"-backend", b.port, b)
		createBreaker(ctx, ns, name, fmt.Sprintf(`{target: {service: %s-backend, port: http}, %s}`, name, tuning))
		f.names = append(f.names, name)
	}
	for _, name := range f.names {
		Eventually(front(ctx, ns, name)).Should(HaveField("Ready", 1))
	}
	return f
}

// emptyFronts counts the fronts that publish no ready endpoint.
func (f *fleet) emptyFronts(ctx context.Context) func(Gomega) int {
	return func(g Gomega) int {
		n := 0
		for _, name := range f.names {
			if front(ctx, f.ns, name)(g).Ready == 0 {
				n++
			}
		}
		return n
	}
}

// held lists the breakers whose trip the observer guard holds, by their status.
func (f *fleet) held(ctx context.Context) func(Gomega) []string {
	return func(g Gomega) []string {
		var out []string
		for _, name := range f.names {
			st := status(ctx, f.ns, name)(g)
			if c := meta.FindStatusCondition(st.Conditions, tripswitchv1alpha1.ConditionObserverGuard); c != nil &&
				c.Status == metav1.ConditionTrue && c.Reason == tripswitchv1alpha1.ReasonTripHeld {
				g.Expect(st.State).To(Equal(tripswitchv1alpha1.StateClosed), "a held breaker stays Closed")
				out = append(out, name)
			}
		}
		return out
	}
}

// watchEmpty polls the fleet's fronts until the story ends and records when each front first
// lost its last ready endpoint, and the most fronts that were empty at once. It outlives the
// story's context, so it polls with one of its own.
func (f *fleet) watchEmpty() (firstEmpty func() map[string]time.Time, mostEmpty func() int) {
	ctx := context.Background()
	var mu sync.Mutex
	seen := map[string]time.Time{}
	most := 0
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			empty := 0
			for _, name := range f.names {
				if front(ctx, f.ns, name)(Default).Ready == 0 {
					empty++
					mu.Lock()
					if _, ok := seen[name]; !ok {
						seen[name] = time.Now()
					}
					mu.Unlock()
				}
			}
			mu.Lock()
			most = max(most, empty)
			mu.Unlock()
		}
	}()
	DeferCleanup(func() { close(stop); <-done })
	return func() map[string]time.Time {
			mu.Lock()
			defer mu.Unlock()
			out := make(map[string]time.Time, len(seen))
			for k, v := range seen {
				out[k] = v
			}
			return out
		}, func() int {
			mu.Lock()
			defer mu.Unlock()
			return most
		}
}

// breakableDial lets a story break the manager's own network: while broken, every dial hangs
// until the probe's deadline, as it does behind an egress NetworkPolicy that drops packets,
// and connections kept alive from before fail their next read or write.
func breakableDial(broken *atomic.Bool) func(probe.DialFunc) probe.DialFunc {
	return failingDial(broken, func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	})
}

// failingDial makes every dial fail with fail's error while broken is set, and connections
// kept alive from before fail their next read or write, so that the probes dial again.
func failingDial(broken *atomic.Bool, fail func(ctx context.Context) error) func(probe.DialFunc) probe.DialFunc {
	return func(next probe.DialFunc) probe.DialFunc {
		return func(ctx context.Context, network, address string) (net.Conn, error) {
			if broken.Load() {
				return nil, fail(ctx)
			}
			conn, err := next(ctx, network, address)
			if err != nil {
				return nil, err
			}
			return &breakableConn{Conn: conn, broken: broken}, nil
		}
	}
}

// breakableConn is a connection that dies when the network breaks.
type breakableConn struct {
	net.Conn
	broken *atomic.Bool
}

func (c *breakableConn) Read(b []byte) (int, error) {
	if c.broken.Load() {
		_ = c.Close()
		return 0, net.ErrClosed
	}
	return c.Conn.Read(b)
}

func (c *breakableConn) Write(b []byte) (int, error) {
	if c.broken.Load() {
		_ = c.Close()
		return 0, net.ErrClosed
	}
	return c.Conn.Write(b)
}

var _ = Describe("The observer guard", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })
	const tuning = `probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 3}, recovery: {openDuration: 2s}`

	It("holds half of 10 trips when the manager's own network breaks, and lets go when it heals", func(ctx SpecContext) {
		var broken atomic.Bool
		startManager(managerOptions{dial: breakableDial(&broken)})
		f := newFleet(ctx, ns, "shard", 10, tuning)
		Expect(guardActive()).To(BeZero())
		_, mostEmpty := f.watchEmpty()

		broken.Store(true)
		Eventually(f.held(ctx)).Should(HaveLen(5), "the 6th to 10th trips are held")
		Eventually(guardActive).Should(Equal(1.0))
		Consistently(f.emptyFronts(ctx), 3*time.Second).Should(BeNumerically("<=", 5))
		Expect(f.held(ctx)(Default)).To(HaveLen(5))
		st := status(ctx, ns, f.held(ctx)(Default)[0])(Default)
		Expect(meta.FindStatusCondition(st.Conditions, tripswitchv1alpha1.ConditionObserverGuard).Message).To(And(
			ContainSubstring("5 of the 10 gated breakers may trip within 30s"), ContainSubstring("traffic keeps flowing")))
		Eventually(func(g Gomega) int {
			var events eventsv1.EventList
			g.Expect(k8sClient.List(ctx, &events, client.InNamespace(ns))).To(Succeed())
			return len(slices.DeleteFunc(events.Items, func(e eventsv1.Event) bool { return e.Reason != tripswitchv1alpha1.ReasonTripHeld }))
		}).Should(Equal(5))

		healed := time.Now()
		broken.Store(false)
		Eventually(f.held(ctx)).Should(BeEmpty())
		Eventually(guardActive).Should(BeZero())
		released := time.Since(healed)
		Eventually(f.emptyFronts(ctx), 10*time.Second).Should(BeZero(), "the tripped half recovers through HalfOpen")
		fmt.Fprintf(GinkgoWriter, "observer guard: at most %d of 10 fronts lost their endpoints; the guard released %s after the network healed\n",
			mostEmpty(), released)
		Expect(mostEmpty()).To(Equal(5))
	})

	It("trips 1 failing target of 10 as fast as without the guard", func(ctx SpecContext) {
		startManager(managerOptions{})
		f := newFleet(ctx, ns, "pod", 10, tuning)
		failed := time.Now()
		f.backends[3].failing.Store(true)
		Eventually(front(ctx, ns, "pod-3"), 5*time.Second, 10*time.Millisecond).Should(HaveField("Ready", 0))
		took := time.Since(failed)
		fmt.Fprintf(GinkgoWriter, "1 of 10 tripped %s after its target failed (3 failures at a 100ms interval)\n", took)
		Expect(took).To(BeNumerically("<", time.Second))
		Expect(f.held(ctx)(Default)).To(BeEmpty())
		Expect(guardActive()).To(BeZero())
	})

	It("lets held trips go ahead one at a time when a mass outage outlasts the release timeout", func(ctx SpecContext) {
		startManager(managerOptions{guard: guard.Config{MaxTripFraction: 0.5, Window: 2 * time.Second, MinBreakers: 5,
			ReleaseTimeout: 3 * time.Second, ReleaseInterval: time.Second}})
		f := newFleet(ctx, ns, "zone", 10, `probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 3},
			recovery: {openDuration: 1h}`)
		firstEmpty, _ := f.watchEmpty()
		outage := time.Now()
		for _, b := range f.backends {
			b.failing.Store(true)
		}
		Eventually(f.held(ctx)).Should(HaveLen(5))
		Eventually(func() int { return len(firstEmpty()) }, 15*time.Second).Should(Equal(10),
			"past the release timeout every held trip goes ahead")
		Eventually(guardActive).Should(BeZero())

		var at []time.Duration
		for _, t := range firstEmpty() {
			at = append(at, t.Sub(outage))
		}
		sort.Slice(at, func(i, j int) bool { return at[i] < at[j] })
		fmt.Fprintf(GinkgoWriter, "fronts emptied after the outage began: %v\n", at)
		Expect(at).To(HaveLen(10))
		Expect(at[4]).To(BeNumerically("<", 2*time.Second), "5 trip at once")
		Expect(at[5]).To(BeNumerically(">=", 3*time.Second), "the rest only after the release timeout")
		for i := 6; i < 10; i++ {
			Expect(at[i]-at[i-1]).To(BeNumerically(">=", 800*time.Millisecond), "one release per interval")
		}
	})

	It("counts a manager out of file descriptors as nobody's failure", func(ctx SpecContext) {
		var exhausted atomic.Bool
		startManager(managerOptions{statusSyncPeriod: time.Second, dial: failingDial(&exhausted, func(context.Context) error {
			return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}
		})})
		f := newFleet(ctx, ns, "fd", 2, `probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 2}`)
		before := metricValue(metrics.LocalErrorsName, map[string]string{"reason": probe.LocalFileDescriptors})
		exhausted.Store(true)
		Eventually(status(ctx, ns, f.names[0])).Should(HaveField("LastProbe.Outcome", tripswitchv1alpha1.OutcomeNeutral))
		Consistently(f.emptyFronts(ctx), 2*time.Second).Should(BeZero())
		Expect(status(ctx, ns, f.names[0])(Default).State).To(Equal(tripswitchv1alpha1.StateClosed))
		Expect(metricValue(metrics.LocalErrorsName, map[string]string{"reason": probe.LocalFileDescriptors})).To(
			BeNumerically(">", before+10))
	})
})
