package rig

import (
	"context"
	"errors"
	"fmt"
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
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
)

// Backend ports, also the Pod's named container ports "http" and "grpc".
const (
	BackendHTTPPort = 8080
	BackendGRPCPort = 9090
)

// BackendHeader is the response header in which a backend names itself.
const BackendHeader = "X-Backend"

// ProbeUserAgent starts the User-Agent of tripswitch's HTTP probes; a backend counts requests
// with it as probes and every other request as client traffic. gRPC health checks always
// count as probes.
const ProbeUserAgent = "tripswitch-probe"

// Behavior is how a backend answers.
type Behavior string

// The behaviours of a backend.
const (
	// OK answers HTTP 200 (gRPC health: SERVING).
	OK Behavior = "ok"
	// Unavailable answers HTTP 503 (gRPC health: NOT_SERVING).
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
	// Clients are all other requests.
	Clients int64
}

// Backend is a Pod (Running, Ready, on NodeName) that serves HTTP on BackendHTTPPort and a
// gRPC health service on BackendGRPCPort, so that Kubernetes' EndpointSlice controller
// publishes it for Services that select it, and answers as SetBehavior says.
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
	http *http.Server
	grpc *grpc.Server
	stop chan struct{} // closed when the servers stop, to release hanging requests
}

// NewBackend starts a backend named name in Kubernetes namespace namespace, with Pod labels
// labels and container ports "http" and "grpc", answering OK, and removes it (Pod, servers,
// network namespace) in the current Ginkgo node's cleanup. The Pod is Ready; SetReady
// changes that.
func (r *Rig) NewBackend(namespace, name string, labels map[string]string) *Backend {
	GinkgoHelper()
	b := &Backend{Pod: r.NewPod(namespace, name, labels, []corev1.ContainerPort{
		{Name: "http", ContainerPort: BackendHTTPPort, Protocol: corev1.ProtocolTCP},
		{Name: "grpc", ContainerPort: BackendGRPCPort, Protocol: corev1.ProtocolTCP},
	})}
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
	httpLn, err := b.Net.Listen(BackendHTTPPort)
	if err != nil {
		return err
	}
	grpcLn, err := b.Net.Listen(BackendGRPCPort)
	if err != nil {
		_ = httpLn.Close()
		return err
	}
	s := &serving{stop: make(chan struct{})}
	s.http = &http.Server{Handler: b.handler(s.stop), ReadHeaderTimeout: 10 * time.Second}
	s.grpc = grpc.NewServer()
	healthpb.RegisterHealthServer(s.grpc, &health{b: b, stop: s.stop})
	go func() { _ = s.http.Serve(httpLn) }()
	go func() { _ = s.grpc.Serve(grpcLn) }()
	b.serving = s
	return nil
}

func (s *serving) close() {
	close(s.stop)
	_ = s.http.Close()
	s.grpc.Stop()
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
