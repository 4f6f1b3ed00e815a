package runner

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/query"
)

// fakeQuerier answers every query with the sample or error it is set to, and counts them.
type fakeQuerier struct {
	mu     sync.Mutex
	sample query.Sample
	err    error
	asked  int
}

func (f *fakeQuerier) Query(context.Context, string, time.Time) (query.Sample, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked++
	return f.sample, f.err
}

func (f *fakeQuerier) set(s query.Sample, err error) {
	f.mu.Lock()
	f.sample, f.err = s, err
	f.mu.Unlock()
}

func errorRateRule() query.Rule {
	return query.Rule{Name: "error-rate", Query: "x", Threshold: 0.05, Above: true, For: 3}
}

func TestSchedulerTripsOnAQueryRuleAndNeverOnAFailingQuery(t *testing.T) {
	g := NewWithT(t)
	_, eps := backends(t, 1)
	q := &fakeQuerier{}
	s := startScheduler(t, Options{MaxConcurrentProbes: 4, Querier: q})
	reg := registration(t, time.Second, eps...)
	reg.Queries, reg.QueryInterval = []query.Rule{errorRateRule()}, 50*time.Millisecond
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())

	q.set(query.Sample{}, errors.New("connection refused"))
	g.Eventually(func() int { q.mu.Lock(); defer q.mu.Unlock(); return q.asked }, 5*time.Second).Should(BeNumerically(">=", 10))
	v, _ := s.View(key(1))
	g.Expect(v.Snapshot.State).To(Equal(breaker.Closed), "a Prometheus that cannot be reached never trips")
	g.Expect(v.Queries).To(ConsistOf(HaveField("Err", MatchError("connection refused"))))

	q.set(query.Sample{Value: 0.31}, nil)
	var changes []Change
	g.Eventually(func() []Change { changes = append(changes, s.TakeChanges(key(1))...); return changes }, 5*time.Second).
		Should(HaveLen(1))
	g.Expect(changes[0].Reason).To(Equal(breaker.QueryRule))
	g.Expect(changes[0].To).To(Equal(breaker.Open))
	g.Expect(changes[0].Query).To(Equal("error-rate 0.31 > 0.05 for 3 evaluations"))

	// While Open the rule is not judged: the run starts again from zero.
	g.Eventually(func() int { v, _ := s.View(key(1)); return v.Queries[0].Holding }).Should(BeZero())
	g.Consistently(func() breaker.State { v, _ := s.View(key(1)); return v.Snapshot.State }, 300*time.Millisecond).
		Should(Equal(breaker.Open))
}

func TestSchedulerReportsQueriesWithoutAPrometheus(t *testing.T) {
	g := NewWithT(t)
	_, eps := backends(t, 1)
	s := startScheduler(t, Options{MaxConcurrentProbes: 4})
	reg := registration(t, time.Second, eps...)
	reg.Queries, reg.QueryInterval = []query.Rule{errorRateRule()}, 50*time.Millisecond
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	g.Eventually(func() []QueryResult { v, _ := s.View(key(1)); return v.Queries }).
		Should(ConsistOf(HaveField("Err", MatchError(ErrNoQuerier))))
}

