package ejection

import (
	"cmp"
	"math"
	"net/netip"
	"slices"
	"time"

	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

// maxEvents bounds the events kept for TakeEvents; older ones are dropped and counted.
const maxEvents = 256

// endpoint is one tracked endpoint.
type endpoint struct {
	addr   netip.AddrPort
	phase  Phase
	reason Reason
	// since is when it was ejected, or joined the ramp; until is when its ejection ends.
	since, until time.Time
	// ejections is the count that sets the ejection time; returned is when it last came back,
	// from which the count decays.
	ejections int
	returned  time.Time
	message   string
	// failures counts consecutive failures; window holds the newest outcomes.
	failures int
	window   ring
	// wants: its rule holds but it is not ejected (the cap, or the observer guard, kept it in).
	wants bool
	// seq orders the ramp: members are admitted in the order they joined.
	seq uint64
}

// ring is a window of up to 128 outcomes, one bit each (1 = failure), with a running count.
type ring struct {
	bits     [2]uint64
	size     int // the window; 0 keeps nothing
	next     int // where the next outcome goes
	held     int // outcomes held, at most size
	failures int
}

func (r *ring) bit(i int) bool { return r.bits[i/64]&(1<<(i%64)) != 0 }

func (r *ring) set(i int, v bool) {
	if v {
		r.bits[i/64] |= 1 << (i % 64)
	} else {
		r.bits[i/64] &^= 1 << (i % 64)
	}
}

func (r *ring) push(failure bool) {
	if r.size == 0 {
		return
	}
	if r.held == r.size {
		if r.bit(r.next) {
			r.failures--
		}
	} else {
		r.held++
	}
	r.set(r.next, failure)
	if failure {
		r.failures++
	}
	r.next = (r.next + 1) % r.size
}

// resized keeps the newest outcomes that fit a window of size.
func (r ring) resized(size int) ring {
	out := ring{size: size}
	if size == 0 {
		return out
	}
	keep := min(r.held, size)
	for i := keep; i > 0; i-- {
		// the i-th newest outcome, oldest first
		out.push(r.bit(((r.next-i)%r.size + r.size) % r.size))
	}
	return out
}

// cohort is the slow-start ramp in progress.
type cohort struct {
	active bool
	start  time.Time
	// size counts every member that joined since start; pending those still held back.
	size, pending int
}

// Tracker is the endpoint level of one breaker. It is not safe for concurrent use: its owner
// (the runner) holds the breaker's lock.
type Tracker struct {
	cfg Config
	clk clock.PassiveClock

	eps      map[netip.AddrPort]*endpoint
	ejected  int // endpoints in phase Ejected
	wanting  int // endpoints whose rule holds but are not ejected
	ramp     cohort
	seq      uint64
	permit   func() bool
	confirm  func(ep netip.AddrPort, r Reason) bool
	held     bool
	restored map[netip.AddrPort]EndpointStatus // for endpoints not tracked yet

	events  []Event
	dropped uint64
}

// New returns a tracker with no endpoints. cfg must Validate.
func New(cfg Config, clk clock.PassiveClock) (*Tracker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Tracker{cfg: cfg, clk: clk, eps: map[netip.AddrPort]*endpoint{}}, nil
}

// Config is the configuration in force.
func (t *Tracker) Config() Config { return t.cfg }

// Reconfigure applies a new configuration and keeps the endpoints' states. Turning ejection
// off returns every ejected endpoint at once; turning slow start off admits the ramp at once.
func (t *Tracker) Reconfigure(cfg Config) error {
	if cfg == t.cfg {
		return nil
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	old := t.cfg
	t.cfg = cfg
	now := t.clk.Now()
	if cfg.FailureRate.Window != old.FailureRate.Window {
		for _, e := range t.eps {
			e.window = e.window.resized(cfg.FailureRate.Window)
		}
	}
	if !cfg.Ejects() {
		for _, e := range t.sorted() {
			if e.phase == Ejected {
				t.restore(e, now, "ejection turned off", true)
			}
			t.setWants(e, false)
		}
		t.held = false
	}
	if cfg.SlowStart == 0 {
		t.admit(t.ramp.pending)
	}
	t.settle(now)
	return nil
}

// SetEndpoints sets the tracked endpoints: new ones start Healthy and published (or as a
// Restore listed them), gone ones are forgotten with their counts.
func (t *Tracker) SetEndpoints(eps []netip.AddrPort) {
	want := make(map[netip.AddrPort]bool, len(eps))
	for _, a := range eps {
		want[a] = true
		if _, ok := t.eps[a]; ok {
			continue
		}
		e := &endpoint{addr: a, window: ring{size: t.cfg.FailureRate.Window}}
		t.eps[a] = e
		if s, ok := t.restored[a]; ok {
			t.apply(e, s)
		}
	}
	t.restored = nil
	for a, e := range t.eps {
		if want[a] {
			continue
		}
		switch e.phase {
		case Ejected:
			t.ejected--
		case SlowStart:
			t.ramp.pending--
		}
		t.setWants(e, false)
		delete(t.eps, a)
	}
	t.settle(t.clk.Now())
}

// Record counts one probe outcome of ep. Unknown endpoints and Neutral outcomes are ignored.
func (t *Tracker) Record(ep netip.AddrPort, o breaker.Outcome, message string) {
	e := t.eps[ep]
	if e == nil || o == breaker.Neutral {
		return
	}
	now := t.clk.Now()
	failed := o == breaker.Failure
	if e.phase == Ejected {
		if now.Before(e.until) {
			return
		}
		// The trial at the end of the ejection.
		if failed {
			e.ejections = saturatingInc(e.ejections)
			e.reason, e.since, e.until, e.message = TrialFailed, now, now.Add(t.ejectionTime(e.ejections)), message
			t.emit(Event{Kind: EventEjected, Endpoint: e.addr, Reason: TrialFailed, At: now, Until: e.until,
				Ejections: e.ejections, Message: message})
			return
		}
		t.restore(e, now, message, true)
		t.settle(now)
		return
	}
	if failed {
		e.failures = min(e.failures+1, math.MaxInt32)
	} else {
		e.failures = 0
	}
	e.window.push(failed)
	r := t.rule(e)
	if r == NoReason {
		t.setWants(e, false)
		if t.wanting == 0 {
			t.held = false
		}
		return
	}
	t.tryEject(e, r, now, message)
	t.settle(now)
}

// rule is the ejection rule that holds for e, if any.
func (t *Tracker) rule(e *endpoint) Reason {
	if n := t.cfg.ConsecutiveFailures; n > 0 && e.failures >= n {
		return ConsecutiveFailures
	}
	if r := t.cfg.FailureRate; r.Window > 0 && e.window.held >= r.MinimumProbes &&
		e.window.failures*100 >= r.Percent*e.window.held {
		return FailureRate
	}
	return NoReason
}

// tryEject ejects e for r unless the cap or the observer guard keeps it in.
func (t *Tracker) tryEject(e *endpoint, r Reason, now time.Time, message string) {
	if t.ejected >= t.maxEjected() {
		t.setWants(e, true)
		return
	}
	if t.confirm != nil && !t.confirm(e.addr, r) {
		// Suspect: published and counted healthy until the observers answer (Retry).
		t.setWants(e, false)
		return
	}
	if t.ejected == 0 && t.permit != nil && !t.permit() {
		t.setWants(e, true)
		t.held = true
		return
	}
	t.held = false
	t.setWants(e, false)
	if e.phase == SlowStart {
		t.ramp.pending--
	}
	if !e.returned.IsZero() && t.cfg.BaseEjectionTime > 0 {
		// The count drops by one for every base ejection time spent in since the last return.
		e.ejections = max(0, e.ejections-int(min(now.Sub(e.returned)/t.cfg.BaseEjectionTime, math.MaxInt32)))
	}
	e.ejections = saturatingInc(e.ejections)
	e.phase, e.reason, e.since, e.message = Ejected, r, now, message
	e.until = now.Add(t.ejectionTime(e.ejections))
	t.ejected++
	t.emit(Event{Kind: EventEjected, Endpoint: e.addr, Reason: r, At: now, Until: e.until, Ejections: e.ejections,
		Message: message})
}

// restore brings an ejected endpoint back: to the ramp if ramp and slow start is on, or
// published at once.
func (t *Tracker) restore(e *endpoint, now time.Time, message string, ramp bool) {
	t.ejected--
	e.phase, e.reason, e.until, e.message = Healthy, NoReason, time.Time{}, ""
	e.failures, e.returned = 0, now
	e.window = ring{size: t.cfg.FailureRate.Window}
	t.emit(Event{Kind: EventReturned, Endpoint: e.addr, At: now, Ejections: e.ejections, Message: message})
	if ramp && t.cfg.SlowStart > 0 {
		t.join(e, now)
	}
}

// ejectionTime is BaseEjectionTime × n, capped at MaxEjectionTime, without overflow.
func (t *Tracker) ejectionTime(n int) time.Duration {
	base, ceiling := t.cfg.BaseEjectionTime, t.cfg.MaxEjectionTime
	if base <= 0 {
		return 0
	}
	if n > int(ceiling/base) {
		return ceiling
	}
	return min(base*time.Duration(n), ceiling)
}

func saturatingInc(n int) int {
	if n >= math.MaxInt32 {
		return n
	}
	return n + 1
}

// setWants marks whether e's rule holds while it stays in.
func (t *Tracker) setWants(e *endpoint, wants bool) {
	if e.wants == wants {
		return
	}
	e.wants = wants
	if wants {
		t.wanting++
	} else {
		t.wanting--
	}
}

// maxEjected is the cap: floor(n × percent / 100), and never all endpoints.
func (t *Tracker) maxEjected() int {
	n := len(t.eps)
	return max(0, min(n*t.cfg.MaxEjectedPercent/100, n-1))
}

// panicking says whether fewer endpoints are healthy than the panic threshold.
func (t *Tracker) panicking() bool {
	n := len(t.eps)
	healthy := n - t.ejected - t.wanting
	return n > 0 && healthy*100 < n*t.cfg.PanicThresholdPercent
}

// join adds e to the ramp, starting one if none is in progress. Endpoints that come back
// within one window share its steps, however far apart their probes put them.
func (t *Tracker) join(e *endpoint, now time.Time) {
	if !t.ramp.active || !now.Before(t.ramp.start.Add(t.cfg.SlowStart)) {
		t.ramp = cohort{active: true, start: now}
	}
	t.ramp.size++
	t.ramp.pending++
	t.seq++
	e.phase, e.seq, e.since = SlowStart, t.seq, now
}

// StartRamp is called when the breaker closed after HalfOpen: every Healthy endpoint but the
// first keep, in address order, joins the ramp.
func (t *Tracker) StartRamp(keep int) {
	if t.cfg.SlowStart <= 0 {
		return
	}
	now := t.clk.Now()
	for _, e := range t.sorted() {
		if e.phase != Healthy || e.wants {
			continue
		}
		if keep > 0 {
			keep--
			continue
		}
		t.join(e, now)
	}
	t.settle(now)
}

// allowed is how many members of the ramp may be published at now.
func (t *Tracker) allowed(now time.Time) int {
	w, c := t.cfg.SlowStart, t.ramp.size
	switch elapsed := now.Sub(t.ramp.start); {
	case elapsed < w/3:
		return 1
	case elapsed < 2*w/3:
		return max(1, (c+3)/4)
	case elapsed < w:
		return max(1, (c+1)/2)
	}
	return c
}

// settle restores the invariants after a change: no more endpoints ejected than the cap
// allows (endpoints removed, a lower percentage, or a restore can leave too many), the ramp at
// its current step and ended at the end of its window, and at least one endpoint published.
func (t *Tracker) settle(now time.Time) {
	if over := t.ejected - t.maxEjected(); over > 0 {
		// The ejections that would end soonest end now, straight to published: the cap is a
		// promise about the endpoints there are, not the ones there were.
		var ejected []*endpoint
		for _, e := range t.eps {
			if e.phase == Ejected {
				ejected = append(ejected, e)
			}
		}
		slices.SortFunc(ejected, func(a, b *endpoint) int { return cmp.Or(a.until.Compare(b.until), a.addr.Compare(b.addr)) })
		for _, e := range ejected[:over] {
			t.restore(e, now, "returned early: fewer endpoints are left than maxEjectedPercent needs to keep it out", false)
		}
	}
	if !t.ramp.active {
		return
	}
	if t.ramp.pending > 0 {
		done := t.ramp.size - t.ramp.pending
		t.admit(t.allowed(now) - done)
		// Never hold back every endpoint: the ramp gives way first.
		t.admit(t.ejected + t.ramp.pending - len(t.eps) + 1)
	}
	if !now.Before(t.ramp.start.Add(t.cfg.SlowStart)) {
		t.ramp = cohort{}
	}
}

// admit publishes the first n members waiting on the ramp, in the order they joined.
func (t *Tracker) admit(n int) {
	if n <= 0 || t.ramp.pending == 0 {
		return
	}
	waiting := make([]*endpoint, 0, t.ramp.pending)
	for _, e := range t.eps {
		if e.phase == SlowStart {
			waiting = append(waiting, e)
		}
	}
	slices.SortFunc(waiting, func(a, b *endpoint) int { return cmp.Or(cmp.Compare(a.seq, b.seq), a.addr.Compare(b.addr)) })
	for _, e := range waiting[:min(n, len(waiting))] {
		e.phase = Healthy
		t.ramp.pending--
	}
}

// Tick brings the ramp to its current step. Ejections that ended need no tick: they wait for
// their trial (DueTrials).
func (t *Tracker) Tick() { t.settle(t.clk.Now()) }

// NextDeadline is the soonest ejection end not yet reached, or the next step of the ramp.
func (t *Tracker) NextDeadline() (time.Time, bool) {
	now := t.clk.Now()
	var next time.Time
	consider := func(at time.Time) {
		if at.After(now) && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	if t.ejected > 0 {
		for _, e := range t.eps {
			if e.phase == Ejected {
				consider(e.until)
			}
		}
	}
	if t.ramp.active && t.ramp.pending > 0 {
		w := t.cfg.SlowStart
		for _, step := range []time.Duration{w / 3, 2 * w / 3, w} {
			consider(t.ramp.start.Add(step))
		}
	}
	return next, !next.IsZero()
}

// DueTrials are the ejected endpoints whose ejection has ended and that wait for their trial
// probe, sorted.
func (t *Tracker) DueTrials() []netip.AddrPort {
	if t.ejected == 0 {
		return nil
	}
	now := t.clk.Now()
	var out []netip.AddrPort
	for _, e := range t.eps {
		if e.phase == Ejected && !now.Before(e.until) {
			out = append(out, e.addr)
		}
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return out
}

// IsEjected says whether ep is ejected now, including waiting for its trial.
func (t *Tracker) IsEjected(ep netip.AddrPort) bool {
	e := t.eps[ep]
	return e != nil && e.phase == Ejected
}

// Clear is a reset: every endpoint Healthy and published, every count zero, the ramp ended.
func (t *Tracker) Clear() {
	now := t.clk.Now()
	for _, e := range t.sorted() {
		if e.phase == Ejected {
			t.emit(Event{Kind: EventReturned, Endpoint: e.addr, At: now, Ejections: 0, Message: "reset"})
		}
		*e = endpoint{addr: e.addr, window: ring{size: t.cfg.FailureRate.Window}}
	}
	t.ejected, t.wanting, t.held, t.ramp = 0, 0, false, cohort{}
}

// SetPermit installs the function asked before the breaker's first ejection; nil removes it.
func (t *Tracker) SetPermit(p func() bool) { t.permit = p }

// SetConfirm installs the function asked before each ejection of a published endpoint, after
// the cap and before the observer guard: the second opinion. When it refuses, the endpoint
// stays published and counts as healthy, and its owner calls Retry once the observers agree.
// nil removes it.
func (t *Tracker) SetConfirm(c func(ep netip.AddrPort, r Reason) bool) { t.confirm = c }

// RuleHolds returns the ejection rule that holds for ep while it is published (NoReason when
// none does, or ep is ejected or unknown).
func (t *Tracker) RuleHolds(ep netip.AddrPort) Reason {
	e := t.eps[ep]
	if e == nil || e.phase == Ejected {
		return NoReason
	}
	return t.rule(e)
}

// Retry ejects ep now if it is published and its rule still holds, asking the confirm
// function, the cap and the guard again; message says why (the observers' verdict). It says
// whether ep was ejected.
func (t *Tracker) Retry(ep netip.AddrPort, message string) bool {
	e := t.eps[ep]
	if e == nil || e.phase == Ejected {
		return false
	}
	r := t.rule(e)
	if r == NoReason {
		return false
	}
	now := t.clk.Now()
	t.tryEject(e, r, now, message)
	t.settle(now)
	return e.phase == Ejected
}

// WantsEjection says whether some endpoint's rule holds but it is not ejected.
func (t *Tracker) WantsEjection() bool { return t.wanting > 0 }

func (t *Tracker) emit(ev Event) {
	if len(t.events) >= maxEvents {
		t.events = slices.Delete(t.events, 0, 1)
		t.dropped++
	}
	t.events = append(t.events, ev)
}

// TakeEvents returns the events since the last call, oldest first, and forgets them.
func (t *Tracker) TakeEvents() []Event {
	evs := t.events
	t.events = nil
	return evs
}

// Dropped counts the events dropped because more than maxEvents waited.
func (t *Tracker) Dropped() uint64 { return t.dropped }

// Summary is the part of View that changes what the gate or status shows, cheap to compare.
type Summary struct {
	Ejected, Capped, SlowStart int
	Panic, Held                bool
}

// Summary returns the counts, in O(1).
func (t *Tracker) Summary() Summary {
	return Summary{Ejected: t.ejected, Capped: t.wanting, SlowStart: t.ramp.pending, Panic: t.panicking(), Held: t.held}
}

// View returns the tracker's state for the gate and for status.
func (t *Tracker) View() View {
	v := View{Endpoints: len(t.eps), Ejected: t.ejected, Capped: t.wanting, MaxEjected: t.maxEjected(),
		SlowStart: t.ramp.pending, Panic: t.panicking(), Held: t.held}
	if t.ejected == 0 && t.ramp.pending == 0 {
		return v
	}
	var ejected, waiting []*endpoint
	for _, e := range t.eps {
		switch e.phase {
		case Ejected:
			ejected = append(ejected, e)
		case SlowStart:
			waiting = append(waiting, e)
		}
	}
	slices.SortFunc(ejected, func(a, b *endpoint) int { return cmp.Or(a.since.Compare(b.since), a.addr.Compare(b.addr)) })
	slices.SortFunc(waiting, func(a, b *endpoint) int { return cmp.Or(cmp.Compare(a.seq, b.seq), a.addr.Compare(b.addr)) })
	for _, e := range append(ejected, waiting...) {
		if !v.Panic {
			v.HeldBack = append(v.HeldBack, e.addr)
		}
		if len(v.Listed) < MaxListed {
			s := EndpointStatus{Endpoint: e.addr, Phase: e.phase, Since: e.since, Ejections: e.ejections}
			if e.phase == Ejected {
				s.Reason, s.Until, s.Message = e.reason, e.until, e.message
			}
			v.Listed = append(v.Listed, s)
		}
	}
	slices.SortFunc(v.HeldBack, netip.AddrPort.Compare)
	return v
}

// Restore reads back the endpoints that status listed. Entries for endpoints not tracked yet
// wait for the next SetEndpoints, which drops those it does not name.
func (t *Tracker) Restore(list []EndpointStatus) {
	for _, s := range list {
		if e, ok := t.eps[s.Endpoint]; ok {
			if e.phase == Healthy && !e.wants {
				t.apply(e, s)
			}
			continue
		}
		if t.restored == nil {
			t.restored = map[netip.AddrPort]EndpointStatus{}
		}
		t.restored[s.Endpoint] = s
	}
	t.settle(t.clk.Now())
}

// apply puts a Healthy endpoint into the state s describes.
func (t *Tracker) apply(e *endpoint, s EndpointStatus) {
	switch {
	case s.Phase == Ejected && t.cfg.Ejects():
		e.phase, e.reason, e.since, e.until, e.message = Ejected, s.Reason, s.Since, s.Until, s.Message
		e.ejections = max(1, s.Ejections)
		t.ejected++
	case s.Phase == SlowStart && t.cfg.SlowStart > 0:
		// Status lists who waits, not who was admitted already. The first member of a ramp is
		// always admitted at once, so a restored ramp counts one admitted member: after a
		// leader change the ramp may admit sooner than it would have, never later.
		switch {
		case !t.ramp.active:
			t.ramp = cohort{active: true, start: s.Since, size: 1}
		case s.Since.Before(t.ramp.start):
			t.ramp.start = s.Since // the earliest member's join starts the ramp
		}
		t.ramp.size++
		t.ramp.pending++
		t.seq++
		e.phase, e.seq, e.since = SlowStart, t.seq, s.Since
		e.ejections = max(0, s.Ejections)
	}
}

// sorted lists the endpoints in address order, for deterministic events.
func (t *Tracker) sorted() []*endpoint {
	out := make([]*endpoint, 0, len(t.eps))
	for _, e := range t.eps {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *endpoint) int { return a.addr.Compare(b.addr) })
	return out
}
