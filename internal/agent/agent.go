package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// The agent needs get, list and watch on Services and EndpointSlices, and nothing else. There
// is no RBAC marker for controller-gen here on purpose: it gathers every marker under
// internal/ into the manager's ClusterRole; the agent's role is its own (config/agent).

// Options configure the agent.
type Options struct {
	// MaxChangeAge is the oldest slice change, by its last-change-trigger-time, that cuts.
	MaxChangeAge time.Duration
	// Table is this node's conntrack table; Guard its reset guard, nil when the kernel has
	// none; Proxy reads kube-proxy's sync time, nil to cut without waiting for it.
	Table interface {
		Table
		Ping() error
	}
	Guard Guard
	Proxy ProxySync
	// ProxyWait is the longest the agent waits for kube-proxy's sync before it cuts anyway.
	ProxyWait time.Duration
	// Metrics is where the agent's metrics go.
	Metrics *Metrics
	// Clock is injected for tests; nil is the real clock.
	Clock clock.Clock
}

// CacheOptions are what the agent's manager caches: tripswitch's front slices only (the
// cluster may hold many thousands of others), and Services without their managed fields.
func CacheOptions() cache.Options {
	return cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&discoveryv1.EndpointSlice{}: {Label: labels.SelectorFromSet(labels.Set{
				discoveryv1.LabelManagedBy: tripswitchv1alpha1.ManagedBy})},
		},
		DefaultTransform: cache.TransformStripManagedFields(),
	}
}

// Setup adds the agent to mgr, whose cache must be made with CacheOptions and which must not
// use leader election: every node's agent acts for its own conntrack table. It adds the
// informers' handlers, the sweeper, /healthz, and /readyz, which passes once both informers
// have synced and the conntrack table answers.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	fronts := NewFronts(o.Clock, o.MaxChangeAge)
	sweeper := &Sweeper{Fronts: fronts, Table: o.Table, Guard: o.Guard, Proxy: o.Proxy, Clock: o.Clock,
		Metrics: o.Metrics, ProxyWait: o.ProxyWait}
	o.Metrics.setResetGuard(o.Guard != nil)
	logger := mgr.GetLogger().WithName("agent")

	sliceInformer, err := mgr.GetCache().GetInformer(ctx, &discoveryv1.EndpointSlice{})
	if err != nil {
		return fmt.Errorf("getting the EndpointSlice informer: %w", err)
	}
	serviceInformer, err := mgr.GetCache().GetInformer(ctx, &corev1.Service{})
	if err != nil {
		return fmt.Errorf("getting the Service informer: %w", err)
	}
	onSlice := func(obj any, deleted bool) {
		s, ok := unwrap[*discoveryv1.EndpointSlice](obj)
		if !ok {
			return
		}
		res := fronts.ObserveSlice(s, deleted)
		for _, skip := range res.Skips {
			o.Metrics.skip(skip)
			logger.Info("Endpoints withheld, connections not cut", "breaker", skip.Front.Namespace+"/"+skip.Breaker,
				"endpoints", skip.Endpoints, "why", skip.Why)
		}
		if res.Gone != nil {
			o.Metrics.forget(res.Gone.Namespace, res.Gone.Name)
		}
		sweeper.Add(res.Cuts)
	}
	if _, err := sliceInformer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { onSlice(obj, false) },
		UpdateFunc: func(_, obj any) { onSlice(obj, false) },
		DeleteFunc: func(obj any) { onSlice(obj, true) },
	}); err != nil {
		return fmt.Errorf("watching EndpointSlices: %w", err)
	}
	onService := func(obj any, deleted bool) {
		if svc, ok := unwrap[*corev1.Service](obj); ok {
			fronts.ObserveService(svc, deleted)
		}
	}
	if _, err := serviceInformer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { onService(obj, false) },
		UpdateFunc: func(_, obj any) { onService(obj, false) },
		DeleteFunc: func(obj any) { onService(obj, true) },
	}); err != nil {
		return fmt.Errorf("watching Services: %w", err)
	}

	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		sweeper.Run(log.IntoContext(ctx, logger))
		return nil
	})); err != nil {
		return fmt.Errorf("adding the sweeper: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("adding the health check: %w", err)
	}
	return mgr.AddReadyzCheck("agent", func(*http.Request) error {
		if !sliceInformer.HasSynced() || !serviceInformer.HasSynced() {
			return errors.New("the EndpointSlice and Service informers have not synced yet")
		}
		if err := o.Table.Ping(); err != nil {
			return fmt.Errorf("the conntrack table does not answer: %w", err)
		}
		return nil
	})
}

// unwrap returns obj as a T, looking into the tombstone an informer hands over for a deletion
// it saw only in a relist.
func unwrap[T any](obj any) (T, bool) {
	if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	t, ok := obj.(T)
	return t, ok
}
