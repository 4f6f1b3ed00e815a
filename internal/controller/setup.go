package controller

import (
	"context"
	"fmt"
	"time"

	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/tripswitch/tripswitch/internal/metrics"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// Options say how Setup wires the controller. The manager binary, the envtest suite and the
// benchmarks all go through Setup, so they run the same controller.
type Options struct {
	// Dial replaces net.Dialer for probes when set; tests and the demo map addresses to loopback.
	Dial probe.DialFunc
	// MaxConcurrentProbes bounds probes in flight across all breakers.
	MaxConcurrentProbes int
	// StatusSyncPeriod bounds how often steady-state counters are written to status.
	StatusSyncPeriod time.Duration
}

// Setup adds the probe scheduler, as a leader-only runnable, and the CircuitBreaker
// controller to mgr, with metrics on controller-runtime's registry and events.k8s.io events.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	scheduler := probe.NewScheduler(probe.NewFactory(o.Dial, clock.RealClock{}), clock.RealClock{}, o.MaxConcurrentProbes)
	if err := mgr.Add(scheduler); err != nil {
		return fmt.Errorf("adding the probe scheduler: %w", err)
	}
	recorder, err := metrics.NewRecorder(crmetrics.Registry)
	if err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	return (&CircuitBreakerReconciler{
		Client:           mgr.GetClient(),
		Scheduler:        scheduler,
		Recorder:         mgr.GetEventRecorder("tripswitch"),
		Metrics:          recorder,
		StatusSyncPeriod: o.StatusSyncPeriod,
	}).SetupWithManager(ctx, mgr)
}
