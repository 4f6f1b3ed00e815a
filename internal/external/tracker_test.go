package external

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
)

// fakeResolver answers from a script that the test changes as it goes.
type fakeResolver struct {
	mu      sync.Mutex
	answer  Answer
	err     error
	lookups int
}

func (f *fakeResolver) set(answer Answer, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer, f.err = answer, err
}

func (f *fakeResolver) Lookup(context.Context, string) (Answer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	return f.answer, f.err
}

func (f *fakeResolver) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lookups
}

type notes struct {
	mu   sync.Mutex
	keys []types.NamespacedName
}

func (n *notes) add(key types.NamespacedName) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.keys = append(n.keys, key)
}

func (n *notes) count() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.keys)
}

func TestTracker(t *testing.T) {
	g := NewWithT(t)
	clk := clocktesting.NewFakeClock(t0)
	resolver := &fakeResolver{}
	resolver.set(Answer{Addresses: ips("203.0.113.1", "203.0.113.2"), TTL: time.Minute}, nil)
	var notified notes
	var results []Problem
	var resultsMu sync.Mutex
	tracker := NewTracker(resolver, clk, time.Second, notified.add, func(_ types.NamespacedName, p Problem, _ time.Duration) {
		resultsMu.Lock()
		defer resultsMu.Unlock()
		results = append(results, p)
	})
	defer tracker.Stop()
	key := types.NamespacedName{Namespace: "shop", Name: "stripe"}
	// step moves the clock once the next lookup is scheduled.
	step := func(d time.Duration) {
		t.Helper()
		g.Eventually(clk.HasWaiters).Should(BeTrue())
		clk.Step(d)
	}
	spec := Spec{Host: "api.example.test", MaxAddresses: 16, Refuse: refuseServiceRange}

	// Restored from status: published at once, before any lookup.
	seed := &State{Host: "api.example.test", LastSuccess: t0.Add(-time.Minute),
		Addresses: []Address{{Addr: ips("203.0.113.1")[0], LastSeen: t0.Add(-time.Minute), TTL: time.Minute}}}
	st := tracker.Track(key, spec, seed)
	g.Expect(published(&st)).To(Equal([]string{"203.0.113.1"}))

	// The first lookup starts at once and adds the second address.
	g.Eventually(notified.count).Should(Equal(1))
	st = tracker.Track(key, spec, nil)
	g.Expect(published(&st)).To(Equal([]string{"203.0.113.1", "203.0.113.2"}))
	g.Expect(st.NextResolution).To(Equal(t0.Add(time.Minute)))

	// The same answer again at the TTL: a lookup, no reconcile.
	step(time.Minute)
	g.Eventually(resolver.count).Should(Equal(2))
	g.Consistently(notified.count, 50*time.Millisecond).Should(Equal(1))

	// DNS fails: one reconcile for the new condition, the addresses stay; retries back off.
	resolver.set(Answer{}, errors.New("SERVFAIL"))
	step(time.Minute)
	g.Eventually(notified.count).Should(Equal(2))
	st = tracker.Track(key, spec, nil)
	g.Expect(published(&st)).To(Equal([]string{"203.0.113.1", "203.0.113.2"}))
	g.Expect(st.Problem).To(Equal(ResolutionFailed))
	step(time.Second)
	g.Eventually(resolver.count).Should(Equal(4))
	g.Consistently(notified.count, 50*time.Millisecond).Should(Equal(2))

	// A rewritten cluster DNS answers the front: refused, reported, the addresses stay.
	resolver.set(Answer{Addresses: ips("10.96.0.10"), TTL: 30 * time.Second}, nil)
	step(2 * time.Second)
	g.Eventually(notified.count).Should(Equal(3))
	st = tracker.Track(key, spec, nil)
	g.Expect(st.Problem).To(Equal(AddressesRefused))
	g.Expect(published(&st)).To(Equal([]string{"203.0.113.1", "203.0.113.2"}))

	// Another host: the old state goes, and a lookup of the new one starts at once.
	resolver.set(Answer{Addresses: ips("198.51.100.7"), TTL: time.Minute}, nil)
	spec.Host = "api.other.test"
	st = tracker.Track(key, spec, seed)
	g.Expect(st.Addresses).To(BeEmpty(), "a seed for another host is ignored")
	g.Eventually(func() []string { s := tracker.Track(key, spec, nil); return published(&s) }).Should(Equal([]string{"198.51.100.7"}))

	resultsMu.Lock()
	g.Expect(slices.Contains(results, AddressesRefused)).To(BeTrue())
	resultsMu.Unlock()

	// Forgotten: no more lookups.
	tracker.Forget(key)
	lookups := resolver.count()
	clk.Step(time.Hour)
	g.Consistently(resolver.count, 50*time.Millisecond).Should(Equal(lookups))
}
