package controller

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/confirm"
	"github.com/tripswitch/tripswitch/internal/external"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/metrics"
	"github.com/tripswitch/tripswitch/internal/observer"
	"github.com/tripswitch/tripswitch/internal/probe"
	"github.com/tripswitch/tripswitch/internal/query"
	"github.com/tripswitch/tripswitch/internal/runner"
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
	// Guard configures the observer guard; the zero value takes DefaultGuard.
	Guard guard.Config
	// HandBackTimeout bounds how long a front Service handed back to Kubernetes keeps
	// tripswitch's slices; 0 takes DefaultHandBackTimeout.
	HandBackTimeout time.Duration
	// Responder is the Service of tripswitch's responder (namespace and name); empty, a gate
	// with whenOpen Respond rejects as Reject does, and its Responder condition says why.
	Responder types.NamespacedName
	// ProbeAllowedCIDRs are the only addresses probes may go to; nil allows every address.
	ProbeAllowedCIDRs []netip.Prefix
	// MaxConcurrentReconciles is how many breakers are reconciled at once; 0 is one.
	MaxConcurrentReconciles int
	// SliceCache, when set, must be the one whose Options the manager's cache was made with:
	// the cache then holds only the EndpointSlices that breakers read. Nil caches them all.
	SliceCache *SliceCache
	// Clock drives the probes, the engines, the guard and the reconciler; nil is the real
	// clock. Tests pass a fake one.
	Clock clock.WithDelayedExecution
	// PrometheusURL is the server with the Prometheus HTTP API that query rules are sent to;
	// empty leaves them unevaluated, reported by the QueriesFailing condition.
	PrometheusURL string
	// QueryTimeout bounds each query; 0 is 5 s.
	QueryTimeout time.Duration
	// QueryNamespaceLabel, when set, confines every query to the breaker's namespace.
	QueryNamespaceLabel string
	// MaxConcurrentQueries bounds the queries in flight; 0 is 4.
	MaxConcurrentQueries int
	// ExternalResolver resolves external targets' hosts; nil refuses every external target,
	// as does an empty AllowedExternalHosts.
	ExternalResolver external.Resolver
	// AllowedExternalHosts are the hosts external targets may name (--allowed-external-hosts).
	AllowedExternalHosts external.HostPatterns
	// ExternalRefusedCIDRs are never published for an external target (--external-refused-cidrs).
	ExternalRefusedCIDRs []netip.Prefix
	// ClusterDomain is the cluster's DNS domain; empty is cluster.local.
	ClusterDomain string
	// Observers is the node agents' Service (--observer-service), whose ready endpoints give
	// gated trips a second opinion (spec.trip.confirm); empty leaves every trip to the
	// manager's own probes. ObserverPortName is its port (empty is "observer"),
	// ObserverTokenFile the manager's projected token for observer.Audience, and NodeName the
	// manager's own node, which is never asked.
	Observers         types.NamespacedName
	ObserverPortName  string
	ObserverTokenFile string
	NodeName          string
	// Confirmer, when set, gives the second opinion instead of the observers behind
	// Observers (tests).
	Confirmer runner.Confirmer
}

// externalLookupTimeout bounds one resolution of an external host, over every DNS server.
const externalLookupTimeout = 10 * time.Second

// DefaultGuard is the observer guard of the default install: more than half of the gated
// breakers tripping within 30 s holds the rest, from 5 gated breakers up; a held trip goes
// ahead after 5 minutes, one per 30 s.
var DefaultGuard = guard.Config{
	MaxTripFraction: 0.5,
	Window:          30 * time.Second,
	MinBreakers:     5,
	ReleaseTimeout:  5 * time.Minute,
}

