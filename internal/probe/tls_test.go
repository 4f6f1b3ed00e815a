package probe

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/testcerts"
)

// serveTLS starts an HTTPS server with cert on loopback; it answers 200 and remembers the
// Host header it was sent.
func serveTLS(t *testing.T, cert tls.Certificate, host *string) Endpoint {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		if host != nil {
			*host = r.Host
		}
	}))
	srv.Listener = listenOn(t, "127.0.0.1")
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String())
}

func TestHTTPSProbeWithACABundleAndServerName(t *testing.T) {
	ca, otherCA := testcerts.NewCA("Tenant B Private CA"), testcerts.NewCA("Someone Else's CA")
	var host string
	good := serveTLS(t, ca.Issue(time.Now().Add(time.Hour), "payments.tenant-b.svc"), &host)
	expired := serveTLS(t, ca.Issue(time.Now().Add(-time.Hour), "payments.tenant-b.svc"), nil)
	f := NewFactory(nil, clock.RealClock{})
	https := func(edit func(*HTTPSpec)) Spec {
		return httpSpec(t, func(s *Spec) {
			s.HTTP.HTTPS, s.HTTP.TLS.CABundle = true, ca.PEM
			edit(s.HTTP)
		})
	}
	for _, tt := range []struct {
		name     string
		spec     Spec
		ep       Endpoint
		outcome  breaker.Outcome
		message  string
		wantHost string
	}{
		{"serverName is checked against the bundle's CA", https(func(h *HTTPSpec) { h.TLS.ServerName = "payments.tenant-b.svc" }),
			good, breaker.Success, "HTTP 200", ""},
		{"host is the server name when serverName is unset", https(func(h *HTTPSpec) { h.Host = "payments.tenant-b.svc" }),
			good, breaker.Success, "HTTP 200", "payments.tenant-b.svc"},
		{"a host with a port, and serverName", https(func(h *HTTPSpec) {
			h.Host, h.TLS.ServerName = "payments.example.com:8443", "payments.tenant-b.svc"
		}), good, breaker.Success, "HTTP 200", "payments.example.com:8443"},
		// The messages name what the probe asked for, never what the certificate holds.
		{"without a name the endpoint's address is checked", https(func(*HTTPSpec) {}),
			good, breaker.Failure, "TLS certificate not trusted: not valid for 127.0.0.1", ""},
		{"a wrong serverName", https(func(h *HTTPSpec) { h.TLS.ServerName = "billing.svc" }),
			good, breaker.Failure, "TLS certificate not trusted: not valid for billing.svc", ""},
		{"another CA", https(func(h *HTTPSpec) { h.TLS.CABundle, h.TLS.ServerName = otherCA.PEM, "payments.tenant-b.svc" }),
			good, breaker.Failure, "TLS certificate not trusted: signed by an unknown authority", ""},
		{"the system's roots without a bundle", https(func(h *HTTPSpec) { h.TLS.CABundle, h.TLS.ServerName = "", "payments.tenant-b.svc" }),
			good, breaker.Failure, "TLS certificate not trusted: signed by an unknown authority", ""},
		{"an expired certificate", https(func(h *HTTPSpec) { h.TLS.ServerName = "payments.tenant-b.svc" }),
			expired, breaker.Failure, "TLS certificate not trusted: expired or not yet valid", ""},
		{"a bundle of two CAs", https(func(h *HTTPSpec) { h.TLS.CABundle, h.TLS.ServerName = otherCA.PEM+ca.PEM, "payments.tenant-b.svc" }),
			good, breaker.Success, "HTTP 200", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			host = ""
			r := probeOnce(t, f, tt.spec, tt.ep)
			if r.Outcome != tt.outcome || r.Message != tt.message {
				t.Fatalf("got %s %q, want %s %q", r.Outcome, r.Message, tt.outcome, tt.message)
			}
			if tt.wantHost != "" && host != tt.wantHost {
				t.Fatalf("the server saw Host %q, want %q", host, tt.wantHost)
			}
		})
	}
}

func TestGRPCProbeOverTLS(t *testing.T) {
	ca, otherCA := testcerts.NewCA("Tenant B Private CA"), testcerts.NewCA("Someone Else's CA")
	cert := ca.Issue(time.Now().Add(time.Hour), "payments.tenant-b.svc")
	l := listenOn(t, "127.0.0.1")
	srv := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	ep := netip.MustParseAddrPort(l.Addr().String())
	f := NewFactory(nil, clock.RealClock{})

	for _, tt := range []struct {
		name    string
		grpc    GRPCSpec
		outcome breaker.Outcome
		message string
	}{
		{"CA bundle and server name", GRPCSpec{UseTLS: true, TLS: TLSSpec{CABundle: ca.PEM, ServerName: "payments.tenant-b.svc"}},
			breaker.Success, "gRPC health SERVING"},
		{"a wrong server name", GRPCSpec{UseTLS: true, TLS: TLSSpec{CABundle: ca.PEM, ServerName: "billing.svc"}},
			breaker.Failure, "TLS certificate not trusted: not valid for billing.svc"},
		{"the endpoint's address", GRPCSpec{UseTLS: true, TLS: TLSSpec{CABundle: ca.PEM}},
			breaker.Failure, "TLS certificate not trusted: not valid for 127.0.0.1"},
		{"another CA", GRPCSpec{UseTLS: true, TLS: TLSSpec{CABundle: otherCA.PEM, ServerName: "payments.tenant-b.svc"}},
			breaker.Failure, "TLS certificate not trusted: signed by an unknown authority"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			spec := tt.grpc
			r := probeOnce(t, f, Spec{Timeout: 2 * time.Second, GRPC: &spec}, ep)
			if r.Outcome != tt.outcome || r.Message != tt.message {
				t.Fatalf("got %s %q, want %s %q", r.Outcome, r.Message, tt.outcome, tt.message)
			}
		})
	}
	// Plain gRPC against a TLS server fails without quoting what the server sent.
	r := probeOnce(t, f, Spec{Timeout: time.Second, GRPC: &GRPCSpec{}}, ep)
	if r.Outcome != breaker.Failure || len(r.Message) > len("gRPC Unavailable: ")+maxExcerpt+3 {
		t.Fatalf("plain gRPC against TLS: %+v", r)
	}
}

