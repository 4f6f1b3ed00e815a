// Command manager runs the tripswitch operator: the CircuitBreaker controller, its probes and
// its gates, behind leader election. `manager responder` runs the open responder instead,
// which answers the clients of Open fronts (responder.go); `manager agent` runs the node
// agent, which cuts the connections that outlive a trip on its node (agent.go); `manager
// release` is helm uninstall's pre-delete hook (release.go).
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/controller"
	"github.com/tripswitch/tripswitch/internal/endpoints"
	"github.com/tripswitch/tripswitch/internal/external"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// options are the manager's command-line settings.
type options struct {
	metricsAddr             string
	secureMetrics           bool
	enableHTTP2             bool
	probeAddr               string
	leaderElect             bool
	leaderElectionID        string
	leaderElectionNamespace string
	statusSyncPeriod        time.Duration
	maxConcurrentProbes     int
	maxConcurrentReconciles int
	kubeAPIQPS              float64
	kubeAPIBurst            int
	probeAddressMap         string
	probeAllowedCIDRs       string
	prometheusURL           string
	queryTimeout            time.Duration
	queryNamespaceLabel     string
	maxConcurrentQueries    int
	guard                   guard.Config
	handBackTimeout         time.Duration
	responderService        string
	allowedExternalHosts    string
	externalDNSServer       string
	externalRefusedCIDRs    string
	clusterDomain           string
	observerService         string
	observerTokenFile       string
	nodeName                string
	zap                     zap.Options
}

