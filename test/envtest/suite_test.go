// Package envtest_test holds tripswitch's user stories, run against a real kube-apiserver and
// etcd (built from source by `make envtest`). The suite starts one control plane; each story
// works in a namespace of its own, and can start and stop managers with startManager.
package envtest_test

import (
	"cmp"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/controller"
	"github.com/tripswitch/tripswitch/internal/external"
	"github.com/tripswitch/tripswitch/internal/guard"
	"github.com/tripswitch/tripswitch/internal/probe"
	"github.com/tripswitch/tripswitch/internal/runner"
)

var (
	testEnv   *envtest.Environment
	cfg       *rest.Config
	k8sClient client.Client
	scheme    = runtime.NewScheme()
	// repoRoot is where config/ lives, relative to this package.
	repoRoot = filepath.Join("..", "..")
)

func TestEnvtest(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "tripswitch envtest suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	SetDefaultEventuallyTimeout(20 * time.Second)
	SetDefaultEventuallyPollingInterval(50 * time.Millisecond)
	SetDefaultConsistentlyDuration(2 * time.Second)

	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(scheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(scheme))

	Expect(os.Getenv("KUBEBUILDER_ASSETS")).NotTo(BeEmpty(),
		"KUBEBUILDER_ASSETS is not set: run the suite with `make test`, which builds kube-apiserver and etcd first")
	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	var err error
	cfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(testEnv.Stop)

	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())
})

// kubeconfigFile writes a kubeconfig for the suite's API server, for commands that read one
// like a user's tools do (kubectl tripswitch), and returns its path.
func kubeconfigFile() string {
	GinkgoHelper()
	user, err := testEnv.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	contents, err := user.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	path := filepath.Join(GinkgoT().TempDir(), "kubeconfig")
	Expect(os.WriteFile(path, contents, 0o600)).To(Succeed())
	return path
}

// newNamespace creates a namespace with a generated name for one story and deletes it
// afterwards. envtest runs no namespace controller, so deletion only marks it; stories must not
// rely on objects disappearing with it.
func newNamespace() string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "story-"}}
	Expect(k8sClient.Create(context.Background(), ns)).To(Succeed())
	DeferCleanup(func(ctx SpecContext) {
		// Delete the story's breakers too, so that later stories' managers finalize them
		// instead of probing backends that are gone.
		Expect(k8sClient.DeleteAllOf(ctx, &tripswitchv1alpha1.CircuitBreaker{}, client.InNamespace(ns.Name))).To(Succeed())
		Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, ns))).To(Succeed())
	})
	return ns.Name
}

// managerOptions let a story tune the manager it starts.
type managerOptions struct {
	statusSyncPeriod time.Duration
	// metricsAddr, when set, serves metrics there over plain HTTP.
	metricsAddr string
	// config, when set, is how the manager reaches the API server, such as through a proxy
	// that injects faults.
	config *rest.Config
	// dial, when set, is put between the suite's loopback-only dialer and the probes, so a
	// story can break the manager's own network.
	dial func(next probe.DialFunc) probe.DialFunc
	// guard and handBackTimeout tune the observer guard and the hand-back; zero is the default.
	guard           guard.Config
	handBackTimeout time.Duration
	// responder is the responder Service a gate with whenOpen Respond publishes; empty is none.
	responder types.NamespacedName
	// probeAllowedCIDRs is --probe-allowed-cidrs, before the address map; nil allows all.
	probeAllowedCIDRs []netip.Prefix
	// prometheusURL is --prometheus-url; empty leaves query rules unevaluated.
	prometheusURL string
	// externalHosts is --allowed-external-hosts, and dnsServer the --external-dns-server that
	// those hosts are resolved through.
	externalHosts, dnsServer string
	// confirmer gives gated trips a second opinion (spec.trip.confirm); nil is none.
	confirmer runner.Confirmer
}

// startManager starts a manager process equivalent, with the CircuitBreaker controller, and
// stops it when the story ends. It returns a stop function for stories that restart the
// manager themselves; calling it twice is harmless.
func startManager(opts managerOptions) (stop func()) {
	if opts.statusSyncPeriod == 0 {
		opts.statusSyncPeriod = 10 * time.Second
	}
	if opts.handBackTimeout == 0 {
		// envtest runs no EndpointSlice controller, so every deleted breaker whose target has
		// a selector waits out the hand-back timeout; a short one keeps the breakers that
		// earlier stories left behind from piling up.
		opts.handBackTimeout = 10 * time.Second
	}
	// The manager's EndpointSlice cache, as the binary makes it: whole only where breakers read.
	sliceCache := controller.NewSliceCache()
	mgr, err := ctrl.NewManager(cmp.Or(opts.config, cfg), ctrl.Options{
		Scheme:                 scheme,
		Cache:                  sliceCache.Options(cache.Options{}),
		Metrics:                metricsserver.Options{BindAddress: cmp.Or(opts.metricsAddr, "0")},
		HealthProbeBindAddress: "0",
		// Stories start several managers in one process, one after another.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	Expect(err).NotTo(HaveOccurred())

	// Target slices hold documentation addresses (the API refuses loopback ones); the probes
	// reach the loopback servers behind them, and any other address is refused.
	addressMap, err := probe.ParseAddressMap("192.0.2.0/24=127.0.0.0/24")
	Expect(err).NotTo(HaveOccurred())
	dial := addressMap.Dialer(probe.LoopbackOnly((&net.Dialer{}).DialContext))
	if opts.dial != nil {
		dial = opts.dial(dial)
	}
	hosts, err := external.ParseHostPatterns(opts.externalHosts)
	Expect(err).NotTo(HaveOccurred())
	var resolver external.Resolver
	if opts.dnsServer != "" {
		resolver = external.NewDNSClient([]string{opts.dnsServer}, 500*time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	Expect(controller.Setup(ctx, mgr, controller.Options{
		ExternalResolver:     resolver,
		AllowedExternalHosts: hosts,
		Dial:                 dial,
		MaxConcurrentProbes:  64,
		StatusSyncPeriod:     opts.statusSyncPeriod,
		Guard:                opts.guard,
		HandBackTimeout:      opts.handBackTimeout,
		Responder:            opts.responder,
		ProbeAllowedCIDRs:    opts.probeAllowedCIDRs,
		SliceCache:           sliceCache,
		PrometheusURL:        opts.prometheusURL,
		QueryTimeout:         2 * time.Second,
		// As the binary's default: every query is confined to its breaker's namespace.
		QueryNamespaceLabel: "namespace",
		Confirmer:           opts.confirmer,
	})).To(Succeed())

	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
	stop = func() {
		cancel()
		<-done
	}
	DeferCleanup(stop)
	return stop
}
