package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/test/e2e/rig"
)

// envDemo makes the demo story print to the terminal: `make demo` sets it.
const envDemo = "E2E_DEMO"

// The demo story is what `make demo` shows as root: one pod's calls to a front Service
// through the real kube-proxy while its backends fail and recover. In the suite it runs as
// any other story, so the demo cannot rot.
var _ = Describe("The demo", Label("demo"), Ordered, func() {
	It("shows a pod's calls: 200 OK, then 503 from tripswitch at once, then 200 OK again", func(ctx SpecContext) {
		out := io.Writer(GinkgoWriter)
		if os.Getenv(envDemo) == "1" {
			out = os.Stdout
		}
		fmt.Fprintln(out)
		start := time.Now()
		say := func(format string, args ...any) {
			fmt.Fprintf(out, "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
		}

		cluster.SetProxyMode(rig.IPTables)
		say("A one-node cluster in network namespaces: kube-apiserver, kube-controller-manager, kube-proxy (%s mode)", cluster.ProxyMode())
		ts := installTripswitch(ctx, 2)
		ts.startManager("manager-demo")
		ns := cluster.NewNamespace("demo")
		backends := target(ctx, ns, "payments-backend", 2)
		breaker(ctx, ns, "payments", `{target: {service: payments-backend, port: http},
			probe: {interval: 200ms, timeout: 200ms}, trip: {consecutiveFailures: 3}, recovery: {openDuration: 5s}}`)
		front := frontAddress(ctx, ns, "payments")
		say("tripswitch runs: its manager and 2 responder pods. The breaker 'payments' probes payments-backend every 200ms,")
		say("opens after 3 failures and stays Open 5s. A pod calls the front Service payments (%s) every 200ms.", front)
		fmt.Fprintln(out)

		caller := rig.NewClients(1)[0]
		spec := rig.LoadSpec{Target: front, Host: "payments." + ns + ".svc.cluster.local", Headers: loadHeaders}
		Eventually(func() rig.Attempt { return caller.Attempt(ctx, spec) }).Should(Satisfy(okFromTarget),
			"kube-proxy routes the new front before the story starts")
		calls := &demoCalls{out: out, say: say}
		stopCalls := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer GinkgoRecover()
			defer wg.Done()
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				calls.add(caller.Attempt(ctx, spec))
				select {
				case <-stopCalls:
					return
				case <-tick.C:
				}
			}
		}()
		stop := func() { close(stopCalls); wg.Wait(); calls.flush() }
		DeferCleanup(func() {
			select {
			case <-stopCalls:
			default:
				stop()
			}
		})
		states := watchStates(ctx, ns, "payments", say)

		Eventually(calls.count).WithArguments(okFromTarget).Should(BeNumerically(">=", 5), "healthy calls first")
		calls.mark("The backends start answering 503")
		setBehavior(backends, rig.Unavailable)
		Eventually(calls.count).WithArguments(answeredByResponder).Should(BeNumerically(">=", 10), "calls answered by the responder")
		calls.mark("The backends recover")
		setBehavior(backends, rig.OK)
		Eventually(func() []tripswitchv1alpha1.State {
			seen := states()
			return seen[min(1, len(seen)):]
		}).Should(ContainElement(tripswitchv1alpha1.StateClosed), "Closed again after the trip")
		calls.resetCount()
		Eventually(calls.count).WithArguments(okFromTarget).Should(BeNumerically(">=", 5), "healthy calls again")
		stop()

		fmt.Fprintln(out)
		tripped := calls.first(answeredByResponder)
		say("While Open, every call got tripswitch's 503 at once (p99 %v of %d calls), none waited for a timeout.",
			calls.p99(answeredByResponder), calls.total(answeredByResponder))
		Expect(tripped.Headers["Retry-After"]).NotTo(BeEmpty(), "the responder says when to retry")
		Expect(calls.total(func(a rig.Attempt) bool { return a.Outcome != rig.Responded })).To(BeZero(),
			"every call was answered: no refusal, reset or timeout")
	})
})

