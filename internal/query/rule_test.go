package query

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

const errorRate = `sum(rate(http_requests_total{service="payments",code=~"5.."}[1m])) / sum(rate(http_requests_total{service="payments"}[1m]))`

func TestCompile(t *testing.T) {
	for _, tt := range []struct {
		name      string
		spec      Spec
		label, ns string
		wantQuery string
		wantErr   string
	}{
		{name: "confined to the breaker's namespace in every selector",
			spec:  Spec{Name: "error-rate", Query: errorRate, Above: "0.05", For: 3},
			label: "namespace", ns: "shop",
			wantQuery: `sum(rate(http_requests_total{code=~"5..",namespace="shop",service="payments"}[1m])) / ` +
				`sum(rate(http_requests_total{namespace="shop",service="payments"}[1m]))`},
		{name: "a matcher for another namespace still meets the confinement, so it selects nothing",
			spec:  Spec{Name: "r", Query: `up{namespace="kube-system"}`, Below: "1", For: 1},
			label: "namespace", ns: "shop",
			wantQuery: `up{namespace="kube-system",namespace="shop"}`},
		{name: "unconfined when no label is set",
			spec: Spec{Name: "r", Query: `up`, Below: "1", For: 1}, wantQuery: `up`},
		{name: "a scalar query", spec: Spec{Name: "r", Query: `scalar(up) * 2`, Above: "1", For: 1},
			wantQuery: `scalar(up) * 2`},
		{name: "a range vector is refused", spec: Spec{Name: "r", Query: `up[5m]`, Above: "1", For: 1},
			wantErr: "returns a range vector; a trip rule needs an instant vector or a scalar, such as rate(up[5m])"},
		{name: "a parse error", spec: Spec{Name: "r", Query: `sum(rate(`, Above: "1", For: 1}, wantErr: `query "r":`},
		{name: "both bounds", spec: Spec{Name: "r", Query: `up`, Above: "1", Below: "2", For: 1},
			wantErr: "exactly one of above and below"},
		{name: "no bound", spec: Spec{Name: "r", Query: `up`, For: 1}, wantErr: "exactly one of above and below"},
		{name: "a bound that is not a number", spec: Spec{Name: "r", Query: `up`, Above: "5%", For: 1},
			wantErr: "not a finite decimal number"},
		{name: "an infinite bound", spec: Spec{Name: "r", Query: `up`, Above: "+Inf", For: 1},
			wantErr: "not a finite decimal number"},
		{name: "for under 1", spec: Spec{Name: "r", Query: `up`, Above: "1"}, wantErr: "for must be at least 1"},
		{name: "a query too long", spec: Spec{Name: "r", Query: strings.Repeat("1+", MaxQueryLength) + "1", Above: "1", For: 1},
			wantErr: "1 to 4096 characters"},
		{name: "no name", spec: Spec{Query: `up`, Above: "1", For: 1}, wantErr: "needs a name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Compile(tt.spec, tt.label, tt.ns)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Query != tt.wantQuery {
				t.Errorf("query\n got %s\nwant %s", r.Query, tt.wantQuery)
			}
		})
	}
}

func TestRead(t *testing.T) {
	one := func(v float64) *model.Sample { return &model.Sample{Value: model.SampleValue(v)} }
	for _, tt := range []struct {
		name    string
		value   model.Value
		want    Sample
		wantErr error
	}{
		{"one series", model.Vector{one(0.31)}, Sample{Value: 0.31}, nil},
		{"a scalar", &model.Scalar{Value: 2}, Sample{Value: 2}, nil},
		{"no series is no data", model.Vector{}, Sample{NoData: true}, nil},
		{"NaN, as 0/0 without traffic, is no data", model.Vector{one(math.NaN())}, Sample{NoData: true}, nil},
		{"two series cannot be judged", model.Vector{one(1), one(2)}, Sample{}, ErrTooManySeries},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Read(tt.value)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	if _, err := Read(model.Matrix{}); err == nil {
		t.Error("a matrix was read as a number")
	}
}

func TestJudge(t *testing.T) {
	rule := Rule{Name: "error-rate", Threshold: 0.05, Above: true, For: 3}
	value := func(v float64) Sample { return Sample{Value: v} }
	none := Sample{NoData: true}
	for _, tt := range []struct {
		name    string
		noData  NoData
		samples []Sample
		trips   []bool
		holding int
	}{
		{"three in a row trip", NoDataIgnore, []Sample{value(0.31), value(0.2), value(0.06)},
			[]bool{false, false, true}, 3},
		{"at the bound does not hold", NoDataIgnore, []Sample{value(0.31), value(0.05), value(0.31), value(0.31)},
			[]bool{false, false, false, false}, 2},
		{"no data is ignored: the run neither grows nor breaks", NoDataIgnore,
			[]Sample{value(0.31), none, value(0.31), none, value(0.31)}, []bool{false, false, false, false, true}, 3},
		{"no data counts as holding under Failure", NoDataFailure, []Sample{none, none, none},
			[]bool{false, false, true}, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := rule
			r.NoData = tt.noData
			j := &Judge{Rule: r}
			for i, s := range tt.samples {
				if got := j.Observe(s); got != tt.trips[i] {
					t.Errorf("evaluation %d: trips %v, want %v", i, got, tt.trips[i])
				}
			}
			if j.Holding != tt.holding {
				t.Errorf("holding %d, want %d", j.Holding, tt.holding)
			}
		})
	}
	j := &Judge{Rule: rule}
	for range 3 {
		j.Observe(value(0.31))
	}
	if got := j.Describe(); got != "error-rate 0.31 > 0.05 for 3 evaluations" {
		t.Errorf("describe: %q", got)
	}
	j.Reset()
	if j.Holding != 0 {
		t.Error("reset kept the run")
	}
	below := &Judge{Rule: Rule{Name: "throughput", Threshold: 10, For: 1, NoData: NoDataFailure}}
	below.Observe(none)
	if got := below.Describe(); got != "throughput no data < 10 for 1 evaluation" {
		t.Errorf("describe: %q", got)
	}
}

// Lookback is how far back an evaluation reads: the longest range of its selectors, with their
// offsets and enclosing subqueries. After the breaker closes, a rule is judged only once its
// whole window lies after the close (see the runner).
func TestCompileFindsTheLookback(t *testing.T) {
	for _, tt := range []struct {
		query string
		want  time.Duration
	}{
		{errorRate, time.Minute},
		{`sum(rate(a[1m])) / sum(rate(b[2m]))`, 2 * time.Minute},
		{`rate(x[5m] offset 10m)`, 15 * time.Minute},
		{`max_over_time(rate(x[1m])[10m:30s])`, 11 * time.Minute},
		{`max_over_time(rate(x[1m] offset 1m)[10m:30s] offset 5m)`, 17 * time.Minute},
		{`up offset 2m`, 2 * time.Minute},
		{`up`, 0},
		{`vector(1)`, 0},
	} {
		r, err := Compile(Spec{Name: "r", Query: tt.query, Above: "1", For: 1}, "namespace", "shop")
		if err != nil {
			t.Fatalf("%s: %v", tt.query, err)
		}
		if r.Lookback != tt.want {
			t.Errorf("lookback of %s = %s, want %s", tt.query, r.Lookback, tt.want)
		}
	}
}
