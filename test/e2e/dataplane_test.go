package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/test/e2e/rig"
)

// The stories' load: the 20 pods, each opening 50 new connections a second; and 5
// pods for each pooled kind beside them, each calling 50 times a second. Four pooled kinds of
// 20 pods, at 5,000 calls a second with the fresh ones, saturated 2 cores: the responder's
// answer took 150 ms at the median, and a stream client's calls queued behind each other for
// up to a second, which measured the machine rather than tripswitch. At 10 pods each (3,000
// calls a second) cold CI runs still saw the same, three in four failing the nftables hang
// story with the responder at p50 150-350 ms.
const (
	loadClients   = 20
	pooledClients = 5
	loadRate      = 50
)

// target creates n backends labelled app=name and a Service name with that selector, with the
// backends' three ports: http (80 to 8080, first, which ServiceAddress returns), grpc (9090)
// and stream (7070).
func target(ctx context.Context, ns, name string, n int) []*rig.Backend {
	GinkgoHelper()
	labels := map[string]string{"app": name}
	var bs []*rig.Backend
	for i := range n {
		bs = append(bs, cluster.NewBackend(ns, fmt.Sprintf("%s-%d", name, i), labels))
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(rig.BackendHTTPPort)},
			// Declared gRPC: the responder answers it with UNAVAILABLE, as a gRPC client expects.
			{Name: "grpc", Port: rig.BackendGRPCPort, TargetPort: intstr.FromInt32(rig.BackendGRPCPort), AppProtocol: ptr.To("grpc")},
			// Neither HTTP nor gRPC: the responder resets it, as a database client would get.
			{Name: "stream", Port: rig.BackendStreamPort, TargetPort: intstr.FromInt32(rig.BackendStreamPort)},
		}},
	}
	Expect(cluster.Client().Create(ctx, svc)).To(Succeed())
	return bs
}

// frontAddress waits until the manager has created the front Service and returns its
// ClusterIP and port.
func frontAddress(ctx context.Context, ns, name string) string {
	GinkgoHelper()
	Eventually(func() error {
		return cluster.Client().Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &corev1.Service{})
	}).Should(Succeed(), "the manager creates the front Service")
	return cluster.ServiceAddress(ns, name)
}

// breaker creates a CircuitBreaker from a YAML spec, and deletes it when the story ends,
// waiting until its front is handed back: breakers left Open would count, for the observer
// guard, as a cluster where everything trips at once.
func breaker(ctx context.Context, ns, name, spec string) {
	GinkgoHelper()
	cb := &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	Expect(yaml.Unmarshal([]byte(spec), &cb.Spec)).To(Succeed())
	Expect(cluster.Client().Create(ctx, cb)).To(Succeed())
	DeferCleanup(func(ctx SpecContext) {
		Expect(client.IgnoreNotFound(cluster.Client().Delete(ctx, cb))).To(Succeed())
		Eventually(func() error {
			return cluster.Client().Get(ctx, client.ObjectKeyFromObject(cb), &tripswitchv1alpha1.CircuitBreaker{})
		}).Should(Satisfy(apierrors.IsNotFound), "the breaker hands its front back and goes")
	})
}

func breakerStatus(ctx context.Context, ns, name string) func(Gomega) tripswitchv1alpha1.CircuitBreakerStatus {
	return func(g Gomega) tripswitchv1alpha1.CircuitBreakerStatus {
		cb := &tripswitchv1alpha1.CircuitBreaker{}
		g.Expect(cluster.Client().Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, cb)).To(Succeed())
		return cb.Status
	}
}

func setBehavior(bs []*rig.Backend, b rig.Behavior) {
	for _, x := range bs {
		x.SetBehavior(b)
	}
}

