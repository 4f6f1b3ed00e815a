package envtest_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// backend is an HTTP server on a loopback address 127.0.0.N that answers 200 or, while
// failing, 503. In EndpointSlices it appears as 192.0.2.N, which the manager's dialer maps back.
type backend struct {
	n       int
	port    int32
	failing atomic.Bool
	// hanging makes the backend hold every request until the client gives up.
	hanging atomic.Bool
	// headerBomb makes the backend answer 200 OK and then send headers without end.
	headerBomb atomic.Bool
	hits       atomic.Int64
	// inflight counts requests being answered now.
	inflight atomic.Int32
}

// nextHost hands each backend its own loopback address, so that stories never share one.
var nextHost atomic.Int32

func newBackend() *backend { return newBackends(1)[0] }

// newBackends starts n backends on n loopback addresses that share one port, as the pods
// behind one Service port do.
func newBackends(n int) []*backend { return newBackendsOn(n, nil) }

// newBackendsOn is newBackends with each listener wrapped, such as in TLS.
func newBackendsOn(n int, wrap func(net.Listener) net.Listener) []*backend {
	var out []*backend
	var port int32
	for len(out) < n {
		b := &backend{n: int(nextHost.Add(1)%250) + 2, port: port}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", b.n, port))
		if err != nil && port != 0 && len(out) > 0 {
			continue // that address has the port taken already: try the next address
		}
		Expect(err).NotTo(HaveOccurred())
		port = int32(l.Addr().(*net.TCPAddr).Port)
		b.port = port
		if wrap != nil {
			l = wrap(l)
		}
		b.serve(l)
		out = append(out, b)
	}
	return out
}

// serve answers HTTP on l until the story ends.
func (b *backend) serve(l net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.inflight.Add(1)
		defer b.inflight.Add(-1)
		if b.headerBomb.Load() {
			sendHeadersForever(w)
			return
		}
		if b.hanging.Load() {
			select {
			case <-r.Context().Done():
			case <-time.After(30 * time.Second):
			}
			return
		}
		if b.failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}), ErrorLog: log.New(GinkgoWriter, "backend: ", 0)}
	go func() { _ = srv.Serve(l) }()
	DeferCleanup(srv.Close)
}

// sendHeadersForever takes the connection over, answers 200 OK and sends headers until the
// client goes.
func sendHeadersForever(w http.ResponseWriter) {
	c, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\n")); err != nil {
		return
	}
	chunk := []byte(strings.Repeat("X-Bomb: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", 64))
	for {
		if _, err := c.Write(chunk); err != nil {
			return
		}
	}
}

// address is what the backend looks like in an EndpointSlice.
func (b *backend) address() string { return "192.0.2." + strconv.Itoa(b.n) }

// createTarget creates a Service with a selector (so deletion can hand it back) and port
// "http", and its EndpointSlice listing the backends, all on one target port.
func createTarget(ctx context.Context, ns, name string, port int32, backends ...*backend) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(port)}},
		},
	}
	Expect(k8sClient.Create(ctx, svc)).To(Succeed())
	var addrs []string
	for _, b := range backends {
		addrs = append(addrs, b.address())
	}
	writeSlice(ctx, ns, name, name+"-abcde", port, addrs...)
}

// writeSlice creates or replaces a target EndpointSlice with ready endpoints, as the
// EndpointSlice controller would (envtest runs none).
func writeSlice(ctx context.Context, ns, service, name string, port int32, addrs ...string) {
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			discoveryv1.LabelServiceName: service, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, a := range addrs {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)}})
	}
	existing := &discoveryv1.EndpointSlice{}
	if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(slice), existing); err == nil {
		existing.Endpoints = slice.Endpoints
		Expect(k8sClient.Update(ctx, existing)).To(Succeed())
		return
	}
	Expect(k8sClient.Create(ctx, slice)).To(Succeed())
}

// frontEndpoints counts the endpoints that the breaker's slices publish for front: ready,
// serving, and all.
type frontEndpoints struct{ Ready, Serving, All, Slices int }

func front(ctx context.Context, ns, name string) func(Gomega) frontEndpoints {
	return func(g Gomega) frontEndpoints {
		var list discoveryv1.EndpointSliceList
		g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: tripswitchv1alpha1.ManagedBy})).To(Succeed())
		return countEndpoints(list.Items)
	}
}

