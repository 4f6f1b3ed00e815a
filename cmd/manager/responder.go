package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/responder"
)

// responderOptions are the settings of `manager responder`.
type responderOptions struct {
	httpAddr      string
	resetAddr     string
	probeAddr     string
	metricsAddr   string
	clusterDomain string
	shutdownDelay time.Duration
	fastPath      bool
	kubeconfig    string
	zap           zap.Options
}

func parseResponderFlags(fs *flag.FlagSet, args []string) (*responderOptions, error) {
	o := &responderOptions{zap: zap.Options{Development: false}}
	fs.StringVar(&o.httpAddr, "http-bind-address", ":8480",
		"Address of the HTTP listener: HTTP/1.1 and cleartext HTTP/2 get 503 with Retry-After, gRPC gets UNAVAILABLE.")
	fs.StringVar(&o.resetAddr, "reset-bind-address", ":8481", "Address of the reset listener: every TCP connection is reset at once.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8482",
		"Address of /healthz and /readyz; ready once both listeners answer and every CircuitBreaker is known.")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8483", "Address of the plain-HTTP metrics endpoint; 0 disables it.")
	fs.StringVar(&o.clusterDomain, "cluster-domain", responder.DefaultClusterDomain,
		"The cluster's DNS domain, as in <service>.<namespace>.svc.<cluster-domain>, to read front Services from Host headers.")
	fs.DurationVar(&o.shutdownDelay, "shutdown-delay", 5*time.Second,
		"How long the listeners go on answering, unready, after SIGTERM, while this replica is taken out of the front Services.")
	fs.BoolVar(&o.fastPath, "http-fast-path", true,
		"Answer complete, bodiless HTTP/1.x requests straight from the accept loop (Linux), at about half the CPU of net/http; "+
			"false answers every request through net/http.")
	if err := parseSubcommand(fs, args, &o.kubeconfig, &o.zap); err != nil {
		return nil, err
	}
	for _, a := range []struct{ flag, addr string }{
		{"--http-bind-address", o.httpAddr}, {"--reset-bind-address", o.resetAddr}, {"--health-probe-bind-address", o.probeAddr},
	} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return nil, fmt.Errorf("%s must be host:port, got %q", a.flag, a.addr)
		}
	}
	if _, _, err := net.SplitHostPort(o.metricsAddr); err != nil && o.metricsAddr != "0" {
		return nil, fmt.Errorf("--metrics-bind-address must be host:port or 0, got %q", o.metricsAddr)
	}
	if o.httpAddr == o.resetAddr {
		return nil, fmt.Errorf("--http-bind-address and --reset-bind-address must differ, both are %q", o.httpAddr)
	}
	domain, ok := responder.NormalizeClusterDomain(o.clusterDomain)
	if !ok {
		return nil, fmt.Errorf("--cluster-domain must be a DNS name such as cluster.local, got %q", o.clusterDomain)
	}
	o.clusterDomain = domain
	if o.shutdownDelay < 0 {
		return nil, fmt.Errorf("--shutdown-delay must not be negative, got %s", o.shutdownDelay)
	}
	return o, nil
}

// parseSubcommand adds the flags every subcommand that talks to the cluster has (--kubeconfig
// and zap's) to fs, parses args, and refuses arguments that are not flags.
func parseSubcommand(fs *flag.FlagSet, args []string, kubeconfig *string, z *zap.Options) error {
	fs.StringVar(kubeconfig, "kubeconfig", "", "Path to a kubeconfig; empty uses $KUBECONFIG or the in-cluster configuration.")
	z.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s takes no arguments, got %q", fs.Name(), fs.Args())
	}
	return nil
}

// usageError is a command line that does not parse; the process exits 2 for it, as flag does.
type usageError struct{ error }

// responderMain is `manager responder [flags]`: it runs the open responder until SIGTERM and
// returns the process's exit code.
func responderMain(args []string) int {
	return exitCode(runResponder(ctrl.SetupSignalHandler(), args), "Responder")
}

// exitCode is the exit code of a subcommand that ended with err: 0, 2 for a command line that
// does not parse (said on stderr, as flag does), 1 for anything else (logged).
func exitCode(err error, what string) int {
	var usage usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, err)
		return 2
	default:
		ctrl.Log.WithName("setup").Error(err, what+" exited with an error")
		return 1
	}
}

// runResponder runs the open responder, as its flags in args say, until ctx is done. Unlike
// the manager it runs in every replica: no leader election.
func runResponder(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("manager responder", flag.ContinueOnError)
	o, err := parseResponderFlags(fs, args)
	if err != nil {
		return usageError{err}
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&o.zap)))
	log := ctrl.Log.WithName("setup")

	cfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return fmt.Errorf("reading the cluster's configuration: %w", err)
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(scheme))
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress: o.probeAddr,
		// The listeners answer for the shutdown delay after ctx is done; then a second for
		// the last answers and a margin.
		GracefulShutdownTimeout: ptr.To(o.shutdownDelay + 5*time.Second),
		// A process runs one responder, but its tests run one after another in one process,
		// which controller-runtime's process-wide check of controller names would refuse.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	if _, err := responder.Setup(mgr, responder.Options{
		HTTPAddr:      o.httpAddr,
		ResetAddr:     o.resetAddr,
		ClusterDomain: o.clusterDomain,
		ShutdownDelay: o.shutdownDelay,
		NetHTTPOnly:   !o.fastPath,
		Registerer:    crmetrics.Registry,
	}); err != nil {
		return fmt.Errorf("setting up the responder: %w", err)
	}
	log.Info("Starting the responder", "http", o.httpAddr, "reset", o.resetAddr, "clusterDomain", o.clusterDomain,
		"shutdownDelay", o.shutdownDelay, "httpFastPath", o.fastPath)
	return mgr.Start(ctx)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return ctrl.GetConfig()
}
