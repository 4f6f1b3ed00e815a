// Package probe checks a CircuitBreaker's target endpoints over HTTP, TCP or gRPC and turns
// each check into a breaker outcome: one probe, one Result. internal/runner decides when to
// probe and what the outcomes do.
package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
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
	// Host, when set, is the Host header and, unless TLS.ServerName is set, the TLS server
	// name; then it may not have a port.
	Host               string
	Headers            http.Header
	Success, Neutral   CodeSet
	InsecureSkipVerify bool
	// TLS applies when HTTPS is set.
	TLS TLSSpec
	// FreshConnections makes every probe open a connection (and a TLS handshake) of its own,
	// as a caller without a pooled connection does. For external targets: a provider whose
	// TLS terminator fails new handshakes, or whose certificate expired, fails every new
	// caller, which a kept-alive probe connection would never see.
	FreshConnections bool
}

// GRPCSpec is a grpc.health.v1.Health/Check call.
type GRPCSpec struct {
	Service string
	// UseTLS makes the call over TLS, checked as TLS says.
	UseTLS bool
	TLS    TLSSpec
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
	switch {
	case s.HTTP != nil:
		return s.HTTP.validate()
	case s.GRPC != nil && s.GRPC.UseTLS:
		_, err := s.GRPC.TLS.clientConfig("", false)
		return err
	}
	return nil
}

// validate refuses what would fail every probe before it is sent, and so trip a healthy
// target: a request that cannot be built or written, a Host that cannot be a TLS server name
// and a CA bundle that does not parse. The CRD refuses most of these at admission.
func (h *HTTPSpec) validate() error {
	p := &httpProber{http: h}
	if h.HTTPS {
		if h.TLS.ServerName == "" && strings.Contains(h.Host, ":") {
			return fmt.Errorf("host %q has a port, so it cannot be the TLS server name: set tls.serverName", h.Host)
		}
		cfg, err := h.TLS.clientConfig(h.Host, h.InsecureSkipVerify)
		if err != nil {
			return err
		}
		p.tlsConfig = cfg
	}
	req, err := p.request(context.Background(), netip.MustParseAddrPort("192.0.2.1:8080"))
	if err != nil {
		return fmt.Errorf("path %q: %w", h.Path, err)
	}
	for name, values := range req.Header {
		for _, v := range values {
			if !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("header %q: not a valid name and value", name)
			}
		}
	}
	if h.Host != "" && !httpguts.ValidHostHeader(h.Host) {
		return fmt.Errorf("host %q is not a valid Host header", h.Host)
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
			// Validate parsed the same configuration.
			p.tlsConfig, _ = spec.HTTP.TLS.clientConfig(spec.HTTP.Host, spec.HTTP.InsecureSkipVerify)
		}
		return p, nil
	case spec.TCP:
		return &tcpProber{spec: spec, dial: f.dial, clock: f.clock}, nil
	default: // Validate leaves gRPC as the only kind
		p := &grpcProber{spec: spec, dial: f.dial, clock: f.clock, conns: connCache[*grpcConn]{shared: true},
			creds: insecure.NewCredentials()}
		if spec.GRPC.UseTLS {
			cfg, _ := spec.GRPC.TLS.clientConfig("", false) // Validate parsed it
			p.creds = credentials.NewTLS(cfg)
		}
		return p, nil
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
		return "TLS certificate not trusted: " + certificateProblem(tlsErr.Err)
	}
	// Strip the wrapping that names the URL or the address: the endpoint is reported apart.
	for {
		next := errors.Unwrap(err)
		if next == nil {
			break
		}
		err = next
	}
	return excerpt(err.Error())
}

// certificateProblem says why a certificate failed verification in words of tripswitch's
// own. The x509 errors quote the certificate (the names it is valid for, the subject of the
// authority it names), and whoever may write the target's EndpointSlices chooses what
// answers: that text must not reach status.lastProbe, where anyone who reads the breaker sees
// it.
func certificateProblem(err error) string {
	var hostErr x509.HostnameError
	var authErr x509.UnknownAuthorityError
	var invalidErr x509.CertificateInvalidError
	switch {
	case errors.As(err, &hostErr):
		// Host is the server name the probe asked for: the spec's, or the endpoint's address.
		return "not valid for " + excerpt(hostErr.Host)
	case errors.As(err, &authErr):
		return "signed by an unknown authority"
	case errors.As(err, &invalidErr) && invalidErr.Reason == x509.Expired:
		return "expired or not yet valid"
	case errors.As(err, &invalidErr):
		return "not valid for this use"
	}
	return "verification failed"
}

// maxExcerpt bounds the text of another party's making, such as a gRPC status message or a
// malformed response, that a message quotes.
const maxExcerpt = 96

// excerpt bounds s to maxExcerpt bytes of printable ASCII, replacing anything else with '?',
// so that what an endpoint sends cannot fill status, break a log line or smuggle control
// characters into a terminal.
func excerpt(s string) string {
	cut := len(s) > maxExcerpt
	if cut {
		s = s[:maxExcerpt]
	}
	b := []byte(s)
	for i, c := range b {
		if c < ' ' || c > '~' {
			b[i] = '?'
		}
	}
	if cut {
		return string(b) + "..."
	}
	return string(b)
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
	creds credentials.TransportCredentials // insecure, or TLS as spec.GRPC.TLS says

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
	// handshakeErr is the error of the last TLS handshake, kept for the same reason: see
	// recordingCreds.
	handshakeErr atomic.Pointer[error]
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
		opts := []grpc.DialOption{
			grpc.WithTransportCredentials(recordingCreds{TransportCredentials: p.creds, last: &c.handshakeErr}),
			grpc.WithContextDialer(c.dialContext),
		}
		if name := p.spec.GRPC.TLS.ServerName; p.spec.GRPC.UseTLS && name != "" {
			// gRPC takes the TLS server name from the authority, which is also the
			// :authority the server sees, as a client of that name would send it.
			opts = append(opts, grpc.WithAuthority(name))
		}
		var err error
		// passthrough: the endpoint is an address already, with nothing to resolve.
		c.ClientConn, err = grpc.NewClient("passthrough:///"+ep.String(), opts...)
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
			// gRPC's own text for these is long and quotes the certificate; say it as the
			// other probes do.
			if dialErr != nil {
				return finish(p.spec, p.clock, ep, start, breaker.Failure, describe(dialErr, p.spec.Timeout))
			}
			if hs := c.handshakeErr.Load(); hs != nil {
				return finish(p.spec, p.clock, ep, start, breaker.Failure, describe(*hs, p.spec.Timeout))
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
	// The status message is the server's (or, for UNAVAILABLE, the dial's) text.
	return "gRPC " + s.Code().String() + ": " + excerpt(s.Message())
}

func (p *grpcProber) Forget(ep Endpoint) { p.conns.forget(ep) }

func (p *grpcProber) Close() { p.conns.close() }
