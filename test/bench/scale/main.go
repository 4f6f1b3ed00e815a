// Command scale measures the manager at scale on a real kube-apiserver (the envtest binaries
// that `make envtest` builds): N breakers, each with a target Service and EndpointSlice whose
// endpoints are loopback HTTP servers in a child process (reached through the dial seam, as
// slices cannot hold loopback addresses), and optionally many foreign slices that no breaker
// reads. The manager runs in this process through controller.Setup, as the binary does. It
// prints a table of:
//   - the time from manager start to every breaker Closed with its front published;
//   - API writes a second in steady state, by resource and verb;
//   - the manager's heap and RSS, in all and per breaker, and its CPU;
//   - the trip latency of T breakers whose backends fail while the others stay steady: from
//     the backend's first 503 to the front slice showing no ready endpoint.
//
// Run it from the repository root; the full size is heavy, so run it on a quiet machine:
//
//	KUBEBUILDER_ASSETS=$PWD/bin/k8s/1.37.2 go run ./test/bench/scale -breakers 10000 -trips 100
//	KUBEBUILDER_ASSETS=$PWD/bin/k8s/1.37.2 go run ./test/bench/scale -breakers 100 -foreign-slices 50000
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
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

type config struct {
	breakers, endpoints, ports, trips, foreign int
	interval, steady, syncPeriod, settle       time.Duration
	qps                                        float64
	burst, reconciles, probes                  int
	sliceCache                                 bool
}

