package guard

import (
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
)

// Stats is the guard's view at one moment, for conditions, events and metrics.
type Stats struct {
	Gated         int // gated breakers
	TripsInWindow int // trips permitted within the window
	Budget        int // trips the window admits
	Held          int // trips held now
}

// Guard is the observer guard shared by every breaker of one manager. It is safe for
// concurrent use. The probe scheduler calls it while holding a breaker's mutex, so the guard
// never calls back into its callers under its own lock, except the active observer, which must
// be cheap (it sets a gauge).
type Guard struct {
	cfg Config
	clk clock.PassiveClock

	mu       sync.Mutex
	gated    map[types.NamespacedName]struct{}
	state    State // state.Gated is always len(gated)
	active   bool
	observer func(active bool)
}

// New returns a guard with no gated breakers. cfg is assumed valid: callers validate it, so
// that a bad flag fails at start-up with its name.
func New(cfg Config, clk clock.PassiveClock) *Guard {
	return &Guard{cfg: cfg, clk: clk, gated: map[types.NamespacedName]struct{}{}}
}

// Config returns the configuration the guard was made with, for messages that explain a hold.
func (g *Guard) Config() Config { return g.cfg }

// SetGated says whether key is gated (Auto mode with a gate). Only gated breakers can empty a
// front Service, so only their trips are counted and held; becoming ungated clears a hold.
func (g *Guard) SetGated(key types.NamespacedName, gated bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gated {
		g.gated[key] = struct{}{}
		g.state.Gated = len(g.gated)
		return
	}
	g.forget(key)
}

// Remove forgets key entirely, gated and held, when its breaker is deleted. Its past trips
// still count until they leave the window.
func (g *Guard) Remove(key types.NamespacedName) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.forget(key)
}

// forget drops key from the gated set and its hold. Callers hold g.mu.
func (g *Guard) forget(key types.NamespacedName) {
	delete(g.gated, key)
	g.state.Gated = len(g.gated)
	g.drop(key)
}

// RestoreTrip counts a trip at at. A new leader seeds the trips of breakers it finds Open that
// tripped within the window, so that a leader change does not reset the budget.
func (g *Guard) RestoreTrip(at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	i, _ := slices.BinarySearchFunc(g.state.Trips, at, time.Time.Compare)
	g.state.Trips = slices.Insert(slices.Clip(g.state.Trips), i, at)
}

// RestoreHold seeds a hold that a previous leader recorded in status, keeping its since so
// that the release timeout keeps running. Only a gated breaker can be held, so call SetGated
// first; a hold of an ungated key is ignored. An existing hold keeps the earlier since.
func (g *Guard) RestoreHold(key types.NamespacedName, since time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.gated[key]; !ok {
		return
	}
	if was, ok := g.state.Held[key]; ok && !since.Before(was) {
		return
	}
	if g.state.Held == nil {
		g.state.Held = map[types.NamespacedName]time.Time{}
	}
	g.state.Held[key] = since
	g.notify()
}

// Permit is asked before key trips, when its trip rule holds: it applies Decide at the clock's
// now for a gated key. An ungated key gets Allow without being counted, because its trip does
// not take traffic away.
func (g *Guard) Permit(key types.NamespacedName) Verdict {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.gated[key]; !ok {
		return Allow
	}
	v, next := Decide(g.cfg, g.state, key, g.clk.Now())
	g.state = next
	g.notify()
	return v
}

// Confirmed counts a trip (or a first ejection) of key that observers on other nodes
// confirmed: it spends the window's budget, so that trips the manager decides alone are judged
// with it, but it is never held, and a hold of key ends. The guard is there for a manager
// whose own view is sick; a failure that other nodes see too is not that.
func (g *Guard) Confirmed(key types.NamespacedName) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.gated[key]; !ok {
		return
	}
	now := g.clk.Now()
	i, _ := slices.BinarySearchFunc(g.state.Trips, now, time.Time.Compare)
	g.state.Trips = slices.Insert(slices.Clip(g.state.Trips), i, now)
	if !g.drop(key) {
		g.notify()
	}
}

// Clear says that key's trip rule no longer holds (its probes recovered), so a hold of it is
// dropped: the manager was not sick for this target after all. It reports whether key was held.
func (g *Guard) Clear(key types.NamespacedName) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.drop(key)
}

// drop removes key's hold and reports whether there was one. Callers hold g.mu.
func (g *Guard) drop(key types.NamespacedName) bool {
	if _, ok := g.state.Held[key]; !ok {
		return false
	}
	delete(g.state.Held, key)
	g.notify()
	return true
}

// HeldSince reports whether key's trip is held, and since when.
func (g *Guard) HeldSince(key types.NamespacedName) (time.Time, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	since, ok := g.state.Held[key]
	return since, ok
}

// Active reports whether any trip is held; while it is, every new gated trip is held too.
func (g *Guard) Active() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.active
}

// Stats returns the guard's counts at the clock's now.
func (g *Guard) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Stats{
		Gated:         g.state.Gated,
		TripsInWindow: len(prune(g.state.Trips, g.clk.Now(), g.cfg.Window)),
		Budget:        Budget(g.cfg.MaxTripFraction, g.state.Gated),
		Held:          len(g.state.Held),
	}
}

// SetActiveObserver has f called whenever Active flips, and once now with the current value,
// so that a gauge starts right. f runs under the guard's lock: it must be cheap and must not
// call the guard. A nil f removes the observer.
func (g *Guard) SetActiveObserver(f func(active bool)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.observer = f
	if f != nil {
		f(g.active)
	}
}

// notify tells the observer when Active flips. Callers hold g.mu.
func (g *Guard) notify() {
	active := len(g.state.Held) > 0
	if active == g.active {
		return
	}
	g.active = active
	if g.observer != nil {
		g.observer(active)
	}
}
