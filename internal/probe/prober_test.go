package probe

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

// listenOn listens on a loopback address such as 127.0.0.2, on a free port.
func listenOn(t *testing.T, ip string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", ip, err)
	}
	return l
}

// serve starts an HTTP server for h on a loopback IP and returns its endpoint.
func serve(t *testing.T, ip string, h http.Handler) (Endpoint, *httptest.Server) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = listenOn(t, ip)
	srv.Start()
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String()), srv
}

func mustCodes(t *testing.T, s string) CodeSet {
	t.Helper()
	set, err := ParseCodes(s)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func httpSpec(t *testing.T, edit ...func(*Spec)) Spec {
	s := Spec{Timeout: time.Second, HTTP: &HTTPSpec{Path: "/healthz", Success: mustCodes(t, "200-399"), Neutral: mustCodes(t, "429")}}
	for _, e := range edit {
		e(&s)
	}
	return s
}

func probeOnce(t *testing.T, f *Factory, spec Spec, ep Endpoint) Result {
	t.Helper()
	p, err := f.New(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	return p.Probe(context.Background(), ep)
}

func TestHTTPProbe(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Probe") != "" && r.Header.Get("X-Probe") != "tripswitch" {
			w.WriteHeader(http.StatusBadRequest)
		}
		if r.Host == "payments.shop" {
			w.WriteHeader(http.StatusTeapot)
		}
	})
	mux.HandleFunc("/500", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	mux.HandleFunc("/429", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTooManyRequests) })
	mux.HandleFunc("/301", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/500", http.StatusMovedPermanently) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, _ *http.Request) { time.Sleep(150 * time.Millisecond) })
	mux.HandleFunc("/hang", func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	mux.HandleFunc("/big", func(w http.ResponseWriter, _ *http.Request) {
		chunk := strings.Repeat("x", 64<<10)
		for i := 0; i < 1000; i++ { // 64 MiB, far beyond what a probe reads
			if _, err := w.Write([]byte(chunk)); err != nil {
				return
			}
		}
	})
	ep, _ := serve(t, "127.0.0.1", mux)
	f := NewFactory(nil, clock.RealClock{})
	path := func(p string) func(*Spec) { return func(s *Spec) { s.HTTP.Path = p } }

	for _, tt := range []struct {
		name    string
		spec    Spec
		outcome breaker.Outcome
		message string
	}{
		{"200 is a success", httpSpec(t), breaker.Success, "HTTP 200"},
		{"500 is a failure", httpSpec(t, path("/500")), breaker.Failure, "HTTP 500"},
		{"429 is neutral", httpSpec(t, path("/429")), breaker.Neutral, "HTTP 429"},
		{"redirects are not followed", httpSpec(t, path("/301")), breaker.Success, "HTTP 301"},
		{"neutral codes take precedence", httpSpec(t, path("/500"), func(s *Spec) { s.HTTP.Neutral = mustCodes(t, "500") }), breaker.Neutral, "HTTP 500"},
		{"success codes are the user's", httpSpec(t, func(s *Spec) { s.HTTP.Success = mustCodes(t, "204") }), breaker.Failure, "HTTP 200"},
		{"headers are sent", httpSpec(t, func(s *Spec) { s.HTTP.Headers = http.Header{"X-Probe": {"tripswitch"}} }), breaker.Success, "HTTP 200"},
		{"wrong header value", httpSpec(t, func(s *Spec) { s.HTTP.Headers = http.Header{"X-Probe": {"other"}} }), breaker.Failure, "HTTP 400"},
		{"host header is sent", httpSpec(t, func(s *Spec) { s.HTTP.Host = "payments.shop" }), breaker.Failure, "HTTP 418"},
		{"a slow success is slow", httpSpec(t, path("/slow"), func(s *Spec) { s.SlowThreshold = 50 * time.Millisecond }), breaker.Slow,
			"HTTP 200, slower than 50ms"},
		{"a slow success without threshold is a success", httpSpec(t, path("/slow")), breaker.Success, "HTTP 200"},
		{"a hanging endpoint times out", httpSpec(t, path("/hang"), func(s *Spec) { s.Timeout = 200 * time.Millisecond }),
			breaker.Failure, "timeout after 200ms"},
		{"an endless body is cut short", httpSpec(t, path("/big")), breaker.Success, "HTTP 200"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := probeOnce(t, f, tt.spec, ep)
			if r.Outcome != tt.outcome || r.Message != tt.message || r.Endpoint != ep {
				t.Fatalf("got %s %q from %s, want %s %q", r.Outcome, r.Message, r.Endpoint, tt.outcome, tt.message)
			}
			if r.Latency <= 0 || r.Latency > tt.spec.Timeout+500*time.Millisecond || r.Time.IsZero() {
				t.Fatalf("latency %s, time %v: the timeout %s must hold", r.Latency, r.Time, tt.spec.Timeout)
			}
		})
	}
}

