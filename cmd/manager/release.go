package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/release"
)

// releaseOptions are the settings of `manager release`, which the chart's pre-delete hook
// runs on helm uninstall.
type releaseOptions struct {
	manager    string
	lease      string
	timeout    time.Duration
	kubeconfig string
	zap        zap.Options
}

func parseReleaseFlags(fs *flag.FlagSet, args []string) (*releaseOptions, types.NamespacedName, error) {
	o := &releaseOptions{zap: zap.Options{Development: false}}
	fs.StringVar(&o.manager, "manager-deployment", "tripswitch-system/tripswitch-controller-manager",
		"The manager's Deployment, as namespace/name: scaled to zero first; its leader election Lease is in the same namespace.")
	fs.StringVar(&o.lease, "leader-election-id", "tripswitch.tripswitch.io", "The manager's leader election Lease.")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute,
		"How long to wait for the manager to stop; past it, the manager is scaled back and the command fails.")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig; empty uses $KUBECONFIG or the in-cluster configuration.")
	o.zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, types.NamespacedName{}, err
	}
	if fs.NArg() > 0 {
		return nil, types.NamespacedName{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	key, err := namespacedName("--manager-deployment", o.manager)
	if err != nil {
		return nil, key, err
	}
	if o.lease == "" || o.timeout <= 0 {
		return nil, key, fmt.Errorf("--leader-election-id must not be empty and --timeout must be above 0")
	}
	return o, key, nil
}

// releaseMain runs `manager release`: it stops the manager and leaves every front Service a
// copy of its target's endpoints (internal/release), so that helm uninstall, which keeps the
// CircuitBreakers, leaves no front without endpoints.
func releaseMain(args []string) int {
	o, key, err := parseReleaseFlags(flag.NewFlagSet("manager release", flag.ContinueOnError), args)
	if err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&o.zap)))
	logger := ctrl.Log.WithName("release")
	loading := clientcmd.NewDefaultClientConfigLoadingRules()
	loading.ExplicitPath = o.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(loading, nil).ClientConfig()
	if err != nil {
		logger.Error(err, "Reading the client configuration")
		return 1
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{tripswitchv1alpha1.AddToScheme, appsv1.AddToScheme, corev1.AddToScheme,
		coordinationv1.AddToScheme, discoveryv1.AddToScheme} {
		utilruntime.Must(add(scheme))
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		logger.Error(err, "Creating the client")
		return 1
	}
	ctx, cancel := context.WithTimeout(ctrl.SetupSignalHandler(), o.timeout+time.Minute)
	defer cancel()
	err = release.Run(ctrl.LoggerInto(ctx, logger), c, release.Options{Manager: key, Lease: o.lease, Timeout: o.timeout,
		Poll: time.Second, Clock: clock.RealClock{}})
	if err != nil {
		logger.Error(err, "Releasing the front Services")
		return 1
	}
	return 0
}

// namespacedName parses a flag's namespace/name.
func namespacedName(flagName, s string) (types.NamespacedName, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return types.NamespacedName{}, fmt.Errorf("%s must be namespace/name, got %q", flagName, s)
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}
