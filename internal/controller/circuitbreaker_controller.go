// Package controller holds the CircuitBreaker reconciler: it registers each breaker with the
// probe scheduler, turns the engine's decisions into status, events and gated traffic, and
// hands the front Service back to Kubernetes when a breaker is deleted.
package controller

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/endpoints"
	"github.com/tripswitch/tripswitch/internal/metrics"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// servicesIndex indexes CircuitBreakers by every Service they read: target, front and
// fallback. An event on a Service or on one of its EndpointSlices finds the breakers that
// care without listing them all.
const servicesIndex = "tripswitch.io/services"

// CircuitBreakerReconciler reconciles CircuitBreaker objects.
type CircuitBreakerReconciler struct {
	client.Client
	Scheduler *probe.Scheduler
	Recorder  recorder.EventRecorder
	// Metrics, when set, records state and transitions and is dropped with the breaker.
	Metrics *metrics.Recorder
	// Clock is injected so that tests control the status write economy.
	Clock clock.PassiveClock
	// StatusSyncPeriod bounds how often steady-state counters are written to status.
	StatusSyncPeriod time.Duration

	// lastSync is when each breaker's status was last written, for the write economy.
	lastSync sync.Map // types.NamespacedName -> time.Time
}

// target is what the target Service offers the breaker.
type target struct {
	service *corev1.Service
	port    corev1.ServicePort
	slices  []discoveryv1.EndpointSlice
	ready   []netip.AddrPort
}

// +kubebuilder:rbac:groups=tripswitch.io,resources=circuitbreakers,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=tripswitch.io,resources=circuitbreakers/status,verbs=get;patch
// +kubebuilder:rbac:groups=tripswitch.io,resources=circuitbreakers/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile gets the breaker, runs the ordered sub-steps on a working copy, writes status
// once with a merge patch, and comes back after the status sync period to refresh counters.
// Deadlines (the end of an Open period) and transitions reach it through the scheduler.
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
		return ctrl.Result{}, r.finalize(ctx, cb)
	}
	if controllerutil.AddFinalizer(cb, tripswitchv1alpha1.Finalizer) {
		if err := r.Update(ctx, cb); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}

	original := cb.DeepCopy()
	spec := cb.Resolve()
	tgt, err := r.reconcileTarget(ctx, cb, &spec)
	view, engineErr := r.reconcileEngine(ctx, cb, &spec, tgt)
	if err == nil {
		err = engineErr
	}
	if err == nil && spec.Gate.EndpointSlice != nil {
		err = r.reconcileEndpointSliceGate(ctx, cb, &spec, tgt, view.Gate)
	}
	if engineErr == nil {
		if annotationErr := r.reconcileAnnotationGate(ctx, cb, &spec); err == nil {
			err = annotationErr
		}
	}
	r.summarize(cb, err)

	if patchErr := r.patchStatus(ctx, original, cb); patchErr != nil {
		return ctrl.Result{}, patchErr
	}
	var wait *waitError
	if err != nil && !errors.As(err, &wait) {
		// A failed API call: retry with the work queue's backoff.
		return ctrl.Result{}, err
	}
	// Waiting on another object is no failure to retry with backoff either: a watch on it
	// brings the breaker back. Either way, come back to refresh the counters.
	return ctrl.Result{RequeueAfter: r.StatusSyncPeriod}, nil
}

// forget drops everything kept in memory for a breaker that is gone.
func (r *CircuitBreakerReconciler) forget(key types.NamespacedName) {
	r.Scheduler.Remove(key)
	r.lastSync.Delete(key)
	if r.Metrics != nil {
		r.Metrics.Delete(key.Namespace, key.Name)
	}
}

// waitError is a condition the breaker waits out, level-triggered by a watch, such as a
// target Service that does not exist yet. stalled marks one that needs the user to act.
type waitError struct {
	reason, message string
	stalled         bool
}

func (e *waitError) Error() string { return e.message }

// reconcileTarget resolves the target Service, its port and its ready endpoints. A missing
// target yields an empty target and a waitError, so the engine keeps its state.
func (r *CircuitBreakerReconciler) reconcileTarget(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker,
	spec *tripswitchv1alpha1.CircuitBreakerSpec) (*target, error) {
	tgt := &target{service: &corev1.Service{}}
	key := types.NamespacedName{Namespace: cb.Namespace, Name: spec.Target.Service}
	if err := r.Get(ctx, key, tgt.service); err != nil {
		if apierrors.IsNotFound(err) {
			return &target{}, &waitError{reason: tripswitchv1alpha1.ReasonTargetNotFound,
				message: fmt.Sprintf("target Service %q not found", spec.Target.Service)}
		}
		return &target{}, fmt.Errorf("getting target Service %q: %w", spec.Target.Service, err)
	}
	port, err := endpoints.ServicePort(tgt.service, spec.Target.Port)
	if err != nil {
		return &target{}, &waitError{reason: tripswitchv1alpha1.ReasonTargetPortNotFound, message: "target " + err.Error()}
	}
	tgt.port = port
	if tgt.slices, err = r.slicesOf(ctx, cb.Namespace, spec.Target.Service); err != nil {
		return &target{}, err
	}
	tgt.ready = endpoints.Ready(port, tgt.slices)
	return tgt, nil
}

