package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/agent"
	"github.com/tripswitch/tripswitch/internal/controller"
	"github.com/tripswitch/tripswitch/internal/flows"
	"github.com/tripswitch/tripswitch/internal/observer"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// agentOptions are the settings of `manager agent`.
type agentOptions struct {
	probeAddr     string
	metricsAddr   string
	kubeProxyURL  string
	kubeProxyWait time.Duration
	maxChangeAge  time.Duration
	resetGuard    bool
	resetGuardTTL time.Duration
	kubeconfig    string
	// The observer (issue 23): serves the leader's second-opinion requests when managerSA is set.
	observerAddr string
	managerSA    string
	nodeName     string
	zap          zap.Options
}

func parseAgentFlags(fs *flag.FlagSet, args []string) (*agentOptions, error) {
	o := &agentOptions{zap: zap.Options{Development: false}}
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8491",
		"Address of /healthz and /readyz; ready once the EndpointSlice and Service informers have synced and the conntrack table answers. "+
			"The agent runs in the host network namespace: this port is taken on every node.")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", "127.0.0.1:8492",
		"Address of the plain-HTTP metrics endpoint; 0 disables it. On the node's loopback by default, as kube-proxy's: "+
			"set :8492 to let Prometheus scrape it over the node's network.")
	fs.StringVar(&o.kubeProxyURL, "kube-proxy-metrics-url", "http://127.0.0.1:10249/metrics",
		"kube-proxy's metrics on this node. Before a cut the agent waits until kube-proxy reports a rules sync after the change, "+
			"so that cut clients redial to what the front publishes now; empty cuts at once (and sweeps again for early redials).")
	fs.DurationVar(&o.kubeProxyWait, "kube-proxy-sync-timeout", 2*time.Second,
		"The longest wait for kube-proxy's rules sync before cutting anyway.")
	fs.DurationVar(&o.maxChangeAge, "max-change-age", 10*time.Second,
		"A slice change older than this when the agent sees it (by its endpoints.kubernetes.io/last-change-trigger-time) cuts nothing: "+
			"the agent acts on transitions as they happen, never on old ones that a resumed watch delivers after an API outage.")
	fs.BoolVar(&o.resetGuard, "reset-guard", true,
		"Put an nftables table (inet tripswitch-agent) in place that answers the next packet of a cut flow with a TCP reset, "+
			"and probe each cut client so that one waiting for an answer sends that packet now: the cut then works whatever "+
			"net.netfilter.nf_conntrack_tcp_loose says and whatever the front publishes. Needs CAP_NET_RAW besides CAP_NET_ADMIN.")
	fs.DurationVar(&o.resetGuardTTL, "reset-guard-ttl", 10*time.Minute,
		"How long the reset guard keeps a cut flow's tuple: a pooled connection idle for longer is not reset by the guard.")
	fs.StringVar(&o.managerSA, "manager-service-account", "",
		"The manager's service account, as namespace/name: set, the agent is an observer that answers only it, probing "+
			"once the endpoints a CircuitBreaker's front publishes, with that breaker's probe spec, when a trip or an ejection is suspect "+
			"(the manager's --observer-service). Empty: the agent observes nothing and opens no port for it.")
	fs.StringVar(&o.observerAddr, "observer-bind-address", ":8493",
		"Address of the observer's endpoint, with --manager-service-account. In the host network namespace: this port is "+
			"taken on every node. Requests need the manager's token, reviewed by the API server.")
	fs.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"),
		"This agent's node (the downward API's spec.nodeName), which names it in its answers.")
	if err := parseSubcommand(fs, args, &o.kubeconfig, &o.zap); err != nil {
		return nil, err
	}
	if o.managerSA != "" {
		if ns, name, ok := strings.Cut(o.managerSA, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("--manager-service-account must be namespace/name, got %q", o.managerSA)
		}
		if _, _, err := net.SplitHostPort(o.observerAddr); err != nil {
			return nil, fmt.Errorf("--observer-bind-address must be host:port, got %q", o.observerAddr)
		}
	}
	if _, _, err := net.SplitHostPort(o.probeAddr); err != nil {
		return nil, fmt.Errorf("--health-probe-bind-address must be host:port, got %q", o.probeAddr)
	}
	if _, _, err := net.SplitHostPort(o.metricsAddr); err != nil && o.metricsAddr != "0" {
		return nil, fmt.Errorf("--metrics-bind-address must be host:port or 0, got %q", o.metricsAddr)
	}
	if o.kubeProxyURL != "" {
		if u, err := url.Parse(o.kubeProxyURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--kube-proxy-metrics-url must be an http(s) URL or empty, got %q", o.kubeProxyURL)
		}
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"--kube-proxy-sync-timeout", o.kubeProxyWait}, {"--max-change-age", o.maxChangeAge}, {"--reset-guard-ttl", o.resetGuardTTL}} {
		if d.v <= 0 {
			return nil, fmt.Errorf("%s must be positive, got %s", d.flag, d.v)
		}
	}
	return o, nil
}

