package responder

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

func entry(ns, name, front string) Entry {
	return Entry{Breaker: Breaker{Namespace: ns, Name: name, State: tripswitchv1alpha1.StateOpen}, Front: front}
}

func TestIndexLookup(t *testing.T) {
	x := NewIndex()
	x.Set(entry("shop", "payments", "payments"))
	x.Set(entry("shop", "orders-breaker", "orders"))
	x.Set(entry("ops", "orders-breaker", "orders")) // the same front name in another namespace
	x.Set(entry("ops", "annotations-only", ""))     // no EndpointSlice gate: no front to find

	for _, tt := range []struct {
		host Host
		want string // "namespace/name", or "" for none
	}{
		{Host{"payments", "shop"}, "shop/payments"},
		{Host{"payments", ""}, "shop/payments"}, // one namespace has a front "payments"
		{Host{"orders", "shop"}, "shop/orders-breaker"},
		{Host{"orders", "ops"}, "ops/orders-breaker"},
		{Host{"orders", ""}, ""}, // two namespaces do: no guess
		{Host{"orders-breaker", "shop"}, ""},
		{Host{"payments", "ops"}, ""},
		{Host{"annotations-only", "ops"}, ""},
		{Host{"", ""}, ""},
	} {
		b, ok := x.Lookup(tt.host)
		got := ""
		if ok {
			got = b.Namespace + "/" + b.Name
		}
		if got != tt.want {
			t.Errorf("Lookup(%+v) = %q, want %q", tt.host, got, tt.want)
		}
	}
	if !x.Has(types.NamespacedName{Namespace: "ops", Name: "annotations-only"}) {
		t.Error("Has forgot a breaker without a front")
	}

	// A breaker that moves its front, and one that goes away, leave nothing behind.
	x.Set(entry("shop", "payments", "payments-gated"))
	if _, ok := x.Lookup(Host{"payments", "shop"}); ok {
		t.Error("the old front still finds the breaker after it moved")
	}
	if b, ok := x.Lookup(Host{"payments-gated", ""}); !ok || b.Name != "payments" {
		t.Errorf("the new front finds %+v, %v", b, ok)
	}
	x.Delete(types.NamespacedName{Namespace: "ops", Name: "orders-breaker"})
	if b, ok := x.Lookup(Host{"orders", ""}); !ok || b.Namespace != "shop" {
		t.Errorf("after one of two namespaces lost its front, the short name finds %+v, %v", b, ok)
	}
	x.Delete(types.NamespacedName{Namespace: "shop", Name: "orders-breaker"})
	x.Delete(types.NamespacedName{Namespace: "shop", Name: "payments"})
	x.Delete(types.NamespacedName{Namespace: "ops", Name: "annotations-only"})
	x.Delete(types.NamespacedName{Namespace: "nowhere", Name: "never-there"})
	if len(x.entries) != 0 || len(x.byFront) != 0 || len(x.namespaces) != 0 {
		t.Errorf("an emptied index holds %v, %v, %v", x.entries, x.byFront, x.namespaces)
	}
}

func TestIndexPrefersTheBreakerThatOwnsTheFront(t *testing.T) {
	x := NewIndex()
	refused := entry("shop", "a-second", "payments")
	refused.Refused = true
	x.Set(refused)
	x.Set(entry("shop", "b-owner", "payments"))
	if b, _ := x.Lookup(Host{"payments", "shop"}); b.Name != "b-owner" {
		t.Errorf("Lookup = %q, want the owner b-owner over the refused a-second", b.Name)
	}
	x.Set(entry("shop", "a-second", "payments")) // no longer refused: the names decide
	if b, _ := x.Lookup(Host{"payments", "shop"}); b.Name != "a-second" {
		t.Errorf("Lookup = %q, want a-second, first by name", b.Name)
	}
	if b, _ := x.Lookup(Host{"payments", ""}); b.Name != "a-second" {
		t.Errorf("two breakers of one namespace are one namespace: Lookup = %q", b.Name)
	}
}

