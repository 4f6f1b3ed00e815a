package breaker

import (
	"math"
	"time"

	"k8s.io/utils/clock"
)

// Breaker is one circuit breaker's state machine. See the package documentation for the model.
type Breaker struct {
	cfg   Config
	clock clock.PassiveClock
	seed  uint64

	state      State
	reason     Reason
	since      time.Time
	openUntil  time.Time
	openStreak int32
	trips      int64
	failures   int32 // consecutive
	successes  int32 // consecutive; in HalfOpen, the successful trials

	// HalfOpen trial slots: admitted counts slots handed out and not given back, pending those
	// whose outcome has not been recorded yet; lastTrial is when the newest was handed out.
	admitted, pending int
	lastTrial         time.Time
	// attempt numbers the current stay in a state; Tickets carry it. It starts at 1, so that
	// the zero Ticket is never current.
	attempt uint64

	// permit, when set, may hold a trip; held is the rule that holds while a trip is held.
	permit TripPermit
	held   Reason

	win window
}

// New returns a Closed breaker. seed makes the jitter of open periods reproducible: the same
// seed and trip number always give the same jitter, also after Restore.
func New(cfg Config, clk clock.PassiveClock, seed uint64) (*Breaker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Breaker{
		cfg:     cfg,
		clock:   clk,
		seed:    seed,
		since:   clk.Now(),
		win:     newWindow(cfg.windowSize(), cfg.FailureRate.Window, cfg.SlowRate.Window),
		attempt: 1,
	}, nil
}

// SetTripPermit installs the permit asked before every trip out of Closed; nil removes it.
func (b *Breaker) SetTripPermit(p TripPermit) { b.permit = p }

// Held is the trip rule that holds while the permit holds the trip, and NoReason otherwise.
func (b *Breaker) Held() Reason { return b.held }

// State is the state machine's state.
func (b *Breaker) State() State { return b.state }

// Gate is the state traffic should see: the state under Auto, pinned under the other modes.
func (b *Breaker) Gate() State { return b.cfg.Mode.gateFor(b.state) }

// Config is the configuration in force.
func (b *Breaker) Config() Config { return b.cfg }

// Window summarises the outcomes the rate rules judge.
func (b *Breaker) Window() WindowStats { return b.win.stats() }

// NextDeadline is when the breaker next needs Tick, and false when no time-driven change is
// pending: Open waits for openUntil, and HalfOpen with trials in flight for their bound.
func (b *Breaker) NextDeadline() (time.Time, bool) {
	switch {
	case b.state == Open:
		return b.openUntil, true
	case b.state == HalfOpen && b.pending > 0 && b.cfg.TrialTimeout > 0:
		return b.lastTrial.Add(b.cfg.TrialTimeout), true
	}
	return time.Time{}, false
}

// Admit says whether a probe may be sent now, and hands out the Ticket its outcome is recorded
// with. Closed breakers probe freely and Open ones not at all; a HalfOpen breaker hands out at
// most TrialProbes trial slots per attempt.
func (b *Breaker) Admit() (Ticket, bool) {
	switch b.state {
	case Closed:
		return Ticket{attempt: b.attempt}, true
	case HalfOpen:
		if b.admitted < b.cfg.TrialProbes {
			b.admitted++
			b.pending++
			b.lastTrial = b.clock.Now()
			return Ticket{attempt: b.attempt, trial: true}, true
		}
	}
	return Ticket{}, false
}

// CanAdmit says whether Admit would hand out a ticket now, without handing one out.
func (b *Breaker) CanAdmit() bool {
	return b.state == Closed || b.state == HalfOpen && b.admitted < b.cfg.TrialProbes
}

// Record counts the outcome of the probe admitted with t and returns the transition it
// caused, if any. Outcomes of an earlier attempt (see Ticket) are dropped, and so is every
// outcome while Open.
func (b *Breaker) Record(t Ticket, o Outcome) (Transition, bool) {
	if t.attempt != b.attempt {
		return Transition{}, false
	}
	switch b.state {
	case Open:
		return Transition{}, false
	case HalfOpen:
		return b.recordTrial(t, o)
	}
	if o == Neutral {
		return Transition{}, false
	}
	b.count(o)
	b.win.push(o)
	r := b.tripReason()
	if r != NoReason && b.permit != nil && !b.permit(r) {
		b.held = r
		return Transition{}, false
	}
	if b.held != QueryRule {
		// A held query trip is the query rule's to clear (ClearHeld): a probe that holds no
		// rule says nothing about the traffic the query watches.
		b.held = NoReason
	}
	if r != NoReason {
		return b.open(r), true
	}
	return Transition{}, false
}

