// Package runner runs every registered breaker on one manager: it owns the breaker engines,
// schedules each breaker's probes over its interval, shares the probe concurrency bound
// fairly between breakers and namespaces, feeds each probe's Result to its engine, and tells
// the controller when an engine changed state. Sending one probe is internal/probe's job.
package runner

import (
	"cmp"
	"context"
	"errors"
	"hash/maphash"
	"maps"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/confirm"
	"github.com/tripswitch/tripswitch/internal/ejection"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/probe"
	"github.com/tripswitch/tripswitch/internal/query"
)

// ProbeObserver hears about the probes of one breaker, such as its metrics. It is called from
// the scheduler's goroutines, some under its lock, and must be cheap and safe for concurrent
// use.
type ProbeObserver interface {
	// ObserveStart gets how late a probe started against its turn.
	ObserveStart(lateness time.Duration)
	// ObserveProbe gets the outcome as its breaker.Outcome number.
	ObserveProbe(outcome int, latency time.Duration)
}

// Registration is what the controller tells the scheduler about one breaker.
type Registration struct {
	Spec      probe.Spec
	Interval  time.Duration
	Endpoints []probe.Endpoint
	Config    breaker.Config
	// Restore, when set, resumes a breaker the scheduler has not seen yet from status.
	Restore *breaker.Snapshot
	// Seed fixes the breaker's jitter.
	Seed uint64
	// Gated says that the breaker's decisions reach traffic (mode Auto). Only gated breakers
	// count for the observer guard, and only their trips can be held.
	Gated bool
	// KeepEndpoints keeps probing the endpoints the breaker had and ignores Endpoints: the
	// controller could not read the target, which is not the same as the target having none.
	KeepEndpoints bool
	// HeldSince, when set for a breaker the scheduler has not seen yet, resumes a trip that a
	// previous leader's observer guard was holding, so that its release timeout keeps running.
	HeldSince time.Time
	// Ejection is the endpoint level (ejection and slow start); its zero value turns it off.
	Ejection ejection.Config
	// RampKeep is how many endpoints the HalfOpen gate publishes: slow start keeps them when
	// the breaker closes and ramps the others.
	RampKeep int
	// RestoreEjections, for a breaker the scheduler has not seen yet, resumes the ejections
	// and the ramp that status lists.
	RestoreEjections []ejection.EndpointStatus
	// Queries are the breaker's PromQL trip rules, evaluated every QueryInterval.
	Queries       []query.Rule
	QueryInterval time.Duration
	// Confirm has gated trips wait for a second opinion (Options.Confirmer); its zero value
	// turns that off.
	Confirm ConfirmConfig
}

// Change is one transition together with the probe that decided it, if one did.
type Change struct {
	breaker.Transition
	Probe *probe.Result
	// Released says that the observer guard had held this trip and let it go ahead after its
	// release timeout.
	Released bool
	// Query describes the query rule that tripped the breaker, if one did.
	Query string
	// Confirmation is the tally of the observers that confirmed this trip, if they were asked.
	Confirmation *confirm.Result
}

// Hold is a trip the observer guard holds: the rule that holds, since when, and the guard's
// view of the cluster when the breaker was last looked at. Ejection says that what is held is
// the breaker's first ejection of an endpoint rather than (or besides) a trip.
type Hold struct {
	Reason   breaker.Reason
	Ejection bool
	Since    time.Time
	Guard    guard.Stats
}

// View is what the controller reads back to write status and apply gates.
type View struct {
	Snapshot breaker.Snapshot
	Gate     breaker.State
	Window   breaker.WindowStats
	// LastProbe is the newest result, if any probe finished yet.
	LastProbe *probe.Result
	// Probes counts results per outcome since the scheduler first saw the breaker.
	Probes [4]uint64
	// Held is set while the observer guard holds the breaker's trip.
	Held *Hold
	// Ejection is the endpoint level's state, nil when the breaker neither ejects nor ramps.
	Ejection *ejection.View
	// Queries are the newest evaluations of the breaker's query rules, in the rules' order.
	Queries []QueryResult
	// Confirmation is the breaker's second opinion, nil when it never needed one.
	Confirmation *Confirmation
}

