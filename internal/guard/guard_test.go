package guard

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"
	testingclock "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func key(name string) types.NamespacedName {
	return types.NamespacedName{Namespace: "shop", Name: name}
}

// defaults is the default install without a release timeout, edited by edit.
func defaults(edit ...func(*Config)) Config {
	c := Config{MaxTripFraction: 0.5, Window: 30 * time.Second, MinBreakers: 5}
	for _, e := range edit {
		e(&c)
	}
	return c
}

// trips returns trips at the given offsets from t0.
func trips(ds ...time.Duration) []time.Time {
	ts := make([]time.Time, len(ds))
	for i, d := range ds {
		ts[i] = at(d)
	}
	return ts
}

// held returns holds of the named keys since the given offsets from t0.
func held(holds map[string]time.Duration) map[types.NamespacedName]time.Time {
	h := map[types.NamespacedName]time.Time{}
	for name, d := range holds {
		h[key(name)] = at(d)
	}
	return h
}

// show prints a state with times as offsets from t0, holds sorted by name, so that states
// compare as strings and failures read well.
func show(s State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "gated=%d trips=[", s.Gated)
	for i, t := range s.Trips {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(t.Sub(t0).String())
	}
	b.WriteString("] held=[")
	var hs []string
	for k, since := range s.Held {
		hs = append(hs, k.Name+"@"+since.Sub(t0).String())
	}
	slices.Sort(hs)
	b.WriteString(strings.Join(hs, " "))
	b.WriteString("] last=")
	if s.LastRelease.IsZero() {
		b.WriteString("-")
	} else {
		b.WriteString(s.LastRelease.Sub(t0).String())
	}
	return b.String()
}