// Trip opens a Closed breaker for reason, a rule judged outside the probes (QueryRule), after
// asking the trip permit as a probe-driven trip does: the observer guard covers every trip.
// It does nothing in any other state (recovery stays with the probes' trials), and returns
// the transition it caused, if any. A held trip is reported by Held until a later Trip is let
// through or ClearHeld says the rule stopped holding.
func (b *Breaker) Trip(reason Reason) (Transition, bool) {
	if b.state != Closed {
		return Transition{}, false
	}
	if b.permit != nil && !b.permit(reason) {
		b.held = reason
		return Transition{}, false
	}
	b.held = NoReason
	return b.open(reason), true
}

// ClearHeld forgets a held trip of reason, when the rule that held no longer does.
func (b *Breaker) ClearHeld(reason Reason) {
	if b.held == reason {
		b.held = NoReason
	}
}

// Release gives back the slot of a probe admitted with t that will have no outcome, such as
// one whose prober was replaced while it ran, or one the scheduler could not start in time.
// Only a trial of the current attempt holds a slot; for anything else it does nothing.
func (b *Breaker) Release(t Ticket) {
	if t.attempt == b.attempt && t.trial && b.state == HalfOpen && b.pending > 0 {
		b.pending--
		b.admitted--
	}
}

func (b *Breaker) count(o Outcome) {
	if o == Failure {
		b.failures = saturatingInc(b.failures)
		b.successes = 0
	} else {
		b.successes = saturatingInc(b.successes)
		b.failures = 0
	}
}

func saturatingInc(n int32) int32 {
	if n == math.MaxInt32 {
		return n
	}
	return n + 1
}

// tripReason is the first trip rule that holds, in the order the API lists them.
func (b *Breaker) tripReason() Reason {
	if n := b.cfg.ConsecutiveFailures; n > 0 && int(b.failures) >= n {
		return ConsecutiveFailures
	}
	if r := b.cfg.FailureRate; r.enabled() && rateHolds(r, b.win.failureSpan.held, b.win.failureSpan.failures) {
		return FailureRate
	}
	if r := b.cfg.SlowRate; r.enabled() && rateHolds(r, b.win.slowSpan.held, b.win.slowSpan.slow) {
		return SlowRate
	}
	return NoReason
}

func rateHolds(r RateRule, held, matching int) bool {
	return held >= r.MinimumProbes && matching*100 >= r.Percent*held
}

func (b *Breaker) recordTrial(t Ticket, o Outcome) (Transition, bool) {
	if !t.trial || b.pending == 0 {
		return Transition{}, false
	}
	b.pending--
	switch o {
	case Neutral:
		// No information about the target: give the slot back for another trial.
		b.admitted--
		return Transition{}, false
	case Failure:
		b.count(o)
		return b.open(TrialFailed), true
	}
	b.count(o)
	if int(b.successes) >= b.cfg.SuccessThreshold {
		return b.close(TrialSucceeded), true
	}
	return Transition{}, false
}

// Tick moves an Open breaker whose openUntil has come to HalfOpen, and writes off HalfOpen
// trials that have been pending longer than TrialTimeout: their slots are handed out again and
// their outcomes, should they still come, are ignored. The owner calls it at NextDeadline;
// calling it at other times does nothing.
func (b *Breaker) Tick() (Transition, bool) {
	now := b.clock.Now()
	if b.state == HalfOpen {
		if b.pending > 0 && b.cfg.TrialTimeout > 0 && !now.Before(b.lastTrial.Add(b.cfg.TrialTimeout)) {
			b.admitted -= b.pending
			b.pending = 0
			b.attempt++
		}
		return Transition{}, false
	}
	if b.state != Open || now.Before(b.openUntil) {
		return Transition{}, false
	}
	return b.enter(HalfOpen, OpenTimeout, now, func() {
		b.openUntil = time.Time{}
		b.failures, b.successes = 0, 0
	}), true
}

// Reset closes the breaker, clearing its counters and window, as the tripswitch.io/reset
// annotation asks. It returns a transition when the state or the gate changed; a breaker that
// is already Closed only has its counters cleared.
func (b *Breaker) Reset() (Transition, bool) {
	defer func() { b.failures, b.successes, b.held = 0, 0, NoReason }()
	if b.state == Closed {
		b.win.clear()
		return Transition{}, false
	}
	return b.close(Reset), true
}

// Reconfigure applies a new configuration and keeps the state, the counters and the newest
// outcomes that fit the new window. An Open breaker keeps its openUntil. It returns a Forced
// transition when the new mode changes the gate.
func (b *Breaker) Reconfigure(cfg Config) (Transition, bool, error) {
	if err := cfg.Validate(); err != nil {
		return Transition{}, false, err
	}
	gateFrom := b.Gate()
	if cfg.windowSize() != len(b.win.ring) || cfg.FailureRate.Window != b.win.failureSpan.size ||
		cfg.SlowRate.Window != b.win.slowSpan.size {
		b.win = b.win.resized(cfg.windowSize(), cfg.FailureRate.Window, cfg.SlowRate.Window)
	}
	b.cfg = cfg
	if gateTo := b.Gate(); gateTo != gateFrom {
		now := b.clock.Now()
		b.reason = Forced
		return Transition{From: b.state, To: b.state, GateFrom: gateFrom, GateTo: gateTo, Reason: Forced, At: now}, true, nil
	}
	return Transition{}, false, nil
}