// Options are what a Scheduler is built with.
type Options struct {
	// NewProber builds the prober of a spec, such as probe.Factory.New.
	NewProber func(probe.Spec) (probe.Prober, error)
	// Clock drives the turns, the engines' deadlines and lateness; nil is the real clock.
	Clock clock.WithDelayedExecution
	// MaxConcurrentProbes bounds the probes in flight, HalfOpen trials aside (see Limits).
	MaxConcurrentProbes int
	// Guard, when set, may hold the trips of gated breakers.
	Guard *guard.Guard
	// Observers, when set, makes each newly registered breaker's ProbeObserver.
	Observers func(types.NamespacedName) ProbeObserver
	// LocalErrors, when set, is told of every probe that failed for a reason of the manager's
	// own (see probe.LocalReasons), such as a metric. It must be cheap and must not block.
	LocalErrors func(reason string)
	// Querier, when set, sends the query rules' queries; without it they are reported as not
	// evaluated (ErrNoQuerier).
	Querier Querier
	// Confirmer, when set, gives a second opinion on the trips of breakers that ask for one
	// (Registration.Confirm).
	Confirmer Confirmer
	// MaxConcurrentQueries bounds the queries in flight across all breakers; 0 is 4.
	MaxConcurrentQueries int
	// QueryObserved, when set, hears of every evaluation of a query rule, such as metrics.
	// It must be cheap and must not block.
	QueryObserved func(key types.NamespacedName, rule string, s query.Sample, err error)
	// OnChange, when set, is called outside any lock when a breaker's engine made a transition
	// on its own (a probe or a deadline), or the observer guard started or stopped holding its
	// trip. It must not block.
	OnChange func(types.NamespacedName)
}

// Scheduler runs the probes of every registered breaker on one manager. It is a manager
// Runnable that runs only on the leader: one dispatcher goroutine takes turns from a min-heap
// by due time and hands them to a fair queue (see dispatch.go); each probe runs in its own
// goroutine. Outcomes go straight into the breaker engine; the controller hears only of
// transitions, through Options.OnChange.
type Scheduler struct {
	clock       clock.WithDelayedExecution
	newProber   func(probe.Spec) (probe.Prober, error)
	limits      Limits
	seed        maphash.Seed
	guard       *guard.Guard
	confirmer   Confirmer
	observers   func(types.NamespacedName) ProbeObserver
	localErrors func(reason string)
	onChange    func(types.NamespacedName)
	localLog    rateLimitedLog
	capLog      rateLimitedLog
	querier     Querier
	querySlots  chan struct{}
	queryHeard  func(types.NamespacedName, string, query.Sample, error)

	mu         sync.Mutex
	entries    map[types.NamespacedName]*entry
	namespaces map[string]*namespace
	turns      turnHeap // every endpoint's next turn, by due time
	queue      fairQueue
	inflight   int // probes in flight
	wake       chan struct{}
	ctx        context.Context // set by Start; probes run under it
	probes     sync.WaitGroup
	stats      Stats
}

// New returns a scheduler. Options.NewProber is required.
func New(o Options) *Scheduler {
	clk := o.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Scheduler{
		clock:       clk,
		newProber:   o.NewProber,
		limits:      LimitsFor(o.MaxConcurrentProbes),
		seed:        maphash.MakeSeed(),
		guard:       o.Guard,
		confirmer:   o.Confirmer,
		observers:   o.Observers,
		localErrors: o.LocalErrors,
		onChange:    o.OnChange,
		querier:     o.Querier,
		queryHeard:  o.QueryObserved,
		querySlots:  make(chan struct{}, cmp.Or(o.MaxConcurrentQueries, 4)),
		entries:     map[types.NamespacedName]*entry{},
		namespaces:  map[string]*namespace{},
		wake:        make(chan struct{}, 1),
	}
}

// NeedLeaderElection keeps probing to the leader: one prober per cluster, and the gate
// follows one engine.
func (s *Scheduler) NeedLeaderElection() bool { return true }

