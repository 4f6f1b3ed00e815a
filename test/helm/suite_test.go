package helm_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/kube"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
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
	"github.com/tripswitch/tripswitch/internal/probe"
)

var (
	testEnv   *envtest.Environment
	cfg       *rest.Config
	k8sClient client.Client
	scheme    = runtime.NewScheme()
	// kubeconfig is an administrator's, for Helm; managerBinary is cmd/manager, built for the
	// hook's `manager release`.
	kubeconfig, managerBinary string
)

func TestHelm(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "tripswitch Helm chart suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	SetDefaultEventuallyTimeout(30 * time.Second)
	SetDefaultEventuallyPollingInterval(50 * time.Millisecond)
	SetDefaultConsistentlyDuration(2 * time.Second)

	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(scheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(scheme))

	Expect(os.Getenv("KUBEBUILDER_ASSETS")).NotTo(BeEmpty(),
		"KUBEBUILDER_ASSETS is not set: run the suite with `make test-chart`, which builds kube-apiserver and etcd first")
	// No CRDs: the chart installs its own.
	testEnv = &envtest.Environment{}
	var err error
	cfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(testEnv.Stop)
	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())

	dir := GinkgoT().TempDir()
	kubeconfig = writeKubeconfig(dir, envtest.User{Name: "helm-admin", Groups: []string{"system:masters"}})
	managerBinary = filepath.Join(dir, "manager")
	build := exec.Command("go", "build", "-o", managerBinary, "./cmd/manager")
	build.Dir = repoRoot
	out, err := build.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "building the manager: %s", out)
})

// writeKubeconfig writes a kubeconfig for a user of the test API server and returns its path.
func writeKubeconfig(dir string, user envtest.User) string {
	GinkgoHelper()
	u, err := testEnv.AddUser(user, nil)
	Expect(err).NotTo(HaveOccurred())
	data, err := u.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	path := filepath.Join(dir, strings.NewReplacer(":", "_", "/", "_").Replace(user.Name)+".kubeconfig")
	Expect(os.WriteFile(path, data, 0o600)).To(Succeed())
	return path
}

// envtestUser is a service account as the API server authenticates it.
func envtestUser(name, namespace string) envtest.User {
	return envtest.User{Name: name, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}}
}

// helmConfig is the Helm SDK's configuration for releases in namespace, as the helm CLI
// builds it from a kubeconfig, with release records in Secrets.
func helmConfig(namespace string) *action.Configuration {
	GinkgoHelper()
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = ptr.To(kubeconfig)
	flags.Namespace = ptr.To(namespace)
	flags.CacheDir = ptr.To(GinkgoT().TempDir())
	c := action.NewConfiguration()
	Expect(c.Init(flags, namespace, "secret")).To(Succeed())
	return c
}

// helmInstall installs the chart from charts/tripswitch as release name, as
// `helm install <name> charts/tripswitch -n <namespace> --create-namespace` does.
func helmInstall(ctx context.Context, name, namespace string, values map[string]any) {
	GinkgoHelper()
	install := action.NewInstall(helmConfig(namespace))
	install.ReleaseName, install.Namespace, install.CreateNamespace = name, namespace, true
	install.WaitStrategy, install.Timeout = kube.HookOnlyStrategy, time.Minute
	_, err := install.RunWithContext(ctx, loadChart(), values)
	Expect(err).NotTo(HaveOccurred())
}

func helmUpgrade(ctx context.Context, name, namespace string, values map[string]any) {
	GinkgoHelper()
	upgrade := action.NewUpgrade(helmConfig(namespace))
	upgrade.Namespace = namespace
	upgrade.WaitStrategy, upgrade.Timeout = kube.HookOnlyStrategy, time.Minute
	_, err := upgrade.RunWithContext(ctx, name, loadChart(), values)
	Expect(err).NotTo(HaveOccurred())
}