// switchDelays is, per client, how long after since its calls last did not fail fast (did not
// get tripswitch's answer): the time from the target's failure until that client fails fast
// for good. A client that never does counts as the whole load.
func switchDelays(results rig.Results, since time.Time, clients int) []time.Duration {
	last := map[int]time.Time{}
	for i := range clients {
		last[i] = since
	}
	for _, a := range results {
		if a.Start.After(since) && !failedFast(a) && a.Start.After(last[a.Client]) {
			last[a.Client] = a.Start
		}
	}
	var out []time.Duration
	for i := range clients {
		out = append(out, last[i].Sub(since))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// phases splits attempts' latencies, sorted: the handshake (through kube-proxy's DNAT), and
// the answer after it, from the request's write to the response's end.
func phases(results rig.Results) (connect, answer []time.Duration) {
	for _, a := range results {
		connect = append(connect, a.Connect)
		answer = append(answer, a.Latency-a.Connect)
	}
	sort.Slice(connect, func(i, j int) bool { return connect[i] < connect[j] })
	sort.Slice(answer, func(i, j int) bool { return answer[i] < answer[j] })
	return connect, answer
}

// timedRetry runs a story that times the data plane once more before it fails. On 2 cores
// shared with the other suites' builds, a story that passes alone once saw everything slow
// down a hundredfold for seconds (a cold run's nftables hang story: the responder's answers
// at p50 190 ms instead of 2 ms, while niced builds linked Prometheus and Helm beside it). A
// real regression fails both attempts; Ginkgo reports a pass on the second as flaky, and
// the failure digest at the end of make test shows the first attempt's numbers.
var timedRetry = FlakeAttempts(2)

// attempt names a story's objects for its attempt, so that a retried story (timedRetry)
// runs beside what its first attempt left, under names of its own.
func attempt(name string) string {
	if n := CurrentSpecReport().NumAttempts; n > 1 {
		return fmt.Sprintf("%s-%d", name, n)
	}
	return name
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

var _ = Describe("tripswitch on the real data plane", Ordered, Label("timed"), func() {
	var ts *install
	var leader *rig.Process

	BeforeAll(func(ctx SpecContext) {
		ts = installTripswitch(ctx, 2)
		leader = ts.startManager("manager-a")
		Eventually(func(g Gomega) {
			g.Expect(readyAddresses(ctx, g, systemNamespace, responderService, "endpointslice-controller.k8s.io")).To(HaveLen(2))
		}).Should(Succeed(), "both responders ready and published by Kubernetes")
	})

	for _, mode := range rig.ProxyModes {
		Context(fmt.Sprintf("with kube-proxy in %s mode", mode), Ordered, func() {
			var ns string
			var agent *nodeAgent
			BeforeAll(func() {
				cluster.SetProxyMode(mode)
				ns = cluster.NewNamespace("gate-" + string(mode))
				agent = startAgent("agent-" + string(mode))
			})

			for _, failure := range []rig.Behavior{rig.Unavailable, rig.Hang} {
				It(fmt.Sprintf("answers every pod at once when the target turns %s, pooled clients too", failure), timedRetry, func(ctx SpecContext) {
					name := attempt("fast-" + string(failure))
					trips := tripUnderLoad(ctx, ns, name, failure, "", append([]caller{freshCaller}, pooledCallers...)...)
					fresh := trips[0]
					// The responder's own latency is reported, not asserted: a timed bound on 2
					// cores shared with the whole cluster would flake (one run's p99 was 43 ms,
					// from a stall). The benchmark, test/bench/responder, measures it alone.
					connect, answer := phases(fresh.open.Where(answeredByResponder))
					AddReportEntry(fresh.title(mode), fmt.Sprintf("%s; responder: connect p50 %v p99 %v, answer p50 %v p99 %v",
						fresh, percentile(connect, 0.5), percentile(connect, 0.99), percentile(answer, 0.5), percentile(answer, 0.99)))
					AddReportEntry(fmt.Sprintf("%s, %s, target %s: the agent's cut", mode, name, failure), agent.cutsOf(ns, name))
					for _, st := range trips[1:] {
						AddReportEntry(st.title(mode), fmt.Sprintf("%s; connections: %s", st, st.conns))
					}

					Eventually(func(g Gomega) float64 {
						return agent.metric(g, "tripswitch_agent_flows_cut_total", `namespace="`+ns+`"`, `name="`+name+`"`, `reason="trip"`)
					}).Should(BeNumerically(">", 0), "the agent counts what it cut, by breaker and reason")
					Expect(fresh.switchP99()).To(BeNumerically("<=", fresh.floor+150*time.Millisecond), "%s", fresh)
					Expect(fresh.open.Where(answeredByResponder)).To(HaveLen(len(fresh.open)), "every call while Open is the responder's: %s", fresh.open)
					for _, st := range trips {
						// The goal: every pooled client fails fast within floor + 200 ms of the
						// failure, every call while Open gets tripswitch's answer, and no call
						// after the failure waits out its timeout: those that reached a hung
						// target before kube-proxy moved new connections are cut with the rest,
						// fresh ones too.
						if st.mode.Pooled() {
							Expect(st.switchP99()).To(BeNumerically("<=", st.floor+200*time.Millisecond), "%s: %s", st.mode, st)
							Expect(st.open.Where(failedFast)).To(HaveLen(len(st.open)),
								"every %s call while Open gets tripswitch's answer: %s", st.mode, st.open)
						}
						Expect(st.since.Count(rig.ConnectTimeout, rig.ResponseTimeout)).To(BeZero(),
							"no %s call after the failure waits out its timeout: %s", st.mode, st.since)
						// Judged from when the test saw status Open rather than from the failure:
						// on 2 cores shared with other suites, detection alone took up to a
						// second, which the switch delays above already judge; this is the cut.
						Expect(percentile(st.released, 0.99)-st.openAfter).To(BeNumerically("<", time.Second),
							"%s calls that reached the hung target are released by the cut, not their 2 s timeout: %s", st.mode, st)
					}
				})
			}

			It("leaves pooled clients on the failing pods when the breaker says cutConnections: false, as they were before the agent", timedRetry, func(ctx SpecContext) {
				name := attempt("kept")
				trips := tripUnderLoad(ctx, ns, name, rig.Unavailable, "{cutConnections: false}", pooledCallers...)
				for _, st := range trips {
					AddReportEntry(st.title(mode)+", cutConnections: false", fmt.Sprintf("%s; connections: %s", st, st.conns))
				}
				Eventually(func(g Gomega) float64 {
					return agent.metric(g, "tripswitch_agent_changes_skipped_total", `name="`+name+`"`, `reason="disabled"`)
				}).Should(BeNumerically(">=", 1), "the agent saw the trip and left it alone, and says so")
				Expect(agent.cutLogs(ns, name)).To(BeEmpty(), "the agent cut nothing")
				for _, st := range trips {
					reached := st.open.Where(servedByTarget)
					if st.mode == rig.HTTPKeepAlive {
						// A call that finds both pooled connections busy opens a new one, which
						// kube-proxy sends to the responder; the pool keeps the others.
						Expect(len(reached)).To(BeNumerically(">", len(st.open)/2), "%s: most calls while Open reach the failing pods: %s", st.mode, st.open)
						continue
					}
					Expect(reached).To(HaveLen(len(st.open)), "%s: every call while Open reaches the failing pods: %s", st.mode, st.open)
				}
			})

			It("shares HalfOpen between the trial endpoint and the responders, and spreads again once Closed", func(ctx SpecContext) {
				name := "recover"
				bs := target(ctx, ns, name+"-backend", 3)
				// Four trials at a 3 s interval (one per endpoint's turn) keep the breaker HalfOpen
				// for seconds: long beside kube-proxy's sync, even on a loaded machine.
				breaker(ctx, ns, name, `{target: {service: `+name+`-backend, port: http}, probe: {interval: 3s, timeout: 200ms},
					trip: {consecutiveFailures: 1}, recovery: {openDuration: 2s, halfOpen: {trialProbes: 4, successThreshold: 4}}}`)
				front := frontAddress(ctx, ns, name)
				setBehavior(bs, rig.Unavailable)
				Eventually(breakerStatus(ctx, ns, name)).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
				gates := watchGate(ctx, ns, name)
				load := rig.NewClients(loadClients).Start(rig.LoadSpec{Target: front, Host: name + "." + ns,
					Rate: loadRate / 5, Headers: loadHeaders})
				setBehavior(bs, rig.OK)
				Eventually(breakerStatus(ctx, ns, name), time.Minute).Should(HaveField("GateState", tripswitchv1alpha1.StateClosed))
				Eventually(func() int { return len(load.Snapshot().Where(servedByTarget)) }).Should(BeNumerically(">=", 300),
					"a while Closed")
				results := load.Stop()

				halfOpen := during(results, gates(), tripswitchv1alpha1.StateHalfOpen)
				// kube-proxy programs the HalfOpen slices a sync after status says HalfOpen, later
				// on a loaded machine (one cold run on 2 busy cores saw 12% instead of a third):
				// judge the share from the first call the trial endpoint answered.
				if served := halfOpen.Where(servedByTarget); len(served) > 0 {
					first := served[0].Start
					for _, a := range served {
						if a.Start.Before(first) {
							first = a.Start
						}
					}
					halfOpen = halfOpen.Where(func(a rig.Attempt) bool { return !a.Start.Before(first) })
				}
				closed := during(results, gates(), tripswitchv1alpha1.StateClosed)
				AddReportEntry(fmt.Sprintf("%s, recovery: %d pods x %d connections/s", mode, loadClients, loadRate/5),
					fmt.Sprintf("HalfOpen (1 trial endpoint, 2 responders): %v of %d calls; Closed: %v of %d calls",
						shares(halfOpen), len(halfOpen), shares(closed), len(closed)))
				Expect(results.Count(rig.Refused, rig.ConnectTimeout, rig.ResponseTimeout, rig.Reset)).To(BeZero(),
					"every call is answered, from Open through HalfOpen to Closed: %s", results)
				Expect(len(halfOpen)).To(BeNumerically(">=", 50), "HalfOpen lasted long enough to be measured")
				served := halfOpen.Where(servedByTarget)
				Expect(backendsOf(served)).To(HaveLen(1), "HalfOpen publishes one trial endpoint")
				share := float64(len(served)) / float64(len(halfOpen))
				Expect(share).To(BeNumerically("~", 1.0/3, 0.15), "the trial endpoint takes a third of new connections beside two responders")
				Expect(len(served)+len(halfOpen.Where(answeredByResponder))).To(Equal(len(halfOpen)), "%s", halfOpen)
				Expect(backendsOf(closed)).To(HaveLen(3), "Closed spreads calls over every backend again")
				Expect(closed.Where(servedByTarget)).To(HaveLen(len(closed)), "%s", closed)
			})

			It("ejects the one failing pod of three, so that pods stop seeing its errors while the breaker stays Closed, pooled clients too", func(ctx SpecContext) {
				name := "eject"
				bs := target(ctx, ns, name+"-backend", 3)
				// A service rule that cannot hold while two of three pods answer: only the
				// endpoint level acts.
				breaker(ctx, ns, name, `{target: {service: `+name+`-backend, port: http}, probe: {interval: 100ms, timeout: 100ms},
					trip: {failureRate: {percent: 100, window: 100, minimumProbes: 100}},
					ejection: {consecutiveFailures: 3, baseEjectionTime: 5m}}`)
				callers := append([]caller{freshCaller}, pooledCallers...)
				loads := startCallers(frontIP(ctx, ns, name), name+"."+ns, callers)
				Eventually(func() map[string]int { return backendsOf(loads[0].Snapshot()) }).Should(HaveLen(3), "every pod serves")
				for i, load := range loads[1:] {
					Eventually(func() int { return len(load.Snapshot().Where(servedByTarget)) }).Should(
						BeNumerically(">=", pooledClients), "every %s client is served", callers[i+1].mode)
				}
				failedAt := time.Now()
				bs[1].SetBehavior(rig.Unavailable)
				Eventually(breakerStatus(ctx, ns, name)).Should(HaveField("Ejection.Ejected", BeEquivalentTo(1)))
				ejected := time.Now()
				Eventually(func() int { return len(loads[0].Snapshot().Between(ejected.Add(time.Second), time.Now())) }).
					Should(BeNumerically(">=", 1000), "a while after the ejection")
				stopped := stopCallers(loads)
				stoppedAt := time.Now()
				AddReportEntry(fmt.Sprintf("%s, ejection: the agent's cut", mode), agent.cutsOf(ns, name))

				const floor = 300 * time.Millisecond // 3 failures at 100 ms
				toEjected := 0
				for i, results := range stopped {
					c := callers[i]
					since := results.Between(failedAt, stoppedAt)
					failed := since.Where(func(a rig.Attempt) bool { return a.Outcome != rig.Responded || a.Status != http.StatusOK })
					lastFailure := failedAt
					for _, a := range failed {
						if a.Start.After(lastFailure) {
							lastFailure = a.Start
						}
					}
					// The ejected pod's calls: answered by it, or cut on their way (a reset on a
					// connection it had answered).
					lastToEjected := failedAt
					for _, a := range since.Where(func(a rig.Attempt) bool { return a.Backend() == bs[1].Name }) {
						if a.Start.After(lastToEjected) {
							lastToEjected = a.Start
						}
					}
					conns := loads[i].Conns()
					healthy := conns.Where(func(cr rig.ConnRecord) bool { return cr.Backend == bs[0].Name || cr.Backend == bs[2].Name })
					disrupted := healthy.Where(func(cr rig.ConnRecord) bool { return cr.End != rig.ConnOpen && cr.End != rig.ConnClosed })
					toEjected += len(conns.To(bs[1].Name))
					AddReportEntry(fmt.Sprintf("%s, ejection, %s: %d pods x %d calls/s, 1 of 3 pods failing", mode, c.mode, c.pods(), loadRate),
						fmt.Sprintf("%d of %d calls failed after the pod started failing (%v, %v), the last %v after; the ejected pod's last call %v after; then none of %d; connections to the healthy pods: %d, ended %v; to the ejected pod: %d, ended %v",
							len(failed), len(since), failed.Outcomes(), failed.Statuses(), lastFailure.Sub(failedAt).Round(time.Millisecond),
							lastToEjected.Sub(failedAt).Round(time.Millisecond), len(results.Between(lastFailure.Add(time.Nanosecond), stoppedAt)),
							len(healthy), healthy.Ends(), len(conns.To(bs[1].Name)), conns.To(bs[1].Name).Ends()))

					Expect(failed.Where(func(a rig.Attempt) bool { return a.Backend() != bs[1].Name && a.Backend() != "" })).To(BeEmpty(),
						"only the failing pod's calls fail (%s): %s", c.mode, failed)
					after := results.Between(ejected.Add(500*time.Millisecond), stoppedAt)
					Expect(after.Where(servedByTarget)).To(HaveLen(len(after)), "%s: %s", c.mode, after)
					Expect(backendsOf(after)).NotTo(HaveKey(bs[1].Name), "%s: the other two pods take the calls", c.mode)
					if !c.mode.Pooled() {
						// Floor 300 ms + the status write + kube-proxy's sync.
						Expect(lastFailure.Sub(failedAt)).To(BeNumerically("<=", time.Second), "%s", failed)
						continue
					}
					// The goals: the ejected pod's pooled calls stop within floor +
					// 250 ms, and the other pods' connections are left alone.
					Expect(lastToEjected.Sub(failedAt)).To(BeNumerically("<=", floor+250*time.Millisecond),
						"%s: calls still reached the ejected pod", c.mode)
					Expect(disrupted).To(BeEmpty(), "%s: no connection to a healthy pod is cut", c.mode)
				}
				Expect(toEjected).To(BeNumerically(">", 0), "some pooled connection went to the pod that failed, so the story shows its cut")
				Expect(breakerStatus(ctx, ns, name)(Default).State).To(Equal(tripswitchv1alpha1.StateClosed))
			})

			It("sends pods to the fallback's pods while Open", func(ctx SpecContext) {
				fallbackPods := target(ctx, ns, "degraded", 1)
				target(ctx, ns, "catalog-backend", 2)
				breaker(ctx, ns, "catalog", `{target: {service: catalog-backend, port: http}, mode: ForceOpen,
					gate: {endpointSlice: {fallback: {service: degraded}}}}`)
				front := frontAddress(ctx, ns, "catalog")
				clients := rig.NewClients(loadClients)
				Eventually(func() string { return servedBy(clients[0].Get(front)) }).Should(Equal(fallbackPods[0].Name))
				results := clients.Run(rig.LoadSpec{Target: front, Rate: loadRate, Duration: 2 * time.Second, Headers: loadHeaders})
				AddReportEntry(fmt.Sprintf("%s, fallback while Open", mode), results.String())
				Expect(backendsOf(results)).To(Equal(map[string]int{fallbackPods[0].Name: len(results)}), "%s", results)
			})

			It("hands a Closed front back to Kubernetes without a failed call", func(ctx SpecContext) {
				target(ctx, ns, "orders-backend", 2)
				breaker(ctx, ns, "orders", `{target: {service: orders-backend, port: http}}`)
				results, _ := acrossDeletion(ctx, ns, "orders")
				AddReportEntry(fmt.Sprintf("%s, deletion while Closed: 1 pod at 100 Hz", mode), results.String())
				Expect(results.Where(servedByTarget)).To(HaveLen(len(results)), "every call reaches the target: %s", results)
			})

			It("hands an Open front back to the target's ready pods", func(ctx SpecContext) {
				bs := target(ctx, ns, "billing-backend", 2)
				setBehavior(bs, rig.Unavailable)
				breaker(ctx, ns, "billing", `{target: {service: billing-backend, port: http}, probe: {interval: 100ms},
					trip: {consecutiveFailures: 3}, recovery: {openDuration: 1h}}`)
				Eventually(breakerStatus(ctx, ns, "billing")).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
				results, handedBack := acrossDeletion(ctx, ns, "billing")
				// While both Kubernetes' slice and tripswitch's are ready, kube-proxy spreads calls
				// over the target and the responder; half a second covers its rule sync.
				deleted := results.Between(handedBack.Add(500*time.Millisecond), time.Now())
				AddReportEntry(fmt.Sprintf("%s, deletion while Open: 1 pod at 100 Hz", mode), results.String())
				Expect(results.Count(rig.ConnectTimeout, rig.ResponseTimeout, rig.Refused)).To(BeZero(), "%s", results)
				Expect(deleted.Where(servedByTarget)).To(HaveLen(len(deleted)), "after the hand-back, the target's pods answer: %s", deleted)
			})

			It("shows what kube-proxy's reject costs pods, with whenOpen: Reject", timedRetry, func(ctx SpecContext) {
				st := tripUnderLoad(ctx, ns, attempt("reject"), rig.Unavailable, "{whenOpen: Reject}", freshCaller)[0]
				AddReportEntry(st.title(mode), fmt.Sprintf("%s; %.1f%% of calls while Open waited out the 2 s timeout (the kernel's ICMP rate limit)",
					st, 100*st.open.Share(rig.ConnectTimeout)))
				Expect(st.open.Where(answeredByResponder)).To(BeEmpty(), "Reject publishes no responder")
				Expect(st.open.Count(rig.Refused, rig.ConnectTimeout)).To(Equal(len(st.open)), "%s", st.open)
			})
		})
	}

	Context("when conntrack is set up otherwise", Ordered, func() {
		var ns string
		BeforeAll(func() { ns = cluster.NewNamespace("conntrack") })

		// cutsWithTheGuard trips a breaker under the pooled callers with the agent as the node
		// is set up now, and checks the goals and that the reset guard answered.
		cutsWithTheGuard := func(ctx context.Context, name, setup string) {
			GinkgoHelper()
			agent := startAgent("agent-" + name)
			before := guardResets()
			trips := tripUnderLoad(ctx, ns, name, rig.Unavailable, "", pooledCallers...)
			resets := guardResets() - before
			AddReportEntry(fmt.Sprintf("%s, %s: the agent's cut", cluster.ProxyMode(), setup),
				fmt.Sprintf("%s; the reset guard answered %d packets", agent.cutsOf(ns, name), resets))
			for _, st := range trips {
				AddReportEntry(st.title(cluster.ProxyMode())+", "+setup, fmt.Sprintf("%s; connections: %s", st, st.conns))
			}
			for _, st := range trips {
				Expect(st.switchP99()).To(BeNumerically("<=", st.floor+200*time.Millisecond), "%s: %s", st.mode, st)
				Expect(st.since.Count(rig.ConnectTimeout, rig.ResponseTimeout)).To(BeZero(), "%s: %s", st.mode, st.since)
				Expect(st.open.Where(failedFast)).To(HaveLen(len(st.open)), "%s: %s", st.mode, st.open)
			}
			Expect(resets).To(BeNumerically(">", 0), "the guard reset the cut clients")
		}

		It("cuts pooled clients where nf_conntrack_tcp_loose=0 would leave them hanging: the reset guard answers instead", timedRetry, func(ctx SpecContext) {
			cluster.SetProxyMode(rig.IPTables)
			// A cut flow's next packet is INVALID then, and kube-proxy drops it: without the
			// guard, the client retransmits until its own timeout (internal/flows shows it).
			setSysctl("net/netfilter/nf_conntrack_tcp_loose", "0")
			cutsWithTheGuard(ctx, attempt("loose0"), "nf_conntrack_tcp_loose=0")
		})

		It("cuts pooled clients with kube-proxy's --conntrack-tcp-be-liberal", timedRetry, func(ctx SpecContext) {
			cluster.SetProxyMode(rig.NFTables, "--conntrack-tcp-be-liberal")
			// kube-proxy sets the sysctl and leaves it; the stories after this one run without.
			DeferCleanup(func() {
				cluster.SetProxyMode(rig.NFTables)
				Expect(os.WriteFile("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal", []byte("0"), 0o644)).To(Succeed())
			})
			Expect(os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")).To(Equal([]byte("1\n")))
			cutsWithTheGuard(ctx, attempt("liberal"), "--conntrack-tcp-be-liberal")
		})
	})

	Context("when the leader dies", Ordered, func() {
		var ns string
		// Two standbys, started for the whole context: each story kills the leader of the
		// moment, and another takes over.
		var managers []*rig.Process
		BeforeAll(func() {
			ns = cluster.NewNamespace("failover")
			managers = []*rig.Process{leader, ts.startManager("manager-b"), ts.startManager("manager-c")}
		})
		// killLeader kills the leader with SIGKILL, and returns the manager that takes over and
		// how long that took.
		killLeader := func() (*rig.Process, time.Duration) {
			GinkgoHelper()
			Expect(leader.Log()).To(ContainSubstring(leaseAcquired))
			killed := leader
			killedAt := time.Now()
			killed.Kill()
			var next *rig.Process
			Eventually(func() *rig.Process {
				for _, m := range managers {
					if m != killed && !m.Exited() && strings.Contains(m.Log(), leaseAcquired) {
						next = m
					}
				}
				return next
			}, time.Minute, 10*time.Millisecond).ShouldNot(BeNil())
			leader = next
			return next, time.Since(killedAt)
		}

		It("keeps answering through a kill -9 of the leader while Open, and never probes from two leaders", func(ctx SpecContext) {
			Eventually(leader.Log).Should(ContainSubstring(leaseAcquired))
			bs := target(ctx, ns, "ledger-backend", 3)
			breaker(ctx, ns, "ledger", `{target: {service: ledger-backend, port: http}, probe: {interval: 100ms},
				trip: {consecutiveFailures: 3}, recovery: {openDuration: 25s}}`)
			front := frontAddress(ctx, ns, "ledger")
			Eventually(breakerStatus(ctx, ns, "ledger")).Should(HaveField("Endpoints.Published", BeEquivalentTo(3)))

			By("one leader probing while two managers run")
			probes := probeRates(bs, 3*time.Second)
			for _, m := range managers[1:] {
				Expect(m.Log()).NotTo(ContainSubstring(leaseAcquired))
			}
			for name, n := range probes {
				// 10 a second per endpoint at a 100 ms interval; two leaders would double it.
				Expect(n).To(BeNumerically("<=", 13), "probes a second at %s", name)
			}

			setBehavior(bs, rig.Unavailable)
			Eventually(breakerStatus(ctx, ns, "ledger")).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
			openUntil := breakerStatus(ctx, ns, "ledger")(Default).OpenUntil.Time
			setBehavior(bs, rig.OK) // only the breaker keeps clients off until openUntil
			load := rig.NewClients(loadClients).Start(rig.LoadSpec{Target: front, Host: "ledger." + ns, Rate: 20, Headers: loadHeaders})
			Eventually(func() int { return len(load.Snapshot()) }).Should(BeNumerically(">=", 100))

			By("killing the leader")
			killedAt := time.Now()
			_, tookOver := killLeader()
			Eventually(breakerStatus(ctx, ns, "ledger"), time.Minute).Should(HaveField("GateState", tripswitchv1alpha1.StateClosed))
			Eventually(func() int { return len(load.Snapshot().Where(servedByTarget)) }).Should(BeNumerically(">=", 100))
			results := load.Stop()

			held := results.Between(killedAt, openUntil)
			AddReportEntry(fmt.Sprintf("%s, failover while Open", cluster.ProxyMode()),
				fmt.Sprintf("the standby took over %v after the kill; until openUntil (%v after the kill): %s; after: %s",
					tookOver.Round(100*time.Millisecond), openUntil.Sub(killedAt).Round(100*time.Millisecond), held,
					results.Between(openUntil, time.Now())))
			Expect(tookOver).To(BeNumerically("<", openUntil.Sub(killedAt)), "the story kills the leader well before openUntil")
			Expect(held.Where(answeredByResponder)).To(HaveLen(len(held)), "clients get the responder until openUntil: %s", held)
			Expect(results.Count(rig.Refused, rig.ConnectTimeout, rig.ResponseTimeout, rig.Reset)).To(BeZero(), "%s", results)

			By("the new leader probing alone")
			for name, n := range probeRates(bs, 3*time.Second) {
				Expect(n).To(BeNumerically("<=", 13), "probes a second at %s", name)
			}
		})

		It("keeps HalfOpen's share through a kill -9 of the leader, and closes only on the new leader's trials", func(ctx SpecContext) {
			bs := target(ctx, ns, "journal-backend", 3)
			// Four trials at a 1 s interval keep the breaker HalfOpen for seconds.
			breaker(ctx, ns, "journal", `{target: {service: journal-backend, port: http}, probe: {interval: 1s, timeout: 200ms},
				trip: {consecutiveFailures: 1}, recovery: {openDuration: 2s, halfOpen: {trialProbes: 4, successThreshold: 4}}}`)
			front := frontAddress(ctx, ns, "journal")
			setBehavior(bs, rig.Unavailable)
			Eventually(breakerStatus(ctx, ns, "journal")).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
			load := rig.NewClients(loadClients).Start(rig.LoadSpec{Target: front, Host: "journal." + ns, Rate: 10, Headers: loadHeaders})
			setBehavior(bs, rig.OK)
			Eventually(breakerStatus(ctx, ns, "journal"), 10*time.Second, 10*time.Millisecond).Should(
				HaveField("GateState", tripswitchv1alpha1.StateHalfOpen))

			By("killing the leader while HalfOpen")
			killedAt := time.Now()
			_, took := killLeader()
			tookOver := killedAt.Add(took)
			Eventually(breakerStatus(ctx, ns, "journal"), time.Minute).Should(HaveField("GateState", tripswitchv1alpha1.StateClosed))
			Eventually(func() int { return len(load.Snapshot().Where(servedByTarget)) }).Should(BeNumerically(">=", 300))
			results := load.Stop()

			// Leaderless, the front keeps what HalfOpen published: one trial endpoint and the
			// responders; nothing closes until the new leader's trials succeed.
			leaderless := results.Between(killedAt.Add(250*time.Millisecond), tookOver)
			AddReportEntry(fmt.Sprintf("%s, failover while HalfOpen", cluster.ProxyMode()),
				fmt.Sprintf("leaderless for %v: %v of %d calls; whole story: %s", tookOver.Sub(killedAt).Round(100*time.Millisecond),
					shares(leaderless), len(leaderless), results))
			Expect(len(leaderless)).To(BeNumerically(">=", 100))
			Expect(backendsOf(leaderless)).To(HaveLen(1), "one trial endpoint, as HalfOpen published it")
			Expect(leaderless.Where(answeredByResponder)).NotTo(BeEmpty())
			Expect(results.Count(rig.Refused, rig.ConnectTimeout, rig.ResponseTimeout, rig.Reset)).To(BeZero(), "%s", results)
		})
	})
})

// caller is a group of pods that call a front one way, on the front port of its protocol.
type caller struct {
	mode rig.LoadMode
	port int32
}

// pods is how many pods of this kind call at once.
func (c caller) pods() int {
	if c.mode.Pooled() {
		return pooledClients
	}
	return loadClients
}

var (
	// freshCaller opens a new connection for each call, as issue 11's pods did.
	freshCaller = caller{rig.HTTPGet, 80}
	// pooledCallers are the kinds real clients are: Go's keep-alive pool, one HTTP/2
	// connection, a gRPC channel, and a long-lived stream such as a database connection.
	pooledCallers = []caller{{rig.HTTPKeepAlive, 80}, {rig.H2C, 80}, {rig.GRPC, rig.BackendGRPCPort},
		{rig.TCPStream, rig.BackendStreamPort}}
)

// startCallers starts, for each caller, its pods calling the front at frontIP on the
// caller's port with host as the Host (and gRPC authority), loadRate calls a second each.
func startCallers(frontIP, host string, callers []caller) []*rig.Load {
	GinkgoHelper()
	loads := make([]*rig.Load, len(callers))
	for i, c := range callers {
		loads[i] = rig.NewClients(c.pods()).Start(rig.LoadSpec{Target: net.JoinHostPort(frontIP, strconv.Itoa(int(c.port))),
			Host: host, Rate: loadRate, Headers: loadHeaders, Timeout: 2 * time.Second, Mode: c.mode})
	}
	return loads
}

// stopCallers stops the loads together (each waits for its calls in flight) and returns their
// attempts.
func stopCallers(loads []*rig.Load) []rig.Results {
	stopped := make([]rig.Results, len(loads))
	var wg sync.WaitGroup
	for i, load := range loads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stopped[i] = load.Stop()
		}()
	}
	wg.Wait()
	return stopped
}

// frontIP waits for the front Service and returns its ClusterIP.
func frontIP(ctx context.Context, ns, name string) string {
	GinkgoHelper()
	ip, _, err := net.SplitHostPort(frontAddress(ctx, ns, name))
	Expect(err).NotTo(HaveOccurred())
	return ip
}

// tripped is what one group of callers saw across a trip.
type tripped struct {
	name, failure string
	mode          rig.LoadMode
	pods          int
	floor         time.Duration
	// delays are, per client and sorted, how long after the failure its calls stopped
	// reaching the target: from then on each failed fast.
	delays []time.Duration
	// released are, per client and sorted, when (after the failure) its last call that had
	// waited on the failing target ended: a hung call ends when the agent cuts its connection.
	released []time.Duration
	// openAfter is how long after the failure the test saw the breaker's status Open.
	openAfter time.Duration
	// since are the attempts that started after the failure.
	since rig.Results
	// open are the attempts that started once the front was Open for clients.
	open rig.Results
	// conns are the pooled callers' connections.
	conns rig.ConnRecords
}

func (t tripped) title(proxy rig.ProxyMode) string {
	return fmt.Sprintf("%s, %s, target %s, %s: %d pods x %d calls/s", proxy, t.name, t.failure, t.mode, t.pods, loadRate)
}

func (t tripped) switchP99() time.Duration { return percentile(t.delays, 0.99) }

func (t tripped) String() string {
	s := fmt.Sprintf("Open %v after the failure; off the target after p50 %v, p99 %v, max %v (floor %v)",
		t.openAfter.Round(time.Millisecond), percentile(t.delays, 0.5).Round(time.Millisecond), t.switchP99().Round(time.Millisecond),
		t.delays[len(t.delays)-1].Round(time.Millisecond), t.floor)
	if t.released[len(t.released)-1] > 0 {
		s += fmt.Sprintf("; calls that waited released by p99 %v, max %v", percentile(t.released, 0.99).Round(time.Millisecond),
			t.released[len(t.released)-1].Round(time.Millisecond))
	}
	return s + fmt.Sprintf("; while Open: %s", t.open)
}

// releasedAt is, per client and sorted, when after since its last call that waited ended: a
// call that started after since and failed without an answer (reset or timeout) after more
// than fastAnswer of its own time (Attempt.Took: a stream call queued behind its client's
// previous call counts from when it had the connection, and the call it queued behind, if
// that one waited on the target, is counted itself). Zero for a client none of whose calls
// waited.
func releasedAt(results rig.Results, since time.Time, clients int) []time.Duration {
	out := make([]time.Duration, clients)
	for _, a := range results {
		if a.Start.Before(since) || a.Outcome == rig.Responded || a.Took() <= fastAnswer {
			continue
		}
		if end := a.Start.Add(a.Latency).Sub(since); end > out[a.Client] {
			out[a.Client] = end
		}
	}
	slices.Sort(out)
	return out
}

// fastAnswer is how long an answer may take and still count as not having waited.
const fastAnswer = 100 * time.Millisecond

// tripUnderLoad puts a breaker (with gate, a spec fragment, or the default gate) on 3 backends,
// loads its front with a group of the 20 pods x 50 calls a second per caller, all at
// once, makes the backends fail, and watches three seconds of Open. The probes run every
// 100 ms across 3 endpoints and trip on 3 failures in a row, so the floor is 100 ms for a
// target that answers 503 (the three failures come from three endpoints within one interval),
// and 200 ms for one that hangs (each of those probes also waits out its 100 ms timeout).
func tripUnderLoad(ctx context.Context, ns, name string, failure rig.Behavior, gate string, callers ...caller) []tripped {
	GinkgoHelper()
	if gate != "" {
		gate = `, gate: {endpointSlice: ` + gate + `}`
	}
	bs := target(ctx, ns, name+"-backend", 3)
	breaker(ctx, ns, name, `{target: {service: `+name+`-backend, port: http},
		probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 3}, recovery: {openDuration: 1m}`+gate+`}`)
	front := frontIP(ctx, ns, name)
	probe := rig.NewClients(1)[0]
	Eventually(func() string { return servedBy(probe.Get(net.JoinHostPort(front, "80"))) }).Should(
		HavePrefix(name+"-backend-"), "Closed: the front reaches the target")
	loads := startCallers(front, name+"."+ns+".svc.cluster.local", callers)
	for i, load := range loads {
		Eventually(func() int {
			return len(load.Snapshot().Where(func(a rig.Attempt) bool { return a.Status == http.StatusOK }))
		}).Should(BeNumerically(">=", callers[i].pods()*loadRate), "a second of steady traffic before the failure (%s)", callers[i].mode)
	}
	failedAt := time.Now()
	setBehavior(bs, failure)
	Eventually(breakerStatus(ctx, ns, name)).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
	openAt := time.Now()
	Consistently(breakerStatus(ctx, ns, name), 3*time.Second).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen),
		"three seconds Open under load")
	stopped := stopCallers(loads)
	// Open for clients once kube-proxy has applied the slice that status follows: its rule
	// syncs take tens of milliseconds.
	floor := 100 * time.Millisecond
	if failure == rig.Hang {
		floor += 100 * time.Millisecond
	}
	out := make([]tripped, len(callers))
	for i, c := range callers {
		out[i] = tripped{name: name, failure: string(failure), mode: c.mode, pods: c.pods(), floor: floor, openAfter: openAt.Sub(failedAt),
			delays: switchDelays(stopped[i], failedAt, c.pods()),
			// Only calls that could reach the target: later ones get the responder, whose
			// reset can take over 100 ms on a loaded machine without anything waiting.
			released: releasedAt(stopped[i].Between(failedAt, openAt.Add(250*time.Millisecond)), failedAt, c.pods()),
			since:    stopped[i].Between(failedAt, time.Now()),
			open:     stopped[i].Between(openAt.Add(250*time.Millisecond), time.Now()),
			conns:    loads[i].Conns()}
	}
	return out
}

