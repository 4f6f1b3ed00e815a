package runner

import "sync/atomic"

// Stats are the scheduler's own counters. Updates are lock-free. How late probes start is a
// metric of its own (ProbeObserver.ObserveStart, tripswitch_probe_start_lateness_seconds).
type Stats struct {
	started      atomic.Uint64
	completed    atomic.Uint64
	skippedAtCap atomic.Uint64
}

// StatsSnapshot is a copy of Stats.
type StatsSnapshot struct {
	// Started counts probes sent, Completed the ones whose outcome was recorded.
	Started, Completed uint64
	// SkippedAtCap counts turns not sent because their breaker had its share of the bound
	// (Limits.PerBreaker) in flight and queued.
	SkippedAtCap uint64
}

// Stats returns the scheduler's counters so far.
func (s *Scheduler) Stats() StatsSnapshot {
	return StatsSnapshot{Started: s.stats.started.Load(), Completed: s.stats.completed.Load(),
		SkippedAtCap: s.stats.skippedAtCap.Load()}
}
