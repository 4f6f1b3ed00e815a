// Command gate measures the reconciler on a real kube-apiserver (the envtest binaries that
// `make envtest` builds): the API writes of steady Closed probing, and the time from the
// probe that decides a trip to the front EndpointSlice showing no ready endpoint. Run it from
// the repository root with KUBEBUILDER_ASSETS set:
//
//	KUBEBUILDER_ASSETS=$PWD/bin/k8s/1.37.2 go run ./test/bench/gate -breakers 100 -steady 5m
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/watch"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/controller"
	"github.com/tripswitch/tripswitch/internal/probe"
	"github.com/tripswitch/tripswitch/test/bench/internal/apiwrites"
)

// backend answers 200 until failing, then 503, noting when it first failed.
type backend struct {
	n        int
	failing  atomic.Bool
	failedAt atomic.Int64
}

func (b *backend) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	if b.failing.Load() {
		b.failedAt.CompareAndSwap(0, time.Now().UnixNano())
		w.WriteHeader(http.StatusServiceUnavailable)
	}
}

func main() {
	breakers := flag.Int("breakers", 100, "breakers, one backend each")
	steady := flag.Duration("steady", 5*time.Minute, "how long to measure steady Closed probing")
	syncPeriod := flag.Duration("status-sync-period", 10*time.Second, "the manager's --status-sync-period")
	// Every breaker trips within a few seconds here, which the observer guard would hold at
	// half, as it should when all targets fail at once; latency is measured without it.
	fraction := flag.Float64("max-trip-fraction", 1, "the manager's --max-trip-fraction; 1 disables the observer guard")
	flag.Parse()
	if err := run(*breakers, *steady, *syncPeriod, *fraction); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(n int, steady, syncPeriod time.Duration, fraction float64) error {
	if n > 200 {
		return fmt.Errorf("at most 200 breakers: each needs a loopback address of its own")
	}
	ctrl.SetLogger(logr.Discard())
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(scheme))
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting the control plane (is KUBEBUILDER_ASSETS set?): %w", err)
	}
	defer func() { _ = env.Stop() }()
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}

	// The manager, its client counted at the transport.
	counted := apiwrites.New()
	mcfg := rest.CopyConfig(cfg)
	mcfg.Wrap(counted.Wrap)
	mcfg.QPS, mcfg.Burst = 500, 1000
	mgr, err := ctrl.NewManager(mcfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0"})
	if err != nil {
		return err
	}
	m, _ := probe.ParseAddressMap("192.0.2.0/24=127.0.0.0/24")
	dial := m.Dialer(probe.LoopbackOnly((&net.Dialer{}).DialContext))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	guard := controller.DefaultGuard
	guard.MaxTripFraction = fraction
	if err := controller.Setup(ctx, mgr, controller.Options{Dial: dial, MaxConcurrentProbes: 256,
		StatusSyncPeriod: syncPeriod, Guard: guard}); err != nil {
		return err
	}
	go func() { _ = mgr.Start(ctx) }()

	// Backends on 127.0.0.2.. sharing one port, each behind its own target Service.
	ns := "bench"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	backends := make([]*backend, n)
	var port int32
	for i := range backends {
		b := &backend{n: i + 2}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", b.n, port))
		if err != nil {
			return err
		}
		port = int32(l.Addr().(*net.TCPAddr).Port)
		srv := &http.Server{Handler: b, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(l) }()
		defer srv.Close()
		backends[i] = b
		name := fmt.Sprintf("b%03d", i)
		if err := c.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-backend"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(port)}}}}); err != nil {
			return err
		}
		if err := c.Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-backend-x", Labels: map[string]string{discoveryv1.LabelServiceName: name + "-backend"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port)}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{fmt.Sprintf("192.0.2.%d", b.n)},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		}); err != nil {
			return err
		}
		cb := &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: tripswitchv1alpha1.CircuitBreakerSpec{
				Target:   tripswitchv1alpha1.TargetReference{Service: name + "-backend", Port: ptr.To(intstr.FromString("http"))},
				Probe:    tripswitchv1alpha1.ProbeSpec{Interval: &metav1.Duration{Duration: 200 * time.Millisecond}},
				Trip:     tripswitchv1alpha1.TripSpec{ConsecutiveFailures: ptr.To[int32](1)},
				Recovery: tripswitchv1alpha1.RecoverySpec{OpenDuration: &metav1.Duration{Duration: time.Hour}},
			}}
		if err := c.Create(ctx, cb); err != nil {
			return err
		}
	}
	fmt.Printf("%d breakers, one endpoint each, probed every 200ms; --status-sync-period=%s\n", n, syncPeriod)

	// Wait until every breaker is Closed and published, and setup writes are over.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var list tripswitchv1alpha1.CircuitBreakerList
		if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return err
		}
		ready := 0
		for _, cb := range list.Items {
			if cb.Status.Endpoints != nil && cb.Status.Endpoints.Published == 1 {
				ready++
			}
		}
		if ready == n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d breakers published their endpoint", ready, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * syncPeriod)
	counted.Take()

	// Write economy of steady Closed probing.
	time.Sleep(steady)
	got, total := counted.Take()
	budget := float64(n) * steady.Seconds() / syncPeriod.Seconds() * 1.01
	fmt.Printf("steady:  %d API writes in %s (budget %.0f = %d × %s/%s + 1%%): %v\n", total, steady, budget, n, steady, syncPeriod, got)

	// Trip latency: backends fail one after another; each breaker trips on its first failed
	// probe. A watch notes when each front slice first shows no ready endpoint.
	w, err := c.Watch(ctx, &discoveryv1.EndpointSliceList{}, client.InNamespace(ns),
		client.MatchingLabels{discoveryv1.LabelManagedBy: tripswitchv1alpha1.ManagedBy})
	if err != nil {
		return err
	}
	defer w.Stop()
	gated := make(map[string]time.Time, n)
	var gatedMu sync.Mutex
	go func() {
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok || ev.Type == watch.Deleted || len(s.Endpoints) == 0 || ptr.Deref(s.Endpoints[0].Conditions.Ready, true) {
				continue
			}
			gatedMu.Lock()
			if _, seen := gated[s.Labels[discoveryv1.LabelServiceName]]; !seen {
				gated[s.Labels[discoveryv1.LabelServiceName]] = time.Now()
			}
			gatedMu.Unlock()
		}
	}()
	for _, b := range backends {
		b.failing.Store(true)
		time.Sleep(50 * time.Millisecond)
	}
	deadline = time.Now().Add(time.Minute)
	for {
		gatedMu.Lock()
		done := len(gated)
		gatedMu.Unlock()
		if done == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // let the last status writes and events land
	tripWrites, tripTotal := counted.Take()

	var lat []time.Duration
	gatedMu.Lock()
	for i, b := range backends {
		if at, ok := gated[fmt.Sprintf("b%03d", i)]; ok && b.failedAt.Load() != 0 {
			lat = append(lat, at.Sub(time.Unix(0, b.failedAt.Load())))
		}
	}
	gatedMu.Unlock()
	slices.Sort(lat)
	if len(lat) == 0 {
		return fmt.Errorf("no breaker tripped")
	}
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("trips:   %d of %d gated; failing response to front slice without ready endpoints: p50 %s, p99 %s, max %s\n",
		len(lat), n, q(0.5), q(0.99), lat[len(lat)-1])
	fmt.Printf("         %d API writes for %d trips (%.2f per trip): %v\n", tripTotal, len(lat), float64(tripTotal)/float64(len(lat)), tripWrites)
	return nil
}
