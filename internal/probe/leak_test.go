package probe

import (
	"context"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

// An endpoint removed while its probe runs must not leave that probe's connection behind:
// nothing would ever probe, reuse or close it until the whole prober goes.
func TestHTTPForgetDuringAProbeClosesItsConnection(t *testing.T) {
	g := NewWithT(t)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var closed atomic.Int32
	ep := serveCounting(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		entered <- struct{}{}
		<-release
	}), http.StateClosed, &closed)
	p, err := NewFactory(nil, clock.RealClock{}).New(httpSpec(t, func(s *Spec) { s.Timeout = 5 * time.Second }))
	g.Expect(err).NotTo(HaveOccurred())
	defer p.Close()

	done := make(chan Result)
	go func() { done <- p.Probe(context.Background(), ep) }()
	<-entered
	p.Forget(ep) // the endpoint leaves the target while its probe is in flight
	close(release)
	g.Expect((<-done).Outcome).To(Equal(breaker.Success))
	g.Eventually(closed.Load, 2*time.Second).Should(BeEquivalentTo(1),
		"the probe's connection must be closed once it ends, since its endpoint is gone")
}

// blockingHealth answers Check only when released, so that a test can act during a probe.
type blockingHealth struct {
	healthpb.UnimplementedHealthServer
	entered chan struct{}
	release chan struct{}
}

func (h *blockingHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	h.entered <- struct{}{}
	select {
	case <-h.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// Forgetting an endpoint is the manager's bookkeeping, not the target's failure: a probe in
// flight must end with what the endpoint answered, not with a Failure for the connection the
// manager closed under it.
func TestGRPCForgetDuringAProbeRecordsNoFailure(t *testing.T) {
	g := NewWithT(t)
	l := listenOn(t, "127.0.0.1")
	hs := &blockingHealth{entered: make(chan struct{}, 1), release: make(chan struct{})}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	ep := netip.MustParseAddrPort(l.Addr().String())

	p, err := NewFactory(nil, clock.RealClock{}).New(Spec{Timeout: 5 * time.Second, GRPC: &GRPCSpec{}})
	g.Expect(err).NotTo(HaveOccurred())
	defer p.Close()

	done := make(chan Result)
	go func() { done <- p.Probe(context.Background(), ep) }()
	<-hs.entered
	p.Forget(ep)
	close(hs.release)
	r := <-done
	g.Expect(r.Outcome).NotTo(Equal(breaker.Failure), "%+v", r)
	g.Expect(r.Outcome).To(Equal(breaker.Success), "%+v", r)
}
