package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"
)

// registered gathers the names this recorder really serves, once every series exists.
func registered(t *testing.T) map[string]bool {
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(reg)
	if err != nil {
		t.Fatal(err)
	}
	r.Breaker("ns", "b").ObserveProbe(0, time.Millisecond)
	r.SetState("ns", "b", "Open")
	r.SetInfo("ns", "b", "t", "f")
	r.Transition("ns", "b", "Closed", "Open", "ConsecutiveFailures")
	r.SetObserverGuard(false)
	r.Ejected("ns", "b", "ConsecutiveFailures")
	r.SetEjection("ns", "b", 1, false, true)
	r.QueryEvaluated("ns", "b", "r", 1, false, nil)
	r.Resolved("ns", "b", ResolutionSuccess)
	r.SetExternalAddresses("ns", "b", 2)
	r.SetDegradedObservers(func() map[string][]string { return map[string][]string{"node-a": {"ns/b"}} })
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+suffix] = true
			}
		}
	}
	return names
}

var metricName = regexp.MustCompile(`\btripswitch_[a-z_]+`)

// queries collects every string value under keys that hold PromQL in a decoded document.
func queries(v any, keys map[string]bool, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := e.(string); ok && keys[k] {
				*out = append(*out, s)
			}
			queries(e, keys, out)
		}
	case []any:
		for _, e := range v {
			queries(e, keys, out)
		}
	}
}

func TestDashboardAndAlertsQueryOnlyRegisteredMetrics(t *testing.T) {
	names := registered(t)
	for _, file := range []string{"../../config/grafana/tripswitch-dashboard.json", "../../config/prometheus/prometheusrule.yaml"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if strings.HasSuffix(file, ".json") {
			err = json.Unmarshal(data, &doc)
		} else {
			err = yaml.Unmarshal(data, &doc)
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var exprs []string
		queries(doc, map[string]bool{"expr": true, "definition": true, "query": true}, &exprs)
		if len(exprs) < 3 {
			t.Fatalf("%s: found only %d queries; the walk is broken", file, len(exprs))
		}
		var used []string
		for _, e := range exprs {
			for _, name := range metricName.FindAllString(e, -1) {
				used = append(used, name)
				if !names[name] {
					t.Errorf("%s queries %s, which the recorder does not register", file, name)
				}
			}
		}
		if len(used) == 0 {
			t.Errorf("%s names no tripswitch metric at all", file)
		}
		t.Logf("%s: %d queries, metrics %v", file, len(exprs), slices.Compact(slices.Sorted(slices.Values(used))))
	}
}