// serveCounting starts an HTTP server for h on loopback that counts its connections as they
// reach state.
func serveCounting(t *testing.T, h http.Handler, state http.ConnState, count *atomic.Int32) Endpoint {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = listenOn(t, "127.0.0.1")
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == state {
			count.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String())
}

func TestHTTPProbeKeepsConnectionsAlive(t *testing.T) {
	var conns atomic.Int32
	ep := serveCounting(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), http.StateNew, &conns)
	p, err := NewFactory(nil, clock.RealClock{}).New(httpSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for range 20 {
		if r := p.Probe(context.Background(), ep); r.Outcome != breaker.Success {
			t.Fatalf("probe: %+v", r)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("20 probes opened %d connections, want 1 kept alive", n)
	}
}

func TestHTTPProbeWithFreshConnections(t *testing.T) {
	var conns atomic.Int32
	ep := serveCounting(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), http.StateNew, &conns)
	spec := httpSpec(t)
	spec.HTTP.FreshConnections = true
	p, err := NewFactory(nil, clock.RealClock{}).New(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for range 5 {
		if r := p.Probe(context.Background(), ep); r.Outcome != breaker.Success {
			t.Fatalf("probe: %+v", r)
		}
	}
	if n := conns.Load(); n != 5 {
		t.Fatalf("5 probes opened %d connections, want one each", n)
	}
}

func TestRefusedAndClosed(t *testing.T) {
	l := listenOn(t, "127.0.0.1")
	ep := netip.MustParseAddrPort(l.Addr().String())
	f := NewFactory(nil, clock.RealClock{})
	tcp := Spec{Timeout: time.Second, TCP: true}

	if r := probeOnce(t, f, tcp, ep); r.Outcome != breaker.Success || r.Message != "connected" {
		t.Fatalf("open listener: %+v", r)
	}
	_ = l.Close() // the listener goes away mid-test
	for _, spec := range []Spec{tcp, httpSpec(t)} {
		if r := probeOnce(t, f, spec, ep); r.Outcome != breaker.Failure || r.Message != "connection refused" {
			t.Fatalf("closed listener: %+v", r)
		}
	}
}

func TestHTTPSProbe(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Listener = listenOn(t, "127.0.0.1")
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ep := netip.MustParseAddrPort(srv.Listener.Addr().String())
	f := NewFactory(nil, clock.RealClock{})
	https := func(insecure bool) Spec {
		return httpSpec(t, func(s *Spec) { s.HTTP.HTTPS, s.HTTP.InsecureSkipVerify = true, insecure })
	}
	if r := probeOnce(t, f, https(false), ep); r.Outcome != breaker.Failure || !strings.HasPrefix(r.Message, "TLS certificate not trusted") {
		t.Fatalf("an untrusted certificate must fail unless insecureSkipVerify: %+v", r)
	}
	if r := probeOnce(t, f, https(true), ep); r.Outcome != breaker.Success {
		t.Fatalf("insecureSkipVerify: %+v", r)
	}
}

func TestGRPCProbe(t *testing.T) {
	l := listenOn(t, "127.0.0.1")
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	ep := netip.MustParseAddrPort(l.Addr().String())

	p, err := NewFactory(nil, clock.RealClock{}).New(Spec{Timeout: time.Second, GRPC: &GRPCSpec{Service: "shop.Payments"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	check := func(want breaker.Outcome, message string) {
		t.Helper()
		if r := p.Probe(context.Background(), ep); r.Outcome != want || r.Message != message {
			t.Fatalf("got %s %q, want %s %q", r.Outcome, r.Message, want, message)
		}
	}
	check(breaker.Failure, "gRPC health: service unknown")
	hs.SetServingStatus("shop.Payments", healthpb.HealthCheckResponse_SERVING)
	check(breaker.Success, "gRPC health SERVING")
	hs.SetServingStatus("shop.Payments", healthpb.HealthCheckResponse_NOT_SERVING)
	check(breaker.Failure, "gRPC health NOT_SERVING")
	hs.SetServingStatus("shop.Payments", healthpb.HealthCheckResponse_SERVING)
	check(breaker.Success, "gRPC health SERVING")
	p.Forget(ep)
	check(breaker.Success, "gRPC health SERVING") // a forgotten endpoint reconnects
}

func TestLoopbackOnly(t *testing.T) {
	dial := LoopbackOnly(func(context.Context, string, string) (net.Conn, error) { return nil, nil })
	for _, addr := range []string{"127.0.0.9:80", "[::1]:80"} {
		if _, err := dial(context.Background(), "tcp", addr); err != nil {
			t.Errorf("LoopbackOnly refused %s: %v", addr, err)
		}
	}
	for _, addr := range []string{"192.0.2.1:80", "10.0.0.1:80", "[2001:db8::1]:80", "example.com:80"} {
		if _, err := dial(context.Background(), "tcp", addr); err == nil {
			t.Errorf("LoopbackOnly let %s through", addr)
		}
	}
}

func TestAddressMap(t *testing.T) {
	m, err := ParseAddressMap("192.0.2.0/24=127.0.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{"192.0.2.7": "127.0.0.7", "192.0.2.254": "127.0.0.254", "10.0.0.1": "10.0.0.1", "::1": "::1"} {
		if got := m.Rewrite(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("Rewrite(%s) = %s, want %s", in, got, want)
		}
	}
	if m6, err := ParseAddressMap("2001:db8::/112=::1/128"); err == nil {
		t.Errorf("prefixes of different lengths accepted: %+v", m6)
	}
	for _, bad := range []string{"192.0.2.0/24", "192.0.2.0/24=::/24", "x=y", "192.0.2.0/24=127.0.0.0/16"} {
		if _, err := ParseAddressMap(bad); err == nil {
			t.Errorf("ParseAddressMap(%q) accepted bad input", bad)
		}
	}

	// A probe of a documentation address reaches the loopback server behind it.
	real, _ := serve(t, "127.0.0.2", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	ep := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), real.Port())
	f := NewFactory(m.Dialer((&net.Dialer{}).DialContext), clock.RealClock{})
	if r := probeOnce(t, f, httpSpec(t), ep); r.Outcome != breaker.Success || r.Endpoint != ep {
		t.Fatalf("mapped probe: %+v", r)
	}
}

func TestHTTPProbeSurvivesTheEndpointClosingIdleConnections(t *testing.T) {
	g := NewWithT(t)
	var opened, closed atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
	}))
	srv.Listener = listenOn(t, "127.0.0.1")
	srv.Config.IdleTimeout = 50 * time.Millisecond
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed:
			closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	ep := netip.MustParseAddrPort(srv.Listener.Addr().String())
	p, err := NewFactory(nil, clock.RealClock{}).New(httpSpec(t, func(s *Spec) { s.HTTP.Path = "/" }))
	g.Expect(err).NotTo(HaveOccurred())
	defer p.Close()

	g.Expect(p.Probe(context.Background(), ep).Outcome).To(Equal(breaker.Success))
	g.Eventually(closed.Load).Should(BeEquivalentTo(1), "the server closes the idle connection")
	// The kept connection is dead; the probe must retry on a new one, not report a failure.
	r := p.Probe(context.Background(), ep)
	g.Expect(r.Outcome).To(Equal(breaker.Success), "%+v", r)
	g.Expect(opened.Load()).To(BeEquivalentTo(2))

	// A response that asks to close is honoured: the next probe opens a new connection.
	closeSpec := httpSpec(t, func(s *Spec) { s.HTTP.Path = "/close" })
	pc, err := NewFactory(nil, clock.RealClock{}).New(closeSpec)
	g.Expect(err).NotTo(HaveOccurred())
	defer pc.Close()
	before := opened.Load()
	for range 3 {
		g.Expect(pc.Probe(context.Background(), ep).Outcome).To(Equal(breaker.Success))
	}
	g.Expect(opened.Load() - before).To(BeEquivalentTo(3))
}
