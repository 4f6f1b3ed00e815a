package breaker

import (
	"math"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"
)

// model is the obviously-correct reference: it keeps every counted outcome since the last
// Close in a slice, recomputes rates by scanning it, and grows the open period with floats.
// It shares nothing with Breaker but the jitter function, which is a pure function of its
// inputs and is checked on its own by TestJitterStaysWithinBoundsAndSpreads.
type model struct {
	cfg  Config
	seed uint64

	state                State
	reason               Reason
	since, openUntil     time.Time
	streak               int32
	trips                int64
	failures, successes  int32
	history              []Outcome
	admitted, pending    int
	trialsThisAttempt    int // admissions minus neutral give-backs, for the trialProbes invariant
	lastTrial            time.Time
	attempt              uint64
	lastOpenBase, jitter time.Duration

	// permit is nil until the ops install one; held is the rule a refused permit holds.
	permit func() bool
	held   Reason
}

// mticket is the model's ticket: the attempt it was handed out in, and whether it is a trial.
type mticket struct {
	attempt uint64
	trial   bool
}

func (m *model) gate() State {
	switch m.cfg.Mode {
	case ForceOpen:
		return Open
	case ForceClosed, Observe:
		return Closed
	}
	return m.state
}

func (m *model) rate(r RateRule, kind Outcome) bool {
	if r.Window == 0 {
		return false
	}
	last := m.history[max(0, len(m.history)-r.Window):]
	n := 0
	for _, o := range last {
		if o == kind {
			n++
		}
	}
	return len(last) >= r.MinimumProbes && float64(n)/float64(len(last)) >= float64(r.Percent)/100
}

func (m *model) transition(to State, r Reason, now time.Time) Transition {
	t := Transition{From: m.state, GateFrom: m.gate(), Reason: r, At: now}
	m.state, m.reason, m.since = to, r, now
	m.admitted, m.pending, m.trialsThisAttempt = 0, 0, 0
	m.attempt++
	m.held = NoReason
	t.To, t.GateTo = to, m.gate()
	return t
}

func (m *model) open(r Reason, now time.Time) Transition {
	m.streak++
	m.trips++
	d := float64(m.cfg.OpenDuration)
	if m.cfg.BackoffFactor > 1 {
		d *= math.Pow(float64(m.cfg.BackoffFactor), float64(m.streak-1))
	}
	base := time.Duration(math.Min(d, float64(m.cfg.MaxOpenDuration)))
	m.lastOpenBase = base
	m.jitter = time.Duration(jitter(m.seed, m.trips) * float64(base) * float64(m.cfg.JitterPercent) / 100)
	m.openUntil = now.Add(base + m.jitter)
	return m.transition(Open, r, now)
}

func (m *model) close(r Reason, now time.Time) Transition {
	m.streak = 0
	m.openUntil = time.Time{}
	m.history = nil
	return m.transition(Closed, r, now)
}

func (m *model) count(o Outcome) {
	if o == Failure {
		m.failures++
		m.successes = 0
	} else {
		m.successes++
		m.failures = 0
	}
}

func (m *model) record(t mticket, o Outcome, now time.Time) (Transition, bool) {
	if t.attempt != m.attempt {
		return Transition{}, false
	}
	switch m.state {
	case Open:
		return Transition{}, false
	case HalfOpen:
		if !t.trial || m.pending == 0 {
			return Transition{}, false
		}
		m.pending--
		switch o {
		case Neutral:
			m.admitted--
			m.trialsThisAttempt--
			return Transition{}, false
		case Failure:
			m.count(o)
			return m.open(TrialFailed, now), true
		}
		m.count(o)
		if int(m.successes) >= m.cfg.SuccessThreshold {
			return m.close(TrialSucceeded, now), true
		}
		return Transition{}, false
	}
	if o == Neutral {
		return Transition{}, false
	}
	m.count(o)
	m.history = append(m.history, o)
	var r Reason
	switch {
	case m.cfg.ConsecutiveFailures > 0 && int(m.failures) >= m.cfg.ConsecutiveFailures:
		r = ConsecutiveFailures
	case m.rate(m.cfg.FailureRate, Failure):
		r = FailureRate
	case m.rate(m.cfg.SlowRate, Slow):
		r = SlowRate
	}
	if r != NoReason && m.permit != nil && !m.permit() {
		m.held = r
		return Transition{}, false
	}
	m.held = NoReason
	if r != NoReason {
		return m.open(r, now), true
	}
	return Transition{}, false
}