// entry is one breaker. Its mutex guards the engine and everything the probes update; the
// fields under "scheduling" belong to the scheduler's mutex.
type entry struct {
	key types.NamespacedName

	mu       sync.Mutex
	engine   *breaker.Breaker
	prober   *proberRef
	spec     probe.Spec
	interval time.Duration
	slots    map[probe.Endpoint]*slot
	deadline clock.Timer
	last     *probe.Result
	changes  []Change
	probes   [4]uint64
	removed  bool
	observer ProbeObserver      // nil when nobody listens
	cancel   context.CancelFunc // cancels this breaker's in-flight probes
	ctx      context.Context
	// verdict is the guard's answer to the last trip the engine asked about; guardHeld says
	// whether the guard may hold this breaker's trip now.
	verdict   guard.Verdict
	guardHeld bool
	// tracker is the endpoint level, nil when the breaker neither ejects nor ramps; its
	// events wait in endpointEvents for TakeEndpointEvents.
	tracker        *ejection.Tracker
	rampKeep       int
	endpointEvents []ejection.Event
	queries        queryState
	// gated and confirmCfg are the registration's; failing and suspicion are the second
	// opinion's (confirm.go).
	gated      bool
	confirmCfg ConfirmConfig
	failing    map[probe.Endpoint]breaker.Outcome
	suspicion  suspicion
	// ejectSuspicions are the endpoints whose ejection waits for, or was refuted by, a second
	// opinion; endpointConfirm is the newest of them, for the view.
	ejectSuspicions map[probe.Endpoint]*suspicion
	endpointConfirm *Confirmation
	// ejectConfirmed says the ejection the tracker is deciding now was confirmed by
	// observers, for the guard's permit that follows.
	ejectConfirmed bool

	// scheduling, under Scheduler.mu
	ns        *namespace
	inflight  int           // probes of this breaker in flight
	hold      time.Duration // how long its probes held a place lately, a moving average
	holdKnown bool          // a probe has returned, so hold means something
	waiting   []*slot       // turns waiting for a free place, oldest first
	waitIndex int           // in ns.waiting; -1 when out of it
	atCap     bool          // its last turn was skipped at its cap (for the log)
}

// proberRef counts a prober's probes in flight, so that a replaced or removed prober is
// closed only when its last probe has returned and no connection is left behind.
type proberRef struct {
	probe.Prober
	inflight int
	retired  bool
}

func (r *proberRef) retire() {
	r.retired = true
	if r.inflight == 0 {
		r.Close()
	}
}

// slot is one endpoint of one breaker and its turns. Its fields belong to Scheduler.mu.
type slot struct {
	entry    *entry
	ep       probe.Endpoint
	due      time.Time // its next turn
	index    int       // in the turn heap; -1 when out of it
	waiting  bool      // a turn is queued for a free place
	waitDue  time.Time // the due time of that turn
	inflight bool
	gone     bool // the endpoint or its breaker was removed
	quick    bool // its breaker did not hang when the turn was queued
}

