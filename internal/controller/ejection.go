package controller

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/ejection"
	"github.com/tripswitch/tripswitch/internal/runner"
)

// ejectionsFromStatus reads back the endpoints status lists, so that a new leader resumes
// their ejections (and their ramp) where the last one left them, as it resumes openUntil.
func ejectionsFromStatus(st *tripswitchv1alpha1.CircuitBreakerStatus) []ejection.EndpointStatus {
	if st.Ejection == nil {
		return nil
	}
	out := make([]ejection.EndpointStatus, 0, len(st.Ejection.Endpoints))
	for _, e := range st.Ejection.Endpoints {
		ep, err := netip.ParseAddrPort(e.Endpoint)
		if err != nil {
			continue // status is ours, but a hand edit must not stop the breaker
		}
		s := ejection.EndpointStatus{Endpoint: ep, Reason: ejection.ParseReason(e.Reason), Since: e.Since.Time,
			Ejections: int(e.Ejections), Message: e.Message}
		switch e.Phase {
		case ejection.Ejected.String():
			s.Phase = ejection.Ejected
			if e.Until == nil {
				continue
			}
			s.Until = e.Until.Time
		case ejection.SlowStart.String():
			s.Phase = ejection.SlowStart
		default:
			continue
		}
		out = append(out, s)
	}
	return out
}

// applyEjection writes the endpoint level's view into status; nil removes it.
func applyEjection(st *tripswitchv1alpha1.CircuitBreakerStatus, v *ejection.View) {
	if v == nil {
		st.Ejection = nil
		return
	}
	out := &tripswitchv1alpha1.EjectionStatus{Ejected: int32(v.Ejected), Capped: int32(v.Capped),
		MaxEjected: int32(v.MaxEjected), SlowStart: int32(v.SlowStart), Panic: v.Panic}
	for _, e := range v.Listed {
		item := tripswitchv1alpha1.EjectedEndpoint{Endpoint: e.Endpoint.String(), Phase: e.Phase.String(),
			Since: metav1.NewTime(e.Since.Truncate(time.Second)), Ejections: int32(e.Ejections),
			Message: cut(e.Message, 256)}
		if e.Phase == ejection.Ejected {
			item.Reason = e.Reason.String()
			// Rounded up: status keeps whole seconds, and an ejection must not read back
			// shorter than it is.
			until := metav1.NewTime(roundUpSecond(e.Until))
			item.Until = &until
		}
		out.Endpoints = append(out.Endpoints, item)
	}
	st.Ejection = out
}

func roundUpSecond(t time.Time) time.Time {
	if r := t.Truncate(time.Second); !r.Equal(t) {
		return r.Add(time.Second)
	}
	return t
}

// cut shortens s to at most n bytes.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// heldBack is the set of addresses the gate holds back: the endpoint level's, when the mode
// lets the breaker gate traffic (Auto). nil holds back nothing.
func heldBack(view *runner.View, mode tripswitchv1alpha1.Mode) map[string]bool {
	if view == nil || view.Ejection == nil || mode != tripswitchv1alpha1.ModeAuto || len(view.Ejection.HeldBack) == 0 {
		return nil
	}
	out := make(map[string]bool, len(view.Ejection.HeldBack))
	for _, ep := range view.Ejection.HeldBack {
		out[ep.Addr().String()] = true
	}
	return out
}

// reportEjection keeps status, the Ejection condition, events and metrics in step with the
// endpoint level: one event per ejection and return, and one when panic starts or ends.
func (r *CircuitBreakerReconciler) reportEjection(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker,
	mode tripswitchv1alpha1.Mode, view *runner.View, events []ejection.Event) {
	v := view.Ejection
	applyEjection(&cb.Status, v)
	if r.Metrics != nil {
		ejected, panicking := 0, false
		if v != nil {
			ejected, panicking = v.Ejected, v.Panic
		}
		r.Metrics.SetEjection(cb.Namespace, cb.Name, ejected, panicking, v != nil)
	}
	for _, ev := range events {
		r.announceEndpoint(ctx, cb, ev)
	}
	was := meta.FindStatusCondition(cb.Status.Conditions, tripswitchv1alpha1.ConditionEjection)
	if v == nil {
		meta.RemoveStatusCondition(&cb.Status.Conditions, tripswitchv1alpha1.ConditionEjection)
		return
	}
	status, reason, message := ejectionCondition(v, mode, view.Gate)
	wasPanic := was != nil && was.Reason == tripswitchv1alpha1.ReasonPanic
	if nowPanic := reason == tripswitchv1alpha1.ReasonPanic; nowPanic != wasPanic {
		log.FromContext(ctx).Info("Ejection panic changed", "panic", nowPanic, "healthy", v.Endpoints-v.Ejected-v.Capped,
			"endpoints", v.Endpoints)
		if r.Recorder != nil {
			eventType, action, text := corev1.EventTypeNormal, "PanicEnded", "Ejection panic ended: "+message
			if nowPanic {
				eventType, action, text = corev1.EventTypeWarning, "Panic", message
			}
			r.Recorder.Eventf(cb, nil, eventType, tripswitchv1alpha1.ReasonPanic, action, "%s", text)
		}
	}
	meta.SetStatusCondition(&cb.Status.Conditions, metav1.Condition{Type: tripswitchv1alpha1.ConditionEjection,
		Status: status, Reason: reason, Message: message, ObservedGeneration: cb.Generation})
}

