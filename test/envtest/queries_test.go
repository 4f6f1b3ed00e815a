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

var _ = Describe("Trip rules over real traffic (PromQL)", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("opens when the application's error rate crosses the threshold, with the rule's value in the event, and recovers by probes", func(ctx SpecContext) {
		app := promtest.StartApp(GinkgoT(), "payments", 200)
		prom := promtest.Start(GinkgoT(), prometheusBinary(), app.Address)
		startManager(managerOptions{prometheusURL: prom.URL})
		b := newBackend()
		createTarget(ctx, ns, "payments-backend", b.port, b)
		createBreaker(ctx, ns, "payments", `{target: {service: payments-backend, port: http},
			probe: {interval: 200ms, timeout: 100ms}, recovery: {openDuration: 2s},
			trip: {queryInterval: 1s, queries: [{name: error-rate, for: 2, above: "0.05",
				query: 'sum(rate(http_requests_total{service="payments",code=~"5.."}[5s])) / sum(rate(http_requests_total{service="payments"}[5s]))'}]}}`)
		Eventually(status(ctx, ns, "payments"), 20*time.Second).Should(HaveField("Queries", ConsistOf(And(
			HaveField("Name", "error-rate"), HaveField("Value", "0"), HaveField("Error", "")))), "evaluated, healthy")

		errorsAt := time.Now()
		app.SetErrorShare(0.3)
		Eventually(status(ctx, ns, "payments"), 20*time.Second).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
		detection := time.Since(errorsAt)
		AddReportEntry("query trip: errors start → Open (scrape 1s, rate 5s, queryInterval 1s, for 2)", detection.String())
		fmt.Fprintf(GinkgoWriter, "open %s after the errors began\n", detection)
		st := status(ctx, ns, "payments")(Default)
		Expect(st.Reason).To(Equal("QueryRule"))
		Eventually(eventNotes(ctx, ns, "QueryRule")).Should(ContainElement(MatchRegexp(
			`Closed -> Open.*after error-rate 0\.[0-9]+ > 0\.05 for 2 evaluations`)))

		// The probes succeed throughout: the breaker recovers through HalfOpen on its own,
		// whatever the query says while it is not Closed.
		app.SetErrorShare(0)
		Eventually(status(ctx, ns, "payments"), 20*time.Second).Should(HaveField("State", tripswitchv1alpha1.StateClosed))
	})

	It("counts a query that returns nothing as its noData policy says: Ignore never trips, Failure does", func(ctx SpecContext) {
		app := promtest.StartApp(GinkgoT(), "search", 200)
		prom := promtest.Start(GinkgoT(), prometheusBinary(), app.Address)
		startManager(managerOptions{prometheusURL: prom.URL})
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
		app := promtest.StartApp(GinkgoT(), "orders", 200)
		prom := promtest.Start(GinkgoT(), prometheusBinary(), app.Address)
		startManager(managerOptions{prometheusURL: prom.URL})
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
})
