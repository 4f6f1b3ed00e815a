package probe

import (
	"container/heap"
	"context"
	"errors"
	"hash/maphash"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/guard"
)

// ProbeObserver hears every probe result of one breaker, such as its metrics. It is called
// from probe goroutines and must be cheap and safe for concurrent use.
type ProbeObserver interface {
	// ObserveProbe gets the outcome as its breaker.Outcome number.
	ObserveProbe(outcome int, latency time.Duration)
}

// Registration is what the controller tells the scheduler about one breaker.
type Registration struct {
	Spec      Spec
	Interval  time.Duration
	Endpoints []Endpoint
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
}

// Change is one transition together with the probe that decided it, if one did.
type Change struct {
	breaker.Transition
	Probe *Result
	// Released says that the observer guard had held this trip and let it go ahead after its
	// release timeout.
	Released bool
}

// Hold is a trip the observer guard holds: the rule that holds, since when, and the guard's
// view of the cluster when the breaker was last looked at.
type Hold struct {
	Reason breaker.Reason
	Since  time.Time
	Guard  guard.Stats
}

// View is what the controller reads back to write status and apply gates.
type View struct {
	Snapshot breaker.Snapshot
	Gate     breaker.State
	Window   breaker.WindowStats
	// LastProbe is the newest result, if any probe finished yet.
	LastProbe *Result
	// Changes are the transitions since the previous View, oldest first.
	Changes []Change
	// Probes counts results per outcome since the scheduler first saw the breaker.
	Probes [4]uint64
	// Held is set while the observer guard holds the breaker's trip.
	Held *Hold
}

// Scheduler runs the probes of every registered breaker on one manager. It is a manager
// Runnable that runs only on the leader: one dispatcher goroutine pops probe slots from a
// min-heap by due time, and each admitted probe runs in its own goroutine under a global
// concurrency bound. Outcomes go straight into the breaker engine; the controller hears only
// of transitions, through SetOnChange.
type Scheduler struct {
	clock   clock.WithDelayedExecution
	factory *Factory
	sem     chan struct{}
	seed    maphash.Seed

	onChange    atomic.Pointer[func(types.NamespacedName)]
	observers   atomic.Pointer[func(types.NamespacedName) ProbeObserver]
	localErrors atomic.Pointer[func(reason string)]
	// guard, when set, may hold the trips of gated breakers; set it before Start.
	guard    *guard.Guard
	localLog localErrorLog

	mu      sync.Mutex
	entries map[types.NamespacedName]*entry
	slots   slotHeap
	wake    chan struct{}
	ctx     context.Context // set by Start; probes run under it
	probes  sync.WaitGroup
	stats   Stats
}

// NewScheduler returns a scheduler that runs at most maxConcurrent probes at once.
func NewScheduler(factory *Factory, clk clock.WithDelayedExecution, maxConcurrent int) *Scheduler {
	return &Scheduler{
		clock:   clk,
		factory: factory,
		sem:     make(chan struct{}, max(1, maxConcurrent)),
		seed:    maphash.MakeSeed(),
		entries: map[types.NamespacedName]*entry{},
		wake:    make(chan struct{}, 1),
	}
}

// SetGuard makes the observer guard judge every trip of a gated breaker. Call it before the
// first Upsert.
func (s *Scheduler) SetGuard(g *guard.Guard) { s.guard = g }

// NeedLeaderElection keeps probing to the leader: one prober per cluster, and the gate
// follows one engine.
func (s *Scheduler) NeedLeaderElection() bool { return true }

// entry is one breaker. Its mutex guards the engine and everything the probes update.
type entry struct {
	key types.NamespacedName

	mu       sync.Mutex
	engine   *breaker.Breaker
	prober   *proberRef
	spec     Spec
	interval time.Duration
	slots    map[Endpoint]*slot
	deadline clock.Timer
	last     *Result
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
}

// proberRef counts a prober's probes in flight, so that a replaced or removed prober is
// closed only when its last probe has returned and no connection is left behind.
type proberRef struct {
	Prober
	inflight int
	retired  bool
}