func parseFlags(fs *flag.FlagSet, args []string) (*options, error) {
	o := &options{zap: zap.Options{Development: false}}
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", "0",
		"Address the metrics endpoint binds to, for example :8443 (HTTPS) or :8080 (HTTP). 0 disables it.")
	fs.BoolVar(&o.secureMetrics, "metrics-secure", true,
		"Serve metrics over HTTPS, with authentication and authorization through the API server.")
	fs.BoolVar(&o.enableHTTP2, "enable-http2", false,
		"Allow HTTP/2 for the metrics server. Off by default because of the HTTP/2 Stream Cancellation and Rapid Reset CVEs.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz endpoints bind to.")
	fs.BoolVar(&o.leaderElect, "leader-elect", false,
		"Elect a leader so that only one replica probes and gates; the default install enables it.")
	fs.StringVar(&o.leaderElectionID, "leader-election-id", "tripswitch.tripswitch.io", "Name of the Lease used for leader election.")
	fs.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", "",
		"Namespace of the leader election Lease; defaults to the namespace the manager runs in.")
	fs.DurationVar(&o.statusSyncPeriod, "status-sync-period", 10*time.Second,
		"Longest time between status writes that only refresh counters; transitions are written at once.")
	fs.IntVar(&o.maxConcurrentProbes, "max-concurrent-probes", 256,
		"Most probes in flight at once, across all breakers (one breaker may hold a quarter, the last quarter is for "+
			"quick breakers, HalfOpen trials may use a quarter more); past it, probes start late rather than pile up.")
	fs.IntVar(&o.maxConcurrentReconciles, "max-concurrent-reconciles", 4,
		"Most breakers reconciled at once. A transition jumps the queue of counter refreshes whatever this is; more "+
			"workers help when API calls are slow.")
	fs.Float64Var(&o.kubeAPIQPS, "kube-api-qps", 50,
		"Requests a second the manager's client may send for each API resource (client-go limits each on its own); "+
			"counter refreshes take at most half of it, and with many breakers counters are refreshed less often than "+
			"--status-sync-period so that they keep to it.")
	fs.IntVar(&o.kubeAPIBurst, "kube-api-burst", 100,
		"Requests above --kube-api-qps that the manager's client may send in a burst, for each API resource.")
	fs.StringVar(&o.probeAddressMap, "probe-address-map", "",
		"For local development only: dial endpoints in one prefix at the same offset in another, "+
			"such as 192.0.2.0/24=127.0.0.0/24, so that EndpointSlices with documentation addresses reach loopback servers.")
	fs.StringVar(&o.prometheusURL, "prometheus-url", "",
		"Base URL of a server with the Prometheus HTTP API (Prometheus, Thanos, Mimir, VictoriaMetrics) that "+
			"spec.trip.queries are sent to, with the manager's identity. Empty leaves query rules unevaluated; "+
			"their breakers say so in the QueriesFailing condition.")
	fs.DurationVar(&o.queryTimeout, "query-timeout", 5*time.Second,
		"Bound on each query rule's query, on the server and on the wire; a query that times out never trips.")
	fs.StringVar(&o.queryNamespaceLabel, "query-namespace-label", "namespace",
		"Label through which every series selector of a breaker's queries is confined to the breaker's namespace, "+
			"so that whoever may create breakers reads only their namespace's series. Empty turns confinement off.")
	fs.IntVar(&o.maxConcurrentQueries, "max-concurrent-queries", 4, "Most query-rule queries in flight at once.")
	fs.StringVar(&o.probeAllowedCIDRs, "probe-allowed-cidrs", endpoints.AllAddresses,
		"Comma-separated CIDR prefixes that probes may go to, such as the pod network's. A ready endpoint of a target "+
			"outside them is never dialled and counts as if not ready; the breaker's EndpointsNotProbed condition names it. "+
			"The default allows every address.")
	fs.Float64Var(&o.guard.MaxTripFraction, "max-trip-fraction", controller.DefaultGuard.MaxTripFraction,
		"Observer guard: when more than this share of the gated breakers (mode Auto) would trip within "+
			"--observer-guard-window, the manager suspects itself and holds the trips beyond it. 1 disables the guard.")
	fs.DurationVar(&o.guard.Window, "observer-guard-window", controller.DefaultGuard.Window,
		"Observer guard: the sliding window over which trips are counted.")
	fs.IntVar(&o.guard.MinBreakers, "observer-guard-min-breakers", controller.DefaultGuard.MinBreakers,
		"Observer guard: with fewer gated breakers than this, the guard never holds a trip (a fraction of 2 or 3 says little).")
	fs.DurationVar(&o.guard.ReleaseTimeout, "observer-guard-release-timeout", controller.DefaultGuard.ReleaseTimeout,
		"Observer guard: a trip held this long goes ahead, one held trip per --observer-guard-window; 0 holds trips until "+
			"the breaker's probes recover.")
	fs.DurationVar(&o.handBackTimeout, "hand-back-timeout", controller.DefaultHandBackTimeout,
		"How long a front Service handed back to Kubernetes keeps tripswitch's EndpointSlices while Kubernetes' "+
			"EndpointSlice controller publishes ready endpoints of its own.")
	fs.StringVar(&o.responderService, "responder-service", "tripswitch-system/tripswitch-responder",
		"The responder's Service, as namespace/name: a gate with whenOpen Respond publishes its ready endpoints while Open. "+
			"Empty: Respond rejects as Reject does, and the breaker's Responder condition says so.")
	fs.StringVar(&o.allowedExternalHosts, "allowed-external-hosts", "",
		"Comma-separated host names that external targets (spec.target.external) may name: exact names such as "+
			"api.stripe.com, and *.suffix patterns that allow every name below suffix. The manager resolves, probes "+
			"and publishes the addresses of those hosts. Empty (the default) allows none.")
	fs.StringVar(&o.externalDNSServer, "external-dns-server", "",
		"Comma-separated DNS servers (host or host:port) that external targets' hosts are resolved through. They "+
			"must not be the cluster DNS once it rewrites those hosts to their fronts: use the nodes' upstream resolver "+
			"(such as the VPC's). Empty: the nameservers of the manager's /etc/resolv.conf.")
	fs.StringVar(&o.externalRefusedCIDRs, "external-refused-cidrs", "",
		"Comma-separated CIDR prefixes whose addresses are never published for an external target, besides the "+
			"cluster's Service ranges (read from ServiceCIDRs), loopback, link-local and multicast: ranges of the "+
			"cluster's own that the API does not tell, such as the pod network.")
	fs.StringVar(&o.observerService, "observer-service", "",
		"The node agents' Service, as namespace/name, with a port named observer: its ready endpoints are the observers "+
			"that a breaker's spec.trip.confirm asks for a second opinion before a trip or an ejection takes traffic away. The agents must "+
			"run with --manager-service-account naming this manager. Empty: every trip rests on the manager's probes alone.")
	fs.StringVar(&o.observerTokenFile, "observer-token-file", "/var/run/secrets/tripswitch.io/observer/token",
		"The manager's projected service-account token for the audience tripswitch-observer, which it shows the observers.")
	fs.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"),
		"The manager's own node (from the downward API's spec.nodeName), whose agent is never asked for a second opinion: "+
			"it shares the manager's network. Required with --observer-service.")
	fs.StringVar(&o.clusterDomain, "cluster-domain", "cluster.local",
		"The cluster's DNS domain, for the CoreDNS stanza that external targets' status suggests.")
	o.zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.statusSyncPeriod < time.Second {
		return nil, fmt.Errorf("--status-sync-period must be at least 1s, got %s", o.statusSyncPeriod)
	}
	if o.maxConcurrentProbes < 1 {
		return nil, fmt.Errorf("--max-concurrent-probes must be at least 1, got %d", o.maxConcurrentProbes)
	}
	if o.maxConcurrentReconciles < 1 {
		return nil, fmt.Errorf("--max-concurrent-reconciles must be at least 1, got %d", o.maxConcurrentReconciles)
	}
	if o.queryTimeout <= 0 || o.maxConcurrentQueries < 1 {
		return nil, fmt.Errorf("--query-timeout must be positive and --max-concurrent-queries at least 1, got %s and %d",
			o.queryTimeout, o.maxConcurrentQueries)
	}
	if !(o.kubeAPIQPS > 0) || o.kubeAPIBurst < 1 {
		return nil, fmt.Errorf("--kube-api-qps must be above 0 and --kube-api-burst at least 1, got %g and %d", o.kubeAPIQPS, o.kubeAPIBurst)
	}
	if o.probeAddressMap != "" {
		if _, err := probe.ParseAddressMap(o.probeAddressMap); err != nil {
			return nil, fmt.Errorf("--probe-address-map: %w", err)
		}
	}
	if _, err := endpoints.ParsePrefixes(o.probeAllowedCIDRs); err != nil {
		return nil, fmt.Errorf("--probe-allowed-cidrs: %w", err)
	}
	if err := o.guard.Validate(); err != nil {
		return nil, fmt.Errorf("observer guard flags: %w", err)
	}
	if o.handBackTimeout < time.Second {
		return nil, fmt.Errorf("--hand-back-timeout must be at least 1s, got %s", o.handBackTimeout)
	}
	if o.leaderElectionID == "" {
		return nil, errors.New("--leader-election-id must not be empty")
	}
	if _, err := responderService(o.observerService); err != nil {
		return nil, fmt.Errorf("--observer-service: %w", err)
	}
	if o.observerService != "" && o.nodeName == "" {
		return nil, errors.New("--observer-service needs --node-name (or NODE_NAME): the manager must not ask its own node")
	}
	if _, err := responderService(o.responderService); err != nil {
		return nil, err
	}
	if _, err := external.ParseHostPatterns(o.allowedExternalHosts); err != nil {
		return nil, fmt.Errorf("--allowed-external-hosts: %w", err)
	}
	if o.externalRefusedCIDRs != "" {
		if _, err := endpoints.ParsePrefixes(o.externalRefusedCIDRs); err != nil {
			return nil, fmt.Errorf("--external-refused-cidrs: %w", err)
		}
	}
	if errs := validation.IsDNS1123Subdomain(o.clusterDomain); len(errs) > 0 {
		return nil, fmt.Errorf("--cluster-domain %q is not a DNS name", o.clusterDomain)
	}
	return o, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "responder" {
		os.Exit(responderMain(os.Args[2:])) // the open responder: see responder.go
	}
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		os.Exit(agentMain(os.Args[2:])) // the node agent, on every node: see agent.go
	}
	if len(os.Args) > 1 && os.Args[1] == "release" {
		os.Exit(releaseMain(os.Args[2:])) // helm uninstall's pre-delete hook: see release.go
	}
	o, err := parseFlags(flag.CommandLine, os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&o.zap)))
	if err := run(o); err != nil {
		ctrl.Log.WithName("setup").Error(err, "Manager exited with an error")
		os.Exit(1)
	}
}

