// Package controller holds the CircuitBreaker reconciler: it registers each breaker with the
// probe scheduler, turns the engine's decisions into status, events and gated traffic, and
// hands front Services back to Kubernetes when a breaker lets go of them.
package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crcontroller "sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/metrics"
	"github.com/tripswitch/tripswitch/internal/runner"
)

// servicesIndex indexes CircuitBreakers by every Service they read: target, front and
// fallback. An event on a Service or on one of its EndpointSlices finds the breakers that
// care without listing them all.
const servicesIndex = "tripswitch.io/services"

// MaxRetryDelay caps the work queue's backoff after a failed reconcile. The default limiter
// grows to 1000 s, so after minutes of failing writes (a broken webhook, priority-and-fairness
// 429s) a gate could lag the engine by a quarter of an hour once the API server healed. Capped
// at 2 s, the gate converges within seconds; the API server's own flow control, not a long
// client-side backoff, is what protects it.
const MaxRetryDelay = 2 * time.Second

// handBackPoll is how often a hand-back in progress is looked at again, besides the watch on
// the front's EndpointSlices.
const handBackPoll = time.Second

// CircuitBreakerReconciler reconciles CircuitBreaker objects.
type CircuitBreakerReconciler struct {
	client.Client
	Scheduler *runner.Scheduler
	Recorder  recorder.EventRecorder
	// Metrics, when set, records state and transitions and is dropped with the breaker.
	Metrics *metrics.Recorder
	// Guard, when set, is the observer guard the scheduler asks; the reconciler only reads it
	// to explain a held trip.
	Guard *guard.Guard
	// Clock is injected so that tests control the status write economy and hand-back timeouts.
	Clock clock.PassiveClock
	// StatusSyncPeriod bounds how often steady-state counters are written to status.
	StatusSyncPeriod time.Duration
	// HandBackTimeout bounds how long tripswitch keeps its slices on a front Service it handed
	// back to Kubernetes, waiting for Kubernetes' own slices to show ready endpoints.
	HandBackTimeout time.Duration
	// Responder is the Service of tripswitch's responder, whose ready endpoints a gate with
	// whenOpen Respond publishes; empty, Respond behaves as Reject and says so.
	Responder types.NamespacedName
	// ProbeAllowedCIDRs are where probes may go; nil is everywhere. A ready endpoint outside
	// them is not probed (see probeable).
	ProbeAllowedCIDRs []netip.Prefix
	// MaxConcurrentReconciles is how many breakers are reconciled at once; 0 is one.
	MaxConcurrentReconciles int
	// SliceCache, when set, is the EndpointSlice cache that holds unneeded slices as stubs;
	// slicesOf completes them.
	SliceCache *SliceCache
	// RefreshBudget bounds the status writes a second that only refresh counters, across all
	// breakers; 0 or less sets no bound (see refreshPeriod).
	RefreshBudget float64
	// QueryNamespaceLabel, when set, confines every series selector of a breaker's query
	// rules to the breaker's namespace through this label.
	QueryNamespaceLabel string
	// External resolves and vets external targets.
	External ExternalTargets

	// lastSync is when each breaker's status was last written, for the write economy.
	lastSync sync.Map // types.NamespacedName -> time.Time
	// lastGood is the last configuration each breaker ran with, kept for a spec that the API
	// server accepted but the operator cannot run.
	lastGood sync.Map // types.NamespacedName -> Runnable
	// transitions is the work queue that the scheduler's transitions go to, once the
	// controller has started its sources; see enqueueTransition.
	transitions atomic.Pointer[workqueue.TypedRateLimitingInterface[reconcile.Request]]
	// tracked and breakers count the breakers reconciled, for the refresh budget.
	tracked  sync.Map // types.NamespacedName -> struct{}
	breakers atomic.Int64
	// refreshLimiter holds counter writes to the refresh budget; made at the first write.
	refreshLimiter     *rate.Limiter
	refreshLimiterOnce sync.Once
}

