package envtest_test

import (
	"fmt"
	"net"
	"net/http"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads the manager's metrics endpoint and returns the value of one series of the
// breaker, found by metric name and extra labels, or -1 when the series does not exist.
func scrape(addr, ns, name string) func(metric string, labels ...string) float64 {
	return func(metric string, labels ...string) float64 {
		resp, err := http.Get("http://" + addr + "/metrics")
		Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(resp.Body)
		Expect(err).NotTo(HaveOccurred())
		want := map[string]string{"namespace": ns, "name": name}
		for i := 0; i+1 < len(labels); i += 2 {
			want[labels[i]] = labels[i+1]
		}
		for _, m := range families[metric].GetMetric() {
			if matches(m, want) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue()
				case m.Gauge != nil:
					return m.Gauge.GetValue()
				case m.Histogram != nil:
					return float64(m.Histogram.GetSampleCount())
				}
			}
		}
		return -1
	}
}

func matches(m *dto.Metric, want map[string]string) bool {
	found := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			found++
		}
	}
	return found == len(want)
}

var _ = Describe("The metrics endpoint", func() {
	It("shows state, transitions and probes move through a trip and a recovery, and forgets a deleted breaker", func(ctx SpecContext) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		addr := l.Addr().String()
		Expect(l.Close()).To(Succeed())
		ns := newNamespace()
		startManager(managerOptions{metricsAddr: addr})
		m := scrape(addr, ns, "metered")

		b := newBackend()
		createTarget(ctx, ns, "metered-backend", b.port, b)
		createBreaker(ctx, ns, "metered", `{target: {service: metered-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 2}, recovery: {openDuration: 2s}}`)
		Eventually(func() float64 { return m("tripswitch_breaker_state", "state", "closed") }).Should(Equal(1.0))
		Eventually(func() float64 { return m("tripswitch_probes_total", "outcome", "success") }).Should(BeNumerically(">", 2))
		Expect(m("tripswitch_probe_duration_seconds")).To(BeNumerically(">", 2))
		Expect(m("tripswitch_breaker_trips_total")).To(Equal(0.0))

		b.failing.Store(true)
		Eventually(func() float64 { return m("tripswitch_breaker_state", "state", "open") }).Should(Equal(1.0))
		Expect(m("tripswitch_breaker_state", "state", "closed")).To(Equal(0.0))
		Expect(m("tripswitch_breaker_trips_total")).To(Equal(1.0))
		Expect(m("tripswitch_breaker_transitions_total", "from", "closed", "to", "open", "reason", "ConsecutiveFailures")).To(Equal(1.0))
		Expect(m("tripswitch_probes_total", "outcome", "failure")).To(BeNumerically(">=", 2))

		b.failing.Store(false)
		Eventually(func() float64 { return m("tripswitch_breaker_recoveries_total") }, 10*time.Second).Should(Equal(1.0))
		Expect(m("tripswitch_breaker_state", "state", "closed")).To(Equal(1.0))
		Expect(m("tripswitch_breaker_transitions_total", "from", "half_open", "to", "closed", "reason", "TrialSucceeded")).To(Equal(1.0))

		Expect(k8sClient.Delete(ctx, breakerFromYAML(ns, "metered", `{}`))).To(Succeed())
		for _, metric := range []string{"tripswitch_breaker_state", "tripswitch_breaker_transitions_total", "tripswitch_breaker_trips_total",
			"tripswitch_breaker_recoveries_total", "tripswitch_probes_total", "tripswitch_probe_duration_seconds"} {
			Eventually(func() float64 { return m(metric) }).Should(Equal(-1.0), fmt.Sprintf("%s should be gone", metric))
		}
	})
})
