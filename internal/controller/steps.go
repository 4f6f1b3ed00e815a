package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/runner"
)

// reconcileState is what the steps of one reconcile share: the breaker being worked on, its
// resolved spec, and what earlier steps found out.
type reconcileState struct {
	cb   *tripswitchv1alpha1.CircuitBreaker
	spec tripswitchv1alpha1.CircuitBreakerSpec
	// target is nil while the target could not be looked up (an API error); otherwise it
	// says what the target offers, possibly nothing.
	target *target
	// gateWas is the gate state status held before this reconcile.
	gateWas tripswitchv1alpha1.State
	// view is the engine's state once the engine step ran.
	view *runner.View
	// requeueAfter is the next deadline a step knows of.
	requeueAfter time.Duration
	// modeEnds is how long spec.mode has left before spec.modeUntil; zero when it does not end.
	modeEnds time.Duration
}

// requeueWithin brings the breaker back within d at the latest.
func (st *reconcileState) requeueWithin(d time.Duration) {
	if d > 0 && d < st.requeueAfter {
		st.requeueAfter = d
	}
}

// need is what a step cannot run without.
type need uint8

const (
	// needTarget: the target's Service, port and slices are known.
	needTarget need = 1 << iota
	// needTargetLookup: whether the target exists is known, even if it does not.
	needTargetLookup
	// needView: the engine has given its state.
	needView
)

func (n need) metBy(st *reconcileState) bool {
	switch {
	case n&needTarget != 0 && (st.target == nil || !st.target.resolved):
		return false
	case n&needTargetLookup != 0 && st.target == nil:
		return false
	case n&needView != 0 && st.view == nil:
		return false
	}
	return true
}

// step is one sub-step of a reconcile. The chain runs every step whose needs are met, whatever
// the steps before it returned: an error never skips a later step by accident, only a missing
// input does, and that is declared here.
type step struct {
	name  string
	needs need
	run   func(context.Context, *reconcileState) error
}

// steps is the reconcile, in order. The engine runs even without a target, so that the mode,
// a reset and the Open timer never wait for the target; the gates need the engine's view.
func (r *CircuitBreakerReconciler) steps() []step {
	return []step{
		{name: "target", run: r.reconcileTarget},
		{name: "engine", run: r.reconcileEngine},
		{name: "endpointSliceGate", needs: needTarget | needView, run: r.reconcileEndpointSliceGate},
		{name: "handBackFronts", needs: needTargetLookup, run: r.handBackFormerFronts},
		{name: "annotationGate", needs: needView, run: r.reconcileAnnotationGate},
	}
}

// runSteps runs the chain and returns every step's error, each wrapped with its step's name.
func runSteps(ctx context.Context, st *reconcileState, steps []step) []error {
	var errs []error
	for _, s := range steps {
		if !s.needs.metBy(st) {
			continue
		}
		if err := s.run(ctx, st); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
		}
	}
	return errs
}

// waitingError is a condition the breaker waits out, level-triggered by a watch, such as a
// target Service that does not exist yet: kstatus Reconciling.
type waitingError struct{ reason, message string }

func (e *waitingError) Error() string { return e.message }

// stalledError is a condition only the user can end, such as a front Service that somebody
// else owns: kstatus Stalled.
type stalledError struct{ reason, message string }

func (e *stalledError) Error() string { return e.message }

// firstFailure is the first error that is neither waiting nor stalled: a failed API call,
// which the work queue retries.
func firstFailure(errs []error) error {
	for _, err := range errs {
		var waiting *waitingError
		var stalled *stalledError
		if !errors.As(err, &waiting) && !errors.As(err, &stalled) {
			return err
		}
	}
	return nil
}

// summarize sets the kstatus conditions from the steps' errors: a stalled step first, since
// only the user can end it; then a failed API call; then a wait. An Open breaker is healthy
// and reconciled: Ready describes reconciliation, not the target's health.
func (r *CircuitBreakerReconciler) summarize(cb *tripswitchv1alpha1.CircuitBreaker, errs []error) {
	st := &cb.Status
	if st.State == "" {
		st.State, st.GateState = tripswitchv1alpha1.StateClosed, tripswitchv1alpha1.StateClosed
	}
	st.FrontService = cb.FrontServiceName()
	st.ObservedGeneration = cb.Generation

	var stalled *stalledError
	var waiting *waitingError
	failure := firstFailure(errs)
	for _, err := range errs {
		if stalled == nil {
			errors.As(err, &stalled)
		}
		if waiting == nil {
			errors.As(err, &waiting)
		}
	}
	gen := cb.Generation
	switch {
	case stalled != nil:
		setCondition(st, tripswitchv1alpha1.ConditionReady, metav1.ConditionFalse, stalled.reason, stalled.message, gen)
		setCondition(st, tripswitchv1alpha1.ConditionStalled, metav1.ConditionTrue, stalled.reason, stalled.message, gen)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionReconciling)
	case failure != nil:
		setCondition(st, tripswitchv1alpha1.ConditionReady, metav1.ConditionFalse, tripswitchv1alpha1.ReasonReconcileError,
			failure.Error(), gen)
		setCondition(st, tripswitchv1alpha1.ConditionReconciling, metav1.ConditionTrue, tripswitchv1alpha1.ReasonReconcileError,
			failure.Error(), gen)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionStalled)
	case waiting != nil:
		setCondition(st, tripswitchv1alpha1.ConditionReady, metav1.ConditionFalse, waiting.reason, waiting.message, gen)
		setCondition(st, tripswitchv1alpha1.ConditionReconciling, metav1.ConditionTrue, waiting.reason, waiting.message, gen)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionStalled)
	default:
		setCondition(st, tripswitchv1alpha1.ConditionReady, metav1.ConditionTrue, tripswitchv1alpha1.ReasonReconciled,
			fmt.Sprintf("Breaker is %s", st.State), gen)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionReconciling)
		meta.RemoveStatusCondition(&st.Conditions, tripswitchv1alpha1.ConditionStalled)
	}
}

func setCondition(st *tripswitchv1alpha1.CircuitBreakerStatus, condType string, status metav1.ConditionStatus,
	reason, message string, generation int64) {
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: condType, Status: status, Reason: reason, Message: message, ObservedGeneration: generation,
	})
}
