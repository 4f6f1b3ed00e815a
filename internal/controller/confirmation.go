package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/confirm"
	"github.com/tripswitch/tripswitch/internal/runner"
)

// reportConfirmation writes the scheduler's newest second opinion, about the breaker's trip or
// one endpoint's ejection, into status.confirmation
// and the Confirmation condition, with a Warning event when observers hold a trip or none
// answered. A scheduler that has none (a new leader, before its first suspicion) leaves what
// status says alone.
func (r *CircuitBreakerReconciler) reportConfirmation(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, c *runner.Confirmation) {
	if c == nil {
		return
	}
	subject := cb.Name
	if c.Endpoint.IsValid() {
		subject = "endpoint " + c.Endpoint.String() + " of " + cb.Name
	}
	st := confirmationStatus(c, subject)
	prev := cb.Status.Confirmation
	cb.Status.Confirmation = st
	status, reason := metav1.ConditionUnknown, tripswitchv1alpha1.ReasonAsking
	switch st.Outcome {
	case string(confirm.Confirmed):
		status, reason = metav1.ConditionTrue, tripswitchv1alpha1.ReasonTripConfirmed
	case string(confirm.Refuted):
		status, reason = metav1.ConditionFalse, tripswitchv1alpha1.ReasonTripRefuted
	case string(confirm.Unconfirmed):
		reason = tripswitchv1alpha1.ReasonUnconfirmed
	}
	meta.SetStatusCondition(&cb.Status.Conditions, metav1.Condition{Type: tripswitchv1alpha1.ConditionConfirmation,
		Status: status, Reason: reason, Message: st.Message, ObservedGeneration: cb.Generation})
	// Status keeps seconds: the same suspicion read back compares equal at that precision.
	fresh := prev == nil || prev.Outcome != st.Outcome || prev.Time.Unix() != st.Time.Unix()
	if !fresh || st.Outcome == string(confirm.Confirmed) || st.Outcome == "Asking" {
		return // a confirmed trip is told by its transition's event
	}
	log.FromContext(ctx).Info("Second opinion", "outcome", st.Outcome, "rule", st.Rule, "message", st.Message)
	if r.Recorder != nil {
		r.Recorder.Eventf(cb, nil, corev1.EventTypeWarning, reason, "Confirmation", "%s", st.Message)
	}
}

// confirmationStatus is status.confirmation for the scheduler's view; subject names the
// breaker in the message.
func confirmationStatus(c *runner.Confirmation, subject string) *tripswitchv1alpha1.ConfirmationStatus {
	st := &tripswitchv1alpha1.ConfirmationStatus{Time: metav1.NewTime(c.Since), Rule: c.Reason.String()}
	if c.Endpoint.IsValid() {
		st.Rule, st.Endpoint = c.Ejection.String(), c.Endpoint.String()
	}
	if c.Asking || c.Last == nil {
		st.Outcome = "Asking"
		st.Message = cut("asking observers on other nodes whether they see "+subject+" failing too ("+st.Rule+
			" holds on the manager's probes)", 1024)
		return st
	}
	st.Outcome = string(c.Last.Outcome)
	st.Message = cut(c.Last.Message(subject), 1024)
	if c.Last.Outcome == confirm.Refuted && !c.HeldUntil.IsZero() {
		st.HeldUntil = &metav1.Time{Time: c.HeldUntil}
	}
	for _, b := range append([]confirm.Ballot{c.Last.Leader}, c.Last.Ballots...) {
		st.Votes = append(st.Votes, tripswitchv1alpha1.ObserverVote{Observer: cut(b.Observer.Name, 253), Zone: cut(b.Observer.Zone, 63),
			Verdict: string(b.Verdict), Degraded: b.Degraded, Detail: cut(b.Detail, 256)})
	}
	if len(st.Votes) > 6 {
		st.Votes = st.Votes[:6]
	}
	return st
}
