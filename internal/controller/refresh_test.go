package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

func TestRefreshPeriodKeepsToTheBudget(t *testing.T) {
	for _, tt := range []struct {
		breakers int
		budget   float64
		want     time.Duration
	}{
		{breakers: 100, budget: 25, want: 10 * time.Second},     // 10/s fit in 25/s
		{breakers: 250, budget: 25, want: 10 * time.Second},     // exactly the budget
		{breakers: 10000, budget: 25, want: 400 * time.Second},  // 10,000 at 25/s
		{breakers: 10000, budget: 1000, want: 10 * time.Second}, // a large budget
		{breakers: 10000, budget: 0, want: 10 * time.Second},    // no bound
		{breakers: 10000, budget: -1, want: 10 * time.Second},   // client-go unlimited
		{breakers: 0, budget: 25, want: 10 * time.Second},
	} {
		if got := refreshPeriod(10*time.Second, tt.breakers, tt.budget); got != tt.want {
			t.Errorf("refreshPeriod(10s, %d, %g) = %s, want %s", tt.breakers, tt.budget, got, tt.want)
		}
	}
}

func TestRefreshesAreSpreadOverThePeriod(t *testing.T) {
	g := NewWithT(t)
	period := 10 * time.Second
	// 10,000 breakers reconciled within the same second come back spread over the period:
	// no tenth of it gets more than a few percent over its share.
	perTenth := make([]int, 10)
	for i := range 10000 {
		key := types.NamespacedName{Namespace: "bench", Name: fmt.Sprintf("b%05d", i)}
		d := untilRefresh(now.Add(time.Duration(i)*100*time.Microsecond), refreshPhase(key, period), period)
		g.Expect(d).To(And(BeNumerically(">=", period/2), BeNumerically("<", period+period/2)))
		at := now.Add(time.Duration(i) * 100 * time.Microsecond).Add(d)
		perTenth[at.UnixNano()%int64(period)/int64(period/10)]++
	}
	for tenth, n := range perTenth {
		g.Expect(n).To(BeNumerically("~", 1000, 100), "tenth %d of the period", tenth)
	}
}

func TestARefreshComesBackAtItsPhaseEveryPeriod(t *testing.T) {
	g := NewWithT(t)
	period := 10 * time.Second
	phase := 3 * time.Second
	start := time.Unix(1_800_000_000, 0) // a multiple of the period
	// Late by up to the tolerance, or early after an event: always the phase, a period on.
	for _, tt := range []struct {
		at   time.Duration // from start
		want time.Duration // from start
	}{
		{at: 3 * time.Second, want: 13 * time.Second},
		{at: 3*time.Second + 400*time.Millisecond, want: 13 * time.Second},
		{at: 2 * time.Second, want: 13 * time.Second}, // just before its phase: not at once
		{at: 7 * time.Second, want: 13 * time.Second},
		{at: 9 * time.Second, want: 23 * time.Second}, // less than half a period before: the next
	} {
		got := untilRefresh(start.Add(tt.at), phase, period)
		g.Expect(tt.at+got).To(Equal(tt.want), "reconciled at +%s", tt.at)
	}
}

func TestCounterWritesTolerateALateRefresh(t *testing.T) {
	last := now
	for _, tt := range []struct {
		after time.Duration
		want  bool
	}{
		{after: 10 * time.Second, want: true},
		{after: 9500 * time.Millisecond, want: true}, // the last refresh ran late
		{after: 9 * time.Second, want: true},
		{after: 8 * time.Second, want: false},
		{after: time.Second, want: false}, // the event of our own status write
	} {
		if got := counterWriteDue(now.Add(tt.after), last, 10*time.Second); got != tt.want {
			t.Errorf("counterWriteDue(+%s) = %t, want %t", tt.after, got, tt.want)
		}
	}
}

func TestAnOpenBreakerIsNotRefreshed(t *testing.T) {
	g := NewWithT(t)
	f := newFixture(t, openBreaker())
	key := client.ObjectKey{Namespace: "shop", Name: "payments"}
	res, err := f.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: key})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(Equal(time.Hour+openSlack), "only once its Open period is over")
	g.Expect(res.Priority).To(Equal(ptr.To(RefreshPriority)))
}

func TestAClosedBreakerComesBackForItsRefreshAtTheLowestPriority(t *testing.T) {
	g := NewWithT(t)
	cb := openBreaker()
	cb.Status = tripswitchv1alpha1.CircuitBreakerStatus{}
	f := newFixture(t, cb)
	key := client.ObjectKey{Namespace: "shop", Name: "payments"}
	res, err := f.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: key})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(Equal(untilRefresh(now, refreshPhase(key, 10*time.Second), 10*time.Second)))
	g.Expect(res.Priority).To(Equal(ptr.To(RefreshPriority)))
	g.Expect(f.r.breakers.Load()).To(BeEquivalentTo(1))

	f.r.RefreshBudget = 0.05 // one breaker a 20 s: the period stretches
	res, err = f.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: key})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.RequeueAfter).To(Equal(untilRefresh(now, refreshPhase(key, 20*time.Second), 20*time.Second)))
	g.Expect(f.r.breakers.Load()).To(BeEquivalentTo(1), "counted once")
}

