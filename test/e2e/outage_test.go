package e2e_test

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/sony/gobreaker/v2"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/test/e2e/rig"
)

// The outage story's callers, as the seed guides configure a client: a 10 s timeout, one call
// every 100 ms at most, the next only once the last has ended.
const (
	callerTimeout = 10 * time.Second
	callerPace    = 100 * time.Millisecond
	outageLength  = 60 * time.Second
)

// callerKind is how a group of pods calls through an outage.
type callerKind string

const (
	behindTripswitch callerKind = "(a) behind tripswitch, no breaker in the client"
	clientBreaker    callerKind = "(b) sony/gobreaker in each client (5 failures in a row)"
	noBreaker        callerKind = "(c) no breaker"
	// The same three, each with Go's keep-alive pool (http.Transport defaults) instead of a
	// new connection per call: what most real callers are.
	behindTripswitchPooled callerKind = "(a) behind tripswitch, keep-alive pool"
	clientBreakerPooled    callerKind = "(b) sony/gobreaker in each client, keep-alive pool"
	noBreakerPooled        callerKind = "(c) no breaker, keep-alive pool"
)

var (
	freshKinds  = []callerKind{behindTripswitch, clientBreaker, noBreaker}
	pooledKinds = []callerKind{behindTripswitchPooled, clientBreakerPooled, noBreakerPooled}
)

// callerKinds are the groups of callers of a size: the pooled ones at 20 pods only. At 100,
// 600 pods calling at once loaded 2 cores so that a fast failure took 94 ms on average.
func callerKinds(pods int) []callerKind {
	if pods > 20 {
		return freshKinds
	}
	return append(slices.Clone(freshKinds), pooledKinds...)
}

func (k callerKind) pooled() bool {
	return k == behindTripswitchPooled || k == clientBreakerPooled || k == noBreakerPooled
}

func (k callerKind) behindTripswitch() bool {
	return k == behindTripswitch || k == behindTripswitchPooled
}

func (k callerKind) withBreaker() bool { return k == clientBreaker || k == clientBreakerPooled }

// outageCost is what an outage cost one group of callers.
type outageCost struct {
	kind    callerKind
	clients int
	calls   int
	failed  int
	// waited is the time callers spent in calls that failed.
	waited time.Duration
}

func (c outageCost) String() string {
	return fmt.Sprintf("| %s | %d | %d | %d | %s | %s |", c.kind, c.clients, c.calls, c.failed,
		c.waited.Round(time.Second), (c.waited / time.Duration(c.clients)).Round(100*time.Millisecond))
}

// call makes one GET with the caller's timeout and says whether it failed (an error or a 5xx).
func call(ctx context.Context, hc *http.Client, target, host string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+"/", nil)
	if err != nil {
		return err
	}
	req.Host = host
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// runCallers has every client call target until stop closes, and returns the cost.
func runCallers(clients rig.Clients, kind callerKind, target, host string, stop <-chan struct{}) outageCost {
	cost := outageCost{kind: kind, clients: len(clients)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := c.Net.HTTPClient(callerTimeout)
			if kind.pooled() {
				t := http.DefaultTransport.(*http.Transport).Clone()
				t.Proxy, t.DialContext = nil, c.Net.DialContext
				hc = &http.Client{Timeout: callerTimeout, Transport: t}
				defer t.CloseIdleConnections()
			}
			var cb *gobreaker.CircuitBreaker[any]
			if kind.withBreaker() {
				cb = gobreaker.NewCircuitBreaker[any](gobreaker.Settings{Name: "caller",
					ReadyToTrip: func(counts gobreaker.Counts) bool { return counts.ConsecutiveFailures >= 5 }})
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				var err error
				if cb != nil {
					_, err = cb.Execute(func() (any, error) { return nil, call(context.Background(), hc, target, host) })
				} else {
					err = call(context.Background(), hc, target, host)
				}
				took := time.Since(start)
				mu.Lock()
				cost.calls++
				if err != nil {
					cost.failed++
					cost.waited += took
				}
				mu.Unlock()
				select {
				case <-stop:
					return
				case <-time.After(callerPace - min(took, callerPace)):
				}
			}
		}()
	}
	wg.Wait()
	return cost
}