// failedFast says the attempt got tripswitch's answer rather than the target's: the
// responder's 503 or gRPC UNAVAILABLE naming the breaker, or a reset that no backend sent (the
// responder's reset listener, or a connection the node agent cut) and that did not wait.
// Resets are timed loosely, by the call's own time (Attempt.Took): on 2 cores carrying
// thousands of calls a second, a dial and its reset took up to a few hundred milliseconds,
// still nothing like a timeout, and a stream client's calls queued behind each other for
// longer (one run on a machine loaded with two busy loops saw 1.1 s, nearly all of it queue).
func failedFast(a rig.Attempt) bool {
	return answeredByResponder(a) ||
		(a.Backend() == "" && (a.Outcome == rig.Reset || a.Outcome == rig.Refused) && a.Took() < time.Second)
}

// servedByTarget says a backend answered the attempt.
func servedByTarget(a rig.Attempt) bool { return a.Backend() != "" }

// backendsOf counts the attempts by the backend that answered them.
func backendsOf(results rig.Results) map[string]int {
	out := map[string]int{}
	for _, a := range results.Where(servedByTarget) {
		out[a.Backend()]++
	}
	return out
}

// shares describes who answered attempts, as shares of them.
func shares(results rig.Results) string {
	counts := map[string]int{}
	for _, a := range results {
		counts[servedBy(a)]++
	}
	names := make([]string, 0, len(counts))
	for n := range counts {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", n, 100*float64(counts[n])/float64(max(1, len(results)))))
	}
	return strings.Join(parts, ", ")
}

