// Package controller holds the CircuitBreaker reconciler: it turns a breaker's spec and the
// cluster's Services into status and, in later steps, into gated traffic.
package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/endpoints"
)

// targetServiceIndex indexes CircuitBreakers by spec.target.service, so that an event on a
// Service finds the breakers that protect it without listing every breaker.
const targetServiceIndex = "spec.target.service"

// CircuitBreakerReconciler reconciles CircuitBreaker objects.
type CircuitBreakerReconciler struct {
	client.Client
	// Clock is injected so that tests control the times written to status.
	Clock clock.PassiveClock
	// StatusSyncPeriod bounds how often steady-state counters are written to status.
	StatusSyncPeriod time.Duration
}

// +kubebuilder:rbac:groups=tripswitch.io,resources=circuitbreakers,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=tripswitch.io,resources=circuitbreakers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=tripswitch.io,resources=circuitbreakers/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch

// Reconcile gets the breaker, runs the ordered sub-steps on a working copy, and writes
// status once, with a merge patch, only when it changed.
func (r *CircuitBreakerReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	breaker := &tripswitchv1alpha1.CircuitBreaker{}
	if err := r.Get(ctx, req.NamespacedName, breaker); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !breaker.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	original := breaker.DeepCopy()
	spec := breaker.Resolve()

	result, recErr := r.reconcileTarget(ctx, breaker, &spec)
	r.summarize(breaker, recErr)

	if err := r.patchStatus(ctx, original, breaker); err != nil {
		return ctrl.Result{}, err
	}
	if _, ok := recErr.(*waitError); ok {
		// Waiting on another object is not a failure to retry with backoff: the watch on
		// that object brings the breaker back.
		return result, nil
	}
	return result, recErr
}

// waitError is a condition the breaker waits out, level-triggered by a watch, such as a
// target Service that does not exist yet.
type waitError struct {
	reason, message string
}

func (e *waitError) Error() string { return e.message }

// reconcileTarget resolves the target Service and its port.
func (r *CircuitBreakerReconciler) reconcileTarget(ctx context.Context, breaker *tripswitchv1alpha1.CircuitBreaker,
	spec *tripswitchv1alpha1.CircuitBreakerSpec) (ctrl.Result, error) {
	svc := &corev1.Service{}
	key := types.NamespacedName{Namespace: breaker.Namespace, Name: spec.Target.Service}
	if err := r.Get(ctx, key, svc); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, &waitError{reason: tripswitchv1alpha1.ReasonTargetNotFound,
				message: fmt.Sprintf("target Service %q not found", spec.Target.Service)}
		}
		return ctrl.Result{}, fmt.Errorf("getting target Service %q: %w", spec.Target.Service, err)
	}
	if _, err := endpoints.ServicePort(svc, spec.Target.Port); err != nil {
		return ctrl.Result{}, &waitError{reason: tripswitchv1alpha1.ReasonTargetPortNotFound, message: "target " + err.Error()}
	}
	return ctrl.Result{}, nil
}

// summarize sets the state a new breaker starts in and the kstatus conditions. An Open
// breaker is healthy and reconciled: Ready describes the reconciliation, not the target.
func (r *CircuitBreakerReconciler) summarize(breaker *tripswitchv1alpha1.CircuitBreaker, recErr error) {
	st := &breaker.Status
	now := metav1.NewTime(r.Clock.Now())
	if st.State == "" {
		st.State = tripswitchv1alpha1.StateClosed
		st.GateState = tripswitchv1alpha1.StateClosed
		st.LastTransitionTime = &now
	}
	st.FrontService = breaker.FrontServiceName()
	st.ObservedGeneration = breaker.Generation

	gen := breaker.Generation
	switch e := recErr.(type) {
	case nil:
		setCondition(st, tripswitchv1alpha1.ConditionReady, metav1.ConditionTrue, tripswitchv1alpha1.ReasonReconciled,
			fmt.Sprintf("Breaker is %s", st.State), gen)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionReconciling)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionStalled)
	case *waitError:
		setCondition(st, tripswitchv1alpha1.ConditionReady, metav1.ConditionFalse, e.reason, e.message, gen)
		setCondition(st, tripswitchv1alpha1.ConditionReconciling, metav1.ConditionTrue, e.reason, e.message, gen)
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

// patchStatus writes status with a merge patch against what was read, and only when it
// changed, so a steady breaker costs no API writes.
func (r *CircuitBreakerReconciler) patchStatus(ctx context.Context, original, breaker *tripswitchv1alpha1.CircuitBreaker) error {
	if equality.Semantic.DeepEqual(original.Status, breaker.Status) {
		return nil
	}
	if err := r.Status().Patch(ctx, breaker, client.MergeFrom(original)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("patching status: %w", err)
	}
	log.FromContext(ctx).V(1).Info("Updated status", "state", breaker.Status.State)
	return nil
}

// SetupWithManager registers the reconciler and its watches.
func (r *CircuitBreakerReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &tripswitchv1alpha1.CircuitBreaker{}, targetServiceIndex,
		func(obj client.Object) []string {
			return []string{obj.(*tripswitchv1alpha1.CircuitBreaker).Spec.Target.Service}
		}); err != nil {
		return fmt.Errorf("indexing CircuitBreakers by target Service: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&tripswitchv1alpha1.CircuitBreaker{}).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.breakersForTarget)).
		Named("circuitbreaker").
		Complete(r)
}

// breakersForTarget maps a Service to the breakers in its namespace that target it.
func (r *CircuitBreakerReconciler) breakersForTarget(ctx context.Context, obj client.Object) []reconcile.Request {
	var list tripswitchv1alpha1.CircuitBreakerList
	if err := r.List(ctx, &list, client.InNamespace(obj.GetNamespace()),
		client.MatchingFields{targetServiceIndex: obj.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "Listing CircuitBreakers for a target Service failed", "service", client.ObjectKeyFromObject(obj))
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}