func TestDecide(t *testing.T) {
	s := time.Second
	withRelease := func(timeout, interval time.Duration) func(*Config) {
		return func(c *Config) { c.ReleaseTimeout, c.ReleaseInterval = timeout, interval }
	}
	five := []time.Duration{-25 * s, -20 * s, -15 * s, -10 * s, -5 * s}
	tests := []struct {
		name  string
		cfg   Config
		state State
		key   string
		now   time.Duration
		want  Verdict
		next  string
	}{
		{name: "first trip of 10 is allowed and counted", cfg: defaults(), state: State{Gated: 10},
			want: Allow, next: "gated=10 trips=[0s] held=[] last=-"},
		{name: "5th trip of 10 is allowed", cfg: defaults(), state: State{Gated: 10, Trips: trips(five[:4]...)},
			want: Allow, next: "gated=10 trips=[-25s -20s -15s -10s 0s] held=[] last=-"},
		{name: "6th trip of 10 is held from now", cfg: defaults(), state: State{Gated: 10, Trips: trips(five...)},
			want: Hold, next: "gated=10 trips=[-25s -20s -15s -10s -5s] held=[k@0s] last=-"},
		{name: "trips older than the window are pruned", cfg: defaults(), state: State{Gated: 10, Trips: trips(-90*s, -31*s, -10*s)},
			want: Allow, next: "gated=10 trips=[-10s 0s] held=[] last=-"},
		{name: "a trip exactly one window ago is outside", cfg: defaults(),
			state: State{Gated: 10, Trips: trips(-30*s, -20*s, -15*s, -10*s, -5*s)},
			want:  Allow, next: "gated=10 trips=[-20s -15s -10s -5s 0s] held=[] last=-"},
		{name: "a trip just inside the window counts", cfg: defaults(),
			state: State{Gated: 10, Trips: trips(-30*s+time.Nanosecond, -20*s, -15*s, -10*s, -5*s)},
			want:  Hold, next: "gated=10 trips=[-29.999999999s -20s -15s -10s -5s] held=[k@0s] last=-"},
		{name: "active guard holds a new trip even after the window slid", cfg: defaults(),
			state: State{Gated: 10, Held: held(map[string]time.Duration{"a": -60 * s})},
			want:  Hold, next: "gated=10 trips=[] held=[a@-1m0s k@0s] last=-"},
		{name: "a held key stays held with its since", cfg: defaults(),
			state: State{Gated: 10, Trips: trips(-90 * s), Held: held(map[string]time.Duration{"k": -60 * s})},
			want:  Hold, next: "gated=10 trips=[] held=[k@-1m0s] last=-"},
		{name: "a cleared key is judged by the budget again", cfg: defaults(),
			state: State{Gated: 10, Trips: trips(five[:4]...), Held: held(nil)},
			want:  Allow, next: "gated=10 trips=[-25s -20s -15s -10s 0s] held=[] last=-"},
		{name: "fewer than MinBreakers gated: always allowed", cfg: defaults(), state: State{Gated: 4, Trips: trips(five...)},
			want: Allow, next: "gated=4 trips=[-25s -20s -15s -10s -5s 0s] held=[] last=-"},
		{name: "fewer than MinBreakers gated: a hold is dropped", cfg: defaults(),
			state: State{Gated: 4, Held: held(map[string]time.Duration{"k": -60 * s, "b": -10 * s})},
			want:  Allow, next: "gated=4 trips=[0s] held=[b@-10s] last=-"},
		{name: "MinBreakers gated: the guard judges", cfg: defaults(), state: State{Gated: 5, Trips: trips(-10*s, -5*s)},
			want: Hold, next: "gated=5 trips=[-10s -5s] held=[k@0s] last=-"},
		{name: "fraction 1 disables the guard", cfg: defaults(func(c *Config) { c.MaxTripFraction = 1 }),
			state: State{Gated: 10, Trips: trips(five...), Held: held(map[string]time.Duration{"k": -60 * s, "b": -5 * s})},
			want:  Allow, next: "gated=10 trips=[-25s -20s -15s -10s -5s 0s] held=[b@-5s] last=-"},
		{name: "a budget of 0 holds every trip", cfg: defaults(func(c *Config) { c.MaxTripFraction = 0.1 }),
			state: State{Gated: 9}, want: Hold, next: "gated=9 trips=[] held=[k@0s] last=-"},
		{name: "release timeout 0 never releases", cfg: defaults(),
			state: State{Gated: 10, Held: held(map[string]time.Duration{"k": -24 * time.Hour})},
			want:  Hold, next: "gated=10 trips=[] held=[k@-24h0m0s] last=-"},
		{name: "not released before the timeout", cfg: defaults(withRelease(5*time.Minute, 0)),
			state: State{Gated: 10, Held: held(map[string]time.Duration{"k": -5*time.Minute + s})},
			want:  Hold, next: "gated=10 trips=[] held=[k@-4m59s] last=-"},
		{name: "released at the timeout, counted as a trip", cfg: defaults(withRelease(5*time.Minute, 0)),
			state: State{Gated: 10, Trips: trips(five...), Held: held(map[string]time.Duration{"k": -5 * time.Minute, "b": -5 * time.Minute})},
			want:  Release, next: "gated=10 trips=[-25s -20s -15s -10s -5s 0s] held=[b@-5m0s] last=0s"},
		{name: "next release waits for the interval, which defaults to the window", cfg: defaults(withRelease(5*time.Minute, 0)),
			state: State{Gated: 10, Held: held(map[string]time.Duration{"k": -6 * time.Minute}), LastRelease: at(-29 * s)},
			want:  Hold, next: "gated=10 trips=[] held=[k@-6m0s] last=-29s"},
		{name: "next release one window after the last", cfg: defaults(withRelease(5*time.Minute, 0)),
			state: State{Gated: 10, Held: held(map[string]time.Duration{"k": -6 * time.Minute}), LastRelease: at(-30 * s)},
			want:  Release, next: "gated=10 trips=[0s] held=[] last=0s"},
		{name: "release interval set: waits for it", cfg: defaults(withRelease(5*time.Minute, time.Minute)),
			state: State{Gated: 10, Held: held(map[string]time.Duration{"k": -6 * time.Minute}), LastRelease: at(-59 * s)},
			want:  Hold, next: "gated=10 trips=[] held=[k@-6m0s] last=-59s"},
		{name: "release interval set: releases after it", cfg: defaults(withRelease(5*time.Minute, time.Minute)),
			state: State{Gated: 10, Held: held(map[string]time.Duration{"k": -6 * time.Minute}), LastRelease: at(-60 * s)},
			want:  Release, next: "gated=10 trips=[0s] held=[] last=0s"},
		{name: "a new trip is held, not released, while others wait for release", cfg: defaults(withRelease(5*time.Minute, 0)),
			state: State{Gated: 10, Held: held(map[string]time.Duration{"b": -6 * time.Minute})},
			want:  Hold, next: "gated=10 trips=[] held=[b@-6m0s k@0s] last=-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); err != nil {
				t.Fatalf("invalid config: %v", err)
			}
			k := tt.key
			if k == "" {
				k = "k"
			}
			v, next := Decide(tt.cfg, tt.state, key(k), at(tt.now))
			if v != tt.want || show(next) != tt.next {
				t.Errorf("Decide(%s) = %v, %s; want %v, %s", show(tt.state), v, show(next), tt.want, tt.next)
			}
		})
	}
}