func run(o *options) error {
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(scheme))

	var tlsOpts []func(*tls.Config)
	if !o.enableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	metricsOpts := metricsserver.Options{
		BindAddress:   o.metricsAddr,
		SecureServing: o.secureMetrics,
		TLSOpts:       tlsOpts,
	}
	if o.secureMetrics {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	ctx := ctrl.SetupSignalHandler()
	cfg := ctrl.GetConfigOrDie()
	cfg.QPS, cfg.Burst = float32(o.kubeAPIQPS), o.kubeAPIBurst
	// The EndpointSlice cache keeps whole only the slices that breakers read.
	sliceCache := controller.NewSliceCache()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Cache:                   sliceCache.Options(cache.Options{}),
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  o.probeAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        o.leaderElectionID,
		LeaderElectionNamespace: o.leaderElectionNamespace,
		// The process exits right after the manager stops, so stepping down at once lets the
		// other replica take over without waiting out the lease.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}

	responder, _ := responderService(o.responderService)
	observers, _ := responderService(o.observerService)
	var dial probe.DialFunc
	if o.probeAddressMap != "" {
		m, _ := probe.ParseAddressMap(o.probeAddressMap)
		dial = m.Dialer((&net.Dialer{}).DialContext)
		ctrl.Log.WithName("setup").Info("Probe addresses are rewritten; this is for local development only", "map", o.probeAddressMap)
	}
	allowed, _ := endpoints.ParsePrefixes(o.probeAllowedCIDRs)
	hosts, _ := external.ParseHostPatterns(o.allowedExternalHosts)
	var refused []netip.Prefix
	if o.externalRefusedCIDRs != "" {
		refused, _ = endpoints.ParsePrefixes(o.externalRefusedCIDRs)
	}
	var resolver external.Resolver
	if !hosts.Empty() {
		servers, err := externalDNSServers(o.externalDNSServer)
		if err != nil {
			return err
		}
		resolver = external.NewDNSClient(servers, externalDNSTimeout)
		ctrl.Log.WithName("setup").Info("External targets are allowed", "hosts", hosts.String(), "dnsServers", servers)
	}
	if err := controller.Setup(ctx, mgr, controller.Options{
		Dial:                    dial,
		MaxConcurrentProbes:     o.maxConcurrentProbes,
		MaxConcurrentReconciles: o.maxConcurrentReconciles,
		StatusSyncPeriod:        o.statusSyncPeriod,
		Guard:                   o.guard,
		HandBackTimeout:         o.handBackTimeout,
		Responder:               responder,
		ProbeAllowedCIDRs:       allowed,
		SliceCache:              sliceCache,
		PrometheusURL:           o.prometheusURL,
		QueryTimeout:            o.queryTimeout,
		QueryNamespaceLabel:     o.queryNamespaceLabel,
		MaxConcurrentQueries:    o.maxConcurrentQueries,
		ExternalResolver:        resolver,
		AllowedExternalHosts:    hosts,
		ExternalRefusedCIDRs:    refused,
		ClusterDomain:           o.clusterDomain,
		Observers:               observers,
		ObserverTokenFile:       o.observerTokenFile,
		NodeName:                o.nodeName,
	}); err != nil {
		return fmt.Errorf("setting up the CircuitBreaker controller: %w", err)
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("adding health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("adding readiness check: %w", err)
	}

	ctrl.Log.WithName("setup").Info("Starting manager", "leaderElection", o.leaderElect, "responderService", o.responderService, "statusSyncPeriod", o.statusSyncPeriod,
		"maxConcurrentReconciles", o.maxConcurrentReconciles, "kubeAPIQPS", o.kubeAPIQPS, "kubeAPIBurst", o.kubeAPIBurst,
		"probeAllowedCIDRs", o.probeAllowedCIDRs, "maxTripFraction", o.guard.MaxTripFraction, "observerGuardWindow", o.guard.Window,
		"observerGuardMinBreakers", o.guard.MinBreakers, "observerGuardReleaseTimeout", o.guard.ReleaseTimeout,
		"observerService", o.observerService, "nodeName", o.nodeName)
	return mgr.Start(ctx)
}

// responderService parses --responder-service: namespace/name, or empty for none.
func responderService(s string) (types.NamespacedName, error) {
	if s == "" {
		return types.NamespacedName{}, nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") ||
		len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1035Label(name)) > 0 {
		return types.NamespacedName{}, fmt.Errorf("--responder-service must be namespace/name of a Service, got %q", s)
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}

// externalDNSTimeout bounds each DNS server's answer to one query.
const externalDNSTimeout = 2 * time.Second

// externalDNSServers are the servers of --external-dns-server, or else of /etc/resolv.conf.
func externalDNSServers(flagValue string) ([]string, error) {
	var servers []string
	for s := range strings.SplitSeq(flagValue, ",") {
		if s = strings.TrimSpace(s); s != "" {
			servers = append(servers, s)
		}
	}
	if len(servers) > 0 {
		return servers, nil
	}
	servers, err := external.ServersFromResolvConf("/etc/resolv.conf")
	if err != nil || len(servers) == 0 {
		return nil, fmt.Errorf("--external-dns-server is empty and /etc/resolv.conf names no nameserver: %v", err)
	}
	return servers, nil
}
