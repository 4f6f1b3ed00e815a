package envtest_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/metrics"
	"github.com/tripswitch/tripswitch/test/promtest"
)

// prometheusBinary is the Prometheus that make prometheus installs.
func prometheusBinary() string {
	if b := os.Getenv("PROMETHEUS"); b != "" {
		return b
	}
	matches, _ := filepath.Glob(filepath.Join(repoRoot, "bin", "prometheus-*"))
	if len(matches) == 0 {
		if os.Getenv("CI") != "" {
			Fail("no Prometheus in ./bin: make test installs it")
		}
		Skip("no Prometheus in ./bin; make prometheus installs it")
	}
	return matches[0]
}

// withPrometheus starts an application called service in namespace ns, a real Prometheus that
// scrapes it every second, and a manager that sends its queries there.
func withPrometheus(ns, service string) (*promtest.App, *promtest.Server) {
	app := promtest.StartNamespacedApp(GinkgoT(), ns, service, 200)
	prom := promtest.Start(GinkgoT(), prometheusBinary(), app.Address)
	startManager(managerOptions{prometheusURL: prom.URL})
	return app, prom
}

var _ = Describe("Trip rules over real traffic (PromQL)", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("opens when the application's error rate crosses the threshold, with the rule's value in the event, and recovers by probes", func(ctx SpecContext) {
		app, _ := withPrometheus(ns, "payments")
		b := newBackend()
		createTarget(ctx, ns, "payments-backend", b.port, b)
		createBreaker(ctx, ns, "payments", `{target: {service: payments-backend, port: http},
			probe: {interval: 200ms, timeout: 100ms}, recovery: {openDuration: 2s},
			trip: {queryInterval: 1s, queries: [{name: error-rate, for: 3, above: "0.05",
				query: 'sum(rate(http_requests_total{service="payments",code=~"5.."}[5s])) / sum(rate(http_requests_total{service="payments"}[5s]))'}]}}`)
		Eventually(status(ctx, ns, "payments"), 20*time.Second).Should(HaveField("Queries", ConsistOf(And(
			HaveField("Name", "error-rate"), HaveField("Value", "0"), HaveField("Error", "")))), "evaluated, healthy")

		errorsAt := time.Now()
		app.SetErrorShare(0.3)
		Eventually(status(ctx, ns, "payments"), 20*time.Second).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
		detection := time.Since(errorsAt)
		AddReportEntry("query trip: errors start → Open (scrape 1s, rate 5s, queryInterval 1s, for 3)", detection.String())
		fmt.Fprintf(GinkgoWriter, "open %s after the errors began\n", detection)
		st := status(ctx, ns, "payments")(Default)
		Expect(st.Reason).To(Equal("QueryRule"))
		Expect(st.TransitionMessage).To(MatchRegexp(`^error-rate 0\.[0-9]+ > 0\.05 for 3 evaluations$`))
		Eventually(eventNotes(ctx, ns, "QueryRule")).Should(ContainElement(MatchRegexp(
			`Closed -> Open.*after error-rate 0\.[0-9]+ > 0\.05 for 3 evaluations`)))

		// The probes succeed throughout: the breaker recovers through HalfOpen on its own,
		// whatever the query says while it is not Closed.
		app.SetErrorShare(0)
		Eventually(status(ctx, ns, "payments"), 20*time.Second).Should(HaveField("State", tripswitchv1alpha1.StateClosed))
		// Its 5s window still holds the errors of before: the rule waits that long to judge.
		st = status(ctx, ns, "payments")(Default)
		Expect(st.Queries).To(ConsistOf(HaveField("SettlingUntil", HaveField("Time",
			BeTemporally("~", st.LastTransitionTime.Add(5*time.Second), time.Second)))))
	})

	It("counts a query that returns nothing as its noData policy says: Ignore never trips, Failure does", func(ctx SpecContext) {
		withPrometheus(ns, "search")
		bs := newBackends(2)
		for i, policy := range []string{"Ignore", "Failure"} {
			name := "search-" + strings.ToLower(policy)
			createTarget(ctx, ns, name+"-backend", bs[i].port, bs[i])
			// No series is called service="gone": the query returns an empty vector.
			createBreaker(ctx, ns, name, `{target: {service: `+name+`-backend, port: http},
				trip: {queryInterval: 1s, queries: [{name: gone, for: 2, above: "0.05", noData: `+policy+`,
					query: 'sum(rate(http_requests_total{service="gone"}[5s]))'}]}}`)
		}
		Eventually(status(ctx, ns, "search-failure"), 20*time.Second).Should(And(
			HaveField("State", tripswitchv1alpha1.StateOpen), HaveField("Reason", "QueryRule")))
		Expect(eventNotes(ctx, ns, "QueryRule")(Default)).To(ContainElement(ContainSubstring("gone no data > 0.05 for 2 evaluations")))
		// Status shows evaluations at the breaker's next reconcile (its counter refresh).
		Eventually(status(ctx, ns, "search-ignore"), 20*time.Second).Should(HaveField("Queries", ConsistOf(And(
			HaveField("Value", ""), HaveField("Error", ""), HaveField("Holding", BeZero()), HaveField("LastEvaluation", Not(BeNil()))))))
		Expect(status(ctx, ns, "search-ignore")(Default).State).To(Equal(tripswitchv1alpha1.StateClosed),
			"under Ignore no data never trips")
	})

	It("never trips while Prometheus is down, and says so", func(ctx SpecContext) {
		_, prom := withPrometheus(ns, "orders")
		b := newBackend()
		createTarget(ctx, ns, "orders-backend", b.port, b)
		createBreaker(ctx, ns, "orders", `{target: {service: orders-backend, port: http},
			trip: {queryInterval: 1s, queries: [{name: errors, query: 'vector(0)', above: "0.5", noData: Failure}]}}`)
		// A failed query is not "no data": even under noData Failure it never trips.
		prom.Stop()
		Eventually(func(g Gomega) string {
			c := meta.FindStatusCondition(status(ctx, ns, "orders")(g).Conditions, tripswitchv1alpha1.ConditionQueriesFailing)
			if c == nil {
				return ""
			}
			return c.Message
		}, 20*time.Second).Should(ContainSubstring("errors:"))
		Consistently(status(ctx, ns, "orders"), 3*time.Second).Should(HaveField("State", tripswitchv1alpha1.StateClosed))
		Expect(metricValue(metrics.QueryErrorsName, map[string]string{"namespace": ns, "name": "orders", "rule": "errors"})).
			To(BeNumerically(">=", 3), "every failed evaluation is counted")
	})

	It("lets the observer guard hold query trips when Prometheus shows every target failing at once", func(ctx SpecContext) {
		// One series that every breaker's rule reads goes bad at once, as when a shared ingress
		// or a broken exporter reports errors for everything: that looks like the manager's
		// own trouble, not ten targets failing together. Half of the ten may trip.
		app, _ := withPrometheus(ns, "edge")
		f := newFleet(ctx, ns, "shard", 10, `probe: {interval: 200ms}, recovery: {openDuration: 10s}, trip: {queryInterval: 1s, queries: [{name: edge-errors,
			above: "0.05", query: 'sum(rate(http_requests_total{code=~"5.."}[5s])) / sum(rate(http_requests_total[5s]))'}]}`)
		_, mostEmpty := f.watchEmpty()
		Eventually(func(g Gomega) {
			for _, name := range f.names {
				g.Expect(status(ctx, ns, name)(g).Queries).To(ConsistOf(HaveField("Value", "0")))
			}
		}, 20*time.Second).Should(Succeed(), "every rule evaluated, healthy")

		app.SetErrorShare(1)
		Eventually(f.held(ctx), 20*time.Second).Should(HaveLen(5), "the 6th to 10th query trips are held")
		Consistently(f.emptyFronts(ctx), 3*time.Second).Should(BeNumerically("<=", 5))
		held := status(ctx, ns, f.held(ctx)(Default)[0])(Default)
		Expect(meta.FindStatusCondition(held.Conditions, tripswitchv1alpha1.ConditionObserverGuard).Message).
			To(ContainSubstring("traffic keeps flowing"))

		// The series heal: the holds end with the rule, and nothing else trips.
		app.SetErrorShare(0)
		Eventually(f.held(ctx), 20*time.Second).Should(BeEmpty())
		Eventually(f.emptyFronts(ctx), 30*time.Second).Should(BeZero(), "the tripped half recovers by probes")
		Expect(mostEmpty()).To(Equal(5))
	})

	It("confines every query to its breaker's namespace", func(ctx SpecContext) {
		// Two tenants run an application called payments; the other tenant's fails.
		mine := promtest.StartNamespacedApp(GinkgoT(), ns, "payments", 200)
		other := newNamespace()
		theirs := promtest.StartNamespacedApp(GinkgoT(), other, "payments", 200)
		theirs.SetErrorShare(1)
		prom := promtest.Start(GinkgoT(), prometheusBinary(), mine.Address, theirs.Address)
		startManager(managerOptions{prometheusURL: prom.URL})
		bs := newBackends(2)
		createTarget(ctx, ns, "payments-backend", bs[0].port, bs[0])
		createTarget(ctx, ns, "snoop-backend", bs[1].port, bs[1])
		// A rule that names no namespace reads only its own namespace's series...
		createBreaker(ctx, ns, "payments", `{target: {service: payments-backend, port: http},
			trip: {queryInterval: 1s, queries: [{name: error-rate, above: "0.05",
				query: 'sum(rate(http_requests_total{service="payments",code=~"5.."}[5s])) / sum(rate(http_requests_total{service="payments"}[5s]))'}]}}`)
		// ...and one that names another namespace reads nothing at all.
		createBreaker(ctx, ns, "snoop", fmt.Sprintf(`{target: {service: snoop-backend, port: http},
			trip: {queryInterval: 1s, queries: [{name: theirs, above: "-1",
				query: 'sum(rate(http_requests_total{namespace=%q}[5s]))'}]}}`, other))
		Eventually(func(g Gomega) {
			g.Expect(status(ctx, ns, "payments")(g).Queries).To(ConsistOf(HaveField("Value", "0")))
			g.Expect(status(ctx, ns, "snoop")(g).Queries).To(ConsistOf(And(HaveField("Value", ""),
				HaveField("Error", ""), HaveField("LastEvaluation", Not(BeNil())))))
		}, 20*time.Second).Should(Succeed())
		Expect(status(ctx, ns, "payments")(Default).State).To(Equal(tripswitchv1alpha1.StateClosed))
		Expect(status(ctx, ns, "snoop")(Default).State).To(Equal(tripswitchv1alpha1.StateClosed))

		// A renamed rule takes its series with it: no series shows a value nobody computes.
		series := func(rule string) func() float64 {
			return func() float64 {
				return metricValue(metrics.QueryValueName, map[string]string{"namespace": ns, "name": "payments", "rule": rule})
			}
		}
		Expect(series("error-rate")()).To(BeZero())
		patchBreaker(ctx, ns, "payments", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Trip.Queries[0].Name = "errors" })
		Eventually(series("errors"), 10*time.Second).Should(BeZero())
		Eventually(series("error-rate")).Should(Equal(-1.0), "gone")
		Expect(metricValue(metrics.QueryErrorsName, map[string]string{"namespace": ns, "name": "payments", "rule": "error-rate"})).
			To(Equal(-1.0))
	})

	It("leaves out a rule whose query cannot run, says so, and runs the rest", func(ctx SpecContext) {
		// Admission cannot parse PromQL: the API server takes these, so the manager must run them.
		app, _ := withPrometheus(ns, "ledger")
		b := newBackend()
		createTarget(ctx, ns, "ledger-backend", b.port, b)
		createBreaker(ctx, ns, "ledger", `{target: {service: ledger-backend, port: http}, probe: {interval: 200ms},
			trip: {queryInterval: 1s, queries: [
				{name: unbalanced, above: "0.05", query: 'sum(rate(http_requests_total[5s])'},
				{name: range, above: "0.05", query: 'http_requests_total[5m]'},
				{name: errors, above: "0.05", query: 'sum(rate(http_requests_total{code=~"5.."}[5s])) / sum(rate(http_requests_total[5s]))'}]}}`)
		Eventually(status(ctx, ns, "ledger"), 20*time.Second).Should(And(
			condition(tripswitchv1alpha1.ConditionStalled, "Reason", tripswitchv1alpha1.ReasonInvalidSpec,
				"Message", And(ContainSubstring(`query rules that cannot run are left out: query "unbalanced"`),
					ContainSubstring(`query "range" returns a range vector`))),
			HaveField("Queries", ConsistOf(And(HaveField("Name", "errors"), HaveField("Value", "0"))))))
		Expect(front(ctx, ns, "ledger")(Default)).To(HaveField("Ready", 1), "the gate runs on")

		// The rule that runs still trips.
		app.SetErrorShare(0.5)
		Eventually(status(ctx, ns, "ledger"), 20*time.Second).Should(And(
			HaveField("State", tripswitchv1alpha1.StateOpen), HaveField("Reason", "QueryRule")))
	})
})