// gateChange is a gate state a breaker's status showed from At on.
type gateChange struct {
	State tripswitchv1alpha1.State
	At    time.Time
}

// watchGate polls a breaker's status.gateState until the story ends and returns what it saw.
func watchGate(ctx context.Context, ns, name string) func() []gateChange {
	var mu sync.Mutex
	var seen []gateChange
	stop := make(chan struct{})
	DeferCleanup(func() { close(stop) })
	go func() {
		ticker := time.NewTicker(10 * time.Millisecond)
		defer ticker.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ticker.C:
			}
			cb := &tripswitchv1alpha1.CircuitBreaker{}
			if err := cluster.Client().Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, cb); err != nil {
				continue
			}
			mu.Lock()
			if len(seen) == 0 || seen[len(seen)-1].State != cb.Status.GateState {
				seen = append(seen, gateChange{State: cb.Status.GateState, At: time.Now()})
			}
			mu.Unlock()
		}
	}()
	return func() []gateChange {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// during returns the attempts that started while the gate was in state, leaving out the first
// 250 ms of each such period (kube-proxy applies the slices status follows within tens of
// milliseconds) and the last 250 ms (status follows the slice that ends it).
func during(results rig.Results, changes []gateChange, state tripswitchv1alpha1.State) rig.Results {
	var out rig.Results
	for i, c := range changes {
		if c.State != state {
			continue
		}
		end := time.Now()
		if i+1 < len(changes) {
			end = changes[i+1].At.Add(-250 * time.Millisecond)
		}
		out = append(out, results.Between(c.At.Add(250*time.Millisecond), end)...)
	}
	return out
}

// acrossDeletion calls a front from one pod at 100 Hz, deletes its breaker after a second,
// waits until the breaker is gone and Kubernetes' EndpointSlice controller publishes the
// front, and goes on for a second more.
// acrossDeletion deletes a breaker while a pod calls its front at 100 Hz, and returns the
// calls and when tripswitch's last slice of the front was gone.
func acrossDeletion(ctx SpecContext, ns, name string) (rig.Results, time.Time) {
	GinkgoHelper()
	front := frontAddress(ctx, ns, name)
	clients := rig.NewClients(1)
	Eventually(func() rig.Outcome { return clients[0].Get(front).Outcome }).Should(Equal(rig.Responded),
		"the front answers before the story starts")
	load := clients.Start(rig.LoadSpec{Target: front, Host: name + "." + ns, Rate: 100, Headers: loadHeaders})
	Eventually(func() int { return len(load.Snapshot()) }).Should(BeNumerically(">=", 100))
	c := cluster.Client()
	Expect(c.Delete(ctx, &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})).To(Succeed())
	Eventually(func() error {
		return c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &tripswitchv1alpha1.CircuitBreaker{})
	}).Should(Satisfy(apierrors.IsNotFound))
	Eventually(func(g Gomega) {
		g.Expect(readyAddresses(ctx, g, ns, name, "endpointslice-controller.k8s.io")).NotTo(BeEmpty())
	}).Should(Succeed(), "Kubernetes publishes the front it was handed")
	Eventually(func(g Gomega) []discoveryv1.EndpointSlice {
		var slices discoveryv1.EndpointSliceList
		g.Expect(c.List(ctx, &slices, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: name})).To(Succeed())
		return slices.Items
	}).Should(HaveEach(HaveField("Labels", HaveKeyWithValue(discoveryv1.LabelManagedBy, "endpointslice-controller.k8s.io"))),
		"tripswitch deletes its slices once Kubernetes' are ready")
	handedBack := time.Now()
	Eventually(func() int { return len(load.Snapshot().Between(handedBack, time.Now())) }).Should(BeNumerically(">=", 150))
	return load.Stop(), handedBack
}

