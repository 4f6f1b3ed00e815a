package rig

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2" //nolint:revive
	. "github.com/onsi/gomega"    //nolint:revive
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	corev1 "k8s.io/api/core/v1"
)

// Backend ports, also the Pod's named container ports "http", "grpc" and "stream".
const (
	// BackendHTTPPort serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
	BackendHTTPPort = 8080
	// BackendGRPCPort serves the gRPC health service (probes) and EchoService (clients).
	BackendGRPCPort = 9090
	// BackendStreamPort serves the line protocol of a long-lived stream, standing in for a
	// database connection: "ping <n>" answered by "pong <n> <backend>".
	BackendStreamPort = 7070
)

// BackendHeader is the response header in which a backend names itself. Its gRPC service
// sends it as the header metadata x-backend, and the stream server as the last word of its
// answers.
const BackendHeader = "X-Backend"

// BreakerHeader is the response header (gRPC: metadata) in which tripswitch's responder
// names the breaker it answers for.
const BreakerHeader = "X-Tripswitch-Breaker"

// EchoService is the backends' gRPC application service, written by hand (no generated
// code): one unary method, Call, that takes and returns a google.protobuf.StringValue.
const EchoService = "tripswitch.e2e.Echo"

// EchoCallMethod is the full method name of EchoService's Call, for grpc.ClientConn.Invoke.
const EchoCallMethod = "/" + EchoService + "/Call"

// ProbeUserAgent starts the User-Agent of tripswitch's HTTP probes; a backend counts requests
// with it as probes and every other request as client traffic. gRPC health checks always
// count as probes.
const ProbeUserAgent = "tripswitch-probe"

// Behavior is how a backend answers.
type Behavior string

// The behaviours of a backend.
const (
	// OK answers HTTP 200 (gRPC health: SERVING; EchoService: the reply; stream: pong).
	OK Behavior = "ok"
	// Unavailable answers HTTP 503 (gRPC health: NOT_SERVING; EchoService: status
	// UNAVAILABLE; stream: error).
	Unavailable Behavior = "unavailable"
	// Hang accepts connections and reads requests, and never answers.
	Hang Behavior = "hang"
	// Refuse closes the listeners (and every open connection): new connections are refused
	// by the backend's kernel with a TCP reset.
	Refuse Behavior = "refuse"
)

// Requests counts the requests a backend received.
type Requests struct {
	// Probes are HTTP requests whose User-Agent starts with ProbeUserAgent, and gRPC health
	// checks.
	Probes int64
	// Clients are all other requests: other HTTP requests, EchoService calls and stream
	// lines.
	Clients int64
}

// Backend is a Pod (Running, Ready, on NodeName) that serves HTTP (HTTP/1.1 and h2c) on
// BackendHTTPPort, the gRPC health service and EchoService on BackendGRPCPort and a line
// protocol on BackendStreamPort, so that Kubernetes' EndpointSlice controller publishes it for
// Services that select it, and answers as SetBehavior says.
type Backend struct {
	*Pod

	behavior  atomic.Value // Behavior
	probeOnly atomic.Value // Behavior; "" follows behavior
	probes    atomic.Int64
	clients   atomic.Int64

	mu      sync.Mutex // serialises serving changes
	serving *serving
}

// serving is one generation of the backend's servers, between two Refuse behaviours.
type serving struct {
	http   *http.Server
	grpc   *grpc.Server
	stream *streamServer
	stop   chan struct{} // closed when the servers stop, to release hanging requests
}

// NewBackend starts a backend named name in Kubernetes namespace namespace, with Pod labels
// labels and container ports "http", "grpc" and "stream", answering OK, and removes it (Pod,
// servers, network namespace) in the current Ginkgo node's cleanup. The Pod is Ready;
// SetReady changes that.
func (r *Rig) NewBackend(namespace, name string, labels map[string]string) *Backend {
	GinkgoHelper()
	return newBackend(r.NewPod(namespace, name, labels, backendPorts))
}

// backendPorts are a backend Pod's container ports.
var backendPorts = []corev1.ContainerPort{
	{Name: "http", ContainerPort: BackendHTTPPort, Protocol: corev1.ProtocolTCP},
	{Name: "grpc", ContainerPort: BackendGRPCPort, Protocol: corev1.ProtocolTCP},
	{Name: "stream", ContainerPort: BackendStreamPort, Protocol: corev1.ProtocolTCP},
}

