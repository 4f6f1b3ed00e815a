package e2e_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tripswitch/tripswitch/test/e2e/rig"
)

// These specs check the rig's own parts that the smoke specs do not: what clients see of each
// backend behaviour, the probe/client split, the gRPC health server, and child processes.
var _ = Describe("The rig's parts", func() {
	It("gives pods the backend behaviours they ask for, and counts probes apart from clients", func(ctx SpecContext) {
		ns := cluster.NewNamespace("parts")
		b := cluster.NewBackend(ns, "solo", map[string]string{"app": "solo"})
		c := rig.NewClients(1)[0]
		short := rig.LoadSpec{Target: b.Addr(), Timeout: 500 * time.Millisecond}

		a := c.Get(b.Addr())
		Expect(a.Outcome).To(Equal(rig.Responded), "%s", a)
		Expect(a.Status).To(Equal(200))
		Expect(a.Backend()).To(Equal("solo"))

		b.SetBehavior(rig.Unavailable)
		Expect(c.Get(b.Addr()).Status).To(Equal(503))

		b.SetBehavior(rig.Hang)
		Expect(c.Attempt(ctx, short).Outcome).To(Equal(rig.ResponseTimeout))

		b.SetBehavior(rig.Refuse)
		a = c.Attempt(ctx, short)
		Expect(a.Outcome).To(Equal(rig.Refused), "%s", a)
		Expect(a.Latency).To(BeNumerically("<", 100*time.Millisecond), "a TCP reset from the backend is not rate-limited")

		b.SetBehavior(rig.OK)
		tcp := short
		tcp.Mode = rig.TCPConnect
		Expect(c.Attempt(ctx, tcp).Outcome).To(Equal(rig.Connected))

		By("probes seeing their own behaviour")
		b.ResetRequests()
		b.SetProbeBehavior(rig.Unavailable)
		probe := short
		probe.UserAgent = rig.ProbeUserAgent + "/e2e"
		Expect(c.Attempt(ctx, probe).Status).To(Equal(503))
		Expect(c.Get(b.Addr()).Status).To(Equal(200))
		Expect(b.Requests()).To(Equal(rig.Requests{Probes: 1, Clients: 1}))

		By("the gRPC health server following the probes' behaviour, from the node namespace as the manager probes")
		conn, err := grpc.NewClient("passthrough:///"+b.IP()+":9090", grpc.WithTransportCredentials(insecure.NewCredentials()))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(conn.Close)
		check := func() healthpb.HealthCheckResponse_ServingStatus {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			Expect(err).NotTo(HaveOccurred())
			return resp.GetStatus()
		}
		Expect(check()).To(Equal(healthpb.HealthCheckResponse_NOT_SERVING))
		b.SetProbeBehavior("")
		Expect(check()).To(Equal(healthpb.HealthCheckResponse_SERVING))
	})

	It("makes a Pod's readiness follow its readiness probe, as a kubelet does", func(ctx SpecContext) {
		ns := cluster.NewNamespace("parts")
		pod := cluster.NewPod(ns, "probed", nil, nil)
		ln, err := pod.Net.Listen(8081)
		Expect(err).NotTo(HaveOccurred())
		var healthy atomic.Bool
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if !healthy.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}), ReadHeaderTimeout: time.Second}
		go func() { _ = srv.Serve(ln) }()
		DeferCleanup(srv.Close)

		pod.ProbeReadiness(fmt.Sprintf("http://%s:8081/", pod.IP()))
		ready := func() bool {
			p := &corev1.Pod{}
			Expect(cluster.Client().Get(ctx, client.ObjectKey{Namespace: ns, Name: "probed"}, p)).To(Succeed())
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady {
					return c.Status == corev1.ConditionTrue
				}
			}
			return false
		}
		Consistently(ready).WithTimeout(time.Second).Should(BeFalse())
		healthy.Store(true)
		Eventually(ready).Should(BeTrue())
		healthy.Store(false)
		Eventually(ready).Should(BeFalse())
	})

	It("starts, reports and kills child processes, such as a manager built from this module", func(ctx SpecContext) {
		sleeper := cluster.StartProcess("sleeper", "sleep", "600")
		Consistently(sleeper.Exited).WithTimeout(200 * time.Millisecond).Should(BeFalse())
		sleeper.Kill()
		Expect(sleeper.Exited()).To(BeTrue())

		manager := cluster.StartProcess("manager", cluster.GoBuild("./cmd/manager"),
			"--health-probe-bind-address=127.0.0.1:0", "--metrics-bind-address=0")
		Eventually(manager.Log).Should(ContainSubstring("Starting workers"))
		manager.Kill()
		Expect(manager.Exited()).To(BeTrue())
	})
})
