package e2e_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/test/e2e/rig"
)

// faultProxy stands between a manager and the API server (plain HTTP on its side, the admin's
// TLS and credentials upstream) and makes the API server look broken to that manager alone:
// blackholed, every request and every response in progress (watches included) stalls, as when
// packets are dropped; with failWrites, every write to a resource whose path contains it is
// answered 500, while reads, watches and leases pass.
type faultProxy struct {
	kubeconfig string

	mu         sync.Mutex
	blackholed bool
	healed     chan struct{}
	failWrites atomic.Pointer[string]
	failed     atomic.Int64
}

func newFaultProxy() *faultProxy {
	GinkgoHelper()
	cfg := cluster.Config()
	upstreamURL, err := url.Parse(cfg.Host)
	Expect(err).NotTo(HaveOccurred())
	transport, err := rest.TransportFor(cfg)
	Expect(err).NotTo(HaveOccurred())
	p := &faultProxy{healed: make(chan struct{})}
	upstream := httputil.NewSingleHostReverseProxy(upstreamURL)
	upstream.Transport = transport
	upstream.FlushInterval = -1 // watches stream
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.pass(r)
		if resource := p.failWrites.Load(); resource != nil && r.Method != http.MethodGet && strings.Contains(r.URL.Path, *resource) {
			p.failed.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure",` +
				`"message":"injected by the story's API proxy","reason":"InternalError","code":500}`))
			return
		}
		upstream.ServeHTTP(&stallingWriter{ResponseWriter: w, proxy: p, r: r}, r)
	})}
	go func() { _ = srv.Serve(l) }()
	DeferCleanup(func() {
		p.heal()
		_ = srv.Close()
	})

	kubeconfig := clientcmdapi.NewConfig()
	kubeconfig.Clusters["proxy"] = &clientcmdapi.Cluster{Server: "http://" + l.Addr().String()}
	kubeconfig.AuthInfos["proxy"] = &clientcmdapi.AuthInfo{}
	kubeconfig.Contexts["proxy"] = &clientcmdapi.Context{Cluster: "proxy", AuthInfo: "proxy"}
	kubeconfig.CurrentContext = "proxy"
	p.kubeconfig = filepath.Join(cluster.RunDir(), fmt.Sprintf("kubeconfig-proxy-%d", l.Addr().(*net.TCPAddr).Port))
	Expect(clientcmd.WriteToFile(*kubeconfig, p.kubeconfig)).To(Succeed())
	return p
}

// pass returns once the proxy is not blackholed, or the request is given up.
func (p *faultProxy) pass(r *http.Request) {
	p.mu.Lock()
	blackholed, healed := p.blackholed, p.healed
	p.mu.Unlock()
	if blackholed {
		select {
		case <-healed:
		case <-r.Context().Done():
		}
	}
}

func (p *faultProxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackholed = true
}

func (p *faultProxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blackholed {
		p.blackholed = false
		close(p.healed)
		p.healed = make(chan struct{})
	}
	p.failWrites.Store(nil)
}

func (p *faultProxy) breakWrites(resource string) { p.failWrites.Store(&resource) }

// stallingWriter holds every write of a response while the proxy is blackholed.
type stallingWriter struct {
	http.ResponseWriter
	proxy *faultProxy
	r     *http.Request
}

func (w *stallingWriter) Write(b []byte) (int, error) {
	w.proxy.pass(w.r)
	return w.ResponseWriter.Write(b)
}

