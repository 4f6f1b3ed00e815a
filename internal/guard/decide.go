// Package guard is tripswitch's observer guard: it decides whether a gated breaker may trip
// (Closed → Open) now, or whether the trip is held because too many breakers are tripping at
// once for the targets, rather than the manager itself, to be the likely cause.
//
// When the manager's own network or CPU is sick, every probe fails, every breaker would trip and
// every front Service in the cluster would reject traffic. The guard caps how many gated
// breakers may trip within a sliding window, the way Envoy's max ejection percent does. Trips
// beyond the cap are held: the breaker stays Closed and traffic keeps flowing, until its probes
// recover or, if a release timeout is set, until the held trips go ahead one by one.
//
// Decide is the whole decision as a pure function of (Config, State, key, now); Guard wraps it
// with a mutex, a clock and the set of gated breakers for the probe scheduler.
package guard

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Config tunes the guard. The zero value is invalid; callers validate before New.
type Config struct {
	// MaxTripFraction: more than this share of gated breakers tripping within Window makes the
	// guard hold further trips. In (0, 1]; 1 disables the guard.
	MaxTripFraction float64
	// Window is the sliding window trips are counted over (default install: 30s).
	Window time.Duration
	// MinBreakers: with fewer gated breakers than this the guard never holds, because a few
	// breakers tripping together says little about the manager (default 5).
	MinBreakers int
	// ReleaseTimeout: a trip held this long goes ahead, so that a real outage of many targets
	// is not masked forever. 0 means held trips are never released by time.
	ReleaseTimeout time.Duration
	// ReleaseInterval: at most one held trip is released per interval, so that releases
	// cannot empty every front Service at once. 0 means Window.
	ReleaseInterval time.Duration
}

// Validate reports every field out of range, so that flags are rejected at start-up rather
// than misbehaving later.
func (c Config) Validate() error {
	var errs []error
	if !(c.MaxTripFraction > 0 && c.MaxTripFraction <= 1) { // also rejects NaN
		errs = append(errs, fmt.Errorf("max trip fraction %v is not in (0, 1]", c.MaxTripFraction))
	}
	if c.Window <= 0 {
		errs = append(errs, fmt.Errorf("window %v is not positive", c.Window))
	}
	if c.MinBreakers < 0 {
		errs = append(errs, fmt.Errorf("min breakers %d is negative", c.MinBreakers))
	}
	if c.ReleaseTimeout < 0 {
		errs = append(errs, fmt.Errorf("release timeout %v is negative", c.ReleaseTimeout))
	}
	if c.ReleaseInterval < 0 {
		errs = append(errs, fmt.Errorf("release interval %v is negative", c.ReleaseInterval))
	}
	return errors.Join(errs...)
}

// Disabled reports whether the guard lets every trip through: with a fraction of 1 every
// gated breaker may trip, so there is nothing to hold.
func (c Config) Disabled() bool { return c.MaxTripFraction >= 1 }

func (c Config) releaseInterval() time.Duration {
	if c.ReleaseInterval == 0 {
		return c.Window
	}
	return c.ReleaseInterval
}

// Verdict is the guard's answer to a trip.
type Verdict uint8

const (
	// Allow: the trip goes ahead and counts against the window's budget.
	Allow Verdict = iota
	// Hold: the breaker stays Closed; ask again on its next failing outcome.
	Hold
	// Release: a held trip goes ahead after the release timeout. It counts as a trip.
	Release
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "Allow"
	case Hold:
		return "Hold"
	case Release:
		return "Release"
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// Budget is how many trips the window admits for a number of gated breakers:
// floor(fraction*gated). A small tolerance absorbs float error, so that 0.29*100 (which is
// 28.999999999999996 in float64) gives 29, like 0.5*10 gives 5 and 0.3*10 gives 3.
func Budget(fraction float64, gated int) int {
	if !(fraction > 0) || gated <= 0 {
		return 0
	}
	b := int(math.Floor(fraction*float64(gated) + 1e-9))
	return min(b, gated)
}

// State is everything a decision depends on, so Decide can be a pure function.
type State struct {
	// Gated is the number of gated breakers now.
	Gated int
	// Trips are the permitted trips (Allow and Release), oldest first. It may include trips
	// outside the window; Decide prunes them.
	Trips []time.Time
	// Held maps each held breaker to when its trip was first held.
	Held map[types.NamespacedName]time.Time
	// LastRelease is when the last held trip was released; zero if none was.
	LastRelease time.Time
}

// Decide is the guard's decision for one gated breaker whose trip rule holds at now. It returns
// the verdict and the next state; it does not modify s (what changes is copied). Pure: no clock,
// no globals, so every rule can be tested as a function of (state, now).
//
// The rules, in order:
//  1. Trips at or before now-Window are outside the window and are dropped.
//  2. Disabled, or fewer than MinBreakers gated: Allow, counted, and any hold of key dropped.
//  3. key is held: Release once it has been held ReleaseTimeout (when that is set) and the last
//     release is at least the release interval ago; otherwise Hold, keeping its since.
//  4. Nothing is held and the trip fits the budget: Allow, counted.
//  5. Otherwise Hold from now. While any trip is held every new trip is held too, even after
//     the window has slid on: a sick manager keeps failing, and letting a budget through per
//     window would trip every breaker in the end.
func Decide(cfg Config, s State, key types.NamespacedName, now time.Time) (Verdict, State) {
	s.Trips = prune(s.Trips, now, cfg.Window)
	since, held := s.Held[key]
	switch {
	case cfg.Disabled() || s.Gated < cfg.MinBreakers:
		if held {
			s.Held = without(s.Held, key)
		}
		s.Trips = appendTrip(s.Trips, now)
		return Allow, s
	case held:
		if cfg.ReleaseTimeout > 0 && now.Sub(since) >= cfg.ReleaseTimeout &&
			(s.LastRelease.IsZero() || now.Sub(s.LastRelease) >= cfg.releaseInterval()) {
			s.Held = without(s.Held, key)
			s.LastRelease = now
			s.Trips = appendTrip(s.Trips, now)
			return Release, s
		}
		return Hold, s
	case len(s.Held) == 0 && len(s.Trips)+1 <= Budget(cfg.MaxTripFraction, s.Gated):
		s.Trips = appendTrip(s.Trips, now)
		return Allow, s
	default:
		h := make(map[types.NamespacedName]time.Time, len(s.Held)+1)
		maps.Copy(h, s.Held)
		h[key] = now
		s.Held = h
		return Hold, s
	}
}

// prune returns the trips after now-window. It reslices and never writes to trips.
func prune(trips []time.Time, now time.Time, window time.Duration) []time.Time {
	cutoff := now.Add(-window)
	i := 0
	for i < len(trips) && !trips[i].After(cutoff) {
		i++
	}
	return trips[i:]
}

// appendTrip appends into a new array, so the caller's array is never written to.
func appendTrip(trips []time.Time, at time.Time) []time.Time {
	return append(slices.Clip(trips), at)
}

// without returns a copy of held without key.
func without(held map[types.NamespacedName]time.Time, key types.NamespacedName) map[types.NamespacedName]time.Time {
	h := maps.Clone(held)
	delete(h, key)
	return h
}