// slicesOf lists a Service's EndpointSlices from the cache.
func (r *CircuitBreakerReconciler) slicesOf(ctx context.Context, namespace, service string) ([]discoveryv1.EndpointSlice, error) {
	var list discoveryv1.EndpointSliceList
	if err := r.List(ctx, &list, client.InNamespace(namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: service}); err != nil {
		return nil, fmt.Errorf("listing EndpointSlices of Service %q: %w", service, err)
	}
	return list.Items, nil
}

// reconcileEngine registers the breaker with the scheduler (restoring it from status the
// first time), acts on a new reset token, and writes the engine's view into status, with an
// event and a log line per transition.
func (r *CircuitBreakerReconciler) reconcileEngine(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker,
	spec *tripswitchv1alpha1.CircuitBreakerSpec, tgt *target) (probe.View, error) {
	key := client.ObjectKeyFromObject(cb)
	pspec, err := probeSpec(spec)
	if err != nil {
		return probe.View{}, &waitError{reason: tripswitchv1alpha1.ReasonInvalidSpec, message: err.Error(), stalled: true}
	}
	err = r.Scheduler.Upsert(key, probe.Registration{
		Spec: pspec, Interval: spec.Probe.Interval.Duration, Endpoints: tgt.ready, Config: engineConfig(spec),
		Restore: snapshotFromStatus(&cb.Status), Seed: seedFor(cb),
	})
	if err != nil {
		return probe.View{}, &waitError{reason: tripswitchv1alpha1.ReasonInvalidSpec, message: err.Error(), stalled: true}
	}
	if token := cb.Annotations[tripswitchv1alpha1.ResetAnnotation]; token != "" && token != cb.Status.LastResetToken {
		r.Scheduler.Reset(key)
		cb.Status.LastResetToken = token
	}
	view, _ := r.Scheduler.View(key)
	for _, change := range view.Changes {
		r.announce(ctx, cb, change)
		if r.Metrics != nil {
			r.Metrics.Transition(cb.Namespace, cb.Name, change.From.String(), change.To.String(), change.Reason.String())
		}
	}
	applyView(&cb.Status, view)
	if r.Metrics != nil {
		r.Metrics.SetState(cb.Namespace, cb.Name, string(cb.Status.State))
		r.Metrics.SetInfo(cb.Namespace, cb.Name, spec.Target.Service, cb.FrontServiceName())
	}
	if cb.Status.Endpoints == nil {
		cb.Status.Endpoints = &tripswitchv1alpha1.EndpointsStatus{}
	}
	cb.Status.Endpoints.Target = int32(len(tgt.ready))
	return view, nil
}

// announce records one transition as an event and a log line.
func (r *CircuitBreakerReconciler) announce(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, c probe.Change) {
	message := ""
	if c.Probe != nil {
		message = fmt.Sprintf(" after %s from %s", c.Probe.Message, c.Probe.Endpoint)
	}
	log.FromContext(ctx).Info("Breaker changed state", "from", c.From.String(), "to", c.To.String(),
		"gateFrom", c.GateFrom.String(), "gateTo", c.GateTo.String(), "reason", c.Reason.String(), "probe", message)
	if r.Recorder == nil {
		return
	}
	eventType := corev1.EventTypeNormal
	if c.GateTo == breaker.Open && c.GateFrom != breaker.Open || c.To == breaker.Open && c.From != breaker.Open {
		eventType = corev1.EventTypeWarning
	}
	r.Recorder.Eventf(cb, nil, eventType, c.Reason.String(), "Transition", "Breaker %s -> %s, gate %s -> %s (%s)%s",
		c.From, c.To, c.GateFrom, c.GateTo, c.Reason, message)
}