func TestSchedulerHoldsQueryTripsUnderTheObserverGuard(t *testing.T) {
	g := NewWithT(t)
	_, eps := backends(t, 1)
	q := &fakeQuerier{sample: query.Sample{Value: 1}}
	gd := guard.New(guard.Config{MaxTripFraction: 0.5, Window: time.Minute, MinBreakers: 4}, clock.RealClock{})
	s := startScheduler(t, Options{MaxConcurrentProbes: 8, Querier: q, Guard: gd})
	for i := range 4 {
		reg := registration(t, time.Second, eps...)
		reg.Gated = true
		reg.Queries, reg.QueryInterval = []query.Rule{errorRateRule()}, 50*time.Millisecond
		g.Expect(s.Upsert(key(i), reg)).To(Succeed())
	}
	count := func() [2]int {
		var open, held int
		for i := range 4 {
			v, _ := s.View(key(i))
			if v.Snapshot.State == breaker.Open {
				open++
			}
			if v.Held != nil {
				held++
				g.Expect(v.Held.Reason).To(Equal(breaker.QueryRule))
			}
		}
		return [2]int{open, held}
	}
	g.Eventually(count, 5*time.Second).Should(Equal([2]int{2, 2}), "a Prometheus that shows every target failing trips only the budget")
	g.Consistently(count, 500*time.Millisecond).Should(Equal([2]int{2, 2}), "probes that succeed do not end a held query trip")
	q.set(query.Sample{Value: 0}, nil)
	g.Eventually(func() int { return count()[1] }, 5*time.Second).Should(BeZero(), "the holds end when the rule stops holding")
}

// A rule that starts or stops failing changes the QueriesFailing condition, so the scheduler
// asks for a reconcile at once, not at the next counter refresh; an evaluation that only has a
// new value does not.
func TestSchedulerReportsWhenARuleStartsOrStopsFailing(t *testing.T) {
	g := NewWithT(t)
	_, eps := backends(t, 1)
	q := &fakeQuerier{sample: query.Sample{Value: 0.01}}
	var notified atomic.Int32
	s := startScheduler(t, Options{MaxConcurrentProbes: 4, Querier: q,
		OnChange: func(types.NamespacedName) { notified.Add(1) }})
	reg := registration(t, time.Hour, eps...)
	reg.Queries, reg.QueryInterval = []query.Rule{errorRateRule()}, 50*time.Millisecond
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	asked := func() int { q.mu.Lock(); defer q.mu.Unlock(); return q.asked }
	g.Eventually(asked, 5*time.Second).Should(BeNumerically(">=", 5))
	g.Expect(notified.Load()).To(BeZero(), "healthy evaluations are counters")

	q.set(query.Sample{}, errors.New("connection refused"))
	g.Eventually(notified.Load, 5*time.Second).Should(BeEquivalentTo(1))
	g.Consistently(notified.Load, 300*time.Millisecond).Should(BeEquivalentTo(1), "once, not at every failed evaluation")

	q.set(query.Sample{Value: 0.02}, nil)
	g.Eventually(notified.Load, 5*time.Second).Should(BeEquivalentTo(2))
	g.Consistently(notified.Load, 300*time.Millisecond).Should(BeEquivalentTo(2))
}

// After a close, a rule's window still holds the traffic of before: the errors that tripped
// it, and the responder's refusals while Open. The rule is judged again only once its whole
// lookback lies after the close, so a recovered breaker does not trip again on stale data.
func TestSchedulerJudgesAQueryOnlyOnceItsWindowLiesAfterTheClose(t *testing.T) {
	g := NewWithT(t)
	_, eps := backends(t, 1)
	q := &fakeQuerier{sample: query.Sample{Value: 1}}
	s := startScheduler(t, Options{MaxConcurrentProbes: 4, Querier: q})
	reg := registration(t, 50*time.Millisecond, eps...)
	reg.Config.OpenDuration = 200 * time.Millisecond
	rule := errorRateRule()
	rule.For, rule.Lookback = 1, 1500*time.Millisecond
	reg.Queries, reg.QueryInterval = []query.Rule{rule}, 50*time.Millisecond
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	state := func() breaker.State { v, _ := s.View(key(1)); return v.Snapshot.State }

	g.Eventually(state, 5*time.Second).Should(Equal(breaker.Open), "a new breaker judges at once")
	g.Eventually(state, 5*time.Second).Should(Equal(breaker.Closed), "the probes close it")
	closed := time.Now()
	v, _ := s.View(key(1))
	g.Expect(v.Queries[0].SettlingUntil).To(BeTemporally("~", v.Snapshot.Since.Add(1500*time.Millisecond), 10*time.Millisecond))
	g.Consistently(state, time.Second).Should(Equal(breaker.Closed), "the window still reaches back before the close")
	g.Eventually(state, 5*time.Second).Should(Equal(breaker.Open))
	g.Expect(time.Since(closed)).To(BeNumerically(">=", 1400*time.Millisecond))
}