func main() {
	var c config
	serve := flag.String("serve-backends", "", "internal: serve backends for breakers,endpoints,ports until stdin closes")
	flag.IntVar(&c.breakers, "breakers", 10000, "breakers, each with a target Service and slice")
	flag.IntVar(&c.endpoints, "endpoints", 1, "endpoints per target (loopback addresses 127.0.0.2..)")
	flag.IntVar(&c.ports, "ports", 16, "ports the backends listen on, shared by the breakers")
	flag.DurationVar(&c.interval, "interval", time.Second, "probe interval")
	flag.IntVar(&c.trips, "trips", 100, "breakers whose backends fail, spread over the others")
	flag.IntVar(&c.foreign, "foreign-slices", 0, "EndpointSlices of other Services in the cluster, 5 endpoints each")
	flag.DurationVar(&c.steady, "steady", time.Minute, "how long to measure steady state")
	flag.DurationVar(&c.syncPeriod, "status-sync-period", 10*time.Second, "the manager's --status-sync-period")
	flag.Float64Var(&c.qps, "kube-api-qps", 50, "the manager's --kube-api-qps")
	flag.IntVar(&c.burst, "kube-api-burst", 100, "the manager's --kube-api-burst")
	flag.IntVar(&c.reconciles, "max-concurrent-reconciles", 4, "the manager's --max-concurrent-reconciles")
	flag.IntVar(&c.probes, "max-concurrent-probes", 256, "the manager's --max-concurrent-probes")
	flag.DurationVar(&c.settle, "settle", -1, "how long to wait after every breaker is Closed before measuring steady state; "+
		"by default one counter refresh period, max(status-sync-period, breakers / (kube-api-qps / 2)), so that the "+
		"refreshes of the start are over")
	flag.BoolVar(&c.sliceCache, "slice-cache", true, "the manager's EndpointSlice cache keeps only what breakers read "+
		"(false: every slice of the cluster, as before)")
	flag.Parse()
	if *serve != "" {
		var b, e, p int
		if _, err := fmt.Sscanf(*serve, "%d,%d,%d", &b, &e, &p); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := serveBackends(b, e, p); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// memory is the process's heap after a collection, and its resident set.
type memory struct{ heap, rss uint64 }

func measureMemory() memory {
	goruntime.GC()
	goruntime.GC()
	var m goruntime.MemStats
	goruntime.ReadMemStats(&m)
	out := memory{heap: m.HeapAlloc}
	status, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			out.rss = kb * 1024
		}
	}
	return out
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func openFiles() int {
	fds, _ := os.ReadDir("/proc/self/fd")
	return len(fds)
}

const mib = 1 << 20

func run(c config) error {
	if c.endpoints < 1 || c.endpoints > 250 || c.trips > c.breakers {
		return fmt.Errorf("-endpoints must be 1..250 and -trips at most -breakers")
	}
	ctrl.SetLogger(logr.Discard())
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(scheme))
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	// Every breaker's front Service takes a cluster IP: a /16 holds 65,000.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.0.0.0/16")
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting the control plane (is KUBEBUILDER_ASSETS set?): %w", err)
	}
	defer func() { _ = env.Stop() }()
	// Interrupted, stop the control plane and the backends rather than leave them running.
	interrupted := make(chan os.Signal, 1)
	signal.Notify(interrupted, os.Interrupt, syscall.SIGTERM)
	var cleanup sync.Mutex
	stops := []func(){func() { _ = env.Stop() }}
	go func() {
		<-interrupted
		cleanup.Lock()
		for _, stop := range stops {
			stop()
		}
		os.Exit(130)
	}()
	setupCfg := rest.CopyConfig(cfg)
	setupCfg.QPS = -1 // the bench's own client is not rate-limited
	cl, err := client.NewWithWatch(setupCfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	be, err := startBackends(c.breakers, c.endpoints, c.ports)
	if err != nil {
		return err
	}
	defer be.stop()
	cleanup.Lock()
	stops = append(stops, be.stop)
	cleanup.Unlock()

	t0 := time.Now()
	if err := createBreakers(ctx, cl, c, be.ports); err != nil {
		return err
	}
	if err := createForeignSlices(ctx, cl, c.foreign); err != nil {
		return err
	}
	fmt.Printf("created %d breakers × %d endpoints and %d foreign slices in %s\n", c.breakers, c.endpoints, c.foreign,
		time.Since(t0).Round(time.Second))

	// The manager, its client counted at the transport.
	base := measureMemory()
	counted := apiwrites.New()
	mcfg := rest.CopyConfig(cfg)
	mcfg.Wrap(counted.Wrap)
	mcfg.QPS, mcfg.Burst = float32(c.qps), c.burst
	mopts := ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"}
	var sliceCache *controller.SliceCache
	if c.sliceCache {
		sliceCache = controller.NewSliceCache()
		mopts.Cache = sliceCache.Options(mopts.Cache)
	}
	mgr, err := ctrl.NewManager(mcfg, mopts)
	if err != nil {
		return err
	}
	m, _ := probe.ParseAddressMap("192.0.2.0/24=127.0.0.0/24")
	guard := controller.DefaultGuard
	guard.MaxTripFraction = 1 // the trips here are meant; the guard has its own tests
	if err := controller.Setup(ctx, mgr, controller.Options{
		Dial: m.Dialer(probe.LoopbackOnly((&net.Dialer{}).DialContext)), MaxConcurrentProbes: c.probes,
		MaxConcurrentReconciles: c.reconciles, StatusSyncPeriod: c.syncPeriod, Guard: guard, SliceCache: sliceCache,
	}); err != nil {
		return err
	}
	started := time.Now()
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(ctx) }()

	if err := waitClosed(ctx, cl, c, mgrDone); err != nil {
		return err
	}
	toClosed := time.Since(started)
	startWrites, startTotal := counted.Take()

	// Steady state, once the refreshes that the start bunched up are over.
	settle := c.settle
	if settle < 0 {
		settle = max(c.syncPeriod, time.Duration(float64(c.breakers)/(c.qps*controller.RefreshShare)*float64(time.Second)))
	}
	fmt.Printf("all Closed and published %s after the manager started; settling for %s\n", toClosed.Round(time.Second), settle)
	time.Sleep(settle)
	counted.Take()
	served0, _ := be.served()
	cpu0, s0 := cpuTime(), time.Now()
	time.Sleep(c.steady)
	steadyWrites, steadyTotal := counted.Take()
	elapsed := time.Since(s0)
	cpu := (cpuTime() - cpu0).Seconds() / elapsed.Seconds()
	served1, _ := be.served()
	mem := measureMemory()
	fds := openFiles()

	lat, tripWrites, tripTotal, err := trip(ctx, cl, be, c, counted)
	if err != nil {
		return err
	}

	scheduled := float64(c.breakers*c.endpoints) / c.interval.Seconds()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nsetting\t%d breakers × %d endpoints every %s, %d foreign slices, --status-sync-period=%s, "+
		"--kube-api-qps=%g --kube-api-burst=%d --max-concurrent-reconciles=%d, slice cache scoped: %t, GOMAXPROCS=%d\n",
		c.breakers, c.endpoints, c.interval, c.foreign, c.syncPeriod, c.qps, c.burst, c.reconciles, c.sliceCache, goruntime.GOMAXPROCS(0))
	fmt.Fprintf(tw, "start to all Closed and published\t%s\t%d writes: %s\n", toClosed.Round(100*time.Millisecond), startTotal, top(startWrites))
	fmt.Fprintf(tw, "steady API writes\t%.1f/s\tbudget %.0f/s (breakers / status-sync-period); %s\n",
		float64(steadyTotal)/elapsed.Seconds(), float64(c.breakers)/c.syncPeriod.Seconds(), top(steadyWrites))
	fmt.Fprintf(tw, "probes answered\t%.0f/s\tof %.0f/s scheduled\n", float64(served1-served0)/elapsed.Seconds(), scheduled)
	fmt.Fprintf(tw, "manager CPU in steady state\t%.2f cores\t(this process: manager and bench client; backends apart)\n", cpu)
	fmt.Fprintf(tw, "manager heap\t%.1f MiB\t%.1f KiB per breaker\n", float64(mem.heap-min(mem.heap, base.heap))/mib,
		float64(mem.heap-min(mem.heap, base.heap))/float64(c.breakers)/1024)
	fmt.Fprintf(tw, "manager RSS\t%.1f MiB\t%.1f KiB per breaker (process RSS %.0f MiB, %.0f MiB before the manager)\n",
		float64(mem.rss-min(mem.rss, base.rss))/mib, float64(mem.rss-min(mem.rss, base.rss))/float64(c.breakers)/1024,
		float64(mem.rss)/mib, float64(base.rss)/mib)
	fmt.Fprintf(tw, "open files\t%d\t(the machine caps a process at %s)\n", fds, fdLimit())
	if len(lat) > 0 {
		q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
		fmt.Fprintf(tw, "trip latency\tp50 %s, p99 %s, max %s\t%d of %d trips gated; %d writes: %s\n", q(0.5).Round(time.Millisecond),
			q(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), len(lat), c.trips, tripTotal, top(tripWrites))
	}
	return tw.Flush()
}

