package controller

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/runner"
)

// reconcileEngine registers the breaker with the scheduler (restoring it from status the
// first time), acts on a new reset token, and writes the engine's view into status, with an
// event and a log line per transition. It always leaves a view for the gates: a spec that the
// API server accepted but that cannot run keeps the last configuration that could (or, for a
// breaker that never ran, one that only observes), so the mode, a reset and the gates go on
// working while the breaker reports the problem as Stalled.
func (r *CircuitBreakerReconciler) reconcileEngine(ctx context.Context, st *reconcileState) error {
	cb := st.cb
	key := client.ObjectKeyFromObject(cb)
	run, compileErr := Compile(&st.spec)
	var stalled error
	if compileErr != nil {
		var how string
		run, how = r.fallback(key, &st.spec)
		stalled = &stalledError{reason: tripswitchv1alpha1.ReasonInvalidSpec,
			message: fmt.Sprintf("the spec cannot be run: %v; %s", compileErr, how)}
		log.FromContext(ctx).Error(compileErr, "The API server accepted a spec that cannot be run", "fallback", how)
	}
	rules, queryInterval, queryErr := compileQueries(&st.spec, r.QueryNamespaceLabel, cb.Namespace)
	if queryErr != nil && stalled == nil {
		stalled = &stalledError{reason: tripswitchv1alpha1.ReasonInvalidSpec,
			message: "query rules that cannot run are left out: " + queryErr.Error()}
	}
	reg := runner.Registration{
		Spec: run.Probe, Interval: run.Interval, Config: run.Engine,
		Restore: snapshotFromStatus(&cb.Status), Seed: seedFor(cb),
		Gated: run.Engine.Mode == breaker.Auto, HeldSince: heldSince(&cb.Status),
		Ejection: run.Ejection, RampKeep: run.RampKeep, RestoreEjections: ejectionsFromStatus(&cb.Status),
		Queries: rules, QueryInterval: queryInterval, Confirm: run.Confirm,
	}
	switch {
	case st.target == nil:
		reg.KeepEndpoints = true // unknown is not empty: keep probing what was there
	case st.target.resolved:
		reg.Endpoints = st.target.probed
	}
	if err := r.Scheduler.Upsert(key, reg); err != nil {
		// Compile validated run as the scheduler does, and the fallback is valid by
		// construction; so this is a bug, and the gates keep what they last published.
		return &stalledError{reason: tripswitchv1alpha1.ReasonInvalidSpec, message: "registering the breaker: " + err.Error()}
	}
	if compileErr == nil {
		r.lastGood.Store(key, run)
	}
	if token := cb.Annotations[tripswitchv1alpha1.ResetAnnotation]; token != "" && token != cb.Status.LastResetToken {
		r.Scheduler.Reset(key)
		cb.Status.LastResetToken = token
	}
	changes := r.Scheduler.TakeChanges(key)
	endpointEvents := r.Scheduler.TakeEndpointEvents(key)
	view, _ := r.Scheduler.View(key)
	for _, change := range changes {
		r.announce(ctx, cb, change)
		cb.Status.TransitionMessage = cut(transitionDetail(change), 512)
		if r.Metrics != nil {
			r.Metrics.Transition(cb.Namespace, cb.Name, change.From.String(), change.To.String(), change.Reason.String())
		}
	}
	applyView(&cb.Status, view)
	r.reportEjection(ctx, cb, st.spec.Mode, &view, endpointEvents)
	applyQueries(cb, view.Queries)
	r.reportHold(ctx, cb, view.Held)
	r.reportConfirmation(ctx, cb, view.Confirmation)
	if r.Metrics != nil {
		names := make([]string, len(rules))
		for i, rule := range rules {
			names[i] = rule.Name
		}
		r.Metrics.KeepQueryRules(cb.Namespace, cb.Name, names)
		r.Metrics.SetState(cb.Namespace, cb.Name, string(cb.Status.State))
		r.Metrics.SetInfo(cb.Namespace, cb.Name, cb.Status.Target, cb.FrontServiceName())
	}
	if cb.Status.Endpoints == nil {
		cb.Status.Endpoints = &tripswitchv1alpha1.EndpointsStatus{}
	}
	if st.target != nil {
		cb.Status.Endpoints.Target = int32(len(st.target.ready))
	}
	st.view = &view
	return stalled
}

// fallback is what a breaker runs with while its spec cannot run: its last good
// configuration under the spec's mode, or, if it never ran, the built-in defaults in a mode
// that cannot take traffic away (Observe; ForceOpen and ForceClosed are honoured, since they
// are the user's explicit word). It also says which, for the condition.
func (r *CircuitBreakerReconciler) fallback(key types.NamespacedName, spec *tripswitchv1alpha1.CircuitBreakerSpec) (Runnable, string) {
	if v, ok := r.lastGood.Load(key); ok {
		run := v.(Runnable)
		run.Engine.Mode = engineMode(spec.Mode)
		return run, "the breaker keeps its last good configuration (mode " + string(spec.Mode) + ") until the spec is fixed"
	}
	defaults := (&tripswitchv1alpha1.CircuitBreaker{Spec: tripswitchv1alpha1.CircuitBreakerSpec{Target: spec.Target}}).Resolve()
	run, err := Compile(&defaults)
	if err != nil {
		panic(fmt.Sprintf("the built-in defaults do not compile: %v", err)) // a test guards this
	}
	switch spec.Mode {
	case tripswitchv1alpha1.ModeForceOpen, tripswitchv1alpha1.ModeForceClosed:
		run.Engine.Mode = engineMode(spec.Mode)
		return run, "the breaker runs on built-in defaults, pinned " + string(spec.Mode) + ", until the spec is fixed"
	}
	run.Engine.Mode = breaker.Observe
	return run, "the breaker only observes, with built-in defaults, and gates no traffic until the spec is fixed"
}