// newBackend serves a backend from pod.
func newBackend(pod *Pod) *Backend {
	GinkgoHelper()
	b := &Backend{Pod: pod}
	b.behavior.Store(OK)
	b.probeOnly.Store(Behavior(""))
	Expect(b.serve()).To(Succeed())
	DeferCleanup(b.close)
	b.SetReady(true)
	return b
}

// Addr returns the backend's HTTP address, ip:BackendHTTPPort.
func (b *Backend) Addr() string {
	return net.JoinHostPort(b.IP(), fmt.Sprint(BackendHTTPPort))
}

// GRPCAddr returns the backend's gRPC address, ip:BackendGRPCPort.
func (b *Backend) GRPCAddr() string {
	return net.JoinHostPort(b.IP(), fmt.Sprint(BackendGRPCPort))
}

// StreamAddr returns the backend's stream address, ip:BackendStreamPort.
func (b *Backend) StreamAddr() string {
	return net.JoinHostPort(b.IP(), fmt.Sprint(BackendStreamPort))
}

// SetBehavior sets how the backend answers every request (probes too, unless
// SetProbeBehavior overrides it). Refuse closes the listeners; any other behaviour after
// Refuse listens again.
func (b *Backend) SetBehavior(behavior Behavior) {
	GinkgoHelper()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.behavior.Store(behavior)
	switch {
	case behavior == Refuse && b.serving != nil:
		b.serving.close()
		b.serving = nil
	case behavior != Refuse && b.serving == nil:
		Expect(b.serveLocked()).To(Succeed())
	}
}

// SetProbeBehavior makes probes see behavior while clients see SetBehavior's; "" makes probes
// follow SetBehavior again. Refuse is not possible for probes alone.
func (b *Backend) SetProbeBehavior(behavior Behavior) {
	GinkgoHelper()
	Expect(behavior).NotTo(Equal(Refuse), "a backend refuses connections for probes and clients alike")
	b.probeOnly.Store(behavior)
}

// Behavior returns the behaviour clients see.
func (b *Backend) Behavior() Behavior { return b.behavior.Load().(Behavior) }

// Requests returns how many requests the backend has received.
func (b *Backend) Requests() Requests {
	return Requests{Probes: b.probes.Load(), Clients: b.clients.Load()}
}

// ResetRequests sets the request counts to zero.
func (b *Backend) ResetRequests() {
	b.probes.Store(0)
	b.clients.Store(0)
}

func (b *Backend) behaviorFor(probe bool) Behavior {
	if p := b.probeOnly.Load().(Behavior); probe && p != "" {
		return p
	}
	return b.Behavior()
}

func (b *Backend) serve() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.serveLocked()
}

func (b *Backend) serveLocked() error {
	var listeners []net.Listener
	for _, port := range []int{BackendHTTPPort, BackendGRPCPort, BackendStreamPort} {
		ln, err := b.Net.Listen(port)
		if err != nil {
			for _, l := range listeners {
				_ = l.Close()
			}
			return err
		}
		listeners = append(listeners, ln)
	}
	s := &serving{stop: make(chan struct{})}
	// Pooled clients speak HTTP/2 with prior knowledge to the same port as HTTP/1.1 ones, as
	// they would to a Service whose pods serve h2c.
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	s.http = &http.Server{Handler: b.handler(s.stop), ReadHeaderTimeout: 10 * time.Second, Protocols: protocols}
	s.grpc = grpc.NewServer()
	healthpb.RegisterHealthServer(s.grpc, &health{b: b, stop: s.stop})
	s.grpc.RegisterService(&echoServiceDesc, &echo{b: b, stop: s.stop})
	s.stream = &streamServer{b: b, ln: listeners[2], conns: map[net.Conn]struct{}{}}
	go func() { _ = s.http.Serve(listeners[0]) }()
	go func() { _ = s.grpc.Serve(listeners[1]) }()
	go s.stream.serve()
	b.serving = s
	return nil
}

func (s *serving) close() {
	close(s.stop)
	_ = s.http.Close()
	s.grpc.Stop()
	s.stream.close()
}

func (b *Backend) handler(stop <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		probe := strings.HasPrefix(req.UserAgent(), ProbeUserAgent)
		if probe {
			b.probes.Add(1)
		} else {
			b.clients.Add(1)
		}
		w.Header().Set(BackendHeader, b.Name)
		switch b.behaviorFor(probe) {
		case OK:
			fmt.Fprintf(w, "%s: ok\n", b.Name)
		case Unavailable:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "%s: unavailable\n", b.Name)
		case Hang:
			select {
			case <-req.Context().Done():
			case <-stop:
			}
		default: // Refuse, while the listener closes: drop the connection.
			panic(http.ErrAbortHandler)
		}
	})
}