func (m *model) admit(now time.Time) (mticket, bool) {
	switch m.state {
	case Closed:
		return mticket{attempt: m.attempt}, true
	case HalfOpen:
		if m.admitted < m.cfg.TrialProbes {
			m.admitted++
			m.pending++
			m.trialsThisAttempt++
			m.lastTrial = now
			return mticket{attempt: m.attempt, trial: true}, true
		}
	}
	return mticket{}, false
}

func (m *model) release(t mticket) {
	if t.attempt == m.attempt && t.trial && m.state == HalfOpen && m.pending > 0 {
		m.pending--
		m.admitted--
		m.trialsThisAttempt--
	}
}

func (m *model) deadline() (time.Time, bool) {
	switch {
	case m.state == Open:
		return m.openUntil, true
	case m.state == HalfOpen && m.pending > 0 && m.cfg.TrialTimeout > 0:
		return m.lastTrial.Add(m.cfg.TrialTimeout), true
	}
	return time.Time{}, false
}

func (m *model) tick(now time.Time) (Transition, bool) {
	if m.state == HalfOpen && m.pending > 0 && m.cfg.TrialTimeout > 0 && !now.Before(m.lastTrial.Add(m.cfg.TrialTimeout)) {
		m.admitted -= m.pending
		m.trialsThisAttempt -= m.pending
		m.pending = 0
		m.attempt++
		return Transition{}, false
	}
	if m.state != Open || now.Before(m.openUntil) {
		return Transition{}, false
	}
	m.openUntil = time.Time{}
	m.failures, m.successes = 0, 0
	return m.transition(HalfOpen, OpenTimeout, now), true
}

func (m *model) reset(now time.Time) (Transition, bool) {
	defer func() { m.failures, m.successes, m.held = 0, 0, NoReason }()
	if m.state == Closed {
		m.history = nil
		return Transition{}, false
	}
	return m.close(Reset, now), true
}

func (m *model) setMode(mode Mode, now time.Time) (Transition, bool) {
	from := m.gate()
	m.cfg.Mode = mode
	if to := m.gate(); to != from {
		m.reason = Forced
		return Transition{From: m.state, To: m.state, GateFrom: from, GateTo: to, Reason: Forced, At: now}, true
	}
	return Transition{}, false
}

// restore mirrors the documented Restore: the window and trial slots start empty.
func (m *model) restore() {
	m.history = nil
	m.admitted, m.pending, m.trialsThisAttempt = 0, 0, 0
	m.attempt++
	m.held = NoReason
	if m.state == HalfOpen {
		m.failures = 0
	}
}

func (m *model) snapshot() Snapshot {
	return Snapshot{State: m.state, Reason: m.reason, Since: m.since, OpenUntil: m.openUntil, OpenStreak: m.streak,
		Trips: m.trips, ConsecutiveFailures: m.failures, ConsecutiveSuccesses: m.successes}
}

// configFrom decodes 64 bits into a valid configuration with small windows and durations,
// so that short inputs reach every rule.
func configFrom(raw uint64) Config {
	take := func(bits uint) int {
		v := int(raw & (1<<bits - 1))
		raw >>= bits
		return v
	}
	rule := func() RateRule {
		if take(1) == 0 {
			return RateRule{}
		}
		percent := 1 + take(7)%100
		window := 1 + take(4)
		return RateRule{Percent: percent, Window: window, MinimumProbes: 1 + take(4)%window}
	}
	c := Config{ConsecutiveFailures: take(3)}
	c.FailureRate = rule()
	c.SlowRate = rule()
	if c.ConsecutiveFailures == 0 && c.FailureRate.Window == 0 && c.SlowRate.Window == 0 {
		c.ConsecutiveFailures = 1
	}
	c.OpenDuration = time.Duration(1+take(3)) * time.Second
	c.BackoffFactor = 1 + take(2)
	c.MaxOpenDuration = c.OpenDuration * time.Duration(1+take(3))
	c.JitterPercent = take(6) % 51
	c.TrialProbes = 1 + take(2)
	c.SuccessThreshold = 1 + take(2)%c.TrialProbes
	c.Mode = Mode(take(2))
	c.TrialTimeout = time.Duration(take(2)) * time.Second
	return c
}