func (r *proberRef) retire() {
	r.retired = true
	if r.inflight == 0 {
		r.Close()
	}
}

type slot struct {
	entry    *entry
	ep       Endpoint
	due      time.Time
	index    int // in the heap; -1 when out of it
	inflight bool
	ticket   breaker.Ticket // of the probe in flight
}

// Upsert registers a breaker or updates its probe, endpoints and configuration. A breaker
// seen for the first time is restored from reg.Restore. It returns the transition that a
// change of mode caused, which is also queued for View.
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
		prober, err := s.factory.New(reg.Spec)
		if err != nil {
			return err
		}
		e = &entry{key: key, engine: engine, prober: &proberRef{Prober: prober}, spec: reg.Spec,
			interval: reg.Interval, slots: map[Endpoint]*slot{}}
		if f := s.observers.Load(); f != nil {
			e.observer = (*f)(key)
		}
		e.ctx, e.cancel = context.WithCancel(s.baseContext())
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
		if !specEqual(e.spec, reg.Spec) {
			prober, err := s.factory.New(reg.Spec)
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
	}
	intervalChanged := e.interval != reg.Interval
	e.interval = reg.Interval
	eps := reg.Endpoints
	if reg.KeepEndpoints {
		eps = slices.Collect(maps.Keys(e.slots))
	}
	s.syncSlots(e, eps, intervalChanged)
	s.armDeadline(e)
	s.kick()
	return nil
}

