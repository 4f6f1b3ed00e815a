package breaker

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	"k8s.io/utils/clock"
)

// workload is a steady stream that never trips either breaker: one failure in eight, never
// two in a row, with some slow and neutral outcomes.
var workload = func() [64]Outcome {
	var w [64]Outcome
	for i := range w {
		switch {
		case i%8 == 3:
			w[i] = Failure
		case i%16 == 5:
			w[i] = Slow
		case i%32 == 9:
			w[i] = Neutral
		}
	}
	return w
}()

var errProbe = errors.New("probe failed")

func benchConfig(rates bool) Config {
	c := Config{ConsecutiveFailures: 5, OpenDuration: time.Minute, TrialProbes: 1, SuccessThreshold: 1}
	if rates {
		c.FailureRate = RateRule{Percent: 50, Window: 100, MinimumProbes: 20}
		c.SlowRate = RateRule{Percent: 80, Window: 100, MinimumProbes: 20}
	}
	return c
}

// BenchmarkRecord is the cost of counting one outcome in steady Closed state.
func BenchmarkRecord(b *testing.B) {
	for _, bc := range []struct {
		name  string
		rates bool
	}{{"consecutive", false}, {"consecutive+rates", true}} {
		b.Run(bc.name, func(b *testing.B) {
			br, err := New(benchConfig(bc.rates), clock.RealClock{}, 1)
			if err != nil {
				b.Fatal(err)
			}
			ticket, _ := br.Admit()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, ok := br.Record(ticket, workload[i&63]); ok {
					b.Fatal("the workload must not trip")
				}
			}
		})
	}
}

// BenchmarkAdmitRecordLocked is the path a probe scheduler takes, with the mutex it needs to
// share a breaker between probe goroutines: the like-for-like counterpart of gobreaker, which
// locks internally.
func BenchmarkAdmitRecordLocked(b *testing.B) {
	br, err := New(benchConfig(true), clock.RealClock{}, 1)
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		mu.Lock()
		if ticket, ok := br.Admit(); ok {
			br.Record(ticket, workload[i&63])
		}
		mu.Unlock()
	}
}

// BenchmarkGobreaker runs the same workload through github.com/sony/gobreaker/v2, tripping
// on 5 consecutive failures like the consecutive configuration above.
func BenchmarkGobreaker(b *testing.B) {
	settings := gobreaker.Settings{
		Name:        "bench",
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= 5 },
		IsExcluded:  func(err error) bool { return errors.Is(err, errNeutral) },
	}
	b.Run("twostep", func(b *testing.B) {
		cb := gobreaker.NewTwoStepCircuitBreaker[struct{}](settings)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			done, err := cb.Allow()
			if err != nil {
				b.Fatal("the workload must not trip")
			}
			done(outcomeErr(workload[i&63]))
		}
	})
	b.Run("execute", func(b *testing.B) {
		cb := gobreaker.NewCircuitBreaker[struct{}](settings)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			o := workload[i&63]
			if _, err := cb.Execute(func() (struct{}, error) { return struct{}{}, outcomeErr(o) }); errors.Is(err, gobreaker.ErrOpenState) {
				b.Fatal("the workload must not trip")
			}
		}
	})
}

var errNeutral = errors.New("neutral")

func outcomeErr(o Outcome) error {
	switch o {
	case Failure:
		return errProbe
	case Neutral:
		return errNeutral
	}
	return nil
}

func TestRecordDoesNotAllocate(t *testing.T) {
	br, err := New(benchConfig(true), clock.RealClock{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	ticket, _ := br.Admit()
	i := 0
	if allocs := testing.AllocsPerRun(1000, func() {
		br.Record(ticket, workload[i&63])
		i++
	}); allocs != 0 {
		t.Fatalf("Record allocates %.1f times per call", allocs)
	}
}