func helmUninstall(name, namespace string) error {
	uninstall := action.NewUninstall(helmConfig(namespace))
	uninstall.WaitStrategy, uninstall.Timeout = kube.HookOnlyStrategy, 2*time.Minute
	_, err := uninstall.Run(name)
	return err
}

// startManager runs the manager in this process, as the chart's Deployment would run it
// (envtest has no kubelet): with leader election on the chart's Lease in namespace, and the
// chart's responder Service. It returns a function that stops it, as a pod's SIGTERM would,
// stepping down from the Lease; the caller stops it, as it runs across specs.
func startManager(namespace string) (stop func()) {
	GinkgoHelper()
	sliceCache := controller.NewSliceCache()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Cache:                         sliceCache.Options(cache.Options{}),
		Metrics:                       metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:        "0",
		LeaderElection:                true,
		LeaderElectionID:              "tripswitch.tripswitch.io",
		LeaderElectionNamespace:       namespace,
		LeaderElectionReleaseOnCancel: true,
		Controller:                    config.Controller{SkipNameValidation: ptr.To(true)},
	})
	Expect(err).NotTo(HaveOccurred())
	// Target slices hold documentation addresses (the API refuses loopback ones).
	addressMap, err := probe.ParseAddressMap("192.0.2.0/24=127.0.0.0/24")
	Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	Expect(controller.Setup(ctx, mgr, controller.Options{
		Dial:                addressMap.Dialer(probe.LoopbackOnly((&net.Dialer{}).DialContext)),
		MaxConcurrentProbes: 64,
		StatusSyncPeriod:    10 * time.Second,
		HandBackTimeout:     10 * time.Second,
		Responder:           types.NamespacedName{Namespace: namespace, Name: "tripswitch-responder"},
		SliceCache:          sliceCache,
	})).To(Succeed())
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
	var once atomic.Bool
	stop = func() {
		if once.CompareAndSwap(false, true) {
			cancel()
			<-done
		}
	}
	return stop
}

// backend is an HTTP server on 127.0.0.1 that answers 200, or 503 while failing. Its
// EndpointSlices list it as 192.0.2.1, which the manager's dialer maps back.
type backend struct {
	port    int32
	failing atomic.Bool
}

func newBackend() *backend {
	GinkgoHelper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	b := &backend{port: int32(l.Addr().(*net.TCPAddr).Port)}
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if b.failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})}
	go func() { _ = srv.Serve(l) }()
	DeferCleanup(srv.Close)
	return b
}

// createTarget creates a Service with a selector and port http, and the EndpointSlice that
// Kubernetes would publish for it (envtest runs no EndpointSlice controller), one ready
// endpoint: the backend.
func createTarget(ctx context.Context, ns, name string, b *backend) {
	GinkgoHelper()
	Expect(k8sClient.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(b.port)}}},
	})).To(Succeed())
	Expect(k8sClient.Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-abcde", Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(b.port), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.1"},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)}}},
	})).To(Succeed())
}

// frontView is what kube-proxy would make of a front Service's EndpointSlices: how many ready
// endpoints they list, and who manages them.
type frontView struct {
	Ready    int
	Managers []string
}

func front(ctx context.Context, ns, name string) func(Gomega) frontView {
	return func(g Gomega) frontView {
		var list discoveryv1.EndpointSliceList
		g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns),
			client.MatchingLabels{discoveryv1.LabelServiceName: name})).To(Succeed())
		var v frontView
		for _, s := range list.Items {
			v.Managers = append(v.Managers, s.Labels[discoveryv1.LabelManagedBy])
			for _, ep := range s.Endpoints {
				if ptr.Deref(ep.Conditions.Ready, true) {
					v.Ready++
				}
			}
		}
		return v
	}
}

func breakerState(ctx context.Context, ns, name string) func(Gomega) string {
	return func(g Gomega) string {
		cb := &tripswitchv1alpha1.CircuitBreaker{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, cb)).To(Succeed())
		return fmt.Sprintf("%s trips=%d", cb.Status.State, cb.Status.Trips)
	}
}