var _ = Describe("What an outage costs clients", Ordered, Label("outage"), func() {
	var ns string
	var costs []outageCost

	BeforeAll(func(ctx SpecContext) {
		installTripswitch(ctx, 2).startManager("manager-outage")
		startAgent("agent-outage")
		ns = cluster.NewNamespace("outage")
	})

	AfterAll(func() {
		if len(costs) == 0 {
			return
		}
		var lines []string
		for _, c := range costs {
			lines = append(lines, c.String())
		}
		AddReportEntry(fmt.Sprintf("%s, backends that hang for %v, callers with a %v timeout", cluster.ProxyMode(), outageLength, callerTimeout),
			"| callers | pods | calls | failed | time spent in failed calls | per pod |\n|---|---|---|---|---|---|\n"+strings.Join(lines, "\n"))
	})

	// Both sizes at once, each on a target and a breaker of its own: the story then costs one
	// outage's minute, not two.
	It("costs each pod behind tripswitch a fraction of what every client breaker pays on its own, at 20 and at 100 pods", func(ctx SpecContext) {
		type size struct {
			pods   int
			name   string
			bs     []*rig.Backend
			groups map[callerKind]rig.Clients
		}
		var sizes []*size
		for _, pods := range []int{20, 100} {
			// The pods first: making hundreds of network namespaces loads the 2 cores for a
			// moment, which must not pass for the target's failure.
			sz := &size{pods: pods, name: fmt.Sprintf("payments-%d", pods), groups: map[callerKind]rig.Clients{}}
			for _, kind := range callerKinds(pods) {
				sz.groups[kind] = rig.NewClients(pods)
			}
			sizes = append(sizes, sz)
		}
		stop := make(chan struct{})
		groups := len(callerKinds(20)) + len(callerKinds(100))
		results := make(chan outageCost, groups)
		for _, sz := range sizes {
			sz.bs = target(ctx, ns, sz.name+"-backend", 3)
			breaker(ctx, ns, sz.name, `{target: {service: `+sz.name+`-backend, port: http},
				probe: {interval: 500ms, timeout: 500ms}, trip: {consecutiveFailures: 3}, recovery: {openDuration: 30s}}`)
			front, direct := frontAddress(ctx, ns, sz.name), cluster.ServiceAddress(ns, sz.name+"-backend")
			probe := rig.NewClients(1)[0]
			Eventually(func() string { return servedBy(probe.Get(front)) }).Should(HavePrefix(sz.name + "-backend-"))
			for kind, clients := range sz.groups {
				to, host := direct, sz.name+"-backend."+ns
				if kind.behindTripswitch() {
					to, host = front, sz.name+"."+ns
				}
				go func() { results <- runCallers(clients, kind, to, host, stop) }()
			}
		}
		for _, sz := range sizes {
			Consistently(breakerStatus(ctx, ns, sz.name), time.Second).Should(HaveField("GateState", tripswitchv1alpha1.StateClosed),
				"healthy seconds first")
		}
		for _, sz := range sizes {
			setBehavior(sz.bs, rig.Hang)
		}
		outageStart := time.Now()
		for _, sz := range sizes {
			Eventually(breakerStatus(ctx, ns, sz.name)).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
		}
		Consistently(func(g Gomega) {
			for _, sz := range sizes {
				g.Expect(breakerStatus(ctx, ns, sz.name)(g)).NotTo(HaveField("GateState", tripswitchv1alpha1.StateClosed))
			}
		}, outageLength-time.Since(outageStart)).Should(Succeed(), "the breakers stay off the target for the whole outage")
		close(stop)
		byKind := map[int]map[callerKind]outageCost{20: {}, 100: {}}
		for range groups {
			c := <-results
			byKind[c.clients][c.kind] = c
			costs = append(costs, c)
		}
		slices.SortFunc(costs, func(x, y outageCost) int {
			return cmp.Or(cmp.Compare(x.clients, y.clients), cmp.Compare(x.kind, y.kind))
		})
		for _, pods := range []int{20, 100} {
			for _, kinds := range [][]callerKind{freshKinds, pooledKinds} {
				if _, ran := byKind[pods][kinds[0]]; !ran {
					continue
				}
				a, b, c := byKind[pods][kinds[0]], byKind[pods][kinds[1]], byKind[pods][kinds[2]]
				Expect(a.waited).To(BeNumerically("<", b.waited/2), "tripswitch spares its callers most of the waiting: %v %v", a, b)
				Expect(b.waited).To(BeNumerically("<", c.waited), "a client breaker helps, once each client has paid: %v %v", b, c)
			}
			// The call each pod had in flight when the target hung used to wait out its 10 s
			// timeout (18.9 s a pod in all before the node agent); the agent cuts it when the
			// breaker opens, and the trial calls when a failed trial reopens it, pooled or not.
			for _, kind := range []callerKind{behindTripswitch, behindTripswitchPooled} {
				c, ran := byKind[pods][kind]
				if !ran {
					continue
				}
				Expect(c.waited/time.Duration(c.clients)).To(BeNumerically("<", callerTimeout),
					"no pod behind tripswitch pays even one timeout: %v", c)
			}
		}
	})
})