// TestDecideTenBreakersAtMostFiveTrip plays the case the guard exists for: the manager's network
// fails, all 10 gated breakers keep failing for 10 minutes, and only 5 trip.
func TestDecideTenBreakersAtMostFiveTrip(t *testing.T) {
	cfg := defaults()
	s := State{Gated: 10}
	var allowed []string
	for now := time.Duration(0); now < 10*time.Minute; now += time.Second {
		for i := range 10 {
			k := key(fmt.Sprint("b", i))
			if slices.Contains(allowed, k.Name) {
				continue // Open: it does not ask again
			}
			var v Verdict
			v, s = Decide(cfg, s, k, at(now))
			switch v {
			case Allow:
				allowed = append(allowed, k.Name)
			case Release:
				t.Fatalf("released %s at %v with no release timeout", k.Name, now)
			}
		}
	}
	if want := []string{"b0", "b1", "b2", "b3", "b4"}; !slices.Equal(allowed, want) {
		t.Fatalf("allowed %v, want %v", allowed, want)
	}
	if len(s.Held) != 5 {
		t.Fatalf("held %d, want 5: %s", len(s.Held), show(s))
	}
	for k, since := range s.Held {
		if !since.Equal(t0) {
			t.Errorf("%s held since %v, want the first time it asked", k.Name, since.Sub(t0))
		}
	}

	// The probes of b5..b8 recover; b9 still fails, so the guard stays active.
	now := at(10 * time.Minute)
	s.Held = held(map[string]time.Duration{"b9": 0})
	if v, _ := Decide(cfg, s, key("b5"), now); v != Hold {
		t.Errorf("b5 failing again while b9 is held: %v, want Hold", v)
	}
	// b9 recovers too: nothing is held and the window is empty, so trips are judged afresh.
	s.Held = nil
	if v, _ := Decide(cfg, s, key("b5"), now); v != Allow {
		t.Errorf("b5 failing again with nothing held: %v, want Allow", v)
	}
}

// TestDecideReleasesOneByOne: with a release timeout, the 5 held trips go ahead one per
// release interval once they have been held that long, and not before.
func TestDecideReleasesOneByOne(t *testing.T) {
	cfg := defaults(func(c *Config) { c.ReleaseTimeout = 5 * time.Minute })
	s := State{Gated: 10}
	var released []time.Duration
	open := map[string]bool{}
	for now := time.Duration(0); now < 10*time.Minute; now += time.Second {
		for i := range 10 {
			name := fmt.Sprint("b", i)
			if open[name] {
				continue
			}
			var v Verdict
			v, s = Decide(cfg, s, key(name), at(now))
			switch v {
			case Allow:
				if now != 0 {
					t.Fatalf("%s allowed at %v", name, now)
				}
				open[name] = true
			case Release:
				released = append(released, now)
				open[name] = true
			}
		}
	}
	m := time.Minute
	want := []time.Duration{5 * m, 5*m + 30*time.Second, 6 * m, 6*m + 30*time.Second, 7 * m}
	if !slices.Equal(released, want) {
		t.Fatalf("released at %v, want %v", released, want)
	}
}