// ejectionCondition says what the endpoint level does to traffic, the most important first:
// panic publishes everything, a mode that pins the gate Closed applies nothing, then what is
// held back and why.
func ejectionCondition(v *ejection.View, mode tripswitchv1alpha1.Mode, gate breaker.State) (metav1.ConditionStatus, string, string) {
	healthy := v.Endpoints - v.Ejected - v.Capped
	ejected := fmt.Sprintf("%d of %d endpoints ejected (at most %d at once)", v.Ejected, v.Endpoints, v.MaxEjected)
	if names := listedNames(v, ejection.Ejected); names != "" {
		ejected += ": " + names
	}
	moot := ""
	if gate != breaker.Closed {
		moot = fmt.Sprintf("; the breaker's gate is %s, so ejection does not apply until it closes", gate)
	}
	switch {
	case v.Panic:
		return metav1.ConditionTrue, tripswitchv1alpha1.ReasonPanic, fmt.Sprintf("Panic: only %d of %d endpoints are "+
			"healthy, below spec.ejection.panicThresholdPercent, so ejections are ignored and every endpoint is published "+
			"(%s; %d more fail)%s", healthy, v.Endpoints, ejected, v.Capped, moot)
	case mode != tripswitchv1alpha1.ModeAuto && (v.Ejected > 0 || v.Capped > 0 || v.SlowStart > 0):
		return metav1.ConditionTrue, tripswitchv1alpha1.ReasonEjectionNotApplied, fmt.Sprintf("Mode %s keeps the gate "+
			"Closed, so every endpoint is published; tripswitch would have %s", mode, ejected)
	case v.Held:
		return metav1.ConditionTrue, tripswitchv1alpha1.ReasonEjectionHeld, fmt.Sprintf("The observer guard holds this "+
			"breaker's first ejection (see the ObserverGuard condition): %d endpoints fail but stay published", v.Capped)
	case v.Capped > 0:
		return metav1.ConditionTrue, tripswitchv1alpha1.ReasonEjectionCapped, fmt.Sprintf("%s; %d more fail but stay "+
			"published, because spec.ejection.maxEjectedPercent allows no more%s", ejected, v.Capped, moot)
	case v.Ejected > 0:
		return metav1.ConditionTrue, tripswitchv1alpha1.ReasonEndpointsEjected, ejected + moot
	case v.SlowStart > 0:
		return metav1.ConditionTrue, tripswitchv1alpha1.ReasonSlowStart, fmt.Sprintf("%d of %d endpoints wait for "+
			"their step of the slow-start ramp%s", v.SlowStart, v.Endpoints, moot)
	}
	return metav1.ConditionFalse, tripswitchv1alpha1.ReasonNoEndpointsEjected,
		fmt.Sprintf("No endpoint is ejected; all %d are published", v.Endpoints)
}

// listedNames names up to 5 listed endpoints of one phase, with their reason.
func listedNames(v *ejection.View, phase ejection.Phase) string {
	const most = 5
	var names []string
	n := 0
	for _, e := range v.Listed {
		if e.Phase != phase {
			continue
		}
		n++
		if len(names) < most {
			names = append(names, fmt.Sprintf("%s (%s)", e.Endpoint, e.Reason))
		}
	}
	total := v.Ejected
	if phase == ejection.SlowStart {
		total = v.SlowStart
	}
	if more := total - len(names); more > 0 {
		names = append(names, fmt.Sprintf("and %d more", more))
	}
	return strings.Join(names, ", ")
}

// announceEndpoint records one ejection or return as an event, a log line and a metric.
func (r *CircuitBreakerReconciler) announceEndpoint(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, ev ejection.Event) {
	switch ev.Kind {
	case ejection.EventEjected:
		log.FromContext(ctx).Info("Endpoint ejected", "endpoint", ev.Endpoint.String(), "reason", ev.Reason.String(),
			"until", ev.Until, "ejections", ev.Ejections, "probe", ev.Message)
		if r.Metrics != nil {
			r.Metrics.Ejected(cb.Namespace, cb.Name, ev.Reason.String())
		}
		if r.Recorder != nil {
			r.Recorder.Eventf(cb, nil, corev1.EventTypeWarning, "EndpointEjected", "Eject",
				"Endpoint %s ejected (%s, ejection %d) until %s after %s", ev.Endpoint, ev.Reason, ev.Ejections,
				ev.Until.UTC().Format(time.RFC3339), cut(ev.Message, 96))
		}
	case ejection.EventReturned:
		log.FromContext(ctx).Info("Endpoint returned", "endpoint", ev.Endpoint.String(), "ejections", ev.Ejections,
			"probe", ev.Message)
		if r.Recorder != nil {
			r.Recorder.Eventf(cb, nil, corev1.EventTypeNormal, "EndpointReturned", "Return",
				"Endpoint %s returned (%s)", ev.Endpoint, cut(ev.Message, 96))
		}
	}
}
