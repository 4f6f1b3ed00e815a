package runner

import (
	"context"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/confirm"
	"github.com/tripswitch/tripswitch/internal/ejection"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// A suspicion is a trip (or an endpoint's ejection) that the leader's own probes call for,
// waiting for a second opinion (the README's "A second opinion from other nodes"): the breaker
// stays Closed (the endpoint published) while observers on other nodes probe the failing
// endpoints once. It opens only when the tally confirms, past the observer guard, or when
// nobody answered, and then the guard decides, as it does without observers.

// Confirmer gives the second opinion: it asks observers about a suspicion and tallies their
// votes with the leader's. It must return by ctx's deadline, with Unconfirmed when nobody
// answered in time.
type Confirmer interface {
	Confirm(ctx context.Context, s Suspicion) confirm.Result
}

// Suspicion is what a Confirmer is asked.
type Suspicion struct {
	Key types.NamespacedName
	// Reason is the trip rule that holds, or, for an ejection (Ejection set), nothing.
	Reason breaker.Reason
	// Ejection is the ejection rule that holds for the one endpoint in Endpoints, when the
	// suspicion is about an ejection rather than a trip.
	Ejection ejection.Reason
	// Endpoints failed on the leader's last probe of each (all of them when none did, such
	// as a failure-rate trip whose failures are older).
	Endpoints []probe.Endpoint
	// Rule says which of an observer's outcomes count as the failure.
	Rule confirm.Rule
	// Observers and Zones are the breaker's spec.trip.confirm.
	Observers int
	Zones     confirm.ZonePolicy
}

// ConfirmConfig is a breaker's spec.trip.confirm; Observers 0 turns it off.
type ConfirmConfig struct {
	Observers int
	Zones     confirm.ZonePolicy
	// FailurePercent and SlowPercent are the failure-rate and slow-rate trips' percents,
	// which an observer's share of failing probes is judged by when that rule holds
	// (confirm.Rule); 0 when the rule is not set.
	FailurePercent, SlowPercent int
}

// Confirmation is a breaker's second opinion as the controller reports it.
type Confirmation struct {
	// Asking says a suspicion is out: the breaker stays Closed (or the endpoint published)
	// until it is decided.
	Asking bool
	Reason breaker.Reason
	// Endpoint and Ejection are set when the second opinion was about ejecting one endpoint.
	Endpoint probe.Endpoint
	Ejection ejection.Reason
	Since    time.Time
	// Last is the newest tally, nil before the first.
	Last *confirm.Result
	// HeldUntil is, after a refuted suspicion, when observers are asked again if the rule
	// still holds.
	HeldUntil time.Time
}

// confirmSlack is what a confirmation may take beyond one probe timeout: an observer's probe
// of a hung endpoint ends at the timeout, and its answer must still count.
const confirmSlack = 100 * time.Millisecond

type suspicionState uint8

const (
	idle suspicionState = iota
	asking
	refuted
	// decided: confirmed or unconfirmed; the next trip permit asked goes on to the guard.
	decided
)

// suspicion is one breaker's second opinion. Its fields belong to the entry's mutex.
type suspicion struct {
	state     suspicionState
	reason    breaker.Reason
	ejection  ejection.Reason // an endpoint's
	since     time.Time
	heldUntil time.Time
	last      *confirm.Result
}

// confirms says whether the breaker's trips wait for a second opinion. Callers hold e.mu.
func (s *Scheduler) confirms(e *entry, r breaker.Reason) bool {
	// A query rule judges real traffic, which one more probe from elsewhere cannot confirm;
	// an ungated breaker takes no traffic away.
	return s.confirmer != nil && e.confirmCfg.Observers > 0 && e.gated && r != breaker.QueryRule
}

// confirmAllows is the second opinion's part of the trip permit: false while the trip waits
// for it or was refuted, true once it is confirmed or unconfirmed (the guard decides next).
// Callers hold e.mu.
func (s *Scheduler) confirmAllows(e *entry, r breaker.Reason) bool {
	if !s.confirms(e, r) {
		return true
	}
	now := s.clock.Now()
	switch e.suspicion.state {
	case decided:
		// Confirmed or unconfirmed, and the rule still holds: the guard decides, as often
		// as it is asked, without asking the observers again.
		return true
	case asking:
		return false
	case refuted:
		if now.Before(e.suspicion.heldUntil) {
			return false
		}
	}
	s.suspect(e, r, now)
	return false
}

// confirmedTrip says the trip being asked about now was confirmed by observers (not merely
// unconfirmed), so the observer guard counts it without holding it. Callers hold e.mu.
func confirmedTrip(e *entry, r breaker.Reason) bool {
	su := e.suspicion
	return su.state == decided && su.reason == r && su.last != nil && su.last.Outcome == confirm.Confirmed
}

// suspect sends a suspicion to the Confirmer, bounded by one probe timeout and
// confirmSlack. Callers hold e.mu.
func (s *Scheduler) suspect(e *entry, r breaker.Reason, now time.Time) {
	e.suspicion.state, e.suspicion.reason, e.suspicion.since = asking, r, now
	var eps []probe.Endpoint
	for ep, o := range e.failing {
		if _, probed := e.slots[ep]; !probed {
			continue // no longer an endpoint of the target: its front does not publish it
		}
		if o == breaker.Failure || o == breaker.Slow && r == breaker.SlowRate {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 {
		for ep := range e.slots {
			eps = append(eps, ep)
		}
	}
	slices.SortFunc(eps, func(a, b probe.Endpoint) int { return a.Compare(b) })
	rule := confirm.Rule{Slow: r == breaker.SlowRate}
	switch r {
	case breaker.FailureRate:
		rule.Percent = e.confirmCfg.FailurePercent
	case breaker.SlowRate:
		rule.Percent = e.confirmCfg.SlowPercent
	}
	q := Suspicion{Key: e.key, Reason: r, Endpoints: eps, Rule: rule, Observers: e.confirmCfg.Observers, Zones: e.confirmCfg.Zones}
	ctx, cancel := context.WithTimeout(e.ctx, e.spec.Timeout+confirmSlack)
	go func() {
		defer cancel()
		s.settle(e, r, s.confirmer.Confirm(ctx, q))
	}()
}

// settle applies a tally: a refuted trip is held (and asked about again after a while if the
// rule still holds), a confirmed or unconfirmed one goes ahead through the trip permit, whose
// guard has the last word, if the leader's probes still hold the rule.
func (s *Scheduler) settle(e *entry, r breaker.Reason, res confirm.Result) {
	e.mu.Lock()
	if e.removed || e.suspicion.state != asking || e.suspicion.reason != r {
		e.mu.Unlock()
		return
	}
	e.suspicion.last = &res
	changed := true
	if res.Outcome == confirm.Refuted {
		e.suspicion.state = refuted
		e.suspicion.heldUntil = s.clock.Now().Add(refutedHold(e.interval))
	} else {
		e.suspicion.state = decided
		if e.engine.Held() == r {
			e.verdict = guard.Allow
			t, opened := e.engine.Trip(r)
			if opened {
				result := res
				e.changes = append(e.changes, Change{Transition: t, Confirmation: &result, Released: e.verdict == guard.Release})
				s.armDeadline(e)
			}
		}
		settled(e)
	}
	e.mu.Unlock()
	if changed {
		s.changed(e.key)
	}
}

// settled ends a decided suspicion once the rule it was about no longer holds: the breaker
// opened, or its probes stopped holding the rule. While the guard holds the trip, it stays
// decided, so that the guard is asked again without the observers. Callers hold e.mu.
func settled(e *entry) {
	if e.suspicion.state == decided && e.engine.Held() != e.suspicion.reason {
		e.suspicion.state = idle
	}
}

// refutedHold is how long a refuted trip stays held before observers are asked again while
// the leader's probes still hold the rule: ten intervals, within 5 s to a minute, so that a
// leader with a sick route costs its peers a probe now and then, not at every interval.
func refutedHold(interval time.Duration) time.Duration {
	return min(max(10*interval, 5*time.Second), time.Minute)
}

// noteOutcome keeps each endpoint's last counted outcome, for the endpoints a suspicion asks
// about. Callers hold e.mu.
func noteOutcome(e *entry, r probe.Result) {
	if r.Outcome == breaker.Neutral {
		return
	}
	if e.failing == nil {
		e.failing = map[probe.Endpoint]breaker.Outcome{}
	}
	e.failing[r.Endpoint] = r.Outcome
}

// confirmation is the view of e's newest second opinion, about its trip or an endpoint's
// ejection, nil when it has none. Callers hold e.mu.
func (e *entry) confirmation() *Confirmation {
	c := e.tripConfirmation()
	if ec := e.endpointConfirm; ec != nil && (c == nil || ec.Since.After(c.Since)) {
		cp := *ec
		return &cp
	}
	return c
}

// tripConfirmation is the view of the breaker's own suspicion. Callers hold e.mu.
func (e *entry) tripConfirmation() *Confirmation {
	su := e.suspicion
	if su.state == idle && su.last == nil {
		return nil
	}
	c := &Confirmation{Asking: su.state == asking, Reason: su.reason, Since: su.since, HeldUntil: su.heldUntil}
	if su.last != nil {
		last := *su.last
		c.Last = &last
	}
	return c
}

// The second opinion for ejections: an endpoint whose ejection rule holds on the leader's
// probes stays published while observers probe that one endpoint; the tracker ejects it
// (Retry) when they confirm or nobody answers, through the cap and the observer guard.

// attachEjectionConfirm has the tracker ask for a second opinion before each ejection, when
// the breaker's trips ask for one. Callers hold e.mu or own e alone.
func (s *Scheduler) attachEjectionConfirm(e *entry) {
	if e.tracker == nil || s.confirmer == nil {
		return
	}
	e.tracker.SetConfirm(func(ep probe.Endpoint, r ejection.Reason) bool {
		// Called by the tracker under e.mu, from record or Retry.
		return s.ejectionConfirmAllows(e, ep, r)
	})
}

// ejectionConfirmAllows is the second opinion's part of an ejection: false while the
// observers are asked or after they refuted it, true once they confirmed or stayed silent.
// Callers hold e.mu.
func (s *Scheduler) ejectionConfirmAllows(e *entry, ep probe.Endpoint, r ejection.Reason) bool {
	e.ejectConfirmed = false // whatever an earlier ejection left, it is not this one's
	if s.confirmer == nil || e.confirmCfg.Observers == 0 || !e.gated {
		return true
	}
	now := s.clock.Now()
	if su := e.ejectSuspicions[ep]; su != nil {
		switch su.state {
		case decided:
			e.ejectConfirmed = su.last != nil && su.last.Outcome == confirm.Confirmed
			return true
		case asking:
			return false
		case refuted:
			if now.Before(su.heldUntil) {
				return false
			}
		}
	}
	s.suspectEndpoint(e, ep, r, now)
	return false
}

// suspectEndpoint asks the Confirmer about one endpoint's ejection, bounded as a trip's
// suspicion is. Callers hold e.mu.
func (s *Scheduler) suspectEndpoint(e *entry, ep probe.Endpoint, r ejection.Reason, now time.Time) {
	if e.ejectSuspicions == nil {
		e.ejectSuspicions = map[probe.Endpoint]*suspicion{}
	}
	su := &suspicion{state: asking, ejection: r, since: now}
	e.ejectSuspicions[ep] = su
	e.endpointConfirm = &Confirmation{Asking: true, Endpoint: ep, Ejection: r, Since: now}
	rule := confirm.Rule{}
	if r == ejection.FailureRate {
		rule.Percent = e.tracker.Config().FailureRate.Percent
	}
	q := Suspicion{Key: e.key, Ejection: r, Endpoints: []probe.Endpoint{ep}, Rule: rule,
		Observers: e.confirmCfg.Observers, Zones: e.confirmCfg.Zones}
	ctx, cancel := context.WithTimeout(e.ctx, e.spec.Timeout+confirmSlack)
	go func() {
		defer cancel()
		s.settleEndpoint(e, ep, su, s.confirmer.Confirm(ctx, q))
	}()
}

// settleEndpoint applies an ejection's tally: refuted, the endpoint stays published for
// refutedHold; otherwise it is ejected if its rule still holds.
func (s *Scheduler) settleEndpoint(e *entry, ep probe.Endpoint, su *suspicion, res confirm.Result) {
	e.mu.Lock()
	if e.removed || e.ejectSuspicions[ep] != su || su.state != asking {
		e.mu.Unlock()
		return
	}
	su.last = &res
	if res.Outcome == confirm.Refuted {
		su.state, su.heldUntil = refuted, s.clock.Now().Add(refutedHold(e.interval))
	} else {
		su.state = decided
		if e.tracker != nil {
			e.tracker.Retry(ep, res.Message("the endpoint"))
			s.takeEndpointEvents(e)
			s.armDeadline(e)
		}
	}
	last := res
	e.endpointConfirm = &Confirmation{Endpoint: ep, Ejection: su.ejection, Since: su.since, Last: &last, HeldUntil: su.heldUntil}
	settledEndpoint(e, ep, s.clock.Now())
	e.mu.Unlock()
	s.changed(e.key)
}

// settledEndpoint forgets an endpoint's suspicion once it has nothing left to hold: the
// endpoint was ejected, left the target, or its rule stopped holding (after a refutation's
// hold). Callers hold e.mu.
func settledEndpoint(e *entry, ep probe.Endpoint, now time.Time) {
	su := e.ejectSuspicions[ep]
	if su == nil || su.state == asking {
		return
	}
	_, probed := e.slots[ep]
	if published := probed && e.tracker != nil && !e.tracker.IsEjected(ep); published &&
		// While refuted, the rule may hold again within the hold without asking anew.
		(e.tracker.RuleHolds(ep) != ejection.NoReason || su.state == refuted && now.Before(su.heldUntil)) {
		return
	}
	delete(e.ejectSuspicions, ep)
}