// TestDecideDoesNotModifyItsInput checks that Decide copies what it changes, even into a
// trips slice with spare capacity.
func TestDecideDoesNotModifyItsInput(t *testing.T) {
	cfg := defaults(func(c *Config) { c.ReleaseTimeout = time.Minute })
	backing := trips(-10*time.Second, -5*time.Second, 99*time.Hour)
	in := State{Gated: 10, Trips: backing[:2], Held: held(map[string]time.Duration{"h": -2 * time.Minute})}
	before := show(in)
	for _, k := range []string{"h", "new", "h"} {
		v, _ := Decide(cfg, in, key(k), t0)
		if show(in) != before || !backing[2].Equal(at(99*time.Hour)) {
			t.Fatalf("Decide for %s (%v) changed its input: %s, spare %v; was %s", k, v, show(in), backing[2].Sub(t0), before)
		}
	}
	allow := State{Gated: 10, Trips: backing[:2]}
	if v, _ := Decide(cfg, allow, key("a"), t0); v != Allow || !backing[2].Equal(at(99*time.Hour)) {
		t.Fatalf("Allow (%v) wrote into spare capacity: %v", v, backing[2].Sub(t0))
	}
}

func TestBudget(t *testing.T) {
	for _, tt := range []struct {
		fraction float64
		gated    int
		want     int
	}{
		{0.5, 10, 5}, {0.3, 10, 3}, {0.7, 10, 7}, {0.29, 100, 29}, {0.5, 5, 2}, {0.6, 5, 3},
		{0.1, 9, 0}, {1, 7, 7}, {0.5, 0, 0}, {0.5, -1, 0},
	} {
		if got := Budget(tt.fraction, tt.gated); got != tt.want {
			t.Errorf("Budget(%v, %d) = %d, want %d", tt.fraction, tt.gated, got, tt.want)
		}
	}
	// Every whole percentage against exact integer arithmetic.
	for p := 1; p <= 100; p++ {
		for n := 0; n <= 1000; n++ {
			if got, want := Budget(float64(p)/100, n), p*n/100; got != want {
				t.Fatalf("Budget(%d%%, %d) = %d, want %d", p, n, got, want)
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := defaults(func(c *Config) { c.ReleaseTimeout, c.ReleaseInterval = time.Minute, time.Second })
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, edit := range map[string]func(*Config){
		"fraction 0":        func(c *Config) { c.MaxTripFraction = 0 },
		"fraction above 1":  func(c *Config) { c.MaxTripFraction = 1.5 },
		"fraction NaN":      func(c *Config) { c.MaxTripFraction = math.NaN() },
		"window 0":          func(c *Config) { c.Window = 0 },
		"negative min":      func(c *Config) { c.MinBreakers = -1 },
		"negative timeout":  func(c *Config) { c.ReleaseTimeout = -time.Second },
		"negative interval": func(c *Config) { c.ReleaseInterval = -time.Second },
	} {
		if err := defaults(edit).Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
	if defaults().Disabled() || !defaults(func(c *Config) { c.MaxTripFraction = 1 }).Disabled() {
		t.Errorf("Disabled is not MaxTripFraction >= 1")
	}
}

func TestVerdictString(t *testing.T) {
	for v, want := range map[Verdict]string{Allow: "Allow", Hold: "Hold", Release: "Release", 7: "Verdict(7)"} {
		if v.String() != want {
			t.Errorf("%d.String() = %q, want %q", uint8(v), v.String(), want)
		}
	}
}

func TestGuard(t *testing.T) {
	g := NewWithT(t)
	clk := testingclock.NewFakeClock(t0)
	gd := New(defaults(), clk)
	var flips []bool
	gd.SetActiveObserver(func(active bool) { flips = append(flips, active) })
	g.Expect(flips).To(Equal([]bool{false}), "called once at once")

	for i := range 10 {
		gd.SetGated(key(fmt.Sprint("b", i)), true)
	}
	gd.SetGated(key("b0"), true)
	g.Expect(gd.Stats()).To(Equal(Stats{Gated: 10, Budget: 5}))
	gd.Remove(key("b9"))
	gd.SetGated(key("b8"), false)
	gd.Remove(key("unknown"))
	g.Expect(gd.Stats()).To(Equal(Stats{Gated: 8, Budget: 4}))

	g.Expect(gd.Permit(key("b8"))).To(Equal(Allow), "an ungated key is allowed")
	g.Expect(gd.Permit(key("other"))).To(Equal(Allow))
	g.Expect(gd.Stats().TripsInWindow).To(Equal(0), "and not counted")

	for i := range 4 {
		g.Expect(gd.Permit(key(fmt.Sprint("b", i)))).To(Equal(Allow))
		clk.Step(time.Second)
	}
	g.Expect(gd.Active()).To(BeFalse())
	g.Expect(gd.Permit(key("b4"))).To(Equal(Hold))
	g.Expect(gd.Permit(key("b8"))).To(Equal(Allow), "ungated keys are never held")
	clk.Step(time.Second)
	g.Expect(gd.Permit(key("b5"))).To(Equal(Hold))
	g.Expect(gd.Permit(key("b4"))).To(Equal(Hold))
	g.Expect(gd.Active()).To(BeTrue())
	g.Expect(flips).To(Equal([]bool{false, true}), "called on flips only")
	since, ok := gd.HeldSince(key("b4"))
	g.Expect(ok).To(BeTrue())
	g.Expect(since).To(Equal(at(4 * time.Second)))
	g.Expect(gd.Stats()).To(Equal(Stats{Gated: 8, TripsInWindow: 4, Budget: 4, Held: 2}))

	g.Expect(gd.Clear(key("b4"))).To(BeTrue())
	g.Expect(gd.Clear(key("b4"))).To(BeFalse())
	g.Expect(gd.Clear(key("b0"))).To(BeFalse())
	g.Expect(gd.Active()).To(BeTrue(), "b5 is still held")
	gd.SetGated(key("b5"), false)
	g.Expect(gd.Active()).To(BeFalse(), "becoming ungated clears a hold")
	g.Expect(flips).To(Equal([]bool{false, true, false}))
	_, ok = gd.HeldSince(key("b5"))
	g.Expect(ok).To(BeFalse())

	clk.Step(30 * time.Second)
	g.Expect(gd.Stats()).To(Equal(Stats{Gated: 7, Budget: 3}), "the window slid")
	g.Expect(gd.Config()).To(Equal(defaults()))
}

func TestGuardRestore(t *testing.T) {
	g := NewWithT(t)
	clk := testingclock.NewFakeClock(t0)
	gd := New(defaults(func(c *Config) { c.ReleaseTimeout = 5 * time.Minute }), clk)
	var flips []bool
	gd.SetActiveObserver(func(active bool) { flips = append(flips, active) })
	for i := range 10 {
		gd.SetGated(key(fmt.Sprint("b", i)), true)
	}

	// Seeded out of order, one of them already outside the window.
	gd.RestoreTrip(at(-10 * time.Second))
	gd.RestoreTrip(at(-40 * time.Second))
	gd.RestoreTrip(at(-20 * time.Second))
	gd.RestoreTrip(at(-15 * time.Second))
	g.Expect(gd.Stats().TripsInWindow).To(Equal(3))
	g.Expect(gd.Permit(key("b0"))).To(Equal(Allow))
	g.Expect(gd.Permit(key("b1"))).To(Equal(Allow))
	g.Expect(gd.Permit(key("b2"))).To(Equal(Hold), "the restored trips count against the budget")
	g.Expect(gd.Clear(key("b2"))).To(BeTrue())
	clk.Step(11 * time.Second) // the trip at -20s leaves the window, the one at -15s stays
	g.Expect(gd.Stats().TripsInWindow).To(Equal(4))
	g.Expect(gd.Permit(key("b2"))).To(Equal(Allow))

	now := clk.Now()
	gd.RestoreHold(key("ungated"), now.Add(-time.Hour))
	g.Expect(gd.Active()).To(BeFalse(), "a hold of an ungated key is ignored")
	gd.RestoreHold(key("b3"), now.Add(-4*time.Minute))
	g.Expect(gd.Active()).To(BeTrue())
	gd.RestoreHold(key("b3"), now.Add(-3*time.Minute))
	since, _ := gd.HeldSince(key("b3"))
	g.Expect(since).To(Equal(now.Add(-4*time.Minute)), "the earlier since is kept")
	gd.RestoreHold(key("b3"), now.Add(-5*time.Minute+10*time.Second))
	since, _ = gd.HeldSince(key("b3"))
	g.Expect(since).To(Equal(now.Add(-5*time.Minute + 10*time.Second)))
	g.Expect(flips).To(Equal([]bool{false, true, false, true}))

	// The release timeout runs from the restored since.
	g.Expect(gd.Permit(key("b3"))).To(Equal(Hold), "held for 4m50s of 5m")
	clk.Step(10 * time.Second)
	g.Expect(gd.Permit(key("b3"))).To(Equal(Release))
	g.Expect(gd.Active()).To(BeFalse())
}

// FuzzGuard drives a Guard with random sequences of Permit, Clear, SetGated, Remove and clock
// steps, and checks the guard's promises after every step. Its seed corpus is 300 random
// sequences, so go test runs them all.
func FuzzGuard(f *testing.F) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		b := make([]byte, 2+2*r.IntN(400))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) < 2 {
			return
		}
		checkSequence(t, ops)
	})
}

