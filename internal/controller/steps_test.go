package controller

import (
	"context"
	"errors"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/runner"
)

func TestRunStepsRunsEveryStepWhoseNeedsAreMet(t *testing.T) {
	g := NewWithT(t)
	var ran []string
	stepThat := func(name string, needs need, err error, effect func(*reconcileState)) step {
		return step{name: name, needs: needs, run: func(_ context.Context, st *reconcileState) error {
			ran = append(ran, name)
			if effect != nil {
				effect(st)
			}
			return err
		}}
	}
	boom := errors.New("boom")
	for _, tt := range []struct {
		name     string
		steps    []step
		wantRan  []string
		wantErrs int
	}{
		{"an error does not skip the steps after it",
			[]step{stepThat("a", 0, boom, nil), stepThat("b", 0, nil, nil)}, []string{"a", "b"}, 1},
		{"a step that needs the target is skipped while the target is unknown",
			[]step{stepThat("target", 0, boom, nil), stepThat("gate", needTarget, nil, nil), stepThat("engine", 0, nil, nil)},
			[]string{"target", "engine"}, 1},
		{"a missing target is known, but not resolved",
			[]step{stepThat("target", 0, &waitingError{}, func(st *reconcileState) { st.target = &target{} }),
				stepThat("gate", needTarget, nil, nil), stepThat("handBack", needTargetLookup, nil, nil)},
			[]string{"target", "handBack"}, 1},
		{"the gates run once the engine gave its view, even after the target failed",
			[]step{stepThat("target", 0, boom, nil), stepThat("engine", 0, nil, func(st *reconcileState) { st.view = &runner.View{} }),
				stepThat("annotations", needView, nil, nil)},
			[]string{"target", "engine", "annotations"}, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ran = nil
			errs := runSteps(context.Background(), &reconcileState{}, tt.steps)
			g.Expect(ran).To(Equal(tt.wantRan))
			g.Expect(errs).To(HaveLen(tt.wantErrs))
		})
	}
}

func TestSummarize(t *testing.T) {
	stalled := &stalledError{reason: tripswitchv1alpha1.ReasonFrontServiceClaimed, message: "front taken"}
	waiting := &waitingError{reason: tripswitchv1alpha1.ReasonTargetNotFound, message: "no target"}
	failure := errors.New("etcd is down")
	type want struct {
		ready              metav1.ConditionStatus
		reason             string
		reconciling, stall bool
	}
	for _, tt := range []struct {
		name string
		errs []error
		want want
	}{
		{"reconciled", nil, want{metav1.ConditionTrue, tripswitchv1alpha1.ReasonReconciled, false, false}},
		{"waiting", []error{waiting}, want{metav1.ConditionFalse, tripswitchv1alpha1.ReasonTargetNotFound, true, false}},
		{"stalled", []error{stalled}, want{metav1.ConditionFalse, tripswitchv1alpha1.ReasonFrontServiceClaimed, false, true}},
		{"a failed API call", []error{failure}, want{metav1.ConditionFalse, tripswitchv1alpha1.ReasonReconcileError, true, false}},
		{"stalled wins over a failure and a wait, whatever the order", []error{waiting, failure, stalled},
			want{metav1.ConditionFalse, tripswitchv1alpha1.ReasonFrontServiceClaimed, false, true}},
		{"a failure wins over a wait", []error{waiting, failure},
			want{metav1.ConditionFalse, tripswitchv1alpha1.ReasonReconcileError, true, false}},
		{"wrapped errors are found", []error{errors.Join(errors.New("step"), stalled)},
			want{metav1.ConditionFalse, tripswitchv1alpha1.ReasonFrontServiceClaimed, false, true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			cb := &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Name: "payments", Generation: 3}}
			// Conditions left by an earlier reconcile must not survive a different outcome.
			setCondition(&cb.Status, tripswitchv1alpha1.ConditionStalled, metav1.ConditionTrue, "Old", "old", 2)
			setCondition(&cb.Status, tripswitchv1alpha1.ConditionReconciling, metav1.ConditionTrue, "Old", "old", 2)
			(&CircuitBreakerReconciler{}).summarize(cb, tt.errs)

			ready := meta.FindStatusCondition(cb.Status.Conditions, tripswitchv1alpha1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Status).To(Equal(tt.want.ready))
			g.Expect(ready.Reason).To(Equal(tt.want.reason))
			g.Expect(ready.ObservedGeneration).To(BeEquivalentTo(3))
			g.Expect(meta.IsStatusConditionTrue(cb.Status.Conditions, tripswitchv1alpha1.ConditionReconciling)).To(Equal(tt.want.reconciling))
			g.Expect(meta.IsStatusConditionTrue(cb.Status.Conditions, tripswitchv1alpha1.ConditionStalled)).To(Equal(tt.want.stall))
			g.Expect(cb.Status.State).To(Equal(tripswitchv1alpha1.StateClosed), "a new breaker reads Closed")
			g.Expect(cb.Status.FrontService).To(Equal("payments"))
			g.Expect(cb.Status.ObservedGeneration).To(BeEquivalentTo(3))
		})
	}
}

func TestFirstFailureIgnoresWaitsAndStalls(t *testing.T) {
	g := NewWithT(t)
	failure := errors.New("conflict")
	g.Expect(firstFailure([]error{&waitingError{}, &stalledError{}})).To(Succeed())
	g.Expect(firstFailure([]error{&waitingError{}, failure})).To(MatchError(failure))
}

func TestRequeueWithinKeepsTheSoonestDeadline(t *testing.T) {
	g := NewWithT(t)
	st := &reconcileState{requeueAfter: 10 * time.Second}
	st.requeueWithin(time.Second)
	st.requeueWithin(5 * time.Second)
	st.requeueWithin(0)
	g.Expect(st.requeueAfter).To(Equal(time.Second))
}