func (w *stallingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

var _ = Describe("API server trouble", Ordered, func() {
	var ns string
	var proxy *faultProxy
	var manager *rig.Supervised

	BeforeAll(func(ctx SpecContext) {
		ts := installTripswitch(ctx, 2)
		proxy = newFaultProxy()
		// The manager exits when it loses its lease; like a kubelet, the rig starts it again.
		manager = cluster.StartSupervised("manager-proxied", func() *exec.Cmd {
			cmd := exec.Command(ts.bin, managerFlags()...)
			cmd.Env = append(os.Environ(), "KUBECONFIG="+proxy.kubeconfig)
			return cmd
		})
		ns = cluster.NewNamespace("apitrouble")
	})

	It("keeps every gate through 30 s of a blackholed API server, and converges within seconds after 2 minutes of failing slice writes", func(ctx SpecContext) {
		steady := target(ctx, ns, "steady-backend", 2)
		breaker(ctx, ns, "steady", `{target: {service: steady-backend, port: http}, probe: {interval: 100ms},
			trip: {consecutiveFailures: 3}, recovery: {openDuration: 10m}}`)
		target(ctx, ns, "down-backend", 2)
		breaker(ctx, ns, "down", `{target: {service: down-backend, port: http}, mode: ForceOpen}`)
		steadyFront, downFront := frontAddress(ctx, ns, "steady"), frontAddress(ctx, ns, "down")
		clients := rig.NewClients(2)
		get := func(c *rig.Client, front, host string) rig.Attempt {
			return c.Attempt(ctx, rig.LoadSpec{Target: front, Host: host, Headers: loadHeaders})
		}
		Eventually(func() string { return servedBy(get(clients[0], steadyFront, "steady."+ns)) }).Should(HavePrefix("steady-backend-"))
		Eventually(func() bool { return answeredByResponder(get(clients[1], downFront, "down."+ns)) }).Should(BeTrue())

		By("blackholing the API server for the manager for 30 s")
		toSteady := clients[:1].Start(rig.LoadSpec{Target: steadyFront, Host: "steady." + ns, Rate: 20, Headers: loadHeaders})
		toDown := clients[1:].Start(rig.LoadSpec{Target: downFront, Host: "down." + ns, Rate: 20, Headers: loadHeaders})
		proxy.blackhole()
		Consistently(func() rig.Results {
			return toSteady.Snapshot().Where(func(a rig.Attempt) bool { return !servedByTarget(a) })
		},
			30*time.Second, time.Second).Should(BeEmpty(), "the Closed front keeps its target while the API server is away")
		proxy.heal()
		steadyCalls, downCalls := toSteady.Stop(), toDown.Stop()
		AddReportEntry(fmt.Sprintf("%s, 30 s blackhole", cluster.ProxyMode()), fmt.Sprintf(
			"manager restarted %d times; Closed front: %s; Open front: %s", manager.Restarts(), steadyCalls, downCalls))
		Expect(steadyCalls.Where(servedByTarget)).To(HaveLen(len(steadyCalls)), "the Closed front keeps its target: %s", steadyCalls)
		Expect(downCalls.Where(answeredByResponder)).To(HaveLen(len(downCalls)), "the Open front keeps the responder: %s", downCalls)

		By("failing every EndpointSlice write for 2 minutes while the target fails")
		Eventually(func() string { return manager.Current().Log() }, time.Minute).Should(ContainSubstring(leaseAcquired),
			"a manager leads again")
		proxy.breakWrites("endpointslices")
		setBehavior(steady, rig.Unavailable)
		Eventually(breakerStatus(ctx, ns, "steady")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
		Consistently(func() string { return servedBy(get(clients[0], steadyFront, "steady."+ns)) }, 2*time.Minute, time.Second).Should(
			HavePrefix("steady-backend-"), "the front keeps its last gate while its writes fail")
		failed := proxy.failed.Load()
		proxy.heal()
		healedAt := time.Now()
		Eventually(func() bool { return answeredByResponder(get(clients[0], steadyFront, "steady."+ns)) }, 30*time.Second, 10*time.Millisecond).
			Should(BeTrue())
		converged := time.Since(healedAt)
		AddReportEntry(fmt.Sprintf("%s, 2 minutes of failing EndpointSlice writes", cluster.ProxyMode()),
			fmt.Sprintf("%d writes refused; clients got the responder %v after writes healed", failed, converged.Round(10*time.Millisecond)))
		Expect(converged).To(BeNumerically("<", 5*time.Second))
	})
})
