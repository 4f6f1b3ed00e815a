package controller

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/query"
	"github.com/tripswitch/tripswitch/internal/runner"
)

// compileQueries turns spec.trip.queries into rules, confined to the breaker's namespace when
// the manager has a --query-namespace-label. A rule that cannot be compiled is left out (it
// can only trip, so leaving it out never takes traffic away) and reported.
func compileQueries(spec *tripswitchv1alpha1.CircuitBreakerSpec, namespaceLabel, namespace string) ([]query.Rule, time.Duration, error) {
	var rules []query.Rule
	var errs []string
	for _, q := range spec.Trip.Queries {
		noData := query.NoDataIgnore
		if q.NoData == tripswitchv1alpha1.NoDataFailure {
			noData = query.NoDataFailure
		}
		r, err := query.Compile(query.Spec{Name: q.Name, Query: q.Query, Above: ptr.Deref(q.Above, ""),
			Below: ptr.Deref(q.Below, ""), For: int(q.For), NoData: noData}, namespaceLabel, namespace)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		rules = append(rules, r)
	}
	var interval time.Duration
	if spec.Trip.QueryInterval != nil {
		interval = spec.Trip.QueryInterval.Duration
	}
	if len(errs) > 0 {
		return rules, interval, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return rules, interval, nil
}

// applyQueries writes the newest evaluations into status and keeps the QueriesFailing
// condition in step: present while some rule's last evaluation failed.
func applyQueries(cb *tripswitchv1alpha1.CircuitBreaker, results []runner.QueryResult) {
	st := &cb.Status
	st.Queries = nil
	var failing []string
	for _, r := range results {
		q := tripswitchv1alpha1.QueryStatus{Name: r.Name, Holding: int32(min(r.Holding, 1<<30))}
		if !r.At.IsZero() {
			q.LastEvaluation = ptr.To(metav1.NewTime(r.At.Truncate(time.Second)))
		}
		if !r.SettlingUntil.IsZero() {
			q.SettlingUntil = ptr.To(metav1.NewTime(roundUpSecond(r.SettlingUntil)))
		}
		switch {
		case r.Err != nil:
			q.Error = cut(r.Err.Error(), 256)
			failing = append(failing, fmt.Sprintf("%s: %s", r.Name, cut(r.Err.Error(), 120)))
		case !r.Sample.NoData:
			q.Value = strconv.FormatFloat(r.Sample.Value, 'g', 6, 64)
		}
		st.Queries = append(st.Queries, q)
	}
	if len(failing) == 0 {
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionQueriesFailing)
		return
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: tripswitchv1alpha1.ConditionQueriesFailing,
		Status: metav1.ConditionTrue, Reason: tripswitchv1alpha1.ReasonQueryFailed, ObservedGeneration: cb.Generation,
		Message: "These query rules cannot trip the breaker until their queries succeed again (the probes still can): " +
			strings.Join(failing, "; ")})
}