// Whatever the endpoint sends, a message quotes at most a short excerpt of it, in printable
// ASCII: certificate names and status text from another tenant's pod must not land in status.
func TestMessagesQuoteTheEndpointOnlyInAShortExcerpt(t *testing.T) {
	g := NewWithT(t)
	long := "secret-name.tenant-c.svc " + strings.Repeat("\x1b[31mred\r\n", 40)
	l := listenOn(t, "127.0.0.1")
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, failingHealth{message: long})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	r := probeOnce(t, NewFactory(nil, clock.RealClock{}), Spec{Timeout: time.Second, GRPC: &GRPCSpec{}},
		netip.MustParseAddrPort(l.Addr().String()))
	g.Expect(r.Outcome).To(Equal(breaker.Failure))
	g.Expect(r.Message).To(HavePrefix("gRPC Internal: secret-name.tenant-c.svc ?[31mred??"))
	g.Expect(len(r.Message)).To(BeNumerically("<=", len("gRPC Internal: ")+maxExcerpt+3))
	g.Expect(r.Message).NotTo(ContainSubstring("\x1b"))

	// A malformed status line is quoted the same way.
	ep := rawServer(t, func(c net.Conn) {
		_, _ = c.Write([]byte("HTTP/1.1 2\x1b[0m0 " + strings.Repeat("x", 500) + "\r\n\r\n"))
	})
	r = probeOnce(t, NewFactory(nil, clock.RealClock{}), httpSpec(t), ep)
	g.Expect(r.Outcome).To(Equal(breaker.Failure))
	g.Expect(len(r.Message)).To(BeNumerically("<=", maxExcerpt+3))
	g.Expect(r.Message).NotTo(ContainSubstring("\x1b"))
}

type failingHealth struct {
	healthpb.UnimplementedHealthServer
	message string
}

func (h failingHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return nil, grpcStatusError(h.message)
}

func TestSpecValidateRefusesWhatEveryProbeWouldFailOn(t *testing.T) {
	ca := testcerts.NewCA("CA")
	notParsing := testcerts.NotParsing
	key := "-----BEGIN EC PRIVATE KEY-----\nTUlJQm9vb29vb29vb29vb28=\n-----END EC PRIVATE KEY-----\n"
	https := func(edit func(*HTTPSpec)) Spec {
		return httpSpec(t, func(s *Spec) { s.HTTP.HTTPS = true; edit(s.HTTP) })
	}
	for _, tt := range []struct {
		name string
		spec Spec
		want string // empty: valid
	}{
		{"a CA bundle", https(func(h *HTTPSpec) { h.TLS.CABundle = ca.PEM }), ""},
		{"a CA bundle that does not parse", https(func(h *HTTPSpec) { h.TLS.CABundle = notParsing }), "caBundle: PEM block 1: x509:"},
		{"a private key in the CA bundle", https(func(h *HTTPSpec) { h.TLS.CABundle = ca.PEM + key }),
			"caBundle: PEM block 2 is a EC PRIVATE KEY, not a CERTIFICATE"},
		{"a CA bundle without PEM", https(func(h *HTTPSpec) { h.TLS.CABundle = "hello" }), "caBundle: no PEM certificate found"},
		{"a gRPC CA bundle that does not parse", Spec{Timeout: time.Second, GRPC: &GRPCSpec{UseTLS: true, TLS: TLSSpec{CABundle: notParsing}}},
			"caBundle: PEM block 1"},
		{"an HTTPS host with a port", https(func(h *HTTPSpec) { h.Host = "payments:8443" }),
			`host "payments:8443" has a port, so it cannot be the TLS server name: set tls.serverName`},
		{"an HTTPS host with a port and a serverName", https(func(h *HTTPSpec) { h.Host, h.TLS.ServerName = "payments:8443", "payments" }), ""},
		{"an HTTP host with a port", httpSpec(t, func(s *Spec) { s.HTTP.Host = "payments:8080" }), ""},
		{"a broken percent escape", httpSpec(t, func(s *Spec) { s.HTTP.Path = "/%zz" }), `path "/%zz": parse`},
		{"a control character in the path", httpSpec(t, func(s *Spec) { s.HTTP.Path = "/a\x01" }), `path "/a\x01": parse`},
		{"a valid escape", httpSpec(t, func(s *Spec) { s.HTTP.Path = "/caf%C3%A9?q=%20" }), ""},
		{"a header value with a line break", httpSpec(t, func(s *Spec) { s.HTTP.Headers = http.Header{"X-A": {"a\r\nb"}} }),
			`header "X-A": not a valid name and value`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func grpcStatusError(message string) error { return status.Error(codes.Internal, message) }