func TestATransitionIsHandedOutBeforeRefreshesAndTheInitialList(t *testing.T) {
	g := NewWithT(t)
	q := priorityqueue.New[reconcile.Request]("refresh-order-test")
	defer q.ShutDown()
	req := func(name string) reconcile.Request {
		return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "bench", Name: name}}
	}
	for i := range 1000 {
		q.AddWithOpts(priorityqueue.AddOpts{Priority: ptr.To(RefreshPriority)}, req(fmt.Sprintf("refresh-%d", i)))
	}
	q.AddWithOpts(priorityqueue.AddOpts{Priority: ptr.To(handler.LowPriority)}, req("listed"))
	q.Add(req("edited"))
	// Transitions come from the scheduler through enqueueTransition, as in the manager.
	r := &CircuitBreakerReconciler{}
	var wq workqueue.TypedRateLimitingInterface[reconcile.Request] = q
	r.transitions.Store(&wq)
	r.enqueueTransition(req("tripped").NamespacedName)
	// A breaker waiting for its refresh that trips: the higher priority and the earlier time win.
	q.AddWithOpts(priorityqueue.AddOpts{Priority: ptr.To(RefreshPriority), After: time.Hour}, req("waiting"))
	r.enqueueTransition(req("waiting").NamespacedName)

	g.Eventually(q.Len).Should(Equal(1004))
	var order []string
	for range 5 {
		item, _, _ := q.GetWithPriority()
		order = append(order, item.Name)
		q.Done(item)
	}
	g.Expect(order).To(Equal([]string{"tripped", "waiting", "edited", "listed", "refresh-0"}))
}

func TestCounterWritesKeepToTheBudgetWhenRefreshesBunchUp(t *testing.T) {
	g := NewWithT(t)
	r := &CircuitBreakerReconciler{StatusSyncPeriod: 10 * time.Second, RefreshBudget: 2}
	key := func(i int) types.NamespacedName { return types.NamespacedName{Namespace: "bench", Name: fmt.Sprint(i)} }
	for i := range 10 {
		r.track(key(i))
		r.lastSync.Store(key(i), now.Add(-time.Hour)) // all due at once
	}
	allowed := 0
	for i := range 10 {
		if r.counterWriteAllowed(key(i), now) {
			allowed++
		}
	}
	g.Expect(allowed).To(Equal(2), "a second's worth of the budget")
	g.Expect(r.counterWriteAllowed(key(9), now.Add(500*time.Millisecond))).To(BeTrue(), "the budget refills")
	g.Expect(r.counterWriteAllowed(key(8), now.Add(500*time.Millisecond))).To(BeFalse())

	r.lastSync.Store(key(0), now)
	g.Expect(r.counterWriteAllowed(key(0), now.Add(5*time.Second))).To(BeFalse(), "not due for this breaker")
}

// A query rule's value, run and time change at every evaluation: like the probe counters they
// are written at the refresh, not at every reconcile that a watch event brings. Whether a rule
// fails is not a counter: it comes with the QueriesFailing condition and is written at once.
func TestQueryEvaluationsAreCounters(t *testing.T) {
	g := NewWithT(t)
	at := func(s int64) *metav1.Time { return ptr.To(metav1.Unix(s, 0)) }
	before := tripswitchv1alpha1.CircuitBreakerStatus{Queries: []tripswitchv1alpha1.QueryStatus{
		{Name: "error-rate", Value: "0.01", LastEvaluation: at(100)}}}
	evaluated := tripswitchv1alpha1.CircuitBreakerStatus{Queries: []tripswitchv1alpha1.QueryStatus{
		{Name: "error-rate", Value: "0.07", Holding: 1, LastEvaluation: at(101)}}}
	failing := tripswitchv1alpha1.CircuitBreakerStatus{Queries: []tripswitchv1alpha1.QueryStatus{
		{Name: "error-rate", LastEvaluation: at(101), Error: "connection refused"}}}
	renamed := tripswitchv1alpha1.CircuitBreakerStatus{Queries: []tripswitchv1alpha1.QueryStatus{
		{Name: "latency", Value: "0.01", LastEvaluation: at(100)}}}

	g.Expect(withoutCounters(before)).To(Equal(withoutCounters(evaluated)), "a new evaluation waits for the refresh")
	g.Expect(withoutCounters(before)).NotTo(Equal(withoutCounters(failing)), "a failing query is written at once")
	g.Expect(withoutCounters(before)).NotTo(Equal(withoutCounters(renamed)), "the list of rules is written at once")
	g.Expect(before.Queries[0].Value).To(Equal("0.01"), "the status itself is left alone")
}

// An external target's lookups move its timestamps every TTL: they wait for the refresh, while
// the addresses and a failure are written at once.
func TestExternalLookupTimesAreCounters(t *testing.T) {
	g := NewWithT(t)
	at := func(s int64) *metav1.Time { return ptr.To(metav1.Unix(s, 0)) }
	status := func(resolved int64, address, failure string) tripswitchv1alpha1.CircuitBreakerStatus {
		return tripswitchv1alpha1.CircuitBreakerStatus{External: &tripswitchv1alpha1.ExternalStatus{Host: "api.example.test",
			LastResolution: at(resolved), LastSuccess: at(resolved), NextResolution: at(resolved + 60), Error: failure,
			Addresses: []tripswitchv1alpha1.ExternalAddress{{Address: address, LastSeen: *at(resolved), TTLSeconds: 60}}}}
	}
	before := status(100, "203.0.113.1", "")
	g.Expect(withoutCounters(before)).To(Equal(withoutCounters(status(160, "203.0.113.1", ""))), "a lookup that saw the same waits")
	g.Expect(withoutCounters(before)).NotTo(Equal(withoutCounters(status(160, "203.0.113.2", ""))), "new addresses are written at once")
	g.Expect(withoutCounters(before)).NotTo(Equal(withoutCounters(status(100, "203.0.113.1", "SERVFAIL"))), "a failure is written at once")
	g.Expect(before.External.LastResolution).To(Equal(at(100)), "the status itself is left alone")
}
