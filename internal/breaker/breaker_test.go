package breaker

import (
	"fmt"
	"strings"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// base is a configuration with one rule, 3 consecutive failures, and a 60s open period.
func base(edit ...func(*Config)) Config {
	c := Config{ConsecutiveFailures: 3, OpenDuration: time.Minute, TrialProbes: 1, SuccessThreshold: 1}
	for _, e := range edit {
		e(&c)
	}
	return c
}

// run plays a script against a new breaker and returns the transitions it produced, one
// string each. Script words:
//
//	S F L N   record Success, Failure, Slow (L for late), Neutral, with the oldest ticket an
//	          A handed out, or else (Closed only) with a fresh one
//	A a       Admit, expecting true (A) or false (a)
//	X         Release the oldest ticket an A handed out
//	+90s      advance the clock
//	T         Tick
//	R         Reset
//	mode=X    Reconfigure to mode X (Auto, ForceOpen, ForceClosed, Observe)
//	open=Xs   check that the breaker is Open until t0 + offset X, relative to now
func run(t *testing.T, cfg Config, script string) (*Breaker, []string) {
	t.Helper()
	clk := testingclock.NewFakeClock(t0)
	b, err := New(cfg, clk, 42)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	var got []string
	note := func(tr Transition, ok bool) {
		if !ok {
			return
		}
		if tr.Reason == NoReason {
			t.Errorf("transition %v has no reason", tr)
		}
		if !tr.At.Equal(clk.Now()) {
			t.Errorf("transition %v is not stamped with the clock's time %v", tr, clk.Now())
		}
		s := fmt.Sprintf("%s->%s %s", tr.From, tr.To, tr.Reason)
		if tr.GateFrom != tr.From || tr.GateTo != tr.To {
			s += fmt.Sprintf(" gate %s->%s", tr.GateFrom, tr.GateTo)
		}
		got = append(got, s)
	}
	outcomes := map[string]Outcome{"S": Success, "F": Failure, "L": Slow, "N": Neutral}
	var tickets []Ticket
	oldest := func() Ticket {
		if len(tickets) > 0 {
			t := tickets[0]
			tickets = tickets[1:]
			return t
		}
		if b.State() == Closed {
			t, _ := b.Admit()
			return t
		}
		return Ticket{}
	}
	modes := map[string]Mode{"Auto": Auto, "ForceOpen": ForceOpen, "ForceClosed": ForceClosed, "Observe": Observe}
	for _, word := range strings.Fields(script) {
		switch {
		case outcomes[word] != 0 || word == "S":
			note(b.Record(oldest(), outcomes[word]))
		case word == "A" || word == "a":
			ticket, ok := b.Admit()
			if ok != (word == "A") {
				t.Fatalf("%q: Admit() = %v in state %s", script, ok, b.State())
			}
			if ok {
				tickets = append(tickets, ticket)
			}
		case word == "X":
			b.Release(oldest())
		case word == "T":
			note(b.Tick())
		case word == "R":
			note(b.Reset())
		case strings.HasPrefix(word, "+"):
			d, err := time.ParseDuration(word[1:])
			if err != nil {
				t.Fatalf("bad step %q", word)
			}
			clk.Step(d)
		case strings.HasPrefix(word, "mode="):
			c := b.Config()
			c.Mode = modes[strings.TrimPrefix(word, "mode=")]
			tr, ok, err := b.Reconfigure(c)
			if err != nil {
				t.Fatalf("Reconfigure: %v", err)
			}
			note(tr, ok)
		case strings.HasPrefix(word, "open="):
			d, err := time.ParseDuration(strings.TrimPrefix(word, "open="))
			if err != nil {
				t.Fatalf("bad check %q", word)
			}
			until, ok := b.NextDeadline()
			if !ok || b.State() != Open || !until.Equal(clk.Now().Add(d)) {
				t.Errorf("%q: at %q want Open until now+%s, got %s until %v (now %v)", script, word, d, b.State(),
					until.Sub(clk.Now()), clk.Now())
			}
		default:
			t.Fatalf("unknown script word %q", word)
		}
	}
	return b, got
}

// record admits a probe and records its outcome at once, as a probe that returns immediately.
func record(b *Breaker, o Outcome) (Transition, bool) {
	ticket, _ := b.Admit()
	return b.Record(ticket, o)
}

func TestTransitions(t *testing.T) {
	rate := func(percent, window, minimum int) RateRule { return RateRule{percent, window, minimum} }
	tests := []struct {
		name   string
		cfg    Config
		script string
		want   []string
	}{
		{"consecutive failures trip", base(), "F F F open=60s",
			[]string{"Closed->Open ConsecutiveFailures"}},
		{"a success breaks the run", base(), "F F S F F", nil},
		{"a slow success breaks the run", base(), "F F L F F", nil},
		{"a neutral outcome does not break the run", base(), "F F N F",
			[]string{"Closed->Open ConsecutiveFailures"}},
		{"failure rate trips once the minimum is reached", base(func(c *Config) {
			c.ConsecutiveFailures = 0
			c.FailureRate = rate(50, 4, 4)
		}), "F S F", nil},
		{"failure rate trips at exactly the percent", base(func(c *Config) {
			c.ConsecutiveFailures = 0
			c.FailureRate = rate(50, 4, 4)
		}), "F S F S", []string{"Closed->Open FailureRate"}},
		{"failure rate forgets outcomes that left the window", base(func(c *Config) {
			c.ConsecutiveFailures = 0
			c.FailureRate = rate(80, 4, 4)
		}), "F F S S S F F S F", nil},
		{"neutral outcomes are not in the window", base(func(c *Config) {
			c.ConsecutiveFailures = 0
			c.FailureRate = rate(50, 2, 2)
		}), "S N N N N F", []string{"Closed->Open FailureRate"}},
		{"slow rate trips", base(func(c *Config) {
			c.ConsecutiveFailures = 0
			c.SlowRate = rate(75, 4, 4)
		}), "L L S L", []string{"Closed->Open SlowRate"}},
		{"consecutive failures win over a rate that also holds", base(func(c *Config) {
			c.ConsecutiveFailures = 2
			c.FailureRate = rate(50, 2, 2)
		}), "F F", []string{"Closed->Open ConsecutiveFailures"}},
		{"failure rate is judged before slow rate", base(func(c *Config) {
			c.ConsecutiveFailures = 0
			c.FailureRate = rate(50, 2, 2)
			c.SlowRate = rate(50, 2, 2)
		}), "L F", []string{"Closed->Open FailureRate"}},
		{"open drops outcomes and refuses probes", base(), "F F F S S S a F F F", []string{"Closed->Open ConsecutiveFailures"}},
		{"open never ends lazily, only by Tick at openUntil", base(), "F F F +59s T a +1s a T",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout"}},
		{"half-open drops outcomes without an admitted trial", base(), "F F F +60s T S S F",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout"}},
		{"a successful trial closes", base(), "F F F +60s T A a S A",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout", "HalfOpen->Closed TrialSucceeded"}},
		{"a failed trial reopens", base(), "F F F +60s T A F open=60s",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout", "HalfOpen->Open TrialFailed"}},
		{"several trials must all succeed", base(func(c *Config) { c.TrialProbes, c.SuccessThreshold = 3, 2 }),
			"F F F +60s T A A A a S S",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout", "HalfOpen->Closed TrialSucceeded"}},
		{"one failed trial among several reopens", base(func(c *Config) { c.TrialProbes, c.SuccessThreshold = 2, 2 }),
			"F F F +60s T A A S F",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout", "HalfOpen->Open TrialFailed"}},
		{"a neutral trial gives its slot back", base(), "F F F +60s T A a N A S",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout", "HalfOpen->Closed TrialSucceeded"}},
		{"a released trial gives its slot back", base(), "F F F +60s T A a X A S",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout", "HalfOpen->Closed TrialSucceeded"}},
		{"a release outside HalfOpen does nothing", base(), "A X F F F", []string{"Closed->Open ConsecutiveFailures"}},
		{"a slow trial is a success", base(), "F F F +60s T A L",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout", "HalfOpen->Closed TrialSucceeded"}},
		{"closing clears the window", base(func(c *Config) {
			c.ConsecutiveFailures = 0
			c.FailureRate = rate(60, 4, 2)
		}), "F F +60s T A S F S S S F",
			[]string{"Closed->Open FailureRate", "Open->HalfOpen OpenTimeout", "HalfOpen->Closed TrialSucceeded"}},
		{"backoff doubles each reopen up to the cap", base(func(c *Config) {
			c.OpenDuration, c.BackoffFactor, c.MaxOpenDuration = 10*time.Second, 2, 30*time.Second
		}), "F F F open=10s +10s T A F open=20s +20s T A F open=30s +30s T A F open=30s",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout", "HalfOpen->Open TrialFailed",
				"Open->HalfOpen OpenTimeout", "HalfOpen->Open TrialFailed", "Open->HalfOpen OpenTimeout", "HalfOpen->Open TrialFailed"}},
		{"closing resets the backoff streak", base(func(c *Config) {
			c.OpenDuration, c.BackoffFactor, c.MaxOpenDuration = 10*time.Second, 2, time.Hour
		}), "F F F +10s T A F open=20s +20s T A S F F F open=10s",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout", "HalfOpen->Open TrialFailed",
				"Open->HalfOpen OpenTimeout", "HalfOpen->Closed TrialSucceeded", "Closed->Open ConsecutiveFailures"}},
		{"reset closes an open breaker", base(), "F F F R A",
			[]string{"Closed->Open ConsecutiveFailures", "Open->Closed Reset"}},
		{"reset closes a half-open breaker", base(), "F F F +60s T R",
			[]string{"Closed->Open ConsecutiveFailures", "Open->HalfOpen OpenTimeout", "HalfOpen->Closed Reset"}},
		{"reset of a closed breaker clears its counters but is no transition", base(), "F F R F F", nil},
		{"force open pins the gate while the machine runs", base(), "mode=ForceOpen F F F +60s T A S",
			[]string{"Closed->Closed Forced gate Closed->Open", "Closed->Open ConsecutiveFailures gate Open->Open",
				"Open->HalfOpen OpenTimeout gate Open->Open", "HalfOpen->Closed TrialSucceeded gate Open->Open"}},
		{"force closed pins the gate closed", base(), "F F F mode=ForceClosed mode=Auto",
			[]string{"Closed->Open ConsecutiveFailures", "Open->Open Forced gate Open->Closed", "Open->Open Forced gate Closed->Open"}},
		{"observe reports but never gates", base(func(c *Config) { c.Mode = Observe }), "F F F +60s T A F",
			[]string{"Closed->Open ConsecutiveFailures gate Closed->Closed", "Open->HalfOpen OpenTimeout gate Closed->Closed",
				"HalfOpen->Open TrialFailed gate Closed->Closed"}},
		{"a mode change that keeps the gate is no transition", base(), "mode=Observe mode=ForceClosed mode=Auto", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := run(t, tt.cfg, tt.script)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("script %q\n got: %q\nwant: %q", tt.script, got, tt.want)
			}
		})
	}
}

func TestSnapshotRestoreResumesOpenBreaker(t *testing.T) {
	cfg := base(func(c *Config) {
		c.OpenDuration, c.BackoffFactor, c.MaxOpenDuration, c.JitterPercent = 10*time.Second, 3, time.Hour, 20
	})
	b, _ := run(t, cfg, "F F F +12s T A F")
	snap := b.Snapshot()
	if snap.State != Open || snap.OpenStreak != 2 || snap.Trips != 2 || snap.Reason != TrialFailed {
		t.Fatalf("snapshot = %+v", snap)
	}

	clk := testingclock.NewFakeClock(t0.Add(time.Hour)) // a new leader, much later
	restored, err := New(cfg, clk, 42)
	if err != nil {
		t.Fatal(err)
	}
	restored.Restore(snap)
	if got := restored.Snapshot(); got != snap {
		t.Fatalf("Snapshot after Restore = %+v, want %+v", got, snap)
	}
	if until, _ := restored.NextDeadline(); !until.Equal(snap.OpenUntil) {
		t.Fatalf("restored openUntil %v, want %v", until, snap.OpenUntil)
	}
	if _, ok := restored.Admit(); restored.Gate() != Open || ok {
		t.Fatal("a restored Open breaker must keep the gate Open and refuse probes")
	}
	// Both make the same next decision: the same jittered open period for trip 3.
	for _, br := range []*Breaker{b, restored} {
		br.clock = testingclock.NewFakeClock(snap.OpenUntil)
		_, ticked := br.Tick()
		ticket, admitted := br.Admit()
		if !ticked || !admitted {
			t.Fatal("no trial at openUntil")
		}
		br.Record(ticket, Failure)
	}
	if a, r := b.Snapshot(), restored.Snapshot(); a != r {
		t.Fatalf("decisions diverged after Restore:\noriginal %+v\nrestored %+v", a, r)
	}
}

func TestRestoreRepairsIncompleteSnapshots(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	b, _ := New(base(), clk, 1)
	b.Restore(Snapshot{State: Open, Since: t0})
	if until, ok := b.NextDeadline(); !ok || !until.Equal(t0.Add(time.Minute)) {
		t.Fatalf("an Open snapshot without openUntil should open for openDuration from Since, got %v %v", until, ok)
	}
	b.Restore(Snapshot{State: State(9), OpenStreak: -3, ConsecutiveFailures: -1})
	if s := b.Snapshot(); s.State != Closed || s.OpenStreak != 0 || s.ConsecutiveFailures != 0 {
		t.Fatalf("an unknown state should restore as Closed with sane counters, got %+v", s)
	}
}

func TestJitterStaysWithinBoundsAndSpreads(t *testing.T) {
	cfg := base(func(c *Config) { c.JitterPercent = 10 })
	seen := map[time.Duration]bool{}
	for seed := uint64(0); seed < 200; seed++ {
		b, _ := New(cfg, testingclock.NewFakeClock(t0), seed)
		d := b.openDuration(1, 1)
		if d < 54*time.Second || d > 66*time.Second {
			t.Fatalf("seed %d: open duration %s outside 60s ± 10%%", seed, d)
		}
		seen[d.Truncate(time.Second)] = true
	}
	if len(seen) < 8 {
		t.Errorf("jitter hardly spreads: only %d distinct seconds over 200 seeds", len(seen))
	}
}

func TestGranularityRoundsOpenUntilUp(t *testing.T) {
	clk := testingclock.NewFakeClock(t0.Add(300 * time.Millisecond))
	b, _ := New(base(func(c *Config) { c.Granularity = time.Second }), clk, 1)
	for range 3 {
		record(b, Failure)
	}
	if until, _ := b.NextDeadline(); !until.Equal(t0.Add(61 * time.Second)) {
		t.Fatalf("openUntil %v, want now+60s rounded up to the second (%v)", until, t0.Add(61*time.Second))
	}
}

func TestBackoffNeverOverflows(t *testing.T) {
	cfg := base(func(c *Config) { c.BackoffFactor, c.MaxOpenDuration = 10, 0 })
	for _, streak := range []int32{1, 2, 20, 1 << 30} {
		if d := backoff(cfg, streak); d <= 0 {
			t.Fatalf("streak %d: backoff %s is not positive", streak, d)
		}
	}
}

func TestReconfigureKeepsNewestOutcomes(t *testing.T) {
	cfg := base(func(c *Config) {
		c.ConsecutiveFailures = 0
		c.FailureRate = RateRule{Percent: 60, Window: 10, MinimumProbes: 9}
	})
	b, got := run(t, cfg, "F F S S S S S F S")
	if got != nil || b.Window() != (WindowStats{Probes: 9, Failures: 3}) {
		t.Fatalf("setup: %v %+v", got, b.Window())
	}
	smaller := cfg
	smaller.FailureRate = RateRule{Percent: 60, Window: 3, MinimumProbes: 3}
	if _, _, err := b.Reconfigure(smaller); err != nil {
		t.Fatal(err)
	}
	if w := b.Window(); w != (WindowStats{Probes: 3, Failures: 1}) {
		t.Fatalf("after shrinking to 3 the window should hold the newest S F S, got %+v", w)
	}
	if tr, ok := record(b, Failure); !ok || tr.Reason != FailureRate {
		t.Fatalf("F S F = 67%% of 3 should trip, got %v %v", tr, ok)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{base(func(c *Config) { c.ConsecutiveFailures = 0 }), "no trip rule"},
		{base(func(c *Config) { c.FailureRate = RateRule{Percent: 0, Window: 5, MinimumProbes: 5} }), "percent 0"},
		{base(func(c *Config) { c.SlowRate = RateRule{Percent: 5, Window: 5, MinimumProbes: 6} }), "minimumProbes 6"},
		{base(func(c *Config) { c.FailureRate = RateRule{Percent: 5, Window: 5000, MinimumProbes: 6} }), "exceeds"},
		{base(func(c *Config) { c.OpenDuration = 0 }), "openDuration"},
		{base(func(c *Config) { c.MaxOpenDuration = time.Second }), "maxOpenDuration"},
		{base(func(c *Config) { c.JitterPercent = 60 }), "jitterPercent"},
		{base(func(c *Config) { c.SuccessThreshold = 2 }), "successThreshold"},
		{base(func(c *Config) { c.Mode = 7 }), "mode"},
		{base(func(c *Config) { c.BackoffFactor = -1 }), "factor"},
		{base(func(c *Config) { c.Granularity = -1 }), "granularity"},
	} {
		if err := tt.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want an error about %q", tt.cfg, err, tt.want)
		}
		if _, err := New(tt.cfg, testingclock.NewFakeClock(t0), 0); err == nil {
			t.Errorf("New accepted %+v", tt.cfg)
		}
	}
	if err := base().Validate(); err != nil {
		t.Errorf("base config invalid: %v", err)
	}
}

func TestStringers(t *testing.T) {
	for r := NoReason + 1; r <= QueryRule; r++ {
		if ParseReason(r.String()) != r {
			t.Errorf("ParseReason(%q) does not round-trip", r)
		}
	}
	if ParseReason("Bogus") != NoReason || State(9).String() != "State(9)" || Outcome(9).String() != "Outcome(9)" ||
		Mode(9).String() != "Mode(9)" || Reason(99).String() != "Reason(99)" {
		t.Error("unknown values must print their number and parse as NoReason")
	}
}

func TestLateOutcomesNeverCountForALaterAttempt(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	b, _ := New(base(), clk, 1)
	closedEra, _ := b.Admit() // a probe that hangs while the others trip the breaker
	for range 3 {
		record(b, Failure)
	}
	clk.Step(time.Minute)
	if _, ok := b.Tick(); !ok || b.State() != HalfOpen {
		t.Fatalf("want HalfOpen, got %s", b.State())
	}
	trial, ok := b.Admit()
	if !ok {
		t.Fatal("no trial admitted")
	}
	if _, changed := b.Record(closedEra, Success); changed {
		t.Fatal("a probe admitted while Closed decided a HalfOpen trial")
	}
	if _, more := b.Admit(); more {
		t.Fatal("the late outcome gave the trial's slot away")
	}
	if tr, changed := b.Record(trial, Success); !changed || tr.To != Closed {
		t.Fatalf("the trial's own outcome should close the breaker, got %v %v", tr, changed)
	}
	if _, changed := b.Record(trial, Failure); changed || b.State() != Closed {
		t.Fatal("a trial's outcome counted again after the breaker closed")
	}
}

func TestTrialTimeoutWritesOffLostTrials(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	b, _ := New(base(func(c *Config) { c.TrialTimeout = 2 * time.Second }), clk, 1)
	for range 3 {
		record(b, Failure)
	}
	clk.Step(time.Minute)
	b.Tick()
	if _, ok := b.NextDeadline(); ok {
		t.Fatal("HalfOpen without a trial in flight needs no deadline")
	}
	lost, _ := b.Admit()
	at, ok := b.NextDeadline()
	if !ok || !at.Equal(clk.Now().Add(2*time.Second)) {
		t.Fatalf("a trial in flight should be bounded at now+2s, got %v %v", at, ok)
	}
	clk.Step(time.Second)
	b.Tick()
	if _, more := b.Admit(); more {
		t.Fatal("the trial was written off before its bound")
	}
	clk.Step(time.Second)
	if _, changed := b.Tick(); changed || b.State() != HalfOpen {
		t.Fatal("writing off a trial is no transition")
	}
	next, more := b.Admit()
	if !more {
		t.Fatal("the lost trial's slot was not handed out again")
	}
	if _, changed := b.Record(lost, Failure); changed {
		t.Fatal("the written-off trial's late failure reopened the breaker")
	}
	if tr, changed := b.Record(next, Success); !changed || tr.To != Closed {
		t.Fatalf("the new trial should close the breaker, got %v %v", tr, changed)
	}
}

func TestTripPermitHoldsTheTripUntilTheRuleStopsHolding(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	b, _ := New(base(), clk, 1)
	allow := false
	var asked []Reason
	b.SetTripPermit(func(r Reason) bool { asked = append(asked, r); return allow })
	for range 4 {
		if _, changed := record(b, Failure); changed {
			t.Fatal("a held trip opened the breaker")
		}
	}
	if b.State() != Closed || b.Gate() != Closed || b.Held() != ConsecutiveFailures {
		t.Fatalf("held: state %s gate %s held %s", b.State(), b.Gate(), b.Held())
	}
	if len(asked) != 2 {
		t.Fatalf("the permit is asked on every outcome for which a rule holds: asked %d times", len(asked))
	}
	record(b, Success)
	if b.Held() != NoReason {
		t.Fatal("a success ends the run, so nothing is held any more")
	}
	for range 3 {
		record(b, Failure)
	}
	allow = true
	if tr, changed := record(b, Failure); !changed || tr.To != Open || b.Held() != NoReason {
		t.Fatalf("a permitted trip opens: %v %v held %s", tr, changed, b.Held())
	}
}

func TestTripByAQueryRule(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	b, err := New(base(), clk, 1)
	if err != nil {
		t.Fatal(err)
	}
	allow := false
	b.SetTripPermit(func(r Reason) bool {
		if r != QueryRule {
			t.Errorf("the permit was asked about %s", r)
		}
		return allow
	})
	if _, ok := b.Trip(QueryRule); ok || b.Held() != QueryRule || b.State() != Closed {
		t.Fatalf("a refused permit must hold the trip: state %s, held %s", b.State(), b.Held())
	}
	b.ClearHeld(ConsecutiveFailures)
	if b.Held() != QueryRule {
		t.Fatal("clearing another rule's hold cleared this one")
	}
	b.ClearHeld(QueryRule)
	if b.Held() != NoReason {
		t.Fatal("the hold stayed after its rule stopped holding")
	}
	allow = true
	tr, ok := b.Trip(QueryRule)
	if !ok || tr.From != Closed || tr.To != Open || tr.Reason != QueryRule || b.Snapshot().Trips != 1 {
		t.Fatalf("trip: %v %v, snapshot %+v", tr, ok, b.Snapshot())
	}
	if _, ok := b.Trip(QueryRule); ok {
		t.Fatal("an Open breaker tripped again")
	}
	clk.Step(time.Hour)
	b.Tick()
	if _, ok := b.Trip(QueryRule); ok || b.State() != HalfOpen {
		t.Fatal("a query rule must not judge HalfOpen: recovery stays with the probes' trials")
	}
}