func top(by map[string]int) string {
	keys := make([]string, 0, len(by))
	for k := range by {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return by[keys[i]] > by[keys[j]] })
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, by[k]))
	}
	return strings.Join(parts, ", ")
}

func fdLimit() string {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return "?"
	}
	return strconv.FormatUint(l.Cur, 10)
}

const ns = "bench"

func name(i int) string { return fmt.Sprintf("b%05d", i) }

// parallel runs f for 0..n-1 on 16 workers and returns the first error.
func parallel(n int, f func(i int) error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// createBreakers makes each breaker's target Service, its slice and the breaker. Breaker i
// probes /b/i on port i mod ports of 127.0.0.2.. through 192.0.2.2..; it trips on one failure
// and stays Open for an hour.
func createBreakers(ctx context.Context, cl client.Client, c config, ports []int32) error {
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	return parallel(c.breakers, func(i int) error {
		port := ports[i%len(ports)]
		target := name(i) + "-backend"
		if err := cl.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: target},
			Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": name(i)},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(port)}}}}); err != nil {
			return err
		}
		eps := make([]discoveryv1.Endpoint, c.endpoints)
		for e := range eps {
			eps[e] = discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("192.0.2.%d", 2+e)},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}
		}
		if err := cl.Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: target + "-x", Labels: map[string]string{
				discoveryv1.LabelServiceName: target, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port)}},
			Endpoints:   eps,
		}); err != nil {
			return err
		}
		return cl.Create(ctx, &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name(i)},
			Spec: tripswitchv1alpha1.CircuitBreakerSpec{
				Target: tripswitchv1alpha1.TargetReference{Service: target, Port: ptr.To(intstr.FromString("http"))},
				Probe: tripswitchv1alpha1.ProbeSpec{Interval: &metav1.Duration{Duration: c.interval},
					HTTP: &tripswitchv1alpha1.HTTPProbe{Path: "/b/" + strconv.Itoa(i)}},
				Trip:     tripswitchv1alpha1.TripSpec{ConsecutiveFailures: ptr.To[int32](1)},
				Recovery: tripswitchv1alpha1.RecoverySpec{OpenDuration: &metav1.Duration{Duration: time.Hour}},
			}})
	})
}