// blockingQuerier holds its first query until released, so that a test can change the
// breaker's rules while an evaluation is in flight.
type blockingQuerier struct {
	entered, release chan struct{}
	once             sync.Once
	asked            atomic.Int32
}

func (b *blockingQuerier) Query(ctx context.Context, _ string, _ time.Time) (query.Sample, error) {
	b.asked.Add(1)
	b.once.Do(func() {
		close(b.entered)
		<-b.release
	})
	return query.Sample{Value: 0}, nil
}

// Changing only the interval while an evaluation is in flight must leave one chain of
// evaluations, not one from the old timer and one from the new.
func TestSchedulerKeepsOneEvaluationChainWhenTheIntervalChangesMidEvaluation(t *testing.T) {
	g := NewWithT(t)
	_, eps := backends(t, 1)
	q := &blockingQuerier{entered: make(chan struct{}), release: make(chan struct{})}
	s := startScheduler(t, Options{MaxConcurrentProbes: 4, Querier: q})
	reg := registration(t, time.Hour, eps...)
	reg.Queries, reg.QueryInterval = []query.Rule{errorRateRule()}, 200*time.Millisecond
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	<-q.entered
	reg.QueryInterval = 100 * time.Millisecond
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	close(q.release)

	g.Eventually(q.asked.Load).Should(BeNumerically(">=", 4), "the evaluations go on")
	before := q.asked.Load()
	g.Consistently(func() int32 { return q.asked.Load() - before }, 2*time.Second, 100*time.Millisecond).
		Should(BeNumerically("<=", 25), "one chain evaluates about 20 times in 2 s at 100ms")
	g.Expect(q.asked.Load()-before).To(BeNumerically(">=", 12), "and it does evaluate")
}

// scriptedQuerier answers its script in order, then the last answer for ever.
type scriptedQuerier struct {
	mu     sync.Mutex
	script []func() (query.Sample, error)
	asked  int
}

func (s *scriptedQuerier) Query(context.Context, string, time.Time) (query.Sample, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	answer := s.script[min(s.asked, len(s.script)-1)]
	s.asked++
	return answer()
}

// A failed evaluation breaks a run of evaluations that held: after an outage of Prometheus,
// a rule needs its full count of evaluations again, never one.
func TestSchedulerStartsARunAgainAfterAFailedQuery(t *testing.T) {
	g := NewWithT(t)
	_, eps := backends(t, 1)
	holds := func() (query.Sample, error) { return query.Sample{Value: 1}, nil }
	fails := func() (query.Sample, error) { return query.Sample{}, errors.New("connection refused") }
	healthy := func() (query.Sample, error) { return query.Sample{Value: 0}, nil }
	q := &scriptedQuerier{script: []func() (query.Sample, error){holds, holds, fails, holds, holds, healthy}}
	s := startScheduler(t, Options{MaxConcurrentProbes: 4, Querier: q})
	reg := registration(t, time.Hour, eps...)
	reg.Queries, reg.QueryInterval = []query.Rule{errorRateRule()}, 20*time.Millisecond // for 3
	g.Expect(s.Upsert(key(1), reg)).To(Succeed())
	g.Eventually(func() int { q.mu.Lock(); defer q.mu.Unlock(); return q.asked }, 5*time.Second).Should(BeNumerically(">=", 10))
	v, _ := s.View(key(1))
	g.Expect(v.Snapshot.State).To(Equal(breaker.Closed), "2 held, a failure, 2 held: no run of 3")
}