// transitionDetail says what decided a transition: the query rule and its value, or the
// deciding probe's result and endpoint; empty when a deadline or the user decided it.
func transitionDetail(c runner.Change) string {
	detail := ""
	switch {
	case c.Query != "":
		detail = c.Query
	case c.Probe != nil:
		detail = fmt.Sprintf("%s from %s", c.Probe.Message, c.Probe.Endpoint)
	}
	if c.Confirmation != nil {
		detail = strings.TrimPrefix(detail+"; "+c.Confirmation.Message("the target"), "; ")
	}
	if c.Released {
		detail = strings.TrimPrefix(detail+"; the observer guard had held this trip and let it go after its release timeout", "; ")
	}
	return detail
}

// announce records one transition as an event and a log line.
func (r *CircuitBreakerReconciler) announce(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, c runner.Change) {
	message := transitionDetail(c)
	switch {
	case message == "":
	case c.Query == "" && c.Probe == nil: // only the observer guard's note
		message = "; " + message
	default:
		message = " after " + message
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

// reportHold keeps the ObserverGuard condition in step with the guard: present while the
// breaker's trip is held, with a message that says why and what happens next, and gone when
// the hold ends. The start and the end of a hold are events, like transitions.
func (r *CircuitBreakerReconciler) reportHold(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, hold *runner.Hold) {
	was := meta.FindStatusCondition(cb.Status.Conditions, tripswitchv1alpha1.ConditionObserverGuard)
	if hold == nil {
		if was == nil {
			return
		}
		meta.RemoveStatusCondition(&cb.Status.Conditions, tripswitchv1alpha1.ConditionObserverGuard)
		log.FromContext(ctx).Info("The observer guard no longer holds the breaker's trip", "state", cb.Status.State)
		if r.Recorder != nil {
			r.Recorder.Eventf(cb, nil, corev1.EventTypeNormal, "TripHoldEnded", "ObserverGuard",
				"The observer guard no longer holds this breaker's trip; the breaker is %s", cb.Status.State)
		}
		return
	}
	message := r.holdMessage(hold)
	meta.SetStatusCondition(&cb.Status.Conditions, metav1.Condition{
		Type: tripswitchv1alpha1.ConditionObserverGuard, Status: metav1.ConditionTrue, Reason: tripswitchv1alpha1.ReasonTripHeld,
		Message: message, ObservedGeneration: cb.Generation,
		// The hold's start, so that a new leader resumes its release timeout from status.
		LastTransitionTime: metav1.NewTime(hold.Since),
	})
	if was == nil {
		log.FromContext(ctx).Info("The observer guard holds the breaker's trip", "rule", hold.Reason.String(),
			"gated", hold.Guard.Gated, "budget", hold.Guard.Budget, "held", hold.Guard.Held)
		if r.Recorder != nil {
			r.Recorder.Eventf(cb, nil, corev1.EventTypeWarning, tripswitchv1alpha1.ReasonTripHeld, "ObserverGuard", "%s", message)
		}
	}
}

// holdMessage explains a held trip to whoever reads the condition.
func (r *CircuitBreakerReconciler) holdMessage(hold *runner.Hold) string {
	release := "held trips are never released by time (--observer-guard-release-timeout=0)"
	window := "the observer guard window"
	if r.Guard != nil {
		cfg := r.Guard.Config()
		window = cfg.Window.String()
		if cfg.ReleaseTimeout > 0 {
			interval := cfg.ReleaseInterval
			if interval <= 0 {
				interval = cfg.Window
			}
			release = fmt.Sprintf("if it persists, held trips go ahead one at a time, one per %s, once held for %s",
				interval, cfg.ReleaseTimeout)
		}
	}
	what, rule, stays := "Trip", hold.Reason.String(), "The breaker stays Closed"
	switch {
	case hold.Ejection && hold.Reason == breaker.NoReason:
		what, rule, stays = "Ejection", "the ejection rule of some endpoints", "Every endpoint stays published"
	case hold.Ejection:
		rule += " (and the ejection rule of some endpoints)"
	}
	return fmt.Sprintf("%s held since %s: %s holds, but %d of the %d gated breakers may trip within %s (starting to eject endpoints "+
		"counts as a trip) and %d are held, so tripswitch suspects its own network or CPU rather than every target at once. "+
		"%s and traffic keeps flowing. The hold ends when its probes succeed again; %s.",
		what, hold.Since.UTC().Format(time.RFC3339), rule, hold.Guard.Budget, hold.Guard.Gated, window,
		hold.Guard.Held, stays, release)
}

// heldSince reads back when a previous leader's guard started holding the breaker's trip.
func heldSince(st *tripswitchv1alpha1.CircuitBreakerStatus) time.Time {
	c := meta.FindStatusCondition(st.Conditions, tripswitchv1alpha1.ConditionObserverGuard)
	if c == nil || c.Status != metav1.ConditionTrue || st.State != tripswitchv1alpha1.StateClosed {
		return time.Time{}
	}
	return c.LastTransitionTime.Time
}
