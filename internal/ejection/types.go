package ejection

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

// MaxWindow bounds an endpoint's failure-rate window, as the API does: one ring per endpoint,
// so with 1,000 endpoints the windows stay small.
const MaxWindow = 100

// MaxListed bounds how many endpoints View.Listed names, so that status stays small with
// 1,000 endpoints; the counts cover the rest.
const MaxListed = 20

// Config is the ejection tuning of one breaker. The zero value ejects nothing and ramps
// nothing.
type Config struct {
	// ConsecutiveFailures ejects an endpoint after this many failures in a row; 0 turns the
	// rule off.
	ConsecutiveFailures int
	// FailureRate ejects an endpoint when Percent of its last Window counted outcomes failed,
	// once the window holds MinimumProbes; a zero Window turns the rule off.
	FailureRate breaker.RateRule
	// BaseEjectionTime × the endpoint's ejection count, capped at MaxEjectionTime, is how long
	// an ejection lasts.
	BaseEjectionTime time.Duration
	MaxEjectionTime  time.Duration
	// MaxEjectedPercent caps the ejected endpoints at floor(endpoints × percent / 100), and
	// never more than all but one.
	MaxEjectedPercent int
	// PanicThresholdPercent: when fewer than this share of the endpoints are healthy (neither
	// ejected nor failing their rule), ejections and slow start are ignored and every endpoint
	// is published. 0 never panics.
	PanicThresholdPercent int
	// SlowStart, when positive, is the window over which returning endpoints are re-admitted
	// in steps (1, then 25%, 50% and 100% of them, at 0, 1/3, 2/3 and the end of the window).
	SlowStart time.Duration
}

// Ejects says whether any ejection rule is on.
func (c Config) Ejects() bool { return c.ConsecutiveFailures > 0 || c.FailureRate.Window > 0 }

// Enabled says whether the tracker does anything at all: eject, or ramp after a close.
func (c Config) Enabled() bool { return c.Ejects() || c.SlowStart > 0 }

// Validate reports the first setting the tracker cannot run with.
func (c Config) Validate() error {
	var errs []error
	if c.ConsecutiveFailures < 0 {
		errs = append(errs, fmt.Errorf("ejection consecutiveFailures %d is negative", c.ConsecutiveFailures))
	}
	if r := c.FailureRate; r.Window != 0 {
		switch {
		case r.Window < 0 || r.Window > MaxWindow:
			errs = append(errs, fmt.Errorf("ejection failureRate window %d is not in 1..%d", r.Window, MaxWindow))
		case r.Percent < 1 || r.Percent > 100:
			errs = append(errs, fmt.Errorf("ejection failureRate percent %d is not in 1..100", r.Percent))
		case r.MinimumProbes < 1 || r.MinimumProbes > r.Window:
			errs = append(errs, fmt.Errorf("ejection failureRate minimumProbes %d is not in 1..window (%d)", r.MinimumProbes, r.Window))
		}
	}
	if c.Ejects() {
		if c.BaseEjectionTime <= 0 {
			errs = append(errs, fmt.Errorf("baseEjectionTime %s is not positive", c.BaseEjectionTime))
		}
		if c.MaxEjectionTime < c.BaseEjectionTime {
			errs = append(errs, fmt.Errorf("maxEjectionTime %s is shorter than baseEjectionTime %s", c.MaxEjectionTime, c.BaseEjectionTime))
		}
	}
	if c.MaxEjectedPercent < 0 || c.MaxEjectedPercent > 100 {
		errs = append(errs, fmt.Errorf("maxEjectedPercent %d is not in 0..100", c.MaxEjectedPercent))
	}
	if c.PanicThresholdPercent < 0 || c.PanicThresholdPercent > 100 {
		errs = append(errs, fmt.Errorf("panicThresholdPercent %d is not in 0..100", c.PanicThresholdPercent))
	}
	if c.SlowStart < 0 {
		errs = append(errs, fmt.Errorf("slowStart window %s is negative", c.SlowStart))
	}
	return errors.Join(errs...)
}

