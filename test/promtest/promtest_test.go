package promtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// binary is the Prometheus that make prometheus installs; PROMETHEUS overrides it.
func binary(t *testing.T) string {
	if b := os.Getenv("PROMETHEUS"); b != "" {
		return b
	}
	matches, _ := filepath.Glob("../../bin/prometheus-*")
	if len(matches) == 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("no Prometheus in ./bin: run the tests with make test, which installs it")
		}
		t.Skip("no Prometheus in ./bin; make prometheus installs it")
	}
	return matches[0]
}

func errorRate(t *testing.T, prom v1.API) (float64, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v, _, _, err := prom.Query(ctx, `sum(rate(http_requests_total{code="500"}[5s])) / sum(rate(http_requests_total[5s]))`, time.Now())
	if err != nil {
		return 0, false
	}
	vec, ok := v.(model.Vector)
	if !ok || len(vec) != 1 {
		return 0, false
	}
	return float64(vec[0].Value), true
}

func TestPrometheusScrapesTheAppAndFollowsItsErrorShare(t *testing.T) {
	app := StartApp(t, "payments", 200)
	srv := Start(t, binary(t), app.Address)
	client, err := api.NewClient(api.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	prom := v1.NewAPI(client)
	waitFor := func(what string, ok func(float64) bool) time.Duration {
		t.Helper()
		start := time.Now()
		for time.Since(start) < 30*time.Second {
			if v, found := errorRate(t, prom); found && ok(v) {
				return time.Since(start)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("the error rate never became %s", what)
		return 0
	}
	waitFor("0", func(v float64) bool { return v == 0 })
	app.SetErrorShare(0.3)
	took := waitFor("above 0.05", func(v float64) bool { return v > 0.05 })
	t.Logf("the error rate crossed 0.05 %s after the errors began (scrape 1 s, rate over 5 s)", took)

	srv.Stop()
	if _, found := errorRate(t, prom); found {
		t.Fatal("a stopped Prometheus answered")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	app.SetErrorShare(0)
	waitFor("back under 0.05", func(v float64) bool { return v < 0.05 })
}
