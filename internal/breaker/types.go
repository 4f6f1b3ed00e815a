package breaker

import (
	"errors"
	"fmt"
	"time"
)

// State is a breaker state.
type State uint8

const (
	Closed State = iota
	Open
	HalfOpen
)

func (s State) String() string {
	switch s {
	case Closed:
		return "Closed"
	case Open:
		return "Open"
	case HalfOpen:
		return "HalfOpen"
	}
	return fmt.Sprintf("State(%d)", s)
}

// Outcome is one probe result as the breaker counts it.
type Outcome uint8

const (
	Success Outcome = iota
	Failure
	// Slow is a success slower than the probe's slow threshold.
	Slow
	// Neutral counts toward nothing, such as an HTTP 429.
	Neutral
)

func (o Outcome) String() string {
	switch o {
	case Success:
		return "Success"
	case Failure:
		return "Failure"
	case Slow:
		return "Slow"
	case Neutral:
		return "Neutral"
	}
	return fmt.Sprintf("Outcome(%d)", o)
}

// Mode decides the gate state from the breaker state.
type Mode uint8

const (
	// Auto gates traffic by the breaker state.
	Auto Mode = iota
	// ForceOpen pins the gate Open.
	ForceOpen
	// ForceClosed pins the gate Closed.
	ForceClosed
	// Observe runs the state machine but keeps the gate Closed.
	Observe
)

func (m Mode) String() string {
	switch m {
	case Auto:
		return "Auto"
	case ForceOpen:
		return "ForceOpen"
	case ForceClosed:
		return "ForceClosed"
	case Observe:
		return "Observe"
	}
	return fmt.Sprintf("Mode(%d)", m)
}

// gateFor is the state traffic sees for a breaker state under a mode.
func (m Mode) gateFor(s State) State {
	switch m {
	case ForceOpen:
		return Open
	case ForceClosed, Observe:
		return Closed
	}
	return s
}

// Reason says why a transition happened.
type Reason uint8

const (
	// NoReason is the zero value; a Transition never carries it.
	NoReason Reason = iota
	ConsecutiveFailures
	FailureRate
	SlowRate
	OpenTimeout
	TrialSucceeded
	TrialFailed
	Reset
	// Forced is a change of the gate state by a change of mode.
	Forced
	// QueryRule is a trip by a rule judged outside the probes, such as a PromQL query over the
	// target's real traffic (see Breaker.Trip).
	QueryRule
)

var reasonNames = [...]string{"", "ConsecutiveFailures", "FailureRate", "SlowRate", "OpenTimeout",
	"TrialSucceeded", "TrialFailed", "Reset", "Forced", "QueryRule"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("Reason(%d)", r)
}

// ParseReason is the inverse of Reason.String, for reasons read back from status.
func ParseReason(s string) Reason {
	for i, name := range reasonNames {
		if name == s {
			return Reason(i)
		}
	}
	return NoReason
}

// RateRule trips when Percent of the last Window counted outcomes are of one kind, once the
// window holds at least MinimumProbes outcomes. A zero Window turns the rule off.
type RateRule struct {
	Percent       int
	Window        int
	MinimumProbes int
}

func (r RateRule) enabled() bool { return r.Window > 0 }

func (r RateRule) validate(name string) error {
	if !r.enabled() {
		return nil
	}
	switch {
	case r.Percent < 1 || r.Percent > 100:
		return fmt.Errorf("%s percent %d is not in 1..100", name, r.Percent)
	case r.Window > MaxWindow:
		return fmt.Errorf("%s window %d exceeds %d", name, r.Window, MaxWindow)
	case r.MinimumProbes < 1 || r.MinimumProbes > r.Window:
		return fmt.Errorf("%s minimumProbes %d is not in 1..window (%d)", name, r.MinimumProbes, r.Window)
	}
	return nil
}

// MaxWindow bounds a rate rule's window, as the API does.
const MaxWindow = 1000