// countEndpoints counts the endpoints of slices: ready, serving, and all.
func countEndpoints(slices []discoveryv1.EndpointSlice) frontEndpoints {
	out := frontEndpoints{Slices: len(slices)}
	for _, s := range slices {
		for _, e := range s.Endpoints {
			out.All++
			if ptr.Deref(e.Conditions.Ready, true) {
				out.Ready++
			}
			if ptr.Deref(e.Conditions.Serving, true) {
				out.Serving++
			}
		}
	}
	return out
}

// status reads a breaker's status.
func status(ctx context.Context, ns, name string) func(Gomega) tripswitchv1alpha1.CircuitBreakerStatus {
	return func(g Gomega) tripswitchv1alpha1.CircuitBreakerStatus {
		cb := &tripswitchv1alpha1.CircuitBreaker{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, cb)).To(Succeed())
		return cb.Status
	}
}

// createLingeringHalfOpen starts n failing backends behind a target name-backend and a breaker
// name that trips on the first failure and, once they heal, stays HalfOpen for about a second:
// two trials, the second at its endpoint's next turn, long enough to be seen.
func createLingeringHalfOpen(ctx context.Context, ns, name string, n int) []*backend {
	GinkgoHelper()
	bs := newBackends(n)
	createTarget(ctx, ns, name+"-backend", bs[0].port, bs...)
	for _, b := range bs {
		b.failing.Store(true)
	}
	createBreaker(ctx, ns, name, `{target: {service: `+name+`-backend, port: http},
		probe: {interval: 1s, timeout: 200ms}, trip: {consecutiveFailures: 1},
		recovery: {openDuration: 2s, halfOpen: {trialProbes: 2, successThreshold: 2}}}`)
	return bs
}

// createBreaker creates a breaker from a YAML spec.
func createBreaker(ctx context.Context, ns, name, specYAML string) {
	GinkgoHelper()
	Expect(k8sClient.Create(ctx, breakerFromYAML(ns, name, specYAML))).To(Succeed())
}

// frontChange is a count of ready endpoints that a front slice showed, and when.
type frontChange struct {
	Ready int
	At    time.Time
}

// watchSlices records, from a watch on the EndpointSlices of ns that match labels, what
// observe makes of each event, in order, whenever observe says it changed. Polling could miss a
// state that lasts milliseconds; a watch sees every update. observe runs on one goroutine.
func watchSlices[T any](ctx context.Context, ns string, labels client.MatchingLabels,
	observe func(ev watch.EventType, slice *discoveryv1.EndpointSlice) (T, bool)) func() []T {
	watcher, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())
	w, err := watcher.Watch(ctx, &discoveryv1.EndpointSliceList{}, client.InNamespace(ns), labels)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(w.Stop)
	var mu sync.Mutex
	var seen []T
	go func() {
		defer GinkgoRecover()
		for ev := range w.ResultChan() {
			slice, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok {
				continue
			}
			if v, changed := observe(ev.Type, slice); changed {
				mu.Lock()
				seen = append(seen, v)
				mu.Unlock()
			}
		}
	}()
	return func() []T {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// watchFront records every change in the count of ready endpoints shown by any slice of the
// front Service, in order, starting with its state when the watch began.
func watchFront(ctx context.Context, ns, name string) func() []frontChange {
	last := -1
	return watchSlices(ctx, ns, client.MatchingLabels{discoveryv1.LabelServiceName: name},
		func(ev watch.EventType, slice *discoveryv1.EndpointSlice) (frontChange, bool) {
			if ev == watch.Deleted {
				return frontChange{}, false
			}
			n := 0
			for _, e := range slice.Endpoints {
				if ptr.Deref(e.Conditions.Ready, true) {
					n++
				}
			}
			if n == last {
				return frontChange{}, false
			}
			last = n
			return frontChange{Ready: n, At: time.Now()}, true
		})
}

// readyCounts are the counts of changes, without their times.
func readyCounts(changes func() []frontChange) func() []int {
	return func() []int {
		var counts []int
		for _, c := range changes() {
			counts = append(counts, c.Ready)
		}
		return counts
	}
}