// summarize sets the kstatus conditions. An Open breaker is healthy and reconciled: Ready
// describes reconciliation, not the target's health.
func (r *CircuitBreakerReconciler) summarize(cb *tripswitchv1alpha1.CircuitBreaker, recErr error) {
	st := &cb.Status
	if st.State == "" {
		st.State, st.GateState = tripswitchv1alpha1.StateClosed, tripswitchv1alpha1.StateClosed
	}
	st.FrontService = cb.FrontServiceName()
	st.ObservedGeneration = cb.Generation

	gen := cb.Generation
	var wait *waitError
	switch {
	case recErr == nil:
		setCondition(st, tripswitchv1alpha1.ConditionReady, metav1.ConditionTrue, tripswitchv1alpha1.ReasonReconciled,
			fmt.Sprintf("Breaker is %s", st.State), gen)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionReconciling)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionStalled)
	case errors.As(recErr, &wait) && wait.stalled:
		setCondition(st, tripswitchv1alpha1.ConditionReady, metav1.ConditionFalse, wait.reason, wait.message, gen)
		setCondition(st, tripswitchv1alpha1.ConditionStalled, metav1.ConditionTrue, wait.reason, wait.message, gen)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionReconciling)
	case errors.As(recErr, &wait):
		setCondition(st, tripswitchv1alpha1.ConditionReady, metav1.ConditionFalse, wait.reason, wait.message, gen)
		setCondition(st, tripswitchv1alpha1.ConditionReconciling, metav1.ConditionTrue, wait.reason, wait.message, gen)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionStalled)
	default:
		setCondition(st, tripswitchv1alpha1.ConditionReady, metav1.ConditionFalse, tripswitchv1alpha1.ReasonReconcileError,
			recErr.Error(), gen)
		setCondition(st, tripswitchv1alpha1.ConditionReconciling, metav1.ConditionTrue, tripswitchv1alpha1.ReasonReconcileError,
			recErr.Error(), gen)
	}
}

func setCondition(st *tripswitchv1alpha1.CircuitBreakerStatus, condType string, status metav1.ConditionStatus,
	reason, message string, generation int64) {
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: condType, Status: status, Reason: reason, Message: message, ObservedGeneration: generation,
	})
}

// patchStatus writes status with a merge patch against what was read. A change of state,
// gate, conditions or endpoints is written at once; a change of counters only (consecutive
// counts, window, last probe) at most once per status sync period, so steady probing costs
// one write per breaker per period.
func (r *CircuitBreakerReconciler) patchStatus(ctx context.Context, original, cb *tripswitchv1alpha1.CircuitBreaker) error {
	if equality.Semantic.DeepEqual(original.Status, cb.Status) {
		return nil
	}
	key := client.ObjectKeyFromObject(cb)
	now := r.Clock.Now()
	if equality.Semantic.DeepEqual(withoutCounters(original.Status), withoutCounters(cb.Status)) {
		if last, ok := r.lastSync.Load(key); ok && now.Sub(last.(time.Time)) < r.StatusSyncPeriod {
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

func withoutCounters(st tripswitchv1alpha1.CircuitBreakerStatus) tripswitchv1alpha1.CircuitBreakerStatus {
	st.ConsecutiveFailures, st.ConsecutiveSuccesses, st.Window, st.LastProbe = 0, 0, nil, nil
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
	if err := mgr.GetFieldIndexer().IndexField(ctx, &tripswitchv1alpha1.CircuitBreaker{}, servicesIndex,
		func(obj client.Object) []string { return servicesOf(obj.(*tripswitchv1alpha1.CircuitBreaker)) }); err != nil {
		return fmt.Errorf("indexing CircuitBreakers by Service: %w", err)
	}
	// Transitions decided by probes or deadlines come from the scheduler, straight into the
	// work queue: no API call until the engine has something to say.
	if r.Metrics != nil {
		r.Scheduler.SetProbeObservers(func(key types.NamespacedName) probe.ProbeObserver {
			return r.Metrics.Breaker(key.Namespace, key.Name)
		})
	}
	transitions := source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		r.Scheduler.SetOnChange(func(key types.NamespacedName) { q.Add(reconcile.Request{NamespacedName: key}) })
		return nil
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&tripswitchv1alpha1.CircuitBreaker{}).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
			return r.breakersReading(ctx, obj.GetNamespace(), obj.GetName())
		})).
		Watches(&discoveryv1.EndpointSlice{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, obj client.Object) []reconcile.Request {
			return r.breakersReading(ctx, obj.GetNamespace(), obj.GetLabels()[discoveryv1.LabelServiceName])
		})).
		WatchesRawSource(transitions).
		Named("circuitbreaker").
		Complete(r)
}

// servicesOf lists the Services a breaker reads: target, front and fallback.
func servicesOf(cb *tripswitchv1alpha1.CircuitBreaker) []string {
	names := []string{cb.Spec.Target.Service}
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
