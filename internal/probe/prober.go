// Package probe checks a CircuitBreaker's target endpoints over HTTP, TCP or gRPC and turns
// each check into a breaker outcome. The Scheduler runs every breaker's probes on one manager,
// spread over their intervals under a global concurrency bound.
package probe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

// Endpoint is one address and port of the target.
type Endpoint = netip.AddrPort

// Result is one probe's outcome, as status.lastProbe reports it.
type Result struct {
	Endpoint Endpoint
	Outcome  breaker.Outcome
	Latency  time.Duration
	// Message is short and human, such as "HTTP 503" or "connection refused".
	Message string
	// Time is when the probe finished.
	Time time.Time
}

// Spec says how to probe. Exactly one of HTTP, TCP and GRPC is set.
type Spec struct {
	Timeout time.Duration
	// SlowThreshold, when positive, makes a success slower than it Slow.
	SlowThreshold time.Duration
	HTTP          *HTTPSpec
	TCP           bool
	GRPC          *GRPCSpec
}

// HTTPSpec is an HTTP GET.
type HTTPSpec struct {
	Path  string
	HTTPS bool
	// Host, when set, is the Host header and the TLS server name.
	Host               string
	Headers            http.Header
	Success, Neutral   CodeSet
	InsecureSkipVerify bool
}

// GRPCSpec is a grpc.health.v1.Health/Check call.
type GRPCSpec struct {
	Service string
}

// Prober probes endpoints according to one Spec. Probe is safe for concurrent use.
type Prober interface {
	Probe(ctx context.Context, ep Endpoint) Result
	// Forget releases what the prober keeps for an endpoint that is gone.
	Forget(ep Endpoint)
	// Close releases everything; the prober is not used afterwards.
	Close()
}

// maxBody bounds how much of a response body is read, so that the connection can be kept
// alive without a large or endless body costing memory or time.
const maxBody = 4 << 10

// Factory builds probers that share a dialer and a clock.
type Factory struct {
	dial  DialFunc
	clock clock.PassiveClock
}

// NewFactory returns a factory that dials through dial, or a net.Dialer when dial is nil.
func NewFactory(dial DialFunc, clk clock.PassiveClock) *Factory {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	return &Factory{dial: dial, clock: clk}
}

// New returns a prober for spec.
func (f *Factory) New(spec Spec) (Prober, error) {
	if spec.Timeout <= 0 {
		return nil, errors.New("probe timeout must be positive")
	}
	switch {
	case spec.HTTP != nil:
		p := &httpProber{spec: spec, http: spec.HTTP, clock: f.clock, dial: f.dial}
		if spec.HTTP.HTTPS {
			p.tlsConfig = &tls.Config{
				ServerName:         spec.HTTP.Host,
				InsecureSkipVerify: spec.HTTP.InsecureSkipVerify, //nolint:gosec // only when the user asks for it
				MinVersion:         tls.VersionTLS12,
			}
		}
		return p, nil
	case spec.TCP:
		return &tcpProber{spec: spec, dial: f.dial, clock: f.clock}, nil
	case spec.GRPC != nil:
		return &grpcProber{spec: spec, dial: f.dial, clock: f.clock}, nil
	}
	return nil, errors.New("probe spec names no probe kind")
}

// finish turns a probe's error, or its success, into a Result.
func finish(spec Spec, clk clock.PassiveClock, ep Endpoint, start time.Time, outcome breaker.Outcome, msg string) Result {
	now := clk.Now()
	latency := now.Sub(start)
	if outcome == breaker.Success && spec.SlowThreshold > 0 && latency > spec.SlowThreshold {
		outcome = breaker.Slow
		msg = fmt.Sprintf("%s, slower than %s", msg, spec.SlowThreshold)
	}
	return Result{Endpoint: ep, Outcome: outcome, Latency: latency, Message: msg, Time: now}
}

func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// describe turns a dial or request error into a short message for status.lastProbe.
func describe(err error, timeout time.Duration) string {
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout after " + timeout.String()
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case isConnReset(err):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to host"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by the endpoint"
	}
	var tlsErr *tls.CertificateVerificationError
	if errors.As(err, &tlsErr) {
		return "TLS certificate not trusted: " + tlsErr.Err.Error()
	}
	// Strip the wrapping that names the URL or the address: the endpoint is reported apart.
	for {
		next := errors.Unwrap(err)
		if next == nil {
			break
		}
		err = next
	}
	msg := err.Error()
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return msg
}

type tcpProber struct {
	spec  Spec
	dial  DialFunc
	clock clock.PassiveClock
}

func (p *tcpProber) Probe(ctx context.Context, ep Endpoint) Result {
	start := p.clock.Now()
	ctx, cancel := context.WithTimeout(ctx, p.spec.Timeout)
	defer cancel()
	conn, err := p.dial(ctx, "tcp", ep.String())
	if err != nil {
		return finish(p.spec, p.clock, ep, start, breaker.Failure, describe(err, p.spec.Timeout))
	}
	_ = conn.Close()
	return finish(p.spec, p.clock, ep, start, breaker.Success, "connected")
}

func (p *tcpProber) Forget(Endpoint) {}
func (p *tcpProber) Close()          {}

// grpcProber keeps one client connection per endpoint, so that a check is one HTTP/2 stream
// on an open connection rather than a new connection and handshake.
type grpcProber struct {
	spec  Spec
	dial  DialFunc
	clock clock.PassiveClock

	conns connCache[*grpc.ClientConn]
}

func (p *grpcProber) conn(ep Endpoint) (*grpc.ClientConn, error) {
	return p.conns.get(ep, func() (*grpc.ClientConn, error) {
		// passthrough: the endpoint is an address already, with nothing to resolve.
		return grpc.NewClient("passthrough:///"+ep.String(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return p.dial(ctx, "tcp", addr)
			}),
		)
	})
}

func (p *grpcProber) Probe(ctx context.Context, ep Endpoint) Result {
	start := p.clock.Now()
	ctx, cancel := context.WithTimeout(ctx, p.spec.Timeout)
	defer cancel()
	c, err := p.conn(ep)
	if err != nil {
		return finish(p.spec, p.clock, ep, start, breaker.Failure, "gRPC client: "+err.Error())
	}
	resp, err := healthpb.NewHealthClient(c).Check(ctx, &healthpb.HealthCheckRequest{Service: p.spec.GRPC.Service})
	if err != nil {
		return finish(p.spec, p.clock, ep, start, breaker.Failure, describeGRPC(err, p.spec.Timeout))
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return finish(p.spec, p.clock, ep, start, breaker.Failure, "gRPC health "+s.String())
	}
	return finish(p.spec, p.clock, ep, start, breaker.Success, "gRPC health SERVING")
}

func describeGRPC(err error, timeout time.Duration) string {
	s, ok := status.FromError(err)
	if !ok {
		return describe(err, timeout)
	}
	switch s.Code() {
	case codes.DeadlineExceeded:
		return "timeout after " + timeout.String()
	case codes.Unimplemented:
		return "gRPC health service not implemented"
	case codes.NotFound:
		return "gRPC health: service unknown"
	}
	msg := s.Message()
	if len(msg) > 160 {
		msg = msg[:160]
	}
	return "gRPC " + s.Code().String() + ": " + msg
}

func (p *grpcProber) Forget(ep Endpoint) { p.conns.forget(ep) }

func (p *grpcProber) Close() { p.conns.close() }
