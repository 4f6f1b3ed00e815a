package controller

import (
	"net/netip"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/ejection"
	"github.com/tripswitch/tripswitch/internal/runner"
)

func TestEjectionStatusRoundTrip(t *testing.T) {
	g := NewWithT(t)
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	v := &ejection.View{Endpoints: 4, Ejected: 1, MaxEjected: 2, SlowStart: 1, Listed: []ejection.EndpointStatus{
		{Endpoint: netip.MustParseAddrPort("10.0.0.3:8080"), Phase: ejection.Ejected, Reason: ejection.TrialFailed,
			Since: t0.Add(400 * time.Millisecond), Until: t0.Add(60*time.Second + 400*time.Millisecond), Ejections: 2,
			Message: "HTTP 503"},
		{Endpoint: netip.MustParseAddrPort("[fd00::4]:8080"), Phase: ejection.SlowStart, Since: t0},
	}}
	var st tripswitchv1alpha1.CircuitBreakerStatus
	applyEjection(&st, v)
	g.Expect(st.Ejection.Ejected).To(BeEquivalentTo(1))
	g.Expect(st.Ejection.Endpoints).To(HaveLen(2))
	g.Expect(st.Ejection.Endpoints[0].Until.Time).To(Equal(t0.Add(61*time.Second)),
		"an ejection's end is rounded up to the second that status keeps, never down")
	g.Expect(st.Ejection.Endpoints[1].Until).To(BeNil())
	g.Expect(st.Ejection.Endpoints[1].Reason).To(BeEmpty())

	back := ejectionsFromStatus(&st)
	g.Expect(back).To(Equal([]ejection.EndpointStatus{
		{Endpoint: netip.MustParseAddrPort("10.0.0.3:8080"), Phase: ejection.Ejected, Reason: ejection.TrialFailed,
			Since: t0, Until: t0.Add(61 * time.Second), Ejections: 2, Message: "HTTP 503"},
		{Endpoint: netip.MustParseAddrPort("[fd00::4]:8080"), Phase: ejection.SlowStart, Since: t0},
	}))

	// A hand-edited status is skipped entry by entry, never an error.
	st.Ejection.Endpoints = append(st.Ejection.Endpoints,
		tripswitchv1alpha1.EjectedEndpoint{Endpoint: "not-an-endpoint", Phase: "Ejected"},
		tripswitchv1alpha1.EjectedEndpoint{Endpoint: "10.0.0.9:80", Phase: "Ejected"}, // no until
		tripswitchv1alpha1.EjectedEndpoint{Endpoint: "10.0.0.9:80", Phase: "Sideways"})
	g.Expect(ejectionsFromStatus(&st)).To(HaveLen(2))

	applyEjection(&st, nil)
	g.Expect(st.Ejection).To(BeNil())
	g.Expect(ejectionsFromStatus(&st)).To(BeNil())
}

func TestEjectionCondition(t *testing.T) {
	ep := netip.MustParseAddrPort("10.0.0.3:8080")
	listed := []ejection.EndpointStatus{{Endpoint: ep, Phase: ejection.Ejected, Reason: ejection.ConsecutiveFailures}}
	for _, tt := range []struct {
		name       string
		view       ejection.View
		mode       tripswitchv1alpha1.Mode
		gate       breaker.State
		wantStatus metav1.ConditionStatus
		wantReason string
		wantIn     string
	}{
		{"nothing held back", ejection.View{Endpoints: 3, MaxEjected: 1}, tripswitchv1alpha1.ModeAuto, breaker.Closed,
			metav1.ConditionFalse, tripswitchv1alpha1.ReasonNoEndpointsEjected, "all 3 are published"},
		{"one ejected", ejection.View{Endpoints: 3, Ejected: 1, MaxEjected: 1, Listed: listed}, tripswitchv1alpha1.ModeAuto,
			breaker.Closed, metav1.ConditionTrue, tripswitchv1alpha1.ReasonEndpointsEjected,
			"1 of 3 endpoints ejected (at most 1 at once): 10.0.0.3:8080 (ConsecutiveFailures)"},
		{"capped", ejection.View{Endpoints: 4, Ejected: 2, Capped: 1, MaxEjected: 2}, tripswitchv1alpha1.ModeAuto,
			breaker.Closed, metav1.ConditionTrue, tripswitchv1alpha1.ReasonEjectionCapped, "1 more fail but stay published"},
		{"panic wins over everything", ejection.View{Endpoints: 3, Ejected: 1, Capped: 2, MaxEjected: 1, Panic: true},
			tripswitchv1alpha1.ModeObserve, breaker.Closed, metav1.ConditionTrue, tripswitchv1alpha1.ReasonPanic,
			"only 0 of 3 endpoints are healthy"},
		{"a mode that pins the gate Closed applies nothing", ejection.View{Endpoints: 3, Ejected: 1, MaxEjected: 1},
			tripswitchv1alpha1.ModeForceClosed, breaker.Closed, metav1.ConditionTrue, tripswitchv1alpha1.ReasonEjectionNotApplied,
			"Mode ForceClosed keeps the gate Closed"},
		{"held by the observer guard", ejection.View{Endpoints: 3, Capped: 1, MaxEjected: 1, Held: true},
			tripswitchv1alpha1.ModeAuto, breaker.Closed, metav1.ConditionTrue, tripswitchv1alpha1.ReasonEjectionHeld,
			"1 endpoints fail but stay published"},
		{"slow start", ejection.View{Endpoints: 8, SlowStart: 5, MaxEjected: 4}, tripswitchv1alpha1.ModeAuto, breaker.Closed,
			metav1.ConditionTrue, tripswitchv1alpha1.ReasonSlowStart, "5 of 8 endpoints wait"},
		{"moot while Open", ejection.View{Endpoints: 3, Ejected: 1, MaxEjected: 1}, tripswitchv1alpha1.ModeAuto, breaker.Open,
			metav1.ConditionTrue, tripswitchv1alpha1.ReasonEndpointsEjected, "the breaker's gate is Open"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			status, reason, message := ejectionCondition(&tt.view, tt.mode, tt.gate)
			g.Expect(status).To(Equal(tt.wantStatus))
			g.Expect(reason).To(Equal(tt.wantReason))
			g.Expect(message).To(ContainSubstring(tt.wantIn))
		})
	}
}

func TestHeldBackOnlyUnderAuto(t *testing.T) {
	g := NewWithT(t)
	view := &runner.View{Ejection: &ejection.View{HeldBack: []netip.AddrPort{
		netip.MustParseAddrPort("10.0.0.3:8080"), netip.MustParseAddrPort("[fd00::4]:8080")}}}
	g.Expect(heldBack(view, tripswitchv1alpha1.ModeAuto)).To(Equal(map[string]bool{"10.0.0.3": true, "fd00::4": true}))
	for _, mode := range []tripswitchv1alpha1.Mode{tripswitchv1alpha1.ModeObserve, tripswitchv1alpha1.ModeForceClosed,
		tripswitchv1alpha1.ModeForceOpen} {
		g.Expect(heldBack(view, mode)).To(BeNil(), "mode %s", mode)
	}
	g.Expect(heldBack(&runner.View{}, tripswitchv1alpha1.ModeAuto)).To(BeNil())
}