// leaseAcquired is what client-go's leader election logs when a manager becomes the leader.
const leaseAcquired = "Successfully acquired lease"

// probeRates counts the probes each backend receives over d, as probes a second.
func probeRates(bs []*rig.Backend, d time.Duration) map[string]float64 {
	GinkgoHelper()
	before := map[string]int64{}
	for _, b := range bs {
		before[b.Name] = b.Requests().Probes
	}
	start := time.Now()
	Consistently(func() bool { return true }, d).Should(BeTrue())
	out := map[string]float64{}
	for _, b := range bs {
		out[b.Name] = float64(b.Requests().Probes-before[b.Name]) / time.Since(start).Seconds()
	}
	return out
}

// setSysctl sets a sysctl of the node namespace (the suite's own) until the current node's
// cleanup puts the old value back.
func setSysctl(key, value string) {
	GinkgoHelper()
	path := "/proc/sys/" + key
	old, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	Expect(os.WriteFile(path, []byte(value), 0o644)).To(Succeed())
	DeferCleanup(func() { Expect(os.WriteFile(path, old, 0o644)).To(Succeed()) })
}

// guardResets sums what the agent's reset guard has answered with a reset on the node so far
// (its prerouting rules' counters); 0 when there is no guard table.
func guardResets() int {
	out, err := exec.Command("nft", "list", "chain", "inet", "tripswitch-agent", "prerouting").CombinedOutput()
	if err != nil {
		return 0
	}
	n := 0
	for _, m := range regexp.MustCompile(`counter packets (\d+)`).FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.Atoi(m[1])
		n += v
	}
	return n
}
