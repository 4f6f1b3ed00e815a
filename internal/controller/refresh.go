package controller

import (
	"hash/fnv"
	"math"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/handler"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// Work queue priorities (controller-runtime's priority queue hands out the highest first).
// A transition decided by the probes must reach the gate at once, however many breakers wait
// for a counter refresh; watch events come in between, at 0, and the initial list of a cache
// at handler.LowPriority.
const (
	// TransitionPriority is the priority of a breaker the scheduler reports a transition for.
	TransitionPriority = 100
	// RefreshPriority is the priority of a breaker that only comes back to refresh its
	// counters: last, after even the initial list, since registering a breaker with the
	// scheduler matters more than telling how many probes it passed.
	RefreshPriority = handler.LowPriority - 100
)

// RefreshShare is the share of the client's QPS that counter refreshes may take. client-go
// limits each API resource's client on its own, so status patches of refreshes and of
// transitions share one limiter: refreshes keep to half of it, and a transition's status patch
// never waits in line behind them.
const RefreshShare = 0.5

// openSlack is how long after the end of its Open period an Open breaker comes back, should
// the scheduler's own deadline not have brought it back already.
const openSlack = time.Second

// refreshPeriod is how often each breaker's counters are refreshed: every status sync period,
// or, when that would take more than budget status patches a second across all breakers,
// as often as the budget allows. A budget of 0 or less sets no bound.
func refreshPeriod(syncPeriod time.Duration, breakers int, budget float64) time.Duration {
	if budget <= 0 || breakers <= 0 {
		return syncPeriod
	}
	bounded := time.Duration(math.Ceil(float64(breakers) / budget * float64(time.Second)))
	return max(syncPeriod, bounded)
}

// refreshPhase spreads breakers over the refresh period by their key, so that breakers created
// or restored together are not all refreshed together, period after period.
func refreshPhase(key types.NamespacedName, period time.Duration) time.Duration {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key.Namespace + "/" + key.Name))
	return time.Duration(h.Sum64() % uint64(period))
}

// untilRefresh is the time from now to the breaker's next refresh: the next instant at its
// phase of the period, at least half a period away, so that a reconcile just before its phase
// does not bring it back at once.
func untilRefresh(now time.Time, phase, period time.Duration) time.Duration {
	at := time.Duration(now.UnixNano() % int64(period))
	d := (phase - at + period) % period
	if d < period/2 {
		d += period
	}
	return d
}

// counterWriteDue says whether a status write that changes only counters may go out now: a
// period after the last one, less a tenth for the work queue's lateness (a refresh that ran
// late last time must not push this one to the period after).
func counterWriteDue(now, last time.Time, period time.Duration) bool {
	return now.Sub(last) >= period-period/10
}

// counterWriteAllowed says whether a status write that changes only counters may go out now:
// due for the breaker (see counterWriteDue), and within the refresh budget across all
// breakers. The phases keep refreshes within the budget in steady state; the limiter keeps
// them there also when they bunch up, such as after many breakers started at once, when the
// period grew while they were waiting at the shorter one. A write held back waits for the
// breaker's next refresh.
func (r *CircuitBreakerReconciler) counterWriteAllowed(key types.NamespacedName, now time.Time) bool {
	if last, ok := r.lastSync.Load(key); ok && !counterWriteDue(now, last.(time.Time), r.refreshPeriod()) {
		return false
	}
	r.refreshLimiterOnce.Do(func() {
		if r.RefreshBudget > 0 {
			r.refreshLimiter = rate.NewLimiter(rate.Limit(r.RefreshBudget), max(1, int(r.RefreshBudget)))
		}
	})
	return r.refreshLimiter == nil || r.refreshLimiter.AllowN(now, 1)
}

// next is when the breaker comes back, and how urgently. A deadline that a step set (a
// hand-back in progress) or the end of a forced mode (spec.modeUntil) keeps the ordinary
// priority. An Open breaker probes nothing, so its
// counters cannot change: it comes back only after its Open period, in case the scheduler's
// own deadline did not bring it back. Any other breaker comes back at its refresh phase, at
// the lowest priority. The priority is always set, so that a transition's priority does not
// stick to the breaker's later refreshes.
func (r *CircuitBreakerReconciler) next(key types.NamespacedName, cb *tripswitchv1alpha1.CircuitBreaker,
	st *reconcileState) ctrl.Result {
	result := r.nextDeadline(key, cb, st)
	if st.modeEnds > 0 && st.modeEnds < result.RequeueAfter {
		// A forced mode ends at spec.modeUntil, whatever the refresh period has grown to.
		return ctrl.Result{RequeueAfter: st.modeEnds, Priority: ptr.To(0)}
	}
	return result
}

// nextDeadline is next without the end of a forced mode.
func (r *CircuitBreakerReconciler) nextDeadline(key types.NamespacedName, cb *tripswitchv1alpha1.CircuitBreaker,
	st *reconcileState) ctrl.Result {
	if st.requeueAfter < r.StatusSyncPeriod {
		return ctrl.Result{RequeueAfter: st.requeueAfter, Priority: ptr.To(0)}
	}
	now := r.Clock.Now()
	if cb.Status.State == tripswitchv1alpha1.StateOpen && cb.Status.OpenUntil != nil {
		return ctrl.Result{RequeueAfter: max(cb.Status.OpenUntil.Sub(now), 0) + openSlack, Priority: ptr.To(RefreshPriority)}
	}
	period := r.refreshPeriod()
	return ctrl.Result{RequeueAfter: untilRefresh(now, refreshPhase(key, period), period), Priority: ptr.To(RefreshPriority)}
}

// refreshPeriod is the current refresh period for the breakers this reconciler knows.
func (r *CircuitBreakerReconciler) refreshPeriod() time.Duration {
	return refreshPeriod(r.StatusSyncPeriod, int(r.breakers.Load()), r.RefreshBudget)
}

// track counts a breaker the first time it is reconciled, for the refresh budget.
func (r *CircuitBreakerReconciler) track(key types.NamespacedName) {
	if _, loaded := r.tracked.LoadOrStore(key, struct{}{}); !loaded {
		r.breakers.Add(1)
	}
}

// untrack forgets a breaker counted by track.
func (r *CircuitBreakerReconciler) untrack(key types.NamespacedName) {
	if _, loaded := r.tracked.LoadAndDelete(key); loaded {
		r.breakers.Add(-1)
	}
}
