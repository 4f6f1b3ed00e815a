package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/tripswitch/tripswitch/internal/agent"
	"github.com/tripswitch/tripswitch/internal/flows"
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
	zap           zap.Options
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
	if err := parseSubcommand(fs, args, &o.kubeconfig, &o.zap); err != nil {
		return nil, err
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
	log.Info("Starting the node agent", "resetGuard", guard != nil, "resetGuardTTL", o.resetGuardTTL,
		"kubeProxyMetrics", o.kubeProxyURL, "kubeProxySyncTimeout", o.kubeProxyWait, "maxChangeAge", o.maxChangeAge)
	return mgr.Start(ctx)
}
