package responder

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// The responder needs get, list and watch on circuitbreakers in tripswitch.io, and nothing
// else. There is no RBAC marker for controller-gen here on purpose: it gathers every marker
// under internal/ into the manager's ClusterRole; the responder's role is its own
// (config/responder/role.yaml).

// Reconciler keeps an Index in step with the cluster's CircuitBreakers: for each change, one
// Get from the cache, and the breaker's entry set or deleted. It writes nothing.
type Reconciler struct {
	Reader client.Reader
	Index  *Index
}

// Reconcile records the breaker's entry, or forgets a breaker that is gone.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var cb tripswitchv1alpha1.CircuitBreaker
	if err := r.Reader.Get(ctx, req.NamespacedName, &cb); err != nil {
		if apierrors.IsNotFound(err) {
			r.Index.Delete(req.NamespacedName)
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, err
	}
	r.Index.Set(EntryOf(&cb))
	return reconcile.Result{}, nil
}

// SetupWithManager watches CircuitBreakers with a controller that runs in every replica.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("responder").
		For(&tripswitchv1alpha1.CircuitBreaker{}).
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false)}).
		Complete(r)
}

// Setup adds a Responder and the Reconciler that feeds its Index to mgr, and the checks:
// /healthz answers while the process runs; /readyz only once both listeners answer and the
// Index holds every CircuitBreaker of the cache's first list, because the manager publishes
// only ready responders, and an answer without the breaker's name and Retry-After is a
// poorer one. mgr must not need leader election to run them: every replica answers.
func Setup(mgr ctrl.Manager, o Options) (*Responder, error) {
	index := NewIndex()
	r, err := New(index, o)
	if err != nil {
		return nil, err
	}
	if err := mgr.Add(r); err != nil {
		return nil, fmt.Errorf("adding the responder: %w", err)
	}
	if err := (&Reconciler{Reader: mgr.GetClient(), Index: index}).SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("setting up the CircuitBreaker reconciler: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, fmt.Errorf("adding the health check: %w", err)
	}
	caughtUp := &caughtUp{informers: mgr.GetCache(), reader: mgr.GetCache(), index: index}
	if err := mgr.AddReadyzCheck("responder", func(req *http.Request) error {
		if err := r.Serving(); err != nil {
			return err
		}
		return caughtUp.check(req.Context())
	}); err != nil {
		return nil, fmt.Errorf("adding the readiness check: %w", err)
	}
	return r, nil
}

// caughtUp says whether the Index has caught up with the cluster: the informer has synced,
// and the Reconciler has recorded every breaker the cache lists. Once it has, it stays so:
// later changes reach the Index within milliseconds, as they would at any other time.
type caughtUp struct {
	informers cache.Informers
	reader    client.Reader // the cache, which lists what the informer holds
	index     *Index
	done      atomic.Bool
}

func (c *caughtUp) check(ctx context.Context) error {
	if c.done.Load() {
		return nil
	}
	// Not blocking: a readiness probe is answered now, not once the cache has synced.
	inf, err := c.informers.GetInformer(ctx, &tripswitchv1alpha1.CircuitBreaker{}, cache.BlockUntilSynced(false))
	if err != nil {
		return fmt.Errorf("CircuitBreaker informer: %w", err)
	}
	if !inf.HasSynced() {
		return errors.New("CircuitBreakers are not synced yet")
	}
	var list tripswitchv1alpha1.CircuitBreakerList
	if err := c.reader.List(ctx, &list); err != nil {
		return fmt.Errorf("listing CircuitBreakers: %w", err)
	}
	missing := 0
	for i := range list.Items {
		if !c.index.Has(client.ObjectKeyFromObject(&list.Items[i])) {
			missing++
		}
	}
	if missing > 0 {
		return fmt.Errorf("%d of %d CircuitBreakers are not indexed yet", missing, len(list.Items))
	}
	c.done.Store(true)
	return nil
}