// checkSequence plays ops against a Guard and a plain record of what it answered. ops[0] and
// ops[1] choose the configuration; each further pair is an operation and its argument.
//
// It checks: an Allow of a gated key while at least MinBreakers are gated comes with nothing
// held, and the Allow and Release verdicts in the window ending at it are at most the budget
// (with ReleaseTimeout 0 there are no releases, so at most the budget of trips in any window);
// a Release only after the timeout and the interval; Hold leaves the key held with its first
// since, Allow and Release leave it not held; Active() is whether any key is held, and the
// observer saw exactly its flips; Stats agree.
func checkSequence(t *testing.T, ops []byte) {
	window := 30 * time.Second
	cfg := Config{
		MaxTripFraction: []float64{0.1, 0.3, 0.5, 0.7, 0.9, 1}[ops[0]%6],
		Window:          window,
		MinBreakers:     []int{0, 5, 8}[ops[0]/6%3],
		ReleaseTimeout:  []time.Duration{0, 2 * window, 5 * time.Minute}[ops[1]%3],
		ReleaseInterval: []time.Duration{0, 10 * time.Second}[ops[1]/3%2],
	}
	clk := testingclock.NewFakeClock(t0)
	gd := New(cfg, clk)
	var flips []bool
	gd.SetActiveObserver(func(active bool) { flips = append(flips, active) })

	keys := make([]types.NamespacedName, 12)
	gated := map[types.NamespacedName]bool{}
	for i := range keys {
		keys[i] = key(fmt.Sprint("b", i))
		if i < 10 {
			gated[keys[i]] = true
			gd.SetGated(keys[i], true)
		}
	}
	var counted []time.Time // Allow and Release verdicts of gated keys
	var lastRelease time.Time

	for i := 2; i+1 < len(ops); i += 2 {
		op, arg := ops[i]%8, ops[i+1]
		k := keys[int(arg)%len(keys)]
		now := clk.Now()
		step := fmt.Sprintf("op %d at %v", i/2, now.Sub(t0))
		switch op {
		case 0, 1, 2, 3:
			activeBefore := gd.Active()
			sinceBefore, heldBefore := gd.HeldSince(k)
			tripsBefore := gd.Stats().TripsInWindow
			v := gd.Permit(k)
			step += fmt.Sprintf(": Permit(%s) = %v", k.Name, v)
			if !gated[k] {
				if v != Allow || gd.Stats().TripsInWindow != tripsBefore {
					t.Fatalf("%s: an ungated key must be allowed and not counted", step)
				}
				break
			}
			since, heldNow := gd.HeldSince(k)
			switch v {
			case Allow, Release:
				counted = append(counted, now)
				if heldNow {
					t.Fatalf("%s: still held", step)
				}
			case Hold:
				if !heldNow || (heldBefore && !since.Equal(sinceBefore)) || (!heldBefore && !since.Equal(now)) {
					t.Fatalf("%s: held %v since %v (before: %v since %v)", step, heldNow, since, heldBefore, sinceBefore)
				}
			}
			switch {
			case v == Allow && !cfg.Disabled() && len(gated) >= cfg.MinBreakers:
				n := 0
				for _, c := range counted {
					if c.After(now.Add(-window)) {
						n++
					}
				}
				if budget := Budget(cfg.MaxTripFraction, len(gated)); activeBefore || n > budget {
					t.Fatalf("%s: %d trips in the window, budget %d, active before %v", step, n, budget, activeBefore)
				}
			case v == Release:
				interval := orDefault(cfg.ReleaseInterval, window)
				if cfg.ReleaseTimeout == 0 || !heldBefore || now.Sub(sinceBefore) < cfg.ReleaseTimeout ||
					(!lastRelease.IsZero() && now.Sub(lastRelease) < interval) {
					t.Fatalf("%s: released too early (held since %v, last release %v)", step, sinceBefore, lastRelease)
				}
				lastRelease = now
			}
		case 4:
			wasHeld := gd.Clear(k)
			if _, held := gd.HeldSince(k); held {
				t.Fatalf("%s: Clear(%s) = %v left it held", step, k.Name, wasHeld)
			}
		case 5:
			on := arg&0x80 != 0
			gd.SetGated(k, on)
			if on {
				gated[k] = true
			} else {
				delete(gated, k)
			}
		case 6:
			gd.Remove(k)
			delete(gated, k)
		case 7:
			if arg >= 240 {
				clk.Step(5 * time.Minute)
			} else {
				clk.Step(time.Duration(arg%32) * window / 32)
			}
		}

		held := 0
		for _, k := range keys {
			if _, ok := gd.HeldSince(k); ok {
				held++
				if !gated[k] {
					t.Fatalf("%s: ungated %s is held", step, k.Name)
				}
			}
		}
		if gd.Active() != (held > 0) {
			t.Fatalf("%s: Active() = %v with %d held", step, gd.Active(), held)
		}
		for j := 1; j < len(flips); j++ {
			if flips[j] == flips[j-1] {
				t.Fatalf("%s: observer called without a flip: %v", step, flips)
			}
		}
		if flips[len(flips)-1] != gd.Active() {
			t.Fatalf("%s: observer last saw %v, Active() = %v", step, flips[len(flips)-1], gd.Active())
		}
		st := gd.Stats()
		if st.Gated != len(gated) || st.Held != held || st.Budget != Budget(cfg.MaxTripFraction, len(gated)) {
			t.Fatalf("%s: Stats() = %+v with %d gated, %d held", step, st, len(gated), held)
		}
	}
}