// Setup adds the probe scheduler, as a leader-only runnable, and the CircuitBreaker
// controller to mgr, with metrics on controller-runtime's registry and events.k8s.io events.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	clk := o.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	guardConfig := o.Guard
	if guardConfig == (guard.Config{}) {
		guardConfig = DefaultGuard
	}
	if err := guardConfig.Validate(); err != nil {
		return fmt.Errorf("observer guard: %w", err)
	}
	recorder, err := metrics.NewRecorder(crmetrics.Registry)
	if err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	g := guard.New(guardConfig, clk)
	g.SetActiveObserver(recorder.SetObserverGuard)

	if o.SliceCache != nil {
		o.SliceCache.connect(mgr.GetAPIReader(), breakersRead(mgr.GetCache(), o.Responder, o.Observers))
	}
	r := &CircuitBreakerReconciler{
		Client:            mgr.GetClient(),
		Recorder:          mgr.GetEventRecorder("tripswitch"),
		Metrics:           recorder,
		Guard:             g,
		Clock:             clk,
		StatusSyncPeriod:  o.StatusSyncPeriod,
		HandBackTimeout:   o.HandBackTimeout,
		Responder:         o.Responder,
		ProbeAllowedCIDRs: o.ProbeAllowedCIDRs,
		// Counter refreshes keep to a share of the client's rate limit.
		MaxConcurrentReconciles: o.MaxConcurrentReconciles,
		SliceCache:              o.SliceCache,
		RefreshBudget:           RefreshShare * clientQPS(mgr.GetConfig()),
		QueryNamespaceLabel:     o.QueryNamespaceLabel,
		External: ExternalTargets{Allowed: o.AllowedExternalHosts, Refused: o.ExternalRefusedCIDRs,
			ClusterDomain: cmp.Or(o.ClusterDomain, "cluster.local")},
	}
	if o.ExternalResolver != nil && !o.AllowedExternalHosts.Empty() {
		r.External.Tracker = external.NewTracker(o.ExternalResolver, clk, externalLookupTimeout, r.enqueueTransition,
			func(key types.NamespacedName, problem external.Problem, _ time.Duration) {
				recorder.Resolved(key.Namespace, key.Name, resolutionResults[problem])
			})
		// Resolutions end with the manager (or with its leadership).
		if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			<-ctx.Done()
			r.External.Tracker.Stop()
			return nil
		})); err != nil {
			return fmt.Errorf("adding the external resolver: %w", err)
		}
	}
	var querier runner.Querier
	if o.PrometheusURL != "" {
		c, err := query.NewClient(o.PrometheusURL, cmp.Or(o.QueryTimeout, 5*time.Second), nil)
		if err != nil {
			return err
		}
		querier = c
	}
	confirmer := o.Confirmer
	if confirmer == nil && o.Observers.Name != "" {
		dir := observer.SliceDirectory{PortName: cmp.Or(o.ObserverPortName, "observer"), Node: o.NodeName,
			Slices: func(ctx context.Context) ([]discoveryv1.EndpointSlice, error) {
				return r.slicesOf(ctx, o.Observers.Namespace, o.Observers.Name)
			}}
		client := &observer.Client{Token: observer.TokenFile(o.ObserverTokenFile),
			HTTP: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}}}
		c := observer.NewConfirmer(client, dir, clk, confirm.DefaultHealth)
		recorder.SetDegradedObservers(c.Degraded)
		confirmer = c
	}
	r.Scheduler = runner.New(runner.Options{
		Confirmer:           confirmer,
		NewProber:           probe.NewFactory(o.Dial, clk).New,
		Clock:               clk,
		MaxConcurrentProbes: o.MaxConcurrentProbes,
		Guard:               g,
		Observers: func(key types.NamespacedName) runner.ProbeObserver {
			return recorder.Breaker(key.Namespace, key.Name)
		},
		LocalErrors:          recorder.LocalError,
		OnChange:             r.enqueueTransition,
		Querier:              querier,
		MaxConcurrentQueries: o.MaxConcurrentQueries,
		QueryObserved: func(key types.NamespacedName, rule string, s query.Sample, err error) {
			recorder.QueryEvaluated(key.Namespace, key.Name, rule, s.Value, s.NoData, err)
		},
	})
	if err := mgr.Add(r.Scheduler); err != nil {
		return fmt.Errorf("adding the probe scheduler: %w", err)
	}
	return r.SetupWithManager(ctx, mgr)
}

var resolutionResults = map[external.Problem]string{
	external.NoProblem: metrics.ResolutionSuccess, external.ResolutionFailed: metrics.ResolutionFailure,
	external.AddressesRefused: metrics.ResolutionRefused,
}

// clientQPS is the rate limit client-go applies to each API resource's client made from cfg:
// its QPS, or client-go's default when unset; negative means none.
func clientQPS(cfg *rest.Config) float64 {
	switch {
	case cfg.QPS < 0:
		return -1
	case cfg.QPS == 0:
		return float64(rest.DefaultQPS)
	}
	return float64(cfg.QPS)
}

// breakersRead says whether any breaker reads a Service's slices: the responder's, or one
// that a breaker names as target, front or fallback (the index waits for the breakers' cache
// to sync). A breaker being deleted is still in the cache, and so still reads its front.
func breakersRead(breakers client.Reader, responder, observers types.NamespacedName) func(context.Context, string, string) (bool, error) {
	return func(ctx context.Context, namespace, service string) (bool, error) {
		for _, svc := range []types.NamespacedName{responder, observers} {
			if namespace == svc.Namespace && service == svc.Name {
				return true, nil
			}
		}
		var list tripswitchv1alpha1.CircuitBreakerList
		if err := breakers.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{servicesIndex: service},
			client.UnsafeDisableDeepCopy); err != nil {
			return false, err
		}
		return len(list.Items) > 0, nil
	}
}
