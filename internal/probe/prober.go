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
	"sync/atomic"
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
	// Local is empty unless the probe failed for a cause of the manager's own, such as its
	// file descriptors running out or its cancelling the probe: then it names the reason
	// (one of LocalReasons), Outcome is Neutral and Message says what happened. Such errors
	// say nothing about the target, and counting them as its failures would trip healthy
	// breakers everywhere at once (DESIGN.md §2, "fail static").
	Local string
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
	// Probe checks ep once, within the Spec's timeout. Cancelling ctx stops the probe at
	// once; unless the probe's own timeout had passed first, its Result is then Neutral with
	// Local LocalCanceled, since stopping it was the manager's decision and no failure of the
	// target.
	Probe(ctx context.Context, ep Endpoint) Result
	// Forget releases what the prober keeps for an endpoint that is gone.
	Forget(ep Endpoint)
	// Close releases everything; the prober is not used afterwards.
	Close()
}

// maxBody bounds how much of a response body is read, so that the connection can be kept
// alive without a large or endless body costing memory or time.
const maxBody = 4 << 10

// maxResponseHeader bounds the status line and headers of a response together. net/http's
// ReadResponse reads them with no limit of its own, so an endpoint that answers 200 OK and
// then sends headers forever would grow the manager's memory until it is killed. Health
// endpoints answer with a few hundred bytes; past this, the response is a Failure.
const maxResponseHeader = 32 << 10

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

// Validate reports why a prober could not be built for spec.
func (s Spec) Validate() error {
	if s.Timeout <= 0 {
		return errors.New("probe timeout must be positive")
	}
	kinds := 0
	for _, set := range []bool{s.HTTP != nil, s.TCP, s.GRPC != nil} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return fmt.Errorf("a probe needs exactly one of HTTP, TCP and gRPC, got %d", kinds)
	}
	return nil
}

// New returns a prober for spec.
func (f *Factory) New(spec Spec) (Prober, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
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
	default: // Validate leaves gRPC as the only kind
		return &grpcProber{spec: spec, dial: f.dial, clock: f.clock, conns: connCache[*grpcConn]{shared: true}}, nil
	}
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

// failed turns a probe's error into a Result. parent is the context the caller gave Probe and
// ctx the probe's own, with its timeout. Once ctx is done its error replaces err, so that a
// passed deadline reads as a timeout and a cancelled parent as a cancellation, whatever the
// connection made of either. An error of the manager's own is Neutral with Result.Local set,
// any other a Failure with a message from describe.
func failed(parent, ctx context.Context, spec Spec, clk clock.PassiveClock, ep Endpoint, start time.Time, err error,
	describe func(error, time.Duration) string) Result {
	if ctxErr := ctx.Err(); ctxErr != nil {
		err = ctxErr
	}
	if reason, ok := localReason(parent, err); ok {
		return local(spec, clk, ep, start, reason, err)
	}
	return finish(spec, clk, ep, start, breaker.Failure, describe(err, spec.Timeout))
}

// local is the Neutral Result of a probe that ended for a reason of the manager's own.
func local(spec Spec, clk clock.PassiveClock, ep Endpoint, start time.Time, reason string, err error) Result {
	r := finish(spec, clk, ep, start, breaker.Neutral, localMessage(reason, err))
	r.Local = reason
	return r
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
	case errors.Is(err, errResponseHeaderTooLarge):
		return errResponseHeaderTooLarge.Error()
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

func (p *tcpProber) Probe(parent context.Context, ep Endpoint) Result {
	start := p.clock.Now()
	ctx, cancel := context.WithTimeout(parent, p.spec.Timeout)
	defer cancel()
	conn, err := p.dial(ctx, "tcp", ep.String())
	if err != nil {
		// The dial error carries the errno (EMFILE, EADDRNOTAVAIL, ...) when it is the
		// manager's own; failed classifies it.
		return failed(parent, ctx, p.spec, p.clock, ep, start, err, describe)
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

	conns connCache[*grpcConn]
}

// grpcConn is an endpoint's client connection together with the error of its last dial.
// gRPC dials on its own goroutines and reports a failed dial to the RPC as a status error
// (UNAVAILABLE) that keeps the text of the dial error but not the error itself, so its errno
// is lost there. The dialer keeps it here instead, so that a probe can tell the manager's own
// shortage (EMFILE, EADDRNOTAVAIL, ...) from a target that refuses. It costs one pointer per
// endpoint, and an allocation only when a dial fails.
type grpcConn struct {
	*grpc.ClientConn
	dial    DialFunc
	dialErr atomic.Pointer[error] // nil after a dial that succeeded
}

// dialContext is the connection's grpc.WithContextDialer.
func (c *grpcConn) dialContext(ctx context.Context, addr string) (net.Conn, error) {
	conn, err := c.dial(ctx, "tcp", addr)
	if err != nil {
		c.dialErr.Store(&err)
	} else {
		c.dialErr.Store(nil)
	}
	return conn, err
}

// lastDialErr is the error of the last dial, or nil when it succeeded or none was made yet.
func (c *grpcConn) lastDialErr() error {
	if err := c.dialErr.Load(); err != nil {
		return *err
	}
	return nil
}

// conn returns the endpoint's shared connection; the probe releases it when done.
func (p *grpcProber) conn(ep Endpoint) (lease[*grpcConn], error) {
	return p.conns.acquire(ep, func() (*grpcConn, error) {
		c := &grpcConn{dial: p.dial}
		var err error
		// passthrough: the endpoint is an address already, with nothing to resolve.
		c.ClientConn, err = grpc.NewClient("passthrough:///"+ep.String(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(c.dialContext),
		)
		if err != nil {
			return nil, err
		}
		return c, nil
	})
}

func (p *grpcProber) Probe(parent context.Context, ep Endpoint) Result {
	start := p.clock.Now()
	ctx, cancel := context.WithTimeout(parent, p.spec.Timeout)
	defer cancel()
	l, err := p.conn(ep)
	if err != nil {
		return finish(p.spec, p.clock, ep, start, breaker.Failure, "gRPC client: "+err.Error())
	}
	defer p.conns.release(ep, l)
	c := l.conn
	resp, err := healthpb.NewHealthClient(c.ClientConn).Check(ctx, &healthpb.HealthCheckRequest{Service: p.spec.GRPC.Service})
	if err != nil {
		// UNAVAILABLE from a failed dial: the dial error says whose the failure is. It is
		// classified only when the probe's context is still live; otherwise failed judges
		// the context's error (a timeout, or the manager's cancellation) as for the others.
		if status.Code(err) == codes.Unavailable && ctx.Err() == nil {
			dialErr := c.lastDialErr()
			if reason, ok := localReason(parent, dialErr); ok {
				return local(p.spec, p.clock, ep, start, reason, dialErr)
			}
		}
		return failed(parent, ctx, p.spec, p.clock, ep, start, err, describeGRPC)
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