// createForeignSlices fills namespace foreign with slices as Kubernetes' EndpointSlice
// controller writes them for Services that no breaker reads: 5 endpoints each, with pods,
// nodes and zones.
func createForeignSlices(ctx context.Context, cl client.Client, n int) error {
	if n == 0 {
		return nil
	}
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "foreign"}}); err != nil {
		return err
	}
	return parallel(n, func(i int) error {
		svc := fmt.Sprintf("svc-%05d", i/2) // two slices a Service
		eps := make([]discoveryv1.Endpoint, 5)
		for e := range eps {
			eps[e] = discoveryv1.Endpoint{
				Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 100+i/65536, i/256%256, i%256)},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
				NodeName:   ptr.To(fmt.Sprintf("node-%03d", (i+e)%300)),
				Zone:       ptr.To(fmt.Sprintf("zone-%c", 'a'+rune(e%3))),
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "foreign", Name: fmt.Sprintf("%s-7d9f8c6b5-%05d%d", svc, i, e)},
			}
		}
		return cl.Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "foreign", Name: fmt.Sprintf("%s-%05d", svc, i),
				Labels: map[string]string{discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io",
					"app.kubernetes.io/name": svc},
				Annotations: map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": "2026-11-23T12:00:00Z"},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: svc,
					UID: "00000000-0000-0000-0000-000000000000", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)}},
			Endpoints:   eps,
		})
	})
}

// waitClosed waits until every breaker is Closed and its front publishes every endpoint.
func waitClosed(ctx context.Context, cl client.Client, c config, mgrDone <-chan error) error {
	start := time.Now()
	deadline := start.Add(30 * time.Minute)
	lastReport := start
	for {
		select {
		case err := <-mgrDone:
			return fmt.Errorf("the manager stopped: %v", err)
		case <-time.After(5 * time.Second):
		}
		var list tripswitchv1alpha1.CircuitBreakerList
		if err := cl.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return err
		}
		ready := 0
		for _, cb := range list.Items {
			if cb.Status.State == tripswitchv1alpha1.StateClosed && cb.Status.Endpoints != nil &&
				int(cb.Status.Endpoints.Published) == c.endpoints {
				ready++
			}
		}
		if ready == c.breakers {
			return nil
		}
		if time.Since(lastReport) >= time.Minute {
			fmt.Printf("  %s after the manager started: %d of %d breakers Closed and published\n",
				time.Since(start).Round(time.Second), ready, c.breakers)
			lastReport = time.Now()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d breakers are Closed and published", ready, c.breakers)
		}
	}
}

// trip fails the backends of c.trips breakers spread over all of them, and measures from each
// backend's first 503 to its front slice showing no ready endpoint.
func trip(ctx context.Context, cl client.WithWatch, be *backends, c config, counted *apiwrites.Counter) ([]time.Duration, map[string]int, int, error) {
	if c.trips == 0 {
		return nil, nil, 0, nil
	}
	ids := make([]int, c.trips)
	fronts := make([]string, c.trips)
	for k := range ids {
		ids[k] = k * c.breakers / c.trips
		fronts[k] = name(ids[k])
	}
	sel := fmt.Sprintf("%s=%s,%s in (%s)", discoveryv1.LabelManagedBy, tripswitchv1alpha1.ManagedBy,
		discoveryv1.LabelServiceName, strings.Join(fronts, ","))
	selector, err := labels.Parse(sel)
	if err != nil {
		return nil, nil, 0, err
	}
	w, err := cl.Watch(ctx, &discoveryv1.EndpointSliceList{}, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: selector})
	if err != nil {
		return nil, nil, 0, err
	}
	defer w.Stop()
	gated := map[string]time.Time{}
	var mu sync.Mutex
	go func() {
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok || ev.Type == watch.Deleted || len(s.Endpoints) == 0 || ptr.Deref(s.Endpoints[0].Conditions.Ready, true) {
				continue
			}
			at := time.Now()
			mu.Lock()
			if _, seen := gated[s.Labels[discoveryv1.LabelServiceName]]; !seen {
				gated[s.Labels[discoveryv1.LabelServiceName]] = at
			}
			mu.Unlock()
		}
	}()
	time.Sleep(time.Second) // the watch's initial events
	counted.Take()
	if err := be.fail(ids); err != nil {
		return nil, nil, 0, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		done := len(gated)
		mu.Unlock()
		if done == c.trips || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // the last status writes and events
	tripWrites, total := counted.Take()
	failed, err := be.failedAt()
	if err != nil {
		return nil, nil, 0, err
	}
	var lat []time.Duration
	mu.Lock()
	for _, id := range ids {
		if at, ok := gated[name(id)]; ok && !failed[id].IsZero() {
			lat = append(lat, at.Sub(failed[id]))
		}
	}
	mu.Unlock()
	slices.Sort(lat)
	return lat, tripWrites, total, nil
}
