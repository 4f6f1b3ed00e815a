package probe

import (
	"math"
	"sync/atomic"
	"time"
)

// latenessBuckets are upper bounds, 100µs to ~13s in steps of ×1.25, fine enough to read a
// p99 within 25%.
var latenessBuckets = func() []time.Duration {
	var b []time.Duration
	for d := 100 * time.Microsecond; d < 15*time.Second; d = d * 5 / 4 {
		b = append(b, d)
	}
	return b
}()

// Stats are the scheduler's own counters: how many probes it started and finished, and how
// late each started against its slot's due time. Updates are lock-free.
type Stats struct {
	dispatched atomic.Uint64
	completed  atomic.Uint64
	lateness   [64]atomic.Uint64 // one per bucket, the last for anything longer
}

func (s *Stats) observeLateness(d time.Duration) {
	s.dispatched.Add(1)
	i := 0
	for i < len(latenessBuckets) && d > latenessBuckets[i] {
		i++
	}
	s.lateness[i].Add(1)
}

// StatsSnapshot is a copy of Stats.
type StatsSnapshot struct {
	Dispatched, Completed uint64
	lateness              []uint64
}

// Stats returns the scheduler's counters so far.
func (s *Scheduler) Stats() StatsSnapshot {
	out := StatsSnapshot{Dispatched: s.stats.dispatched.Load(), Completed: s.stats.completed.Load(),
		lateness: make([]uint64, len(latenessBuckets)+1)}
	for i := range out.lateness {
		out.lateness[i] = s.stats.lateness[i].Load()
	}
	return out
}

// LatenessQuantile is the upper bound of the bucket that holds quantile q of probe start
// lateness; +Inf when it lies beyond the last bucket.
func (s StatsSnapshot) LatenessQuantile(q float64) time.Duration {
	var total uint64
	for _, n := range s.lateness {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, n := range s.lateness {
		seen += n
		if seen >= rank {
			if i < len(latenessBuckets) {
				return latenessBuckets[i]
			}
			break
		}
	}
	return time.Duration(math.MaxInt64)
}