func FuzzBreakerAgainstModel(f *testing.F) {
	f.Add(uint64(0), uint64(0x0123456789abcdef), []byte{1, 1, 1, 5 | 31<<3, 6, 4, 0})
	f.Add(uint64(7), ^uint64(0), []byte{1, 2, 1, 2, 3, 0, 1, 1, 1, 1, 5 | 8<<3, 6, 4, 4, 1, 7, 7 | 1<<3, 0})
	f.Add(uint64(99), uint64(0xfeedface), []byte{9, 1, 17, 1, 1, 1, 1, 5 | 31<<3, 6, 4, 2, 7 | 2<<3, 1, 1, 1, 7 | 3<<3})
	// A trial written off by its bound, a stale ticket, a release, and a held trip.
	f.Add(uint64(3), uint64(0x0000ff0000000000), []byte{1, 4, 1, 1, 5 | 31<<3, 6, 4, 5 | 8<<3, 6, 4, 4 | 4<<3, 7 | 4<<3, 4, 0})
	f.Add(uint64(5), uint64(0x1), []byte{7 | 6<<3, 1, 1, 1, 1, 0, 7 | 6<<3, 1})
	f.Fuzz(func(t *testing.T, seed, rawConfig uint64, ops []byte) {
		cfg := configFrom(rawConfig)
		clk := testingclock.NewFakeClock(t0)
		b, err := New(cfg, clk, seed)
		if err != nil {
			t.Fatalf("configFrom made an invalid config %+v: %v", cfg, err)
		}
		m := &model{cfg: cfg, seed: seed, since: t0, attempt: 1}
		allow := true
		permit := func(Reason) bool { return allow }
		// Tickets handed out and not used yet, the breaker's and the model's side by side.
		type pair struct {
			b Ticket
			m mticket
		}
		var outstanding []pair
		takeOldest := func() (pair, bool) {
			if len(outstanding) == 0 {
				return pair{}, false
			}
			p := outstanding[0]
			outstanding = outstanding[1:]
			return p, true
		}

		same := func(step int, op string, got, want Transition, gotOK, wantOK bool) {
			if gotOK != wantOK || (gotOK && got != want) {
				t.Fatalf("step %d (%s) with %+v:\nbreaker %v %v\nmodel   %v %v", step, op, cfg, got, gotOK, want, wantOK)
			}
			if !gotOK {
				return
			}
			if got.Reason == NoReason {
				t.Fatalf("step %d: transition without a reason: %v", step, got)
			}
			if got.To == Open && got.From != Open {
				open := b.openUntil.Sub(got.At)
				lo := time.Duration(float64(m.lastOpenBase) * (1 - float64(cfg.JitterPercent)/100))
				hi := time.Duration(float64(m.lastOpenBase) * (1 + float64(cfg.JitterPercent)/100))
				if open < lo-1 || open > hi+1 || m.lastOpenBase > cfg.MaxOpenDuration {
					t.Fatalf("step %d: open for %s, outside [%s, %s] for streak %d", step, open, lo, hi, b.openStreak)
				}
			}
		}

		for i, op := range ops {
			arg := op >> 3
			switch op & 7 {
			case 0, 1, 2, 3:
				o := Outcome(arg % 4)
				// With bit 2 of arg, the oldest ticket handed out (maybe of an earlier
				// attempt); without it, a fresh one while Closed.
				p, ok := pair{}, false
				if arg&4 != 0 {
					p, ok = takeOldest()
				}
				if !ok && b.State() == Closed {
					p.b, _ = b.Admit()
					p.m, _ = m.admit(clk.Now())
				}
				got, gotOK := b.Record(p.b, o)
				want, wantOK := m.record(p.m, o, clk.Now())
				same(i, "record "+o.String(), got, want, gotOK, wantOK)
			case 4:
				gotT, got := b.Admit()
				wantT, want := m.admit(clk.Now())
				if got != want || gotT.attempt != wantT.attempt || gotT.trial != wantT.trial {
					t.Fatalf("step %d: Admit() = %+v %v, model says %+v %v in %s", i, gotT, got, wantT, want, m.state)
				}
				if got {
					outstanding = append(outstanding, pair{gotT, wantT})
				}
				if m.trialsThisAttempt > cfg.TrialProbes {
					t.Fatalf("step %d: %d trials admitted, more than trialProbes %d", i, m.trialsThisAttempt, cfg.TrialProbes)
				}
			case 5:
				clk.Step(time.Duration(arg) * 250 * time.Millisecond)
			case 6:
				got, gotOK := b.Tick()
				want, wantOK := m.tick(clk.Now())
				same(i, "tick", got, want, gotOK, wantOK)
			case 7:
				switch arg % 8 {
				case 0:
					got, gotOK := b.Reset()
					want, wantOK := m.reset(clk.Now())
					same(i, "reset", got, want, gotOK, wantOK)
				case 1, 2:
					next := b.Config()
					next.Mode = Mode(arg / 8 % 4)
					got, gotOK, err := b.Reconfigure(next)
					if err != nil {
						t.Fatal(err)
					}
					want, wantOK := m.setMode(next.Mode, clk.Now())
					same(i, "mode "+next.Mode.String(), got, want, gotOK, wantOK)
				case 3:
					// A new leader: a fresh breaker restored from status takes over.
					snap := b.Snapshot()
					b, err = New(cfg, clk, seed)
					if err != nil {
						t.Fatal(err)
					}
					b.cfg.Mode = m.cfg.Mode
					if m.permit != nil {
						b.SetTripPermit(permit)
					}
					b.Restore(snap)
					if b.Snapshot() != snap {
						t.Fatalf("step %d: Snapshot→Restore→Snapshot changed %+v into %+v", i, snap, b.Snapshot())
					}
					m.restore()
					// A new leader has none of the old one's probes in flight, and numbers
					// attempts its own way.
					outstanding = nil
					m.attempt = b.attempt
				case 4, 5:
					p, _ := takeOldest()
					b.Release(p.b)
					m.release(p.m)
				case 6, 7:
					// Install the permit on first use, then flip its answer.
					if m.permit == nil {
						b.SetTripPermit(permit)
						m.permit = func() bool { return allow }
					} else {
						allow = !allow
					}
				}
				if m.trialsThisAttempt > cfg.TrialProbes {
					t.Fatalf("step %d: %d trials admitted, more than trialProbes %d", i, m.trialsThisAttempt, cfg.TrialProbes)
				}
			}
			gotD, gotDOK := b.NextDeadline()
			wantD, wantDOK := m.deadline()
			if gotDOK != wantDOK || !gotD.Equal(wantD) {
				t.Fatalf("step %d: NextDeadline %v %v, model %v %v", i, gotD, gotDOK, wantD, wantDOK)
			}
			if b.Held() != m.held {
				t.Fatalf("step %d: Held() %s, model %s", i, b.Held(), m.held)
			}
			if b.State() != m.state || b.Gate() != m.gate() || b.Snapshot() != m.snapshot() {
				t.Fatalf("step %d (op %d): breaker %+v gate %s\n               model   %+v gate %s", i, op,
					b.Snapshot(), b.Gate(), m.snapshot(), m.gate())
			}
			if w := b.Window(); b.State() == Closed && w.Probes != min(len(m.history), max(cfg.FailureRate.Window, cfg.SlowRate.Window)) {
				t.Fatalf("step %d: window holds %d, model history %d", i, w.Probes, len(m.history))
			}
		}
	})
}