// Config is the breaker's tuning. The zero value of an optional rule turns it off.
type Config struct {
	// ConsecutiveFailures trips after this many failures in a row; 0 turns the rule off.
	ConsecutiveFailures int
	FailureRate         RateRule
	SlowRate            RateRule

	// OpenDuration is the first open period after a Close.
	OpenDuration time.Duration
	// BackoffFactor multiplies the open period on each reopen; 1 (or 0) means no growth.
	BackoffFactor int
	// MaxOpenDuration caps the grown open period; 0 means no cap.
	MaxOpenDuration time.Duration
	// JitterPercent spreads each open period by up to ± this share.
	JitterPercent int
	// Granularity, when positive, rounds openUntil up to a multiple of it, so that a store
	// with that precision (Kubernetes keeps whole seconds) holds exactly the engine's value.
	Granularity time.Duration

	// TrialProbes is how many trial outcomes one HalfOpen attempt admits.
	TrialProbes int
	// SuccessThreshold is how many successful trials close the breaker.
	SuccessThreshold int
	// TrialTimeout bounds how long an admitted trial may stay without an outcome. Past it,
	// the trials still pending are written off (their slots are handed out again and their
	// late outcomes are ignored), so that a lost trial can never keep a breaker HalfOpen for
	// good. 0 means no bound.
	TrialTimeout time.Duration

	Mode Mode
}

// Validate reports the first setting that the state machine cannot run with.
func (c Config) Validate() error {
	var errs []error
	if c.ConsecutiveFailures < 0 {
		errs = append(errs, fmt.Errorf("consecutiveFailures %d is negative", c.ConsecutiveFailures))
	}
	if c.ConsecutiveFailures == 0 && !c.FailureRate.enabled() && !c.SlowRate.enabled() {
		errs = append(errs, errors.New("no trip rule is configured"))
	}
	errs = append(errs, c.FailureRate.validate("failureRate"), c.SlowRate.validate("slowRate"))
	if c.OpenDuration <= 0 {
		errs = append(errs, fmt.Errorf("openDuration %s is not positive", c.OpenDuration))
	}
	if c.BackoffFactor < 0 {
		errs = append(errs, fmt.Errorf("backoff factor %d is negative", c.BackoffFactor))
	}
	if c.MaxOpenDuration != 0 && c.MaxOpenDuration < c.OpenDuration {
		errs = append(errs, fmt.Errorf("maxOpenDuration %s is shorter than openDuration %s", c.MaxOpenDuration, c.OpenDuration))
	}
	if c.Granularity < 0 {
		errs = append(errs, fmt.Errorf("granularity %s is negative", c.Granularity))
	}
	if c.JitterPercent < 0 || c.JitterPercent > 50 {
		errs = append(errs, fmt.Errorf("jitterPercent %d is not in 0..50", c.JitterPercent))
	}
	if c.TrialTimeout < 0 {
		errs = append(errs, fmt.Errorf("trialTimeout %s is negative", c.TrialTimeout))
	}
	if c.SuccessThreshold < 1 || c.TrialProbes < c.SuccessThreshold {
		errs = append(errs, fmt.Errorf("need 1 <= successThreshold (%d) <= trialProbes (%d)", c.SuccessThreshold, c.TrialProbes))
	}
	if c.Mode > Observe {
		errs = append(errs, fmt.Errorf("unknown mode %d", c.Mode))
	}
	return errors.Join(errs...)
}

// windowSize is the ring size that serves every rate rule.
func (c Config) windowSize() int { return max(c.FailureRate.Window, c.SlowRate.Window) }

// Ticket stands for one admitted probe. Its outcome counts only in the attempt it was admitted
// in: every change of state starts a new attempt, so a late result (a probe admitted while
// Closed that returns after the breaker opened, or a trial of an earlier HalfOpen attempt)
// never counts for the next one. The zero Ticket belongs to no attempt.
type Ticket struct {
	attempt uint64
	trial   bool
}

// TripPermit is asked before a Closed breaker opens because reason holds. Returning false
// holds the trip: the breaker stays Closed, keeps counting, and asks again on its next
// outcome for which a rule holds. The observer guard is the permit's one user.
type TripPermit func(reason Reason) bool

// Transition is one change of breaker state, gate state, or both.
type Transition struct {
	From, To         State
	GateFrom, GateTo State
	Reason           Reason
	At               time.Time
}

func (t Transition) String() string {
	return fmt.Sprintf("%s -> %s (gate %s -> %s) by %s at %s", t.From, t.To, t.GateFrom, t.GateTo, t.Reason,
		t.At.Format(time.RFC3339Nano))
}

// Snapshot is the part of a breaker that CircuitBreaker status holds.
type Snapshot struct {
	State State
	// Reason is why the last transition happened.
	Reason Reason
	// Since is when State was entered.
	Since time.Time
	// OpenUntil is when an Open breaker starts its trial; zero otherwise.
	OpenUntil            time.Time
	OpenStreak           int32
	Trips                int64
	ConsecutiveFailures  int32
	ConsecutiveSuccesses int32
}

// WindowStats summarises the rate window: Probes outcomes over the largest window, of which
// Failures failed and Slow were slow.
type WindowStats struct {
	Probes, Failures, Slow int
}