// okFromTarget says a backend of the target answered 200.
func okFromTarget(a rig.Attempt) bool { return a.Status == http.StatusOK && a.Backend() != "" }

// demoCalls prints one line per kind of answer as the calls go: the first call of each run of
// alike answers, then how many more there were.
type demoCalls struct {
	out   io.Writer
	say   func(string, ...any)
	mu    sync.Mutex
	all   []rig.Attempt
	since int // where the count restarts
	run   []rig.Attempt
}

func describeCall(a rig.Attempt) (kind, line string) {
	took := a.Latency.Round(10 * time.Microsecond)
	switch {
	case answeredByResponder(a):
		return "responder", fmt.Sprintf("503 from tripswitch in %v (Retry-After %s)", took, a.Headers["Retry-After"])
	case a.Outcome == rig.Responded:
		return fmt.Sprintf("%d", a.Status), fmt.Sprintf("%d %s from %s in %v", a.Status, http.StatusText(a.Status), a.Backend(), took)
	default:
		return string(a.Outcome), fmt.Sprintf("%s after %v", a.Outcome, took)
	}
}

func (d *demoCalls) add(a rig.Attempt) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.all = append(d.all, a)
	kind, line := describeCall(a)
	if len(d.run) > 0 {
		if k, _ := describeCall(d.run[0]); k == kind {
			d.run = append(d.run, a)
			return
		}
	}
	d.flushLocked()
	d.run = []rig.Attempt{a}
	d.say("%s", line)
}

func (d *demoCalls) flushLocked() {
	if len(d.run) > 1 {
		var slowest time.Duration
		for _, a := range d.run[1:] {
			slowest = max(slowest, a.Latency)
		}
		d.say("  ... and %d more like it (slowest %v)", len(d.run)-1, slowest.Round(10*time.Microsecond))
	}
	d.run = nil
}

func (d *demoCalls) flush() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.flushLocked()
}

// mark prints what the story does next between the calls.
func (d *demoCalls) mark(what string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.flushLocked()
	d.say("--- %s", what)
}

func (d *demoCalls) resetCount() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.since = len(d.all)
}

// count is how many calls since the last resetCount match.
func (d *demoCalls) count(match func(rig.Attempt) bool) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, a := range d.all[d.since:] {
		if match(a) {
			n++
		}
	}
	return n
}

func (d *demoCalls) matching(match func(rig.Attempt) bool) rig.Results {
	d.mu.Lock()
	defer d.mu.Unlock()
	return rig.Results(d.all).Where(match)
}

func (d *demoCalls) total(match func(rig.Attempt) bool) int { return len(d.matching(match)) }

func (d *demoCalls) p99(match func(rig.Attempt) bool) time.Duration {
	return d.matching(match).Percentile(0.99).Round(10 * time.Microsecond)
}

func (d *demoCalls) first(match func(rig.Attempt) bool) rig.Attempt {
	a, _ := d.matching(match).First(rig.Responded)
	return a
}

// watchStates prints the breaker's state changes as the story goes, and returns the states
// seen so far.
func watchStates(ctx context.Context, ns, name string, say func(string, ...any)) func() []tripswitchv1alpha1.State {
	var mu sync.Mutex
	var seen []tripswitchv1alpha1.State
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		var last tripswitchv1alpha1.State
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			cb := &tripswitchv1alpha1.CircuitBreaker{}
			if err := cluster.Client().Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, cb); err != nil {
				continue
			}
			st := cb.Status
			if st.State == "" || st.State == last {
				continue
			}
			if st.Reason != "" {
				say("*** breaker %s: %s (%s)", name, st.State, st.Reason)
			} else {
				say("*** breaker %s: %s", name, st.State)
			}
			last = st.State
			mu.Lock()
			seen = append(seen, st.State)
			mu.Unlock()
		}
	}()
	DeferCleanup(func() { close(done) })
	return func() []tripswitchv1alpha1.State {
		mu.Lock()
		defer mu.Unlock()
		return append([]tripswitchv1alpha1.State(nil), seen...)
	}
}