// orDefault returns d, or def when d is 0.
func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func TestGuardCountsConfirmedTripsWithoutHoldingThem(t *testing.T) {
	g := NewWithT(t)
	clk := testingclock.NewFakeClock(t0)
	gd := New(defaults(), clk)
	for i := range 10 {
		gd.SetGated(key(fmt.Sprint("b", i)), true)
	}
	for i := range 5 {
		g.Expect(gd.Permit(key(fmt.Sprint("b", i)))).To(Equal(Allow))
	}
	g.Expect(gd.Permit(key("b5"))).To(Equal(Hold), "the budget of 5 is spent")
	g.Expect(gd.Active()).To(BeTrue())

	gd.Confirmed(key("b5"))
	gd.Confirmed(key("b6"))
	g.Expect(gd.Stats()).To(Equal(Stats{Gated: 10, Budget: 5, TripsInWindow: 7}),
		"confirmed trips are counted, and b5's hold ends")
	_, held := gd.HeldSince(key("b5"))
	g.Expect(held).To(BeFalse())
	g.Expect(gd.Permit(key("b7"))).To(Equal(Hold), "a trip the manager decides alone still meets the spent budget")

	gd.Confirmed(key("ungated"))
	g.Expect(gd.Stats().TripsInWindow).To(Equal(7), "an ungated key is not counted")
}