func TestEntryOf(t *testing.T) {
	until := metav1.NewTime(time.Date(2026, 3, 1, 12, 0, 7, 0, time.UTC))
	cb := func(mutate func(*tripswitchv1alpha1.CircuitBreaker)) *tripswitchv1alpha1.CircuitBreaker {
		c := &tripswitchv1alpha1.CircuitBreaker{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments"},
			Spec:       tripswitchv1alpha1.CircuitBreakerSpec{Target: tripswitchv1alpha1.TargetReference{Service: "payments-backend"}},
			Status: tripswitchv1alpha1.CircuitBreakerStatus{State: tripswitchv1alpha1.StateOpen,
				GateState: tripswitchv1alpha1.StateOpen, OpenUntil: &until},
		}
		mutate(c)
		return c
	}
	open := Breaker{Namespace: "shop", Name: "payments", State: tripswitchv1alpha1.StateOpen, OpenUntil: until.Time}
	for _, tt := range []struct {
		name string
		cb   *tripswitchv1alpha1.CircuitBreaker
		want Entry
	}{
		{"defaults: the front is the breaker's name", cb(func(*tripswitchv1alpha1.CircuitBreaker) {}),
			Entry{Breaker: open, Front: "payments"}},
		{"a named front", cb(func(c *tripswitchv1alpha1.CircuitBreaker) {
			c.Spec.Gate = &tripswitchv1alpha1.GateSpec{EndpointSlice: &tripswitchv1alpha1.EndpointSliceGate{Service: "pay"}}
		}), Entry{Breaker: open, Front: "pay"}},
		{"no EndpointSlice gate", cb(func(c *tripswitchv1alpha1.CircuitBreaker) {
			c.Spec.Gate = &tripswitchv1alpha1.GateSpec{}
		}), Entry{Breaker: open}},
		{"ForceOpen: the gate stays open past openUntil", cb(func(c *tripswitchv1alpha1.CircuitBreaker) {
			c.Spec.Mode = tripswitchv1alpha1.ModeForceOpen
		}), Entry{Breaker: Breaker{Namespace: "shop", Name: "payments", State: tripswitchv1alpha1.StateOpen}, Front: "payments"}},
		{"ForceOpen while the state machine is Closed", cb(func(c *tripswitchv1alpha1.CircuitBreaker) {
			c.Spec.Mode = tripswitchv1alpha1.ModeForceOpen
			c.Status.State, c.Status.OpenUntil = tripswitchv1alpha1.StateClosed, nil
		}), Entry{Breaker: Breaker{Namespace: "shop", Name: "payments", State: tripswitchv1alpha1.StateOpen}, Front: "payments"}},
		{"Observe: the gate is Closed whatever the state", cb(func(c *tripswitchv1alpha1.CircuitBreaker) {
			c.Spec.Mode = tripswitchv1alpha1.ModeObserve
			c.Status.GateState = tripswitchv1alpha1.StateClosed
		}), Entry{Breaker: Breaker{Namespace: "shop", Name: "payments", State: tripswitchv1alpha1.StateClosed}, Front: "payments"}},
		{"no gate state yet: the state", cb(func(c *tripswitchv1alpha1.CircuitBreaker) {
			c.Status.GateState = ""
		}), Entry{Breaker: open, Front: "payments"}},
		{"refused front", cb(func(c *tripswitchv1alpha1.CircuitBreaker) {
			c.Status.Conditions = []metav1.Condition{{Type: tripswitchv1alpha1.ConditionStalled, Status: metav1.ConditionTrue,
				Reason: tripswitchv1alpha1.ReasonFrontServiceClaimed}}
		}), Entry{Breaker: open, Front: "payments", Refused: true}},
		{"stalled for another reason", cb(func(c *tripswitchv1alpha1.CircuitBreaker) {
			c.Status.Conditions = []metav1.Condition{{Type: tripswitchv1alpha1.ConditionStalled, Status: metav1.ConditionTrue,
				Reason: "InvalidSpec"}}
		}), Entry{Breaker: open, Front: "payments"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := EntryOf(tt.cb); got != tt.want {
				t.Errorf("EntryOf = %+v\nwant      %+v", got, tt.want)
			}
		})
	}
}