// enqueueTransition is the scheduler's OnChange: transitions decided by probes or deadlines
// go straight into the work queue, with no API call until the engine has something to say.
// The scheduler is built before the controller's queue exists; a transition before then is
// dropped, and the first reconcile of every breaker reads it anyway.
// Transitions jump the queue: counter refreshes and the initial list wait behind them.
func (r *CircuitBreakerReconciler) enqueueTransition(key types.NamespacedName) {
	q := r.transitions.Load()
	if q == nil {
		return
	}
	req := reconcile.Request{NamespacedName: key}
	if pq, ok := (*q).(priorityqueue.PriorityQueue[reconcile.Request]); ok {
		pq.AddWithOpts(priorityqueue.AddOpts{Priority: ptr.To(TransitionPriority)}, req)
		return
	}
	(*q).Add(req)
}

// +kubebuilder:rbac:groups=tripswitch.io,resources=circuitbreakers,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=tripswitch.io,resources=circuitbreakers/status,verbs=get;patch
// +kubebuilder:rbac:groups=tripswitch.io,resources=circuitbreakers/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile gets the breaker, runs the declared chain of sub-steps on a working copy, writes
// status once with a merge patch, and comes back at the next deadline it knows of (see next):
// its counter refresh, the end of its Open period, or sooner while a front Service is being
// handed back. Transitions and the end of an Open period reach it through the scheduler.
func (r *CircuitBreakerReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	cb := &tripswitchv1alpha1.CircuitBreaker{}
	if err := r.Get(ctx, req.NamespacedName, cb); err != nil {
		if apierrors.IsNotFound(err) {
			// Deleted without our finalizer (for example with the CRD): stop probing.
			r.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !cb.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, cb)
	}
	if err := r.addFinalizer(ctx, cb); err != nil {
		return ctrl.Result{}, err
	}
	r.track(req.NamespacedName)

	original := cb.DeepCopy()
	st := &reconcileState{cb: cb, spec: cb.Resolve(), gateWas: cb.Status.GateState, requeueAfter: r.StatusSyncPeriod}
	st.spec.Mode, st.modeEnds = modeInEffect(&cb.Spec, r.Clock.Now())
	cb.Status.Mode = st.spec.Mode
	errs := runSteps(ctx, st, r.steps())
	r.summarize(cb, errs)

	if err := r.patchStatus(ctx, original, cb); err != nil {
		return ctrl.Result{}, err
	}
	if err := firstFailure(errs); err != nil {
		// A failed API call: retry with the work queue's backoff, capped at MaxRetryDelay.
		return ctrl.Result{}, err
	}
	// Waiting on another object, or stalled until the user acts, is no failure to retry: a
	// watch brings the breaker back. Either way, come back at the next deadline.
	return r.next(req.NamespacedName, cb, st), nil
}