// agentMain is `manager agent [flags]`: the node agent, until SIGTERM; it returns the
// process's exit code.
func agentMain(args []string) int {
	return exitCode(runAgent(ctrl.SetupSignalHandler(), args), "Agent")
}

// runAgent runs the node agent, as its flags in args say, until ctx is done. It runs on every
// node, in the host network namespace, with no leader election.
func runAgent(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("manager agent", flag.ContinueOnError)
	o, err := parseAgentFlags(fs, args)
	if err != nil {
		return usageError{err}
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&o.zap)))
	log := ctrl.Log.WithName("setup")

	table, err := flows.OpenTable()
	if err != nil {
		return fmt.Errorf("opening the conntrack table (the agent needs CAP_NET_ADMIN in the host network namespace): %w", err)
	}
	defer table.Close()
	var guard agent.Guard
	if o.resetGuard {
		g, err := flows.NewGuard(o.resetGuardTTL)
		if err != nil {
			log.Error(err, "No reset guard (it needs CAP_NET_RAW, nf_tables and reject in prerouting); cut flows now rely on nf_conntrack_tcp_loose=1 to reset")
		} else {
			guard = g
		}
	}
	var proxy agent.ProxySync
	if o.kubeProxyURL != "" {
		proxy = &agent.KubeProxySync{URL: o.kubeProxyURL, Client: &http.Client{Timeout: 500 * time.Millisecond}}
	}

	cfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return fmt.Errorf("reading the cluster's configuration: %w", err)
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	if o.managerSA != "" {
		utilruntime.Must(tripswitchv1alpha1.AddToScheme(scheme))
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  agent.CacheOptions(),
		Metrics:                metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress: o.probeAddr,
		// Tests run several agents one after another in one process, which controller-runtime's
		// process-wide check of controller names would refuse.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	metrics, err := agent.NewMetrics(crmetrics.Registry)
	if err != nil {
		return fmt.Errorf("registering the agent's metrics: %w", err)
	}
	if err := agent.Setup(ctx, mgr, agent.Options{MaxChangeAge: o.maxChangeAge, Table: table, Guard: guard, Proxy: proxy,
		ProxyWait: o.kubeProxyWait, Metrics: metrics}); err != nil {
		return fmt.Errorf("setting up the agent: %w", err)
	}
	if o.managerSA != "" {
		if err := setUpObserver(ctx, mgr, o); err != nil {
			return err
		}
	}
	log.Info("Starting the node agent", "resetGuard", guard != nil, "resetGuardTTL", o.resetGuardTTL,
		"kubeProxyMetrics", o.kubeProxyURL, "kubeProxySyncTimeout", o.kubeProxyWait, "maxChangeAge", o.maxChangeAge,
		"observer", o.managerSA != "", "observerBindAddress", o.observerAddr, "nodeName", o.nodeName)
	return mgr.Start(ctx)
}

// setUpObserver makes the agent an observer: it reads CircuitBreakers (their informer starts
// with the manager, so that the first request finds it synced) and serves observer.Server.
func setUpObserver(ctx context.Context, mgr ctrl.Manager, o *agentOptions) error {
	if _, err := mgr.GetCache().GetInformer(ctx, &tripswitchv1alpha1.CircuitBreaker{}); err != nil {
		return fmt.Errorf("getting the CircuitBreaker informer: %w", err)
	}
	ns, name, _ := strings.Cut(o.managerSA, "/")
	srv := &observer.Server{
		Node:     o.nodeName,
		Auth:     &observer.TokenReviewer{Client: mgr.GetClient(), Clock: clock.RealClock{}, Good: time.Minute, Bad: 10 * time.Second},
		Allowed:  "system:serviceaccount:" + ns + ":" + name,
		Breakers: observer.ClusterBreakers{Reader: mgr.GetClient()},
		Compile: func(cb *tripswitchv1alpha1.CircuitBreaker) (probe.Spec, error) {
			spec := cb.Resolve()
			run, err := controller.Compile(&spec)
			return run.Probe, err
		},
		NewProber: probe.NewFactory(nil, clock.RealClock{}).New,
	}
	return mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { return srv.Run(ctx, o.observerAddr) }))
}
