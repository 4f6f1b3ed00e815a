package runner

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tripswitch/tripswitch/internal/probe"
)

func listenOn(t *testing.T, ip string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", ip, err)
	}
	return l
}

// serve starts an HTTP server for h on a loopback IP and returns its endpoint.
func serve(t *testing.T, ip string, h http.Handler) (probe.Endpoint, *httptest.Server) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = listenOn(t, ip)
	srv.Start()
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String()), srv
}

func httpSpec(t *testing.T, edit ...func(*probe.Spec)) probe.Spec {
	t.Helper()
	success, err := probe.ParseCodes("200-399")
	if err != nil {
		t.Fatal(err)
	}
	s := probe.Spec{Timeout: time.Second, HTTP: &probe.HTTPSpec{Path: "/healthz", Success: success}}
	for _, e := range edit {
		e(&s)
	}
	return s
}

// starts is a ProbeObserver that keeps how late each probe started.
type starts struct {
	mu   sync.Mutex
	late []time.Duration
}

func (o *starts) ObserveStart(d time.Duration) {
	o.mu.Lock()
	o.late = append(o.late, d)
	o.mu.Unlock()
}

func (o *starts) ObserveProbe(int, time.Duration) {}

func (o *starts) max() time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	var m time.Duration
	for _, d := range o.late {
		m = max(m, d)
	}
	return m
}
