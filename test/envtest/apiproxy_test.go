package envtest_test

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"
)

// apiProxy stands between a manager and the suite's API server, and can make the API server
// look broken to that manager alone: while failWrites is set, every write to a resource whose
// path contains it is answered 500, as a failing admission webhook or an overloaded API
// server would answer. Reads and watches always pass.
type apiProxy struct {
	failWrites atomic.Pointer[string]
	// failed counts the writes it refused.
	failed atomic.Int64
}

// newAPIProxy serves the proxy on loopback until the story ends and returns the rest config
// that reaches the API server through it.
func newAPIProxy() (*apiProxy, *rest.Config) {
	target, err := url.Parse(cfg.Host)
	Expect(err).NotTo(HaveOccurred())
	transport, err := rest.TransportFor(cfg)
	Expect(err).NotTo(HaveOccurred())
	p := &apiProxy{}
	upstream := httputil.NewSingleHostReverseProxy(target)
	upstream.Transport = transport
	upstream.FlushInterval = -1 // watches stream
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if resource := p.failWrites.Load(); resource != nil && r.Method != http.MethodGet &&
			strings.Contains(r.URL.Path, *resource) {
			p.failed.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure",` +
				`"message":"injected by the story's API proxy","reason":"InternalError","code":500}`))
			return
		}
		upstream.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(l) }()
	DeferCleanup(srv.Close)
	return p, &rest.Config{Host: "http://" + l.Addr().String(), QPS: -1}
}

// breakWrites makes every write to resource (a path segment such as "endpointslices") fail
// until heal.
func (p *apiProxy) breakWrites(resource string) { p.failWrites.Store(&resource) }

func (p *apiProxy) heal() { p.failWrites.Store(nil) }