// addFinalizer adds the finalizer with a merge patch, so that it never overwrites a spec or
// metadata change made since the breaker was read.
func (r *CircuitBreakerReconciler) addFinalizer(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker) error {
	if controllerutil.ContainsFinalizer(cb, tripswitchv1alpha1.Finalizer) {
		return nil
	}
	patch := client.MergeFromWithOptions(cb.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.AddFinalizer(cb, tripswitchv1alpha1.Finalizer)
	if err := r.Patch(ctx, cb, patch); err != nil {
		return fmt.Errorf("adding finalizer: %w", err)
	}
	return nil
}

// forget drops everything kept in memory for a breaker that is gone.
func (r *CircuitBreakerReconciler) forget(key types.NamespacedName) {
	r.Scheduler.Remove(key)
	if r.External.Tracker != nil {
		r.External.Tracker.Forget(key)
	}
	r.lastSync.Delete(key)
	r.lastGood.Delete(key)
	r.untrack(key)
	if r.Metrics != nil {
		r.Metrics.Delete(key.Namespace, key.Name)
	}
}

// patchStatus writes status with a merge patch against what was read. A change of state,
// gate, conditions or endpoints is written at once; a change of counters only (consecutive
// counts, window, last probe, query evaluations) at most once per refresh period (the status sync period, or
// longer when the refresh budget calls for it), so steady probing costs one write per breaker
// per period.
func (r *CircuitBreakerReconciler) patchStatus(ctx context.Context, original, cb *tripswitchv1alpha1.CircuitBreaker) error {
	if equality.Semantic.DeepEqual(original.Status, cb.Status) {
		return nil
	}
	key := client.ObjectKeyFromObject(cb)
	now := r.Clock.Now()
	if equality.Semantic.DeepEqual(withoutCounters(original.Status), withoutCounters(cb.Status)) {
		if !r.counterWriteAllowed(key, now) {
			return nil
		}
	}
	if err := r.Status().Patch(ctx, cb, client.MergeFrom(original)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("patching status: %w", err)
	}
	r.lastSync.Store(key, now)
	return nil
}

// withoutCounters is the status without what changes at every probe or query evaluation: the
// probe counters, and each query rule's value, run and time (whether it fails stays, since it
// comes with a condition).
func withoutCounters(st tripswitchv1alpha1.CircuitBreakerStatus) tripswitchv1alpha1.CircuitBreakerStatus {
	st.ConsecutiveFailures, st.ConsecutiveSuccesses, st.Window, st.LastProbe = 0, 0, nil, nil
	if ext := st.External; ext != nil {
		// Every lookup moves these; the addresses themselves, an error and refusals are
		// written at once.
		ext = ext.DeepCopy()
		ext.LastResolution, ext.LastSuccess, ext.NextResolution = nil, nil, nil
		for i := range ext.Addresses {
			ext.Addresses[i].LastSeen, ext.Addresses[i].TTLSeconds = metav1.Time{}, 0
		}
		st.External = ext
	}
	if st.Queries != nil {
		queries := make([]tripswitchv1alpha1.QueryStatus, len(st.Queries))
		for i, q := range st.Queries {
			queries[i] = tripswitchv1alpha1.QueryStatus{Name: q.Name, Error: q.Error, SettlingUntil: q.SettlingUntil}
		}
		st.Queries = queries
	}
	return st
}

// SetupWithManager registers the reconciler, its index and its watches.
func (r *CircuitBreakerReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.Scheduler == nil {
		return errors.New("the CircuitBreaker controller needs a probe scheduler")
	}
	if r.HandBackTimeout <= 0 {
		r.HandBackTimeout = DefaultHandBackTimeout
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &tripswitchv1alpha1.CircuitBreaker{}, servicesIndex,
		func(obj client.Object) []string { return servicesOf(obj.(*tripswitchv1alpha1.CircuitBreaker)) }); err != nil {
		return fmt.Errorf("indexing CircuitBreakers by Service: %w", err)
	}
	for name, index := range sliceIndexes {
		if err := mgr.GetFieldIndexer().IndexField(ctx, &discoveryv1.EndpointSlice{}, name, index); err != nil {
			return fmt.Errorf("indexing EndpointSlices by %s: %w", name, err)
		}
	}
	// The scheduler's transitions reach the work queue through enqueueTransition.
	transitions := source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		r.transitions.Store(&q)
		return nil
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&tripswitchv1alpha1.CircuitBreaker{}).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
			return r.breakersReading(ctx, obj.GetNamespace(), obj.GetName())
		})).
		Watches(&discoveryv1.EndpointSlice{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
			return append(r.breakersReading(ctx, obj.GetNamespace(), obj.GetLabels()[discoveryv1.LabelServiceName]),
				r.breakersUsingResponder(ctx, obj)...)
		})).
		WatchesRawSource(transitions).
		WithOptions(crcontroller.Options{
			MaxConcurrentReconciles: r.MaxConcurrentReconciles,
			UsePriorityQueue:        ptr.To(true),
			RateLimiter:             workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](5*time.Millisecond, MaxRetryDelay),
		}).
		Named("circuitbreaker").
		Complete(r)
}

// servicesOf lists the Services a breaker reads: target, front and fallback.
func servicesOf(cb *tripswitchv1alpha1.CircuitBreaker) []string {
	var names []string
	if cb.Spec.Target.Service != "" {
		names = append(names, cb.Spec.Target.Service)
	}
	if front := cb.FrontServiceName(); front != "" {
		names = append(names, front)
	}
	if g := cb.Spec.Gate; g != nil && g.EndpointSlice != nil && g.EndpointSlice.Fallback != nil {
		names = append(names, g.EndpointSlice.Fallback.Service)
	}
	return names
}

// breakersReading maps a Service name to the breakers in its namespace that read it.
func (r *CircuitBreakerReconciler) breakersReading(ctx context.Context, namespace, service string) []reconcile.Request {
	if service == "" {
		return nil
	}
	var list tripswitchv1alpha1.CircuitBreakerList
	if err := r.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{servicesIndex: service}); err != nil {
		log.FromContext(ctx).Error(err, "Listing CircuitBreakers for a Service failed", "namespace", namespace, "service", service)
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}