// health is the backend's grpc.health.v1.Health service.
type health struct {
	healthpb.UnimplementedHealthServer
	b    *Backend
	stop <-chan struct{}
}

func (h *health) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	h.b.probes.Add(1)
	switch h.b.behaviorFor(true) {
	case OK:
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
	case Unavailable:
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING}, nil
	case Hang:
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-h.stop:
			return nil, status.Error(codes.Unavailable, "backend stopped")
		}
	default:
		return nil, status.Error(codes.Unavailable, "backend refuses")
	}
}

// echoHandler is the interface EchoService's handler implements; grpc.Server.RegisterService
// checks the handler against it.
type echoHandler interface {
	call(ctx context.Context, req *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
}

// echoServiceDesc describes EchoService as generated code would, so that clients need no
// generated stubs either: they call EchoCallMethod with grpc.ClientConn.Invoke.
var echoServiceDesc = grpc.ServiceDesc{
	ServiceName: EchoService,
	HandlerType: (*echoHandler)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Call",
		Handler: func(srv any, ctx context.Context, decode func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			req := new(wrapperspb.StringValue)
			if err := decode(req); err != nil {
				return nil, err
			}
			h := srv.(echoHandler)
			if interceptor == nil {
				return h.call(ctx, req)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: EchoCallMethod}
			return interceptor(ctx, req, info, func(ctx context.Context, req any) (any, error) {
				return h.call(ctx, req.(*wrapperspb.StringValue))
			})
		},
	}},
	Metadata: "tripswitch/e2e/echo",
}

// echo is the backend's EchoService.
type echo struct {
	b    *Backend
	stop <-chan struct{}
}

func (e *echo) call(ctx context.Context, req *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	e.b.clients.Add(1)
	// Header metadata, not trailers, so that the client sees the backend's name with an
	// UNAVAILABLE status too (gRPC then sends the headers in a frame of their own).
	if err := grpc.SetHeader(ctx, metadata.Pairs(strings.ToLower(BackendHeader), e.b.Name)); err != nil {
		return nil, err
	}
	switch e.b.behaviorFor(false) {
	case OK:
		return wrapperspb.String(e.b.Name + ": " + req.GetValue()), nil
	case Unavailable:
		return nil, status.Error(codes.Unavailable, e.b.Name+": unavailable")
	case Hang:
		select {
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-e.stop:
			return nil, status.Error(codes.Unavailable, "backend stopped")
		}
	default: // Refuse, while the server stops.
		return nil, status.Error(codes.Unavailable, "backend refuses")
	}
}

// streamServer serves the line protocol on BackendStreamPort: every "ping <n>" line is
// answered "pong <n> <backend>" (OK) or "error <n> <backend>" (Unavailable), or not at all
// (Hang); anything else ends the connection.
type streamServer struct {
	b  *Backend
	ln net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // open connections, which close ends
	closed bool
}

func (s *streamServer) serve() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		if !s.track(conn) {
			_ = conn.Close()
			return
		}
		go s.answer(conn)
	}
}

// track adds conn to the open connections, unless the server is closed.
func (s *streamServer) track(conn net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[conn] = struct{}{}
	return true
}

func (s *streamServer) answer(conn net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		_ = conn.Close()
	}()
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		n, ok := strings.CutPrefix(strings.TrimSpace(line), "ping ")
		if !ok || n == "" || strings.ContainsAny(n, " \t") {
			return
		}
		s.b.clients.Add(1)
		var answer string
		switch s.b.behaviorFor(false) {
		case OK:
			answer = fmt.Sprintf("pong %s %s\n", n, s.b.Name)
		case Unavailable:
			answer = fmt.Sprintf("error %s %s\n", n, s.b.Name)
		case Hang:
			continue // Keep reading, as a stuck database still takes queries.
		default: // Refuse, while the server closes.
			return
		}
		if _, err := io.WriteString(conn, answer); err != nil {
			return
		}
	}
}

// close closes the listener and every open connection, as a stopping process would.
func (s *streamServer) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for conn := range s.conns {
		_ = conn.Close()
	}
}

func (b *Backend) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.serving != nil {
		b.serving.close()
		b.serving = nil
	}
	if err := b.Net.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Fprintln(GinkgoWriter, "e2e:", err)
	}
}