// Phase is where one endpoint stands.
type Phase uint8

const (
	// Healthy endpoints are published (unless the cap keeps a failing one in: see Capped).
	Healthy Phase = iota
	// Ejected endpoints are held back until their ejection ends and a trial probe succeeds.
	Ejected
	// SlowStart endpoints are healthy and wait for their step of the ramp.
	SlowStart
)

func (p Phase) String() string {
	switch p {
	case Healthy:
		return "Healthy"
	case Ejected:
		return "Ejected"
	case SlowStart:
		return "SlowStart"
	}
	return fmt.Sprintf("Phase(%d)", p)
}

// Reason says why an endpoint was ejected.
type Reason uint8

const (
	NoReason Reason = iota
	ConsecutiveFailures
	FailureRate
	// TrialFailed: the trial probe at the end of an ejection failed, so it was ejected again.
	TrialFailed
)

var reasonNames = [...]string{"", "ConsecutiveFailures", "FailureRate", "TrialFailed"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("Reason(%d)", r)
}

// ParseReason is the inverse of Reason.String, for reasons read back from status.
func ParseReason(s string) Reason {
	for i, name := range reasonNames {
		if name == s && i > 0 {
			return Reason(i)
		}
	}
	return NoReason
}

// EventKind is what happened to an endpoint.
type EventKind uint8

const (
	// EventEjected: the endpoint was ejected (again, when Reason is TrialFailed).
	EventEjected EventKind = iota + 1
	// EventReturned: its trial succeeded (or a reset cleared it); it is published again, or
	// waits for slow start.
	EventReturned
)

func (k EventKind) String() string {
	switch k {
	case EventEjected:
		return "Ejected"
	case EventReturned:
		return "Returned"
	}
	return fmt.Sprintf("EventKind(%d)", k)
}

// Event is one change of one endpoint, for events, logs and metrics.
type Event struct {
	Kind     EventKind
	Endpoint netip.AddrPort
	Reason   Reason // for EventEjected
	At       time.Time
	// Until is when an ejection ends (EventEjected).
	Until time.Time
	// Ejections is the endpoint's ejection count after the event.
	Ejections int
	// Message is the message of the probe that decided, if one did.
	Message string
}

// EndpointStatus is one endpoint that is not simply published: ejected or waiting for slow
// start. It is what status lists, and what Restore reads back.
type EndpointStatus struct {
	Endpoint netip.AddrPort
	Phase    Phase // Ejected or SlowStart
	Reason   Reason
	// Since is when it was ejected, or joined the ramp.
	Since time.Time
	// Until is when its ejection ends (Ejected only).
	Until     time.Time
	Ejections int
	Message   string
}

// View is the tracker's state, for the gate and for status.
type View struct {
	// Endpoints are the endpoints tracked: the probed ready endpoints of the target.
	Endpoints int
	// Ejected endpoints are held back, including those whose ejection ended and that wait for
	// their trial probe.
	Ejected int
	// Capped endpoints fail their ejection rule but stay published, because MaxEjected are
	// ejected already.
	Capped int
	// MaxEjected is the cap for the current number of endpoints.
	MaxEjected int
	// SlowStart endpoints are healthy and wait for their step of the ramp.
	SlowStart int
	// Panic: fewer than PanicThresholdPercent of the endpoints are healthy, so HeldBack is
	// empty and every endpoint is published.
	Panic bool
	// Held: the observer guard held the breaker's first ejection (see SetPermit).
	Held bool
	// HeldBack are the endpoints the gate must not publish: the ejected and those waiting for
	// slow start, unless Panic. Sorted.
	HeldBack []netip.AddrPort
	// Listed are the first MaxListed endpoints that are ejected (oldest first) and then those
	// waiting for slow start (next to be admitted first).
	Listed []EndpointStatus
}
