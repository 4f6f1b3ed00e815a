package runner

import (
	"container/heap"
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// How the scheduler shares its concurrency bound, so that no breaker or namespace starves
// another, and a probe that hangs until its timeout delays nobody else's:
//
//   - The dispatcher never waits for a free place. A turn that comes due goes into a queue,
//     and a place that comes free goes to the next queued turn at once.
//   - HalfOpen trials go first, and may use a reserve beyond the bound (Limits.TrialReserve),
//     so a trial never waits behind Closed probes, even when hanging probes fill the bound.
//   - A breaker may have at most Limits.PerBreaker probes in flight or queued. A turn that
//     comes due beyond that is skipped (not sent, not counted, as an Open breaker's turns
//     are), so one breaker with hundreds of hanging endpoints holds a quarter of the bound
//     at most, and the rest stays free for everybody else.
//   - The next place goes to the namespace with the fewest probes in flight, and within it to
//     the breaker with the fewest in flight. Between breakers with as many in flight, it goes
//     to the turn that would finish first: its due time plus how long the breaker's probes
//     have been holding a place (a moving average). So when many breakers hang at once (a
//     dead node hosts pods of many Services), a quick breaker's turn goes ahead of their
//     queued turns and waits at most for the next probe to return; and since a hanging
//     breaker's turn only yields to turns due less than its own hold time after it, it is
//     delayed, never starved.
//   - The last quarter of the bound (Limits.QuickReserve) is kept for quick breakers: a
//     breaker whose probes lately held their place for half their timeout or more (they
//     hang) may not take it. Without it, when more probes hang than the bound holds, places
//     come free only as they time out, in bunches, and a quick turn could wait most of a
//     timeout for one.

// Limits say how the concurrency bound is shared.
type Limits struct {
	// MaxInFlight bounds the probes in flight, HalfOpen trials aside.
	MaxInFlight int
	// PerBreaker bounds one breaker's probes in flight and queued, HalfOpen trials aside.
	PerBreaker int
	// TrialReserve is how many probes beyond MaxInFlight may be in flight for HalfOpen trials.
	TrialReserve int
	// QuickReserve is how many of the MaxInFlight places only quick breakers may take: a
	// breaker whose probes hang starts no probe while fewer than that are free.
	QuickReserve int
}

// LimitsFor shares a bound of maxConcurrent probes: a quarter of it for any one breaker, its
// last quarter for quick breakers only, and a quarter more for HalfOpen trials.
func LimitsFor(maxConcurrent int) Limits {
	n := max(1, maxConcurrent)
	return Limits{MaxInFlight: n, PerBreaker: max(1, n/4), TrialReserve: max(1, n/4), QuickReserve: n / 4}
}

// hangs says whether the breaker's probes lately held their place for half their timeout or
// more, or none has returned yet: the quick reserve is for breakers known to be quick, or
// every breaker on a node that just died would take it with its first probe. Callers hold
// s.mu.
func (e *entry) hangs() bool {
	return !e.holdKnown || e.hold >= e.spec.Timeout/2
}

// finish is when the breaker's oldest queued turn would be done, if its probe held a place as
// long as the breaker's probes have lately. Callers hold s.mu, and e has a turn queued.
func (e *entry) finish() time.Time {
	return e.waiting[0].waitDue.Add(e.hold)
}

// observeHold adds how long one probe held its place to the breaker's moving average, which
// follows a change (an endpoint that starts hanging) within a few probes. Callers hold s.mu.
func (e *entry) observeHold(d time.Duration) {
	if !e.holdKnown {
		e.hold, e.holdKnown = d, true
		return
	}
	e.hold += (d - e.hold) / 4
}

// namespace is one namespace's share of the bound. Its fields belong to Scheduler.mu.
type namespace struct {
	name     string
	entries  int // breakers registered
	inflight int
	waiting  breakerHeap // its breakers with turns queued
	index    int         // in fairQueue.namespaces; -1 when out of it
}

// namespace returns the namespace called name, making it if needed. Callers hold s.mu.
func (s *Scheduler) namespace(name string) *namespace {
	ns, ok := s.namespaces[name]
	if !ok {
		ns = &namespace{name: name, index: -1}
		s.namespaces[name] = ns
	}
	return ns
}

// forgetNamespace drops a namespace with no breaker and no probe in flight left. Callers hold
// s.mu.
func (s *Scheduler) forgetNamespace(ns *namespace) {
	if ns.entries == 0 && ns.inflight == 0 && ns.index < 0 && s.namespaces[ns.name] == ns {
		delete(s.namespaces, ns.name)
	}
}

// fairQueue holds the turns that came due and wait for a place: HalfOpen trials in order, and
// the others by namespace and breaker, fewest in flight first. Its methods run under
// Scheduler.mu.
type fairQueue struct {
	trials     []*slot
	namespaces nsHeap
	quick      int // queued turns of breakers that did not hang when queued
}

// fix puts e and its namespace where their probes in flight and queued turns place them now.
func (q *fairQueue) fix(e *entry) {
	ns := e.ns
	switch {
	case len(e.waiting) == 0 && e.waitIndex >= 0:
		heap.Remove(&ns.waiting, e.waitIndex)
	case len(e.waiting) > 0 && e.waitIndex < 0:
		heap.Push(&ns.waiting, e)
	case e.waitIndex >= 0:
		heap.Fix(&ns.waiting, e.waitIndex)
	}
	switch {
	case ns.waiting.Len() == 0 && ns.index >= 0:
		heap.Remove(&q.namespaces, ns.index)
	case ns.waiting.Len() > 0 && ns.index < 0:
		heap.Push(&q.namespaces, ns)
	case ns.index >= 0:
		heap.Fix(&q.namespaces, ns.index)
	}
}

// push queues a turn of sl that came due at due.
func (q *fairQueue) push(sl *slot, due time.Time, trial bool) {
	sl.waiting, sl.waitDue = true, due
	if trial {
		q.trials = append(q.trials, sl)
		return
	}
	sl.quick = !sl.entry.hangs()
	if sl.quick {
		q.quick++
	}
	sl.entry.waiting = append(sl.entry.waiting, sl)
	q.fix(sl.entry)
}

// drop takes a queued turn of sl out of the queue. A trial is only marked, and skipped when
// its turn comes.
func (q *fairQueue) drop(sl *slot) {
	if !sl.waiting {
		return
	}
	sl.waiting = false
	e := sl.entry
	if i := slices.Index(e.waiting, sl); i >= 0 {
		e.waiting = slices.Delete(e.waiting, i, i+1)
		q.fix(e)
		if sl.quick {
			q.quick--
		}
	}
}

// nextTrial takes the oldest queued trial, if any.
func (q *fairQueue) nextTrial() *slot {
	for len(q.trials) > 0 {
		sl := q.trials[0]
		q.trials[0] = nil
		q.trials = q.trials[1:]
		if sl.waiting && !sl.gone {
			sl.waiting = false
			return sl
		}
	}
	return nil
}

// next takes the turn that the next free place goes to, if any.
func (q *fairQueue) next() *slot {
	if q.namespaces.Len() == 0 {
		return nil
	}
	e := q.namespaces[0].waiting[0]
	sl := e.waiting[0]
	e.waiting[0] = nil
	e.waiting = e.waiting[1:]
	sl.waiting = false
	q.fix(e)
	if sl.quick {
		q.quick--
	}
	return sl
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
	log.FromContext(ctx).Info("Starting probe scheduler", "maxConcurrentProbes", s.limits.MaxInFlight,
		"perBreaker", s.limits.PerBreaker, "trialReserve", s.limits.TrialReserve)

	timer := s.clock.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		wait := s.dispatch()
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

// dispatch queues every turn that is due, starts what the bound allows, and returns how long
// to wait for the next turn.
func (s *Scheduler) dispatch() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	for s.turns.Len() > 0 && !s.turns[0].due.After(now) {
		sl := s.turns[0]
		due := sl.due
		// Next turn: skip the turns that were missed rather than bunching them up.
		interval := sl.entry.interval
		sl.due = due.Add(interval)
		if !sl.due.After(now) {
			sl.due = now.Add(interval - now.Sub(due)%interval)
		}
		heap.Fix(&s.turns, 0)
		s.offer(sl, due)
	}
	s.grant(now)
	if s.turns.Len() == 0 {
		return time.Hour
	}
	return s.turns[0].due.Sub(now)
}

// offer queues a turn that came due, unless there is nothing to send: the endpoint's previous
// turn is still queued or in flight, the engine admits no probe (Open, or HalfOpen with its
// trials out), or the breaker has its share of the bound in flight and queued. Callers hold
// s.mu.
func (s *Scheduler) offer(sl *slot, due time.Time) {
	if sl.waiting || sl.inflight {
		return
	}
	e := sl.entry
	e.mu.Lock()
	state, admits := e.engine.State(), e.engine.CanAdmit()
	// A HalfOpen trial judges the whole target: it goes to an endpoint that is not ejected,
	// rather than to one already known to fail (the cap keeps at least one in).
	ejectedTrial := state == breaker.HalfOpen && e.ejected(sl.ep) && len(e.slots) > 1
	e.mu.Unlock()
	switch {
	case !admits || ejectedTrial:
		return
	case state == breaker.HalfOpen:
		s.queue.push(sl, due, true)
	case e.inflight+len(e.waiting) >= s.limits.PerBreaker:
		s.stats.skippedAtCap.Add(1)
		if !e.atCap {
			e.atCap = true
			s.logAtCap(e)
		}
	default:
		e.atCap = false
		s.queue.push(sl, due, false)
	}
}

// grant starts queued turns while the bound allows: trials first, then the others in the
// fair queue's order, except that turns of hanging breakers stay queued while only the quick
// reserve is free. Callers hold s.mu.
func (s *Scheduler) grant(now time.Time) {
	if s.ctx == nil || s.ctx.Err() != nil {
		return
	}
	var passed []*slot // hanging turns passed over for the quick reserve, queued again below
	for {
		if s.inflight < s.limits.MaxInFlight+s.limits.TrialReserve {
			if sl := s.queue.nextTrial(); sl != nil {
				s.start(sl, now)
				continue
			}
		}
		if s.inflight >= s.limits.MaxInFlight {
			break
		}
		reserved := s.inflight >= s.limits.MaxInFlight-s.limits.QuickReserve
		if reserved && s.queue.quick == 0 {
			break
		}
		sl := s.queue.next()
		if sl == nil {
			break
		}
		if reserved && !sl.quick {
			passed = append(passed, sl)
			continue
		}
		s.start(sl, now)
	}
	for _, sl := range passed {
		s.queue.push(sl, sl.waitDue, false)
	}
}

// start sends the probe of a queued turn if the engine admits it. A probe that could only
// start after its own deadline (due plus timeout) is not sent: on a manager that starved it,
// its outcome would say more about the manager than about the target. Callers hold s.mu.
func (s *Scheduler) start(sl *slot, now time.Time) {
	e := sl.entry
	late := now.Sub(sl.waitDue)
	e.mu.Lock()
	if e.removed || sl.gone {
		e.mu.Unlock()
		return
	}
	if late >= e.spec.Timeout && e.engine.CanAdmit() {
		e.mu.Unlock()
		s.localError(e.key, probe.Result{Endpoint: sl.ep, Outcome: breaker.Neutral, Local: probe.LocalStartedLate,
			Message: "probe started " + late.Round(time.Millisecond).String() + " late, after its own deadline (not sent)"})
		return
	}
	ticket, admitted := e.engine.Admit()
	if !admitted {
		e.mu.Unlock()
		return
	}
	if e.engine.State() == breaker.HalfOpen {
		s.armDeadline(e) // the trial's bound
	}
	ref := e.prober
	ref.inflight++
	ctx, observer := e.ctx, e.observer
	e.mu.Unlock()

	sl.inflight = true
	e.inflight++
	e.ns.inflight++
	s.inflight++
	s.queue.fix(e)
	s.stats.started.Add(1)
	if observer != nil {
		observer.ObserveStart(late)
	}
	s.probes.Add(1)
	go s.run(ctx, sl, ref, ticket, now)
}

// run sends one probe, records it, and gives its place to the next queued turn.
func (s *Scheduler) run(ctx context.Context, sl *slot, ref *proberRef, ticket breaker.Ticket, started time.Time) {
	defer s.probes.Done()
	r := ref.Probe(ctx, sl.ep)
	trialNow := s.record(ctx, sl, ref, ticket, r)
	e := sl.entry
	s.mu.Lock()
	now := s.clock.Now()
	e.observeHold(now.Sub(started))
	sl.inflight = false
	e.inflight--
	e.ns.inflight--
	s.inflight--
	s.queue.fix(e)
	if e.removed {
		s.forgetNamespace(e.ns)
	}
	s.grant(now)
	s.mu.Unlock()
	if trialNow {
		s.tick(e)
	}
}

// record feeds a result to the engine and tells the controller about a transition, or about
// a trip the observer guard started or stopped holding. Every admitted probe ends here in a
// recorded outcome or a released trial slot. It says whether a HalfOpen breaker's next trial
// should go out at once, because a trial slot came free without an outcome.
//
// A probe whose context the scheduler cancelled (a shutdown, a lost lease, a removed breaker)
// is not recorded at all, whatever its prober made of it: the manager stopped it, so it says
// nothing about the target, and counting it even as Neutral or as a local error would put a
// line in every breaker's status and the local-error metric at every rollout.
func (s *Scheduler) record(ctx context.Context, sl *slot, ref *proberRef, ticket breaker.Ticket, r probe.Result) bool {
	e := sl.entry
	e.mu.Lock()
	ref.inflight--
	if ref.retired || ctx.Err() != nil {
		// The probe was edited while this one ran: its result answers the old question, so
		// it counts for nothing, but a trial gives its slot back for a probe of the new kind.
		// The same holds for a probe the scheduler cancelled.
		if ref.retired && ref.inflight == 0 {
			ref.Close()
		}
		trialNow := false
		if !e.removed {
			e.engine.Release(ticket)
			trialNow = ctx.Err() == nil && e.engine.State() == breaker.HalfOpen && e.engine.CanAdmit()
		}
		e.mu.Unlock()
		return trialNow
	}
	if e.removed {
		e.mu.Unlock()
		return false
	}
	s.stats.completed.Add(1)
	if e.observer != nil {
		e.observer.ObserveProbe(int(r.Outcome), r.Latency)
	}
	e.last = &r
	e.probes[r.Outcome]++
	noteOutcome(e, r)
	heldBefore := e.guardHeld
	e.verdict = guard.Allow
	t, changed := e.engine.Record(ticket, r.Outcome)
	settled(e)
	if changed {
		result := r
		e.changes = append(e.changes, Change{Transition: t, Probe: &result, Released: e.verdict == guard.Release})
	}
	endpointsChanged := e.tracker != nil && s.recordEndpoint(e, r, t, changed)
	if changed || endpointsChanged {
		s.armDeadline(e)
	}
	s.releaseHold(e)
	holdChanged := heldBefore != e.guardHeld
	e.mu.Unlock()
	if r.Local != "" {
		s.localError(e.key, r)
	}
	if changed || holdChanged || endpointsChanged {
		s.changed(e.key)
	}
	return false
}

// recordEndpoint feeds a result to the endpoint level, whatever the breaker made of it (an
// ejected endpoint's outcomes count for the service too), starts slow start when the breaker
// closed after its trials, and says whether the endpoint level changed in a way the gate or
// status shows. Callers hold e.mu.
func (s *Scheduler) recordEndpoint(e *entry, r probe.Result, t breaker.Transition, transitioned bool) bool {
	before := shown(e.tracker)
	e.tracker.Record(r.Endpoint, r.Outcome, r.Message)
	settledEndpoint(e, r.Endpoint, s.clock.Now())
	if transitioned && t.To == breaker.Closed && t.Reason == breaker.TrialSucceeded {
		e.tracker.StartRamp(e.rampKeep)
	}
	return s.takeEndpointEvents(e) || shown(e.tracker) != before
}

// logEvery bounds how often the scheduler logs about one kind of trouble: when the manager's
// file descriptors run out, every probe fails the same way, and one line says enough.
const logEvery = 5 * time.Second

// rateLimitedLog lets a line out every logEvery at most, and counts the ones held back.
type rateLimitedLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow says whether a line may go out at now, and how many were held back since the last.
func (l *rateLimitedLog) allow(now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < logEvery {
		l.suppressed++
		return 0, false
	}
	suppressed = l.suppressed
	l.last, l.suppressed = now, 0
	return suppressed, true
}

// localError counts a probe that failed for a reason of the manager's own, and logs it unless
// a line went out less than logEvery ago.
func (s *Scheduler) localError(key types.NamespacedName, r probe.Result) {
	if s.localErrors != nil {
		s.localErrors(r.Local)
	}
	if suppressed, ok := s.localLog.allow(s.clock.Now()); ok {
		log.FromContext(s.baseContext()).Info("A probe failed for a reason of the manager's own; it counts as Neutral, not against the target",
			"reason", r.Local, "breaker", key, "endpoint", r.Endpoint, "message", r.Message, "unloggedSinceLastLine", suppressed)
	}
}

// logAtCap says that a breaker's turns are being skipped because it has its share of the
// bound in flight, which happens when many of its endpoints hang until their timeout.
func (s *Scheduler) logAtCap(e *entry) {
	if suppressed, ok := s.capLog.allow(s.clock.Now()); ok {
		log.FromContext(s.baseContext()).Info("A breaker has its share of --max-concurrent-probes in flight; its other endpoints' turns are skipped until probes return",
			"breaker", e.key, "share", s.limits.PerBreaker, "endpoints", len(e.slots), "unloggedSinceLastLine", suppressed)
	}
}

// turnHeap orders slots by the due time of their next turn.
type turnHeap []*slot

func (h turnHeap) Len() int           { return len(h) }
func (h turnHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h turnHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *turnHeap) Push(x any) {
	sl := x.(*slot)
	sl.index = len(*h)
	*h = append(*h, sl)
}
func (h *turnHeap) Pop() any {
	old := *h
	sl := old[len(old)-1]
	old[len(old)-1] = nil
	sl.index = -1
	*h = old[:len(old)-1]
	return sl
}

func (h *turnHeap) place(sl *slot) {
	if sl.index >= 0 {
		heap.Fix(h, sl.index)
	} else {
		heap.Push(h, sl)
	}
}

func (h *turnHeap) unplace(sl *slot) {
	if sl.index >= 0 {
		heap.Remove(h, sl.index)
	}
}

// breakerHeap orders a namespace's breakers with queued turns: fewest probes in flight first,
// then the turn that would finish first.
type breakerHeap []*entry

func (h breakerHeap) Len() int { return len(h) }
func (h breakerHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.inflight != b.inflight {
		return a.inflight < b.inflight
	}
	return a.finish().Before(b.finish())
}
func (h breakerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].waitIndex, h[j].waitIndex = i, j
}
func (h *breakerHeap) Push(x any) {
	e := x.(*entry)
	e.waitIndex = len(*h)
	*h = append(*h, e)
}
func (h *breakerHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.waitIndex = -1
	*h = old[:len(old)-1]
	return e
}

// nsHeap orders namespaces with queued turns: fewest probes in flight first, then the finish
// of the turn that would go next in each.
type nsHeap []*namespace

func (h nsHeap) Len() int { return len(h) }
func (h nsHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.inflight != b.inflight {
		return a.inflight < b.inflight
	}
	return a.waiting[0].finish().Before(b.waiting[0].finish())
}
func (h nsHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *nsHeap) Push(x any) {
	ns := x.(*namespace)
	ns.index = len(*h)
	*h = append(*h, ns)
}
func (h *nsHeap) Pop() any {
	old := *h
	ns := old[len(old)-1]
	old[len(old)-1] = nil
	ns.index = -1
	*h = old[:len(old)-1]
	return ns
}