// Upsert registers a breaker or updates its probe, endpoints and configuration. A breaker
// seen for the first time is restored from reg.Restore. A transition that a change of mode
// caused is queued for TakeChanges.
func (s *Scheduler) Upsert(key types.NamespacedName, reg Registration) error {
	if reg.Interval <= 0 {
		return errors.New("probe interval must be positive")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok {
		engine, err := breaker.New(reg.Config, s.clock, reg.Seed)
		if err != nil {
			return err
		}
		if reg.Restore != nil {
			engine.Restore(*reg.Restore)
		}
		prober, err := s.newProber(reg.Spec)
		if err != nil {
			return err
		}
		e = &entry{key: key, engine: engine, prober: &proberRef{Prober: prober}, spec: reg.Spec,
			interval: reg.Interval, slots: map[probe.Endpoint]*slot{}, waitIndex: -1, ns: s.namespace(key.Namespace)}
		e.ns.entries++
		if s.observers != nil {
			e.observer = s.observers(key)
		}
		e.ctx, e.cancel = context.WithCancel(s.baseContext())
		if reg.Ejection.Enabled() {
			if e.tracker, err = ejection.New(reg.Ejection, s.clock); err != nil {
				return err
			}
			e.tracker.Restore(reg.RestoreEjections)
		}
		s.entries[key] = e
		s.attachGuard(e, reg)
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if ok {
		t, changed, err := e.engine.Reconfigure(reg.Config)
		if err != nil {
			return err
		}
		if changed {
			e.changes = append(e.changes, Change{Transition: t})
		}
		if !sameSpec(e.spec, reg.Spec) {
			prober, err := s.newProber(reg.Spec)
			if err != nil {
				return err
			}
			e.prober.retire()
			e.prober, e.spec = &proberRef{Prober: prober}, reg.Spec
		}
		if s.guard != nil {
			// A new breaker was put under the guard by attachGuard; this one may have changed mode.
			s.guard.SetGated(key, reg.Gated)
			if !reg.Gated {
				e.guardHeld = false
			}
		}
		if err := s.reconfigureTracker(e, reg.Ejection); err != nil {
			return err
		}
	}
	e.rampKeep = reg.RampKeep
	e.gated, e.confirmCfg = reg.Gated, reg.Confirm
	intervalChanged := e.interval != reg.Interval
	e.interval = reg.Interval
	eps := reg.Endpoints
	if reg.KeepEndpoints {
		eps = slices.Collect(maps.Keys(e.slots))
	}
	s.syncSlots(e, eps, intervalChanged)
	if e.tracker != nil && !reg.KeepEndpoints {
		// Not while the target is unknown: a new leader that could not read it yet would drop
		// the ejections it restored from status.
		e.tracker.SetEndpoints(slices.Collect(maps.Keys(e.slots)))
		s.takeEndpointEvents(e)
	}
	for ep := range e.ejectSuspicions {
		settledEndpoint(e, ep, s.clock.Now()) // forgets those that left the target
	}
	s.setQueries(e, reg.Queries, reg.QueryInterval)
	s.armDeadline(e)
	s.kick()
	return nil
}

// attachGuard puts a new breaker under the observer guard: its trips ask the guard first, and
// what a previous leader knew (a recent trip, a held one) is carried over. Callers hold s.mu.
func (s *Scheduler) attachGuard(e *entry, reg Registration) {
	s.attachEjectionConfirm(e)
	if s.guard == nil {
		if s.confirmer != nil {
			e.engine.SetTripPermit(func(r breaker.Reason) bool { return s.confirmAllows(e, r) })
		}
		return
	}
	s.guard.SetGated(e.key, reg.Gated)
	if r := reg.Restore; reg.Gated && r != nil && r.State == breaker.Open && s.clock.Since(r.Since) < s.guard.Config().Window {
		s.guard.RestoreTrip(r.Since)
	}
	if r := reg.Restore; reg.Gated && !reg.HeldSince.IsZero() && (r == nil || r.State == breaker.Closed) {
		s.guard.RestoreHold(e.key, reg.HeldSince)
		e.guardHeld = true
	}
	e.engine.SetTripPermit(func(r breaker.Reason) bool {
		// Called by the engine under e.mu, from record. The second opinion comes first: a
		// trip the observers refute never spends the guard's budget.
		if !s.confirmAllows(e, r) {
			return false
		}
		if confirmedTrip(e, r) {
			// Other nodes see the failure too: not the sick manager the guard is for.
			s.guard.Confirmed(e.key)
			e.verdict, e.guardHeld = guard.Allow, false
			return true
		}
		e.verdict = s.guard.Permit(e.key)
		e.guardHeld = e.verdict == guard.Hold
		return e.verdict != guard.Hold
	})
	s.attachEjectionGuard(e)
}

// attachEjectionGuard has the observer guard asked before the breaker's first ejection, as
// before a trip: a manager whose own network is sick sees endpoints of many breakers fail at
// once, and must not eject them everywhere. Starting to eject spends the same budget as a
// trip. Callers hold e.mu or own e alone.
func (s *Scheduler) attachEjectionGuard(e *entry) {
	if s.guard == nil || e.tracker == nil {
		return
	}
	e.tracker.SetPermit(func() bool {
		// Called by the tracker under e.mu, from record, right after the confirm function.
		if e.ejectConfirmed {
			s.guard.Confirmed(e.key)
			e.verdict = guard.Allow
			return true
		}
		e.verdict = s.guard.Permit(e.key)
		if e.verdict == guard.Hold {
			e.guardHeld = true
			return false
		}
		return true
	})
}

// reconfigureTracker brings the endpoint level in line with cfg: made when it is turned on,
// dropped (so that every endpoint is published again) when it is turned off. Callers hold
// s.mu and e.mu.
func (s *Scheduler) reconfigureTracker(e *entry, cfg ejection.Config) error {
	switch {
	case !cfg.Enabled():
		e.tracker, e.endpointEvents, e.ejectSuspicions = nil, nil, nil
	case e.tracker == nil:
		t, err := ejection.New(cfg, s.clock)
		if err != nil {
			return err
		}
		e.tracker = t
		s.attachEjectionConfirm(e)
		s.attachEjectionGuard(e)
	default:
		if err := e.tracker.Reconfigure(cfg); err != nil {
			return err
		}
		s.takeEndpointEvents(e)
	}
	return nil
}

// maxEndpointEvents bounds the endpoint events a breaker keeps for TakeEndpointEvents: a
// controller that cannot write for a while must not let them grow without bound.
const maxEndpointEvents = 256

// takeEndpointEvents moves the tracker's events to the entry, and says whether there were
// any. Callers hold e.mu.
func (s *Scheduler) takeEndpointEvents(e *entry) bool {
	evs := e.tracker.TakeEvents()
	if len(evs) == 0 {
		return false
	}
	e.endpointEvents = append(e.endpointEvents, evs...)
	if over := len(e.endpointEvents) - maxEndpointEvents; over > 0 {
		e.endpointEvents = slices.Delete(e.endpointEvents, 0, over)
	}
	return true
}

func (s *Scheduler) baseContext() context.Context {
	if s.ctx != nil {
		return s.ctx
	}
	return context.Background()
}

// syncSlots adds a slot for each new endpoint, at a phase of its own inside the interval, and
// removes the slots of endpoints that are gone. Callers hold s.mu and e.mu.
func (s *Scheduler) syncSlots(e *entry, endpoints []probe.Endpoint, rephase bool) {
	now := s.clock.Now()
	want := make(map[probe.Endpoint]bool, len(endpoints))
	for _, ep := range endpoints {
		want[ep] = true
		sl, ok := e.slots[ep]
		if !ok {
			sl = &slot{entry: e, ep: ep, index: -1}
			e.slots[ep] = sl
		}
		if !ok || rephase {
			sl.due = now.Add(s.phase(e.key, ep, e.interval))
			s.turns.place(sl)
		}
	}
	for ep, sl := range e.slots {
		if !want[ep] {
			delete(e.slots, ep)
			s.turns.unplace(sl)
			s.queue.drop(sl)
			sl.gone = true
			e.prober.Forget(ep)
		}
	}
}

// phase spreads probes over the interval: a hash of breaker and endpoint picks the offset,
// so thousands of breakers with the same interval don't fire in lockstep, and the same
// endpoint keeps its offset from one update to the next.
func (s *Scheduler) phase(key types.NamespacedName, ep probe.Endpoint, interval time.Duration) time.Duration {
	var h maphash.Hash
	h.SetSeed(s.seed)
	_, _ = h.WriteString(key.Namespace)
	_, _ = h.WriteString(key.Name)
	b, _ := ep.MarshalBinary()
	_, _ = h.Write(b)
	return time.Duration(h.Sum64() % uint64(interval))
}

// kick wakes the dispatcher to look at the turns again.
func (s *Scheduler) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Remove forgets a breaker: its turns leave the heap and the queue, its in-flight probes are
// cancelled and its prober is closed once they have returned.
func (s *Scheduler) Remove(key types.NamespacedName) {
	s.mu.Lock()
	e, ok := s.entries[key]
	delete(s.entries, key)
	if ok {
		e.mu.Lock()
		for _, sl := range e.slots {
			s.turns.unplace(sl)
			s.queue.drop(sl)
			sl.gone = true
		}
		e.removed = true
		e.cancel()
		if e.deadline != nil {
			e.deadline.Stop()
		}
		if e.queries.timer != nil {
			e.queries.timer.Stop()
		}
		e.prober.retire()
		e.mu.Unlock()
		e.ns.entries--
		s.forgetNamespace(e.ns)
	}
	s.mu.Unlock()
	if ok && s.guard != nil {
		s.guard.Remove(key)
	}
}

// View returns the breaker's state. It leaves its pending changes to TakeChanges.
func (s *Scheduler) View(key types.NamespacedName) (View, bool) {
	e := s.entry(key)
	if e == nil {
		return View{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v := View{Snapshot: e.engine.Snapshot(), Gate: e.engine.Gate(), Window: e.engine.Window(), Probes: e.probes}
	if e.last != nil {
		last := *e.last
		v.LastProbe = &last
	}
	if e.tracker != nil {
		ev := e.tracker.View()
		v.Ejection = &ev
	}
	v.Queries = append([]QueryResult(nil), e.queries.results...)
	v.Confirmation = e.confirmation()
	now := s.clock.Now()
	for i := range v.Queries {
		// As of now, not of the evaluation: a close since then starts a settling time.
		v.Queries[i].SettlingUntil = settlingUntil(v.Snapshot, e.queries.judges[i].Rule.Lookback, now)
	}
	if s.guard != nil && e.guardHeld {
		if since, held := s.guard.HeldSince(key); held {
			v.Held = &Hold{Reason: e.engine.Held(), Ejection: v.Ejection != nil && v.Ejection.Held, Since: since,
				Guard: s.guard.Stats()}
		}
	}
	return v, true
}

// TakeEndpointEvents returns the endpoint level's events since the previous call (ejections
// and returns), oldest first, and forgets them. At most maxEndpointEvents are kept.
func (s *Scheduler) TakeEndpointEvents(key types.NamespacedName) []ejection.Event {
	return take(s, key, func(e *entry) *[]ejection.Event { return &e.endpointEvents })
}

// TakeChanges returns the breaker's transitions since the previous call, oldest first, and
// forgets them. Take them before the View that status is written from, so that the view is
// at least as new as the last change announced.
func (s *Scheduler) TakeChanges(key types.NamespacedName) []Change {
	return take(s, key, func(e *entry) *[]Change { return &e.changes })
}

// take empties one of a breaker's queues under its lock and returns what it held.
func take[T any](s *Scheduler, key types.NamespacedName, queue func(*entry) *[]T) []T {
	e := s.entry(key)
	if e == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	q := queue(e)
	out := *q
	*q = nil
	return out
}

// Reset closes the breaker, as the tripswitch.io/reset annotation asks.
func (s *Scheduler) Reset(key types.NamespacedName) bool {
	e := s.entry(key)
	if e == nil {
		return false
	}
	e.mu.Lock()
	if t, ok := e.engine.Reset(); ok {
		e.changes = append(e.changes, Change{Transition: t})
	}
	if e.tracker != nil {
		// A reset is the user's word that the target is fine: every endpoint is trusted again.
		e.tracker.Clear()
		s.takeEndpointEvents(e)
	}
	s.releaseHold(e)
	s.armDeadline(e)
	e.mu.Unlock()
	return true
}

// releaseHold tells the guard that the breaker's trip rule no longer holds. Callers hold e.mu.
func (s *Scheduler) releaseHold(e *entry) bool {
	if !e.guardHeld || e.engine.Held() != breaker.NoReason || e.tracker != nil && e.tracker.Summary().Held {
		return false
	}
	e.guardHeld = false
	return s.guard.Clear(e.key)
}

func (s *Scheduler) entry(key types.NamespacedName) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entries[key]
}

// armDeadline sets the timer for the engine's next deadline: the end of an Open period, or
// the bound of a HalfOpen trial in flight. Callers hold e.mu.
func (s *Scheduler) armDeadline(e *entry) {
	if e.deadline != nil {
		e.deadline.Stop()
		e.deadline = nil
	}
	at, ok := e.engine.NextDeadline()
	if e.tracker != nil {
		if tat, tok := e.tracker.NextDeadline(); tok && (!ok || tat.Before(at)) {
			at, ok = tat, true
		}
	}
	if !ok {
		return
	}
	// tick on a goroutine of its own: a fake clock runs AfterFunc callbacks under its lock,
	// where tick's reading of the clock would deadlock; the real clock does this anyway.
	e.deadline = s.clock.AfterFunc(max(0, at.Sub(s.clock.Now())), func() { go s.tick(e) })
}

// tick moves an Open breaker to HalfOpen at its deadline, or writes off HalfOpen trials past
// their bound, and then sends a trial at once, rather than at its endpoint's next turn, so
// recovery is not delayed by up to an interval.
func (s *Scheduler) tick(e *entry) {
	s.mu.Lock()
	e.mu.Lock()
	if e.removed {
		e.mu.Unlock()
		s.mu.Unlock()
		return
	}
	t, ok := e.engine.Tick()
	if ok {
		e.changes = append(e.changes, Change{Transition: t})
	}
	if e.engine.State() == breaker.HalfOpen && e.engine.CanAdmit() {
		if first := e.firstIdleSlot(); first != nil {
			s.probeNow(first)
		}
	}
	endpointsChanged := false
	if e.tracker != nil {
		before := shown(e.tracker)
		e.tracker.Tick()
		endpointsChanged = s.takeEndpointEvents(e) || shown(e.tracker) != before
		if e.engine.State() == breaker.Closed {
			// An ejection ended: its one trial probe goes out now, not at the endpoint's next
			// turn, so that a recovered endpoint is back within a probe's time.
			for _, ep := range e.tracker.DueTrials() {
				if sl := e.slots[ep]; sl != nil && !sl.inflight && !sl.waiting {
					s.probeNow(sl)
				}
			}
		}
	}
	s.armDeadline(e)
	e.mu.Unlock()
	s.mu.Unlock()
	if ok || endpointsChanged {
		s.changed(e.key)
	}
}

// shown is what of the endpoint level calls for a reconcile when it changes: what the gate
// publishes and what the condition says. Capped endpoints alone do not: an endpoint that the
// cap keeps in and that fails on and off would otherwise cost a status write per probe; the
// count follows with the next reconcile.
func shown(t *ejection.Tracker) ejection.Summary {
	s := t.Summary()
	s.Capped = 0
	return s
}

// probeNow moves the slot's next turn to now. Callers hold s.mu.
func (s *Scheduler) probeNow(sl *slot) {
	sl.due = s.clock.Now()
	s.turns.place(sl)
	s.kick()
}

// firstIdleSlot is the slot with no turn queued or in flight that is due soonest, among the
// endpoints that are not ejected if there are any. Callers hold s.mu and e.mu.
func (e *entry) firstIdleSlot() *slot {
	var first, firstEjected *slot
	for _, sl := range e.slots {
		if sl.inflight || sl.waiting {
			continue
		}
		if e.ejected(sl.ep) {
			if firstEjected == nil || sl.due.Before(firstEjected.due) {
				firstEjected = sl
			}
			continue
		}
		if first == nil || sl.due.Before(first.due) {
			first = sl
		}
	}
	if first == nil {
		return firstEjected
	}
	return first
}

// ejected says whether the endpoint level holds ep back. Callers hold e.mu.
func (e *entry) ejected(ep probe.Endpoint) bool {
	return e.tracker != nil && e.tracker.IsEjected(ep)
}

func (s *Scheduler) changed(key types.NamespacedName) {
	if s.onChange != nil {
		s.onChange(key)
	}
}
