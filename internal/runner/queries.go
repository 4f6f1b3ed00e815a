package runner

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"time"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/query"
)

// Querier sends one instant query, such as a query.Client.
type Querier interface {
	Query(ctx context.Context, q string, at time.Time) (query.Sample, error)
}

// QueryResult is the newest evaluation of one trip rule, for status.
type QueryResult struct {
	Name    string
	Sample  query.Sample
	Holding int
	At      time.Time
	// Err is why the evaluation failed; a failed evaluation never trips.
	Err error
	// SettlingUntil, when set, is when the rule is judged again: until then its lookback
	// reaches back to before the breaker last closed.
	SettlingUntil time.Time
}

// ErrNoQuerier is every evaluation's error on a manager without --prometheus-url.
var ErrNoQuerier = errors.New("the manager has no --prometheus-url, so query rules are not evaluated")

// queryState is one breaker's query rules. Its fields belong to entry.mu.
type queryState struct {
	rules    []query.Rule
	interval time.Duration
	judges   []*query.Judge
	results  []QueryResult
	timer    interface{ Stop() bool }
	// generation counts installs: an evaluation armed under an older one ends without arming
	// another, so that a change while an evaluation is in flight leaves one chain of them.
	generation uint64
}

// setQueries installs a breaker's rules, keeping the runs of rules that did not change, and
// arms its evaluations. Callers hold e.mu.
func (s *Scheduler) setQueries(e *entry, rules []query.Rule, interval time.Duration) {
	if len(rules) == 0 {
		if e.queries.timer != nil {
			e.queries.timer.Stop()
		}
		e.queries = queryState{generation: e.queries.generation + 1}
		return
	}
	if reflect.DeepEqual(rules, e.queries.rules) && interval == e.queries.interval && e.queries.timer != nil {
		return
	}
	old := map[string]*query.Judge{}
	for _, j := range e.queries.judges {
		old[j.Rule.Name] = j
	}
	judges := make([]*query.Judge, len(rules))
	for i, r := range rules {
		if j, ok := old[r.Name]; ok && j.Rule == r {
			judges[i] = j
		} else {
			judges[i] = &query.Judge{Rule: r}
		}
	}
	if e.queries.timer != nil {
		e.queries.timer.Stop()
	}
	e.queries = queryState{rules: rules, interval: interval, judges: judges, generation: e.queries.generation + 1}
	s.armQueries(e, s.phase(e.key, netip.AddrPort{}, interval))
}

// armQueries schedules the breaker's next evaluation after d. Callers hold e.mu.
func (s *Scheduler) armQueries(e *entry, d time.Duration) {
	generation := e.queries.generation
	e.queries.timer = s.clock.AfterFunc(d, func() { go s.evaluate(e, generation) })
}

// evaluate runs every rule of a breaker once, at most MaxConcurrentQueries at a time across
// the manager, and judges the results: only while the breaker is Closed, since while Open
// clients are refused and the traffic a query watches goes quiet, and HalfOpen is decided by
// the probes' trials; and, after a breaker that had tripped closes, only once the rule's
// lookback lies wholly after the close, since until then its window holds the errors that
// tripped it and the refusals of the Open time. A failed query is reported, never trips, and
// starts the rule's run of evaluations again.
func (s *Scheduler) evaluate(e *entry, generation uint64) {
	e.mu.Lock()
	if e.removed || e.queries.generation != generation || len(e.queries.judges) == 0 {
		e.mu.Unlock()
		return
	}
	ctx, rules := e.ctx, append([]query.Rule(nil), e.queries.rules...)
	e.mu.Unlock()

	samples := make([]query.Sample, len(rules))
	errs := make([]error, len(rules))
	at := s.clock.Now()
	for i, r := range rules {
		if s.querier == nil {
			errs[i] = ErrNoQuerier
			continue
		}
		select {
		case s.querySlots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		samples[i], errs[i] = s.querier.Query(ctx, r.Query, at)
		<-s.querySlots
	}
	if ctx.Err() != nil {
		return
	}
	if s.queryHeard != nil {
		for i, r := range rules {
			s.queryHeard(e.key, r.Name, samples[i], errs[i])
		}
	}

	e.mu.Lock()
	if e.removed || e.queries.generation != generation {
		e.mu.Unlock()
		return // edited meanwhile: setQueries armed the new rules
	}
	snap := e.engine.Snapshot()
	closed := snap.State == breaker.Closed
	failingBefore := failingRules(e.queries.results)
	var change *Change
	heldBefore := e.guardHeld
	results := make([]QueryResult, len(rules))
	anyHolds := false
	for i, j := range e.queries.judges {
		settling := settlingUntil(snap, j.Rule.Lookback, at)
		switch {
		case errs[i] != nil, !closed, !settling.IsZero():
			// A failed evaluation breaks the run too: after an outage of Prometheus a rule
			// needs its whole count of evaluations again.
			j.Reset()
		default:
			if j.Observe(samples[i]) && change == nil {
				e.verdict = guard.Allow
				if t, ok := e.engine.Trip(breaker.QueryRule); ok {
					change = &Change{Transition: t, Query: j.Describe(), Released: e.verdict == guard.Release}
				}
			}
			anyHolds = anyHolds || j.Holding >= j.Rule.For
		}
		results[i] = QueryResult{Name: j.Rule.Name, Sample: samples[i], Holding: j.Holding, At: at, Err: errs[i],
			SettlingUntil: settling}
	}
	if !anyHolds {
		e.engine.ClearHeld(breaker.QueryRule)
	}
	e.queries.results = results
	if change != nil {
		e.changes = append(e.changes, *change)
		for _, j := range e.queries.judges {
			j.Reset()
		}
		s.armDeadline(e)
	}
	s.releaseHold(e)
	holdChanged := heldBefore != e.guardHeld
	failingChanged := failingRules(results) != failingBefore
	s.armQueries(e, e.queries.interval)
	e.mu.Unlock()
	if change != nil || holdChanged || failingChanged {
		s.changed(e.key)
	}
}

// failingRules names the rules whose last evaluation failed, in order: what the QueriesFailing
// condition shows, so a change of it is written at once while new values wait for the refresh.
func failingRules(results []QueryResult) string {
	var names []string
	for _, r := range results {
		if r.Err != nil {
			names = append(names, r.Name)
		}
	}
	return strings.Join(names, ",")
}

// settlingUntil is when a rule with this lookback is judged again after its breaker closed,
// or zero when it is judged now: a breaker that never tripped has no stale window to wait out.
func settlingUntil(snap breaker.Snapshot, lookback time.Duration, now time.Time) time.Time {
	if snap.State != breaker.Closed || snap.Trips == 0 || !now.Before(snap.Since.Add(lookback)) {
		return time.Time{}
	}
	return snap.Since.Add(lookback)
}
