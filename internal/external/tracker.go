package external

import (
	"context"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
)

// Spec is what a breaker asks of the Tracker.
type Spec struct {
	Host         string
	MaxAddresses int
	// Refuse is consulted for every address of every answer from now on.
	Refuse Refuser
}

// Observer hears of every resolution: for metrics.
type Observer func(key types.NamespacedName, result Problem, took time.Duration)

// Tracker resolves the hosts of external targets, each again when its answer's TTL runs out,
// and calls notify for a breaker whenever what it should publish or report changed. Only the
// leader's reconciler calls Track, so only the leader resolves.
type Tracker struct {
	resolver Resolver
	clock    clock.WithDelayedExecution
	notify   func(types.NamespacedName)
	timeout  time.Duration
	observe  Observer

	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	hosts map[types.NamespacedName]*tracked
}

type tracked struct {
	spec  Spec
	state State
	// generation changes with the host, so that a lookup of the old host that ends late is
	// thrown away.
	generation int
	timer      clock.Timer
	running    bool
}

// NewTracker makes a Tracker. timeout bounds each lookup; observe may be nil.
func NewTracker(resolver Resolver, clk clock.WithDelayedExecution, timeout time.Duration,
	notify func(types.NamespacedName), observe Observer) *Tracker {
	ctx, cancel := context.WithCancel(context.Background())
	return &Tracker{resolver: resolver, clock: clk, notify: notify, timeout: timeout, observe: observe,
		ctx: ctx, cancel: cancel, hosts: map[types.NamespacedName]*tracked{}}
}

// Track registers a breaker's host, or updates its spec, and returns what is known of it. A
// breaker seen for the first time (or whose host changed) starts from seed, what status held,
// when seed is for the same host; its first resolution starts at once.
func (t *Tracker) Track(key types.NamespacedName, spec Spec, seed *State) State {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.hosts[key]
	if e == nil || e.spec.Host != spec.Host {
		if e != nil && e.timer != nil {
			e.timer.Stop()
		}
		generation := 0
		if e != nil {
			generation = e.generation + 1
		}
		e = &tracked{generation: generation, state: State{Host: spec.Host}}
		if seed != nil && seed.Host == spec.Host {
			e.state = seed.Clone()
		}
		e.spec = spec
		t.hosts[key] = e
		go t.resolve(key, e.generation)
	}
	e.spec = spec
	return e.state.Clone()
}

// Forget stops resolving a breaker's host.
func (t *Tracker) Forget(key types.NamespacedName) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.hosts[key]; e != nil {
		if e.timer != nil {
			e.timer.Stop()
		}
		delete(t.hosts, key)
	}
}

// Stop ends every resolution; for the manager's shutdown.
func (t *Tracker) Stop() {
	t.cancel()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.hosts {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
}

// schedule resolves the host after d; t.mu is held.
func (t *Tracker) schedule(key types.NamespacedName, e *tracked, d time.Duration) {
	generation := e.generation
	// In a goroutine of its own: a fake clock runs the function while it holds its lock.
	e.timer = t.clock.AfterFunc(d, func() { go t.resolve(key, generation) })
}

func (t *Tracker) resolve(key types.NamespacedName, generation int) {
	t.mu.Lock()
	e := t.hosts[key]
	if e == nil || e.generation != generation || e.running || t.ctx.Err() != nil {
		t.mu.Unlock()
		return
	}
	e.running = true
	host := e.spec.Host
	t.mu.Unlock()

	start := t.clock.Now()
	ctx, cancel := context.WithTimeout(t.ctx, t.timeout)
	answer, err := t.resolver.Lookup(ctx, host)
	cancel()
	now := t.clock.Now()

	t.mu.Lock()
	e.running = false
	if t.hosts[key] != e || e.generation != generation || t.ctx.Err() != nil {
		t.mu.Unlock()
		return
	}
	before := e.state.Clone()
	changed := e.state.Apply(now, answer, err, e.spec.Refuse, e.spec.MaxAddresses)
	t.schedule(key, e, e.state.NextResolution.Sub(now))
	report := changed || reportable(before) != reportable(e.state) || !before.Resolved() && e.state.Resolved()
	problem := e.state.Problem
	t.mu.Unlock()

	if t.observe != nil {
		t.observe(key, problem, now.Sub(start))
	}
	if report {
		t.notify(key)
	}
}

// reportable is what of a state is worth a reconcile of its own: a change of the addresses is
// reported by Apply, and a lookup that only saw the same addresses again waits for the next
// status sync.
func reportable(s State) [3]string {
	refused := ""
	for _, r := range s.Refused {
		refused += r.Addr.String() + ","
	}
	return [3]string{string(s.Problem), refused, s.Incomplete}
}
