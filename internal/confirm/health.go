package confirm

import (
	"fmt"
	"slices"
	"sort"
	"time"
)

// HealthConfig says when an observer counts as degraded.
type HealthConfig struct {
	// Window: a disagreement is remembered this long.
	Window time.Duration
	// Targets: an observer is degraded while, within Window, it saw this many distinct
	// targets failing that its peers saw healthy. One target proves nothing (a route to one
	// node can fail); many unrelated ones point at the observer.
	Targets int
}

// DefaultHealth is the default: three targets within ten minutes.
var DefaultHealth = HealthConfig{Window: 10 * time.Minute, Targets: 3}

// Validate reports a field out of range.
func (c HealthConfig) Validate() error {
	if c.Window <= 0 {
		return fmt.Errorf("window %v is not positive", c.Window)
	}
	if c.Targets < 1 {
		return fmt.Errorf("targets %d is less than 1", c.Targets)
	}
	return nil
}

// Health remembers which observers disagreed with their peers, and about what: the local
// health that lowers an observer's vote (Lifeguard's answer to a member that is itself
// slow). The leader is an observer like any other. Every method takes the time; Health reads
// no clock. It is not safe for concurrent use.
type Health struct {
	cfg HealthConfig
	// lone is, by observer and target, the last time the observer saw the target failing
	// while a decided majority of its peers saw it healthy.
	lone map[string]map[string]time.Time
}

// NewHealth returns an empty Health; cfg must be valid.
func NewHealth(cfg HealthConfig) *Health {
	return &Health{cfg: cfg, lone: map[string]map[string]time.Time{}}
}

// Record learns from a decided tally about target (a breaker, or one of its endpoints):
//   - Refuted: every observer that voted Failing disagreed with its peers about target;
//   - Confirmed: every observer that voted Failing was right about target, so a
//     disagreement it had about that target is forgotten.
//
// Pending and Unconfirmed tallies teach nothing. Seeing healthy what peers see failing is
// never held against an observer: that is the vantage point the rule exists to find.
func (h *Health) Record(r Result, target string, now time.Time) {
	if r.Outcome != Refuted && r.Outcome != Confirmed {
		return
	}
	for _, name := range r.Voters(Failing) {
		if r.Outcome == Confirmed {
			delete(h.lone[name], target)
			continue
		}
		if h.lone[name] == nil {
			h.lone[name] = map[string]time.Time{}
		}
		h.lone[name][target] = now
	}
	h.Prune(now)
}

// Degraded says whether the observer is degraded at now.
func (h *Health) Degraded(name string, now time.Time) bool {
	return h.count(name, now) >= h.cfg.Targets
}

// DegradedObservers returns the degraded observers at now, sorted.
func (h *Health) DegradedObservers(now time.Time) []string {
	var names []string
	for name := range h.lone {
		if h.Degraded(name, now) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// Targets returns, sorted, the targets the observer disagreed with its peers about within
// the window: what a condition names as the evidence.
func (h *Health) Targets(name string, now time.Time) []string {
	var out []string
	for target, at := range h.lone[name] {
		if h.recent(at, now) {
			out = append(out, target)
		}
	}
	slices.Sort(out)
	return out
}

// Until returns when the observer stops being degraded if nothing new is recorded: when
// its Targets-th most recent disagreement leaves the window. Zero if it is not degraded.
func (h *Health) Until(name string, now time.Time) time.Time {
	if !h.Degraded(name, now) {
		return time.Time{}
	}
	var times []time.Time
	for _, at := range h.lone[name] {
		if h.recent(at, now) {
			times = append(times, at)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i].After(times[j]) })
	return times[h.cfg.Targets-1].Add(h.cfg.Window)
}

// Prune forgets disagreements that left the window, so that memory stays bounded by the
// targets seen within it.
func (h *Health) Prune(now time.Time) {
	for name, targets := range h.lone {
		for target, at := range targets {
			if !h.recent(at, now) {
				delete(targets, target)
			}
		}
		if len(targets) == 0 {
			delete(h.lone, name)
		}
	}
}

func (h *Health) count(name string, now time.Time) int {
	n := 0
	for _, at := range h.lone[name] {
		if h.recent(at, now) {
			n++
		}
	}
	return n
}

func (h *Health) recent(at, now time.Time) bool { return now.Sub(at) < h.cfg.Window }