func (b *Breaker) open(r Reason) Transition {
	now := b.clock.Now()
	return b.enter(Open, r, now, func() {
		b.openStreak++
		b.trips++
		b.openUntil = b.roundUp(now.Add(b.openDuration(b.openStreak, b.trips)))
	})
}

// roundUp lengthens t to the configured granularity; an Open period is never shortened.
func (b *Breaker) roundUp(t time.Time) time.Time {
	g := b.cfg.Granularity
	if g <= 0 {
		return t
	}
	if r := t.Truncate(g); !r.Equal(t) {
		return r.Add(g)
	}
	return t
}

func (b *Breaker) close(r Reason) Transition {
	return b.enter(Closed, r, b.clock.Now(), func() {
		b.openStreak = 0
		b.openUntil = time.Time{}
		b.win.clear()
	})
}

// enter switches to state to for reason r, running apply in between, and describes the change.
func (b *Breaker) enter(to State, r Reason, now time.Time, apply func()) Transition {
	t := Transition{From: b.state, GateFrom: b.Gate(), Reason: r, At: now}
	apply()
	b.state, b.reason, b.since = to, r, now
	b.admitted, b.pending = 0, 0
	b.attempt++
	b.held = NoReason
	t.To, t.GateTo = to, b.Gate()
	return t
}

// openDuration is OpenDuration × factor^(streak−1), capped at MaxOpenDuration, spread by
// ± JitterPercent with a jitter fixed by the seed and the trip number.
func (b *Breaker) openDuration(streak int32, trip int64) time.Duration {
	d := backoff(b.cfg, streak)
	if p := b.cfg.JitterPercent; p > 0 {
		d += time.Duration(jitter(b.seed, trip) * float64(d) * float64(p) / 100)
	}
	return d
}

// backoff is the open duration for a streak before jitter. It multiplies step by step and
// stops at the cap, so it cannot overflow however long the streak.
func backoff(cfg Config, streak int32) time.Duration {
	ceiling := cfg.MaxOpenDuration
	if ceiling == 0 {
		ceiling = math.MaxInt64
	}
	d := cfg.OpenDuration
	for i := int32(1); i < streak && cfg.BackoffFactor > 1 && d < ceiling; i++ {
		if d > ceiling/time.Duration(cfg.BackoffFactor) {
			return ceiling
		}
		d *= time.Duration(cfg.BackoffFactor)
	}
	return min(d, ceiling)
}

// jitter is a number in [-1, 1) drawn from (seed, n) by SplitMix64: the same pair always
// gives the same number, and neighbouring n give unrelated ones.
func jitter(seed uint64, n int64) float64 {
	z := seed + uint64(n)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return float64(z>>11)/(1<<53)*2 - 1
}

// Snapshot returns what CircuitBreaker status holds.
func (b *Breaker) Snapshot() Snapshot {
	return Snapshot{
		State: b.state, Reason: b.reason, Since: b.since, OpenUntil: b.openUntil,
		OpenStreak: b.openStreak, Trips: b.trips,
		ConsecutiveFailures: b.failures, ConsecutiveSuccesses: b.successes,
	}
}

// Restore resumes from a snapshot read back from status. An Open breaker keeps its
// openUntil (one without it gets a fresh open period from Since); the rate window starts
// empty and HalfOpen trial slots are handed out anew.
func (b *Breaker) Restore(s Snapshot) {
	b.state, b.reason, b.since = s.State, s.Reason, s.Since
	b.openStreak, b.trips = max(s.OpenStreak, 0), max(s.Trips, 0)
	b.failures, b.successes = max(s.ConsecutiveFailures, 0), max(s.ConsecutiveSuccesses, 0)
	b.openUntil = time.Time{}
	b.admitted, b.pending = 0, 0
	b.attempt++
	b.held = NoReason
	b.win.clear()
	switch b.state {
	case Open:
		b.openStreak = max(b.openStreak, 1)
		b.trips = max(b.trips, 1)
		b.openUntil = s.OpenUntil
		if b.openUntil.IsZero() {
			b.openUntil = b.roundUp(s.Since.Add(b.openDuration(b.openStreak, b.trips)))
		}
	case HalfOpen:
		b.failures = 0
	case Closed:
		b.openStreak = 0
	default:
		b.state = Closed
	}
}
