// Package apifault is a fault-injecting proxy for tests: it stands between one client (a
// manager) and a kube-apiserver, and makes the API server look broken to that client alone.
// Blackholed, every request and every response in progress (watches included) stalls, as
// when packets are dropped. With BreakWrites, every write to a resource is answered 500, as a
// failing admission webhook or an overloaded API server answers, while reads, watches and
// leases pass.
package apifault

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Proxy serves plain HTTP on loopback and forwards to the API server with the upstream
// config's TLS and credentials.
type Proxy struct {
	listener net.Listener
	server   *http.Server

	mu         sync.Mutex
	blackholed bool
	healed     chan struct{}
	failWrites atomic.Pointer[string]
	refused    atomic.Int64
}

// Start serves a proxy to the API server that upstream reaches, until Close.
func Start(upstream *rest.Config) (*Proxy, error) {
	upstreamURL, err := url.Parse(upstream.Host)
	if err != nil {
		return nil, err
	}
	transport, err := rest.TransportFor(upstream)
	if err != nil {
		return nil, err
	}
	forward := httputil.NewSingleHostReverseProxy(upstreamURL)
	forward.Transport = transport
	forward.FlushInterval = -1 // watches stream
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{listener: l, healed: make(chan struct{})}
	p.server = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.pass(r)
		if resource := p.failWrites.Load(); resource != nil && r.Method != http.MethodGet &&
			strings.Contains(r.URL.Path, *resource) {
			p.refused.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure",` +
				`"message":"injected by the test's API fault proxy","reason":"InternalError","code":500}`))
			return
		}
		forward.ServeHTTP(&stallingWriter{ResponseWriter: w, proxy: p, r: r}, r)
	})}
	go func() { _ = p.server.Serve(l) }()
	return p, nil
}

// Config reaches the API server through the proxy, without client-side rate limits.
func (p *Proxy) Config() *rest.Config {
	return &rest.Config{Host: "http://" + p.listener.Addr().String(), QPS: -1}
}

// WriteKubeconfig writes a kubeconfig that reaches the API server through the proxy, for a
// child process.
func (p *Proxy) WriteKubeconfig(path string) error {
	kubeconfig := clientcmdapi.NewConfig()
	kubeconfig.Clusters["proxy"] = &clientcmdapi.Cluster{Server: p.Config().Host}
	kubeconfig.AuthInfos["proxy"] = &clientcmdapi.AuthInfo{}
	kubeconfig.Contexts["proxy"] = &clientcmdapi.Context{Cluster: "proxy", AuthInfo: "proxy"}
	kubeconfig.CurrentContext = "proxy"
	if err := clientcmd.WriteToFile(*kubeconfig, path); err != nil {
		return fmt.Errorf("writing the proxy's kubeconfig: %w", err)
	}
	return nil
}

// Blackhole stalls every request and every response write until Heal.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackholed = true
}

// BreakWrites answers 500 to every request other than GET whose path contains resource (a
// path segment such as "endpointslices"), until Heal.
func (p *Proxy) BreakWrites(resource string) { p.failWrites.Store(&resource) }

// Heal ends every fault: stalled requests and responses go on.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blackholed {
		p.blackholed = false
		close(p.healed)
		p.healed = make(chan struct{})
	}
	p.failWrites.Store(nil)
}

// Refused counts the writes BreakWrites answered 500.
func (p *Proxy) Refused() int64 { return p.refused.Load() }

// Close heals the proxy and stops serving.
func (p *Proxy) Close() error {
	p.Heal()
	return p.server.Close()
}

// pass returns once the proxy is not blackholed, or the request is given up.
func (p *Proxy) pass(r *http.Request) {
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

// stallingWriter holds every write of a response while the proxy is blackholed.
type stallingWriter struct {
	http.ResponseWriter
	proxy *Proxy
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