// attachGuard puts a new breaker under the observer guard: its trips ask the guard first, and
// what a previous leader knew (a recent trip, a held one) is carried over. Callers hold s.mu.
func (s *Scheduler) attachGuard(e *entry, reg Registration) {
	if s.guard == nil {
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
	e.engine.SetTripPermit(func(breaker.Reason) bool {
		// Called by the engine under e.mu, from record.
		e.verdict = s.guard.Permit(e.key)
		e.guardHeld = e.verdict == guard.Hold
		return e.verdict != guard.Hold
	})
}

func (s *Scheduler) baseContext() context.Context {
	if s.ctx != nil {
		return s.ctx
	}
	return context.Background()
}

func specEqual(a, b Spec) bool {
	if a.Timeout != b.Timeout || a.SlowThreshold != b.SlowThreshold || a.TCP != b.TCP ||
		(a.HTTP == nil) != (b.HTTP == nil) || (a.GRPC == nil) != (b.GRPC == nil) {
		return false
	}
	if a.GRPC != nil && *a.GRPC != *b.GRPC {
		return false
	}
	if a.HTTP != nil {
		x, y := a.HTTP, b.HTTP
		if x.Path != y.Path || x.HTTPS != y.HTTPS || x.Host != y.Host || x.Success != y.Success ||
			x.Neutral != y.Neutral || x.InsecureSkipVerify != y.InsecureSkipVerify || len(x.Headers) != len(y.Headers) {
			return false
		}
		for k, v := range x.Headers {
			if !slices.Equal(v, y.Headers[k]) {
				return false
			}
		}
	}
	return true
}

// syncSlots adds a slot for each new endpoint, at a phase of its own inside the interval, and
// removes the slots of endpoints that are gone. Callers hold s.mu and e.mu.
func (s *Scheduler) syncSlots(e *entry, endpoints []Endpoint, rephase bool) {
	now := s.clock.Now()
	want := make(map[Endpoint]bool, len(endpoints))
	for _, ep := range endpoints {
		want[ep] = true
		sl, ok := e.slots[ep]
		if !ok {
			sl = &slot{entry: e, ep: ep, index: -1}
			e.slots[ep] = sl
		}
		if !ok || rephase {
			sl.due = now.Add(s.phase(e.key, ep, e.interval))
			s.place(sl)
		}
	}
	for ep, sl := range e.slots {
		if !want[ep] {
			delete(e.slots, ep)
			s.unplace(sl)
			e.prober.Forget(ep)
		}
	}
}

// phase spreads probes over the interval: a hash of breaker and endpoint picks the offset,
// so thousands of breakers with the same interval don't fire in lockstep, and the same
// endpoint keeps its offset from one update to the next.
func (s *Scheduler) phase(key types.NamespacedName, ep Endpoint, interval time.Duration) time.Duration {
	var h maphash.Hash
	h.SetSeed(s.seed)
	_, _ = h.WriteString(key.Namespace)
	_, _ = h.WriteString(key.Name)
	b, _ := ep.MarshalBinary()
	_, _ = h.Write(b)
	return time.Duration(h.Sum64() % uint64(interval))
}

func (s *Scheduler) place(sl *slot) {
	if sl.index >= 0 {
		heap.Fix(&s.slots, sl.index)
	} else {
		heap.Push(&s.slots, sl)
	}
}

func (s *Scheduler) unplace(sl *slot) {
	if sl.index >= 0 {
		heap.Remove(&s.slots, sl.index)
	}
}

// kick wakes the dispatcher to look at the heap again.
func (s *Scheduler) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Remove forgets a breaker: its slots leave the heap, its in-flight probes are cancelled and
// its prober is closed once they have returned.
func (s *Scheduler) Remove(key types.NamespacedName) {
	s.mu.Lock()
	e, ok := s.entries[key]
	delete(s.entries, key)
	if ok {
		e.mu.Lock()
		for _, sl := range e.slots {
			s.unplace(sl)
		}
		e.removed = true
		e.cancel()
		if e.deadline != nil {
			e.deadline.Stop()
		}
		e.prober.retire()
		e.mu.Unlock()
	}
	s.mu.Unlock()
	if ok && s.guard != nil {
		s.guard.Remove(key)
	}
}

// View returns the breaker's state and takes its pending changes.
func (s *Scheduler) View(key types.NamespacedName) (View, bool) {
	e := s.entry(key)
	if e == nil {
		return View{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v := View{Snapshot: e.engine.Snapshot(), Gate: e.engine.Gate(), Window: e.engine.Window(), Changes: e.changes,
		Probes: e.probes}
	if e.last != nil {
		last := *e.last
		v.LastProbe = &last
	}
	if s.guard != nil && e.guardHeld {
		if since, held := s.guard.HeldSince(key); held {
			v.Held = &Hold{Reason: e.engine.Held(), Since: since, Guard: s.guard.Stats()}
		}
	}
	e.changes = nil
	return v, true
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
	s.releaseHold(e)
	s.armDeadline(e)
	e.mu.Unlock()
	return true
}

// releaseHold tells the guard that the breaker's trip rule no longer holds. Callers hold e.mu.
func (s *Scheduler) releaseHold(e *entry) bool {
	if !e.guardHeld || e.engine.Held() != breaker.NoReason {
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
	if !ok {
		return
	}
	e.deadline = s.clock.AfterFunc(max(0, at.Sub(s.clock.Now())), func() { s.tick(e) })
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
			first.due = s.clock.Now()
			s.place(first)
			s.kick()
		}
	}
	s.armDeadline(e)
	e.mu.Unlock()
	s.mu.Unlock()
	if ok {
		s.changed(e.key)
	}
}

// firstIdleSlot is the slot without a probe in flight that is due soonest.
func (e *entry) firstIdleSlot() *slot {
	var first *slot
	for _, sl := range e.slots {
		if !sl.inflight && (first == nil || sl.due.Before(first.due)) {
			first = sl
		}
	}
	return first
}

// SetProbeObservers sets the function that makes each newly registered breaker's observer.
func (s *Scheduler) SetProbeObservers(f func(types.NamespacedName) ProbeObserver) {
	s.observers.Store(&f)
}

// SetLocalErrorObserver sets the function told of every probe that failed for a reason of the
// manager's own (see LocalReasons), such as a metric. It must be cheap and must not block.
func (s *Scheduler) SetLocalErrorObserver(f func(reason string)) { s.localErrors.Store(&f) }

// SetOnChange sets the function called, outside any lock, when a breaker's engine made a
// transition on its own (a probe or a deadline). It must not block.
func (s *Scheduler) SetOnChange(f func(types.NamespacedName)) { s.onChange.Store(&f) }

func (s *Scheduler) changed(key types.NamespacedName) {
	if f := s.onChange.Load(); f != nil {
		(*f)(key)
	}
}

// Start runs the dispatcher until ctx ends, then waits for the probes in flight.
func (s *Scheduler) Start(ctx context.Context) error {
	s.mu.Lock()
	s.ctx = ctx
	for _, e := range s.entries {
		// Entries registered before Start get contexts that end with the scheduler.
		e.mu.Lock()
		e.cancel()
		e.ctx, e.cancel = context.WithCancel(ctx)
		e.mu.Unlock()
	}
	s.mu.Unlock()
	log.FromContext(ctx).Info("Starting probe scheduler", "maxConcurrentProbes", cap(s.sem))

	timer := s.clock.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := s.dispatchDue(ctx)
		if ctx.Err() != nil {
			break
		}
		if !timer.Stop() {
			select {
			case <-timer.C():
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
		case <-s.wake:
		case <-timer.C():
		}
		if ctx.Err() != nil {
			break
		}
	}
	s.probes.Wait()
	s.mu.Lock()
	keys := slices.Collect(maps.Keys(s.entries))
	s.mu.Unlock()
	for _, key := range keys {
		s.Remove(key)
	}
	return nil
}

// dispatchDue starts every probe that is due and returns how long to wait for the next one.
func (s *Scheduler) dispatchDue(ctx context.Context) time.Duration {
	for ctx.Err() == nil {
		s.mu.Lock()
		if s.slots.Len() == 0 {
			s.mu.Unlock()
			return time.Hour
		}
		now := s.clock.Now()
		sl := s.slots[0]
		if wait := sl.due.Sub(now); wait > 0 {
			s.mu.Unlock()
			return wait
		}
		due := sl.due
		// Next turn: skip the turns that were missed rather than bunching them up.
		e := sl.entry
		sl.due = due.Add(e.interval)
		if !sl.due.After(now) {
			sl.due = now.Add(e.interval - now.Sub(due)%e.interval)
		}
		heap.Fix(&s.slots, sl.index)
		s.mu.Unlock()

		s.dispatch(ctx, sl, due)
	}
	return 0
}

// dispatch starts one probe if the endpoint has none in flight and the engine admits it. It
// blocks while the concurrency bound is reached, so a saturated manager probes late rather
// than piling up goroutines. A probe that could only start after its own deadline (due plus
// timeout) is not sent: on a manager that starved it, its outcome would say more about the
// manager than about the target.
func (s *Scheduler) dispatch(ctx context.Context, sl *slot, due time.Time) {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	e := sl.entry
	late := s.clock.Since(due)
	e.mu.Lock()
	if e.removed || sl.inflight {
		e.mu.Unlock()
		<-s.sem
		return
	}
	if late >= e.spec.Timeout && e.engine.CanAdmit() {
		e.mu.Unlock()
		<-s.sem
		s.localError(e.key, Result{Endpoint: sl.ep, Outcome: breaker.Neutral, Local: LocalStartedLate,
			Message: "probe started " + late.Round(time.Millisecond).String() + " late, after its own deadline (not sent)"})
		return
	}
	ticket, admitted := e.engine.Admit()
	if !admitted {
		e.mu.Unlock()
		<-s.sem
		return
	}
	sl.inflight, sl.ticket = true, ticket
	if e.engine.State() == breaker.HalfOpen {
		s.armDeadline(e) // the trial's bound
	}
	ref := e.prober
	ref.inflight++
	probeCtx := e.ctx
	e.mu.Unlock()

	s.stats.observeLateness(late)
	s.probes.Add(1)
	go func() {
		defer s.probes.Done()
		r := ref.Probe(probeCtx, sl.ep)
		<-s.sem
		s.record(probeCtx, sl, ref, r)
	}()
}

// record feeds a result to the engine and tells the controller about a transition, or about
// a trip the observer guard started or stopped holding. Every admitted probe ends here in a
// recorded outcome or a released trial slot.
//
// A probe whose context the scheduler cancelled (a shutdown, a lost lease, a removed breaker)
// is not recorded at all, whatever its prober made of it: the manager stopped it, so it says
// nothing about the target, and counting it even as Neutral or as a local error would put a
// line in every breaker's status and the local-error metric at every rollout.
func (s *Scheduler) record(ctx context.Context, sl *slot, ref *proberRef, r Result) {
	e := sl.entry
	e.mu.Lock()
	sl.inflight = false
	ticket := sl.ticket
	ref.inflight--
	if ref.retired || ctx.Err() != nil {
		// The probe was edited while this one ran: its result answers the old question, so
		// it counts for nothing, but a trial gives its slot back for a probe of the new kind.
		// The same holds for a probe the scheduler cancelled.
		if ref.retired && ref.inflight == 0 {
			ref.Close()
		}
		if !e.removed {
			e.engine.Release(ticket)
			if ctx.Err() == nil {
				s.kickTrial(e)
			}
		}
		e.mu.Unlock()
		return
	}
	if e.removed {
		e.mu.Unlock()
		return
	}
	s.stats.completed.Add(1)
	if e.observer != nil {
		e.observer.ObserveProbe(int(r.Outcome), r.Latency)
	}
	e.last = &r
	e.probes[r.Outcome]++
	heldBefore := e.guardHeld
	e.verdict = guard.Allow
	t, changed := e.engine.Record(ticket, r.Outcome)
	if changed {
		result := r
		e.changes = append(e.changes, Change{Transition: t, Probe: &result, Released: e.verdict == guard.Release})
		s.armDeadline(e)
	}
	s.releaseHold(e)
	holdChanged := heldBefore != e.guardHeld
	e.mu.Unlock()
	if r.Local != "" {
		s.localError(e.key, r)
	}
	if changed || holdChanged {
		s.changed(e.key)
	}
}

// kickTrial sends a HalfOpen breaker's next trial at once, when a slot just came free. Callers
// hold e.mu, and not s.mu.
func (s *Scheduler) kickTrial(e *entry) {
	if e.engine.State() != breaker.HalfOpen || !e.engine.CanAdmit() {
		return
	}
	go s.tick(e) // tick takes s.mu, which must come before e.mu
}

// localErrorLogEvery bounds how often the manager logs probe errors of its own: when its
// file descriptors run out, every probe fails the same way, and one line says enough.
const localErrorLogEvery = 5 * time.Second

// localErrorLog is the state of that bound: when the last line went out, and how many errors
// went unlogged since.
type localErrorLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// localError counts a probe that failed for a reason of the manager's own, and logs it unless
// a line went out less than localErrorLogEvery ago.
func (s *Scheduler) localError(key types.NamespacedName, r Result) {
	if f := s.localErrors.Load(); f != nil {
		(*f)(r.Local)
	}
	now := s.clock.Now()
	l := &s.localLog
	l.mu.Lock()
	if !l.last.IsZero() && now.Sub(l.last) < localErrorLogEvery {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	log.FromContext(s.baseContext()).Info("A probe failed for a reason of the manager's own; it counts as Neutral, not against the target",
		"reason", r.Local, "breaker", key, "endpoint", r.Endpoint, "message", r.Message, "unloggedSinceLastLine", suppressed)
}

// slotHeap orders slots by due time.
type slotHeap []*slot

func (h slotHeap) Len() int           { return len(h) }
func (h slotHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h slotHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *slotHeap) Push(x any) {
	sl := x.(*slot)
	sl.index = len(*h)
	*h = append(*h, sl)
}
func (h *slotHeap) Pop() any {
	old := *h
	sl := old[len(old)-1]
	old[len(old)-1] = nil
	sl.index = -1
	*h = old[:len(old)-1]
	return sl
}
