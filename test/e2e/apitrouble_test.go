package e2e_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/test/apifault"
	"github.com/tripswitch/tripswitch/test/e2e/rig"
)

// proxiedKubeconfig starts a fault proxy to the rig's API server until the story ends, and
// writes a kubeconfig that reaches the API server through it.
func proxiedKubeconfig() (*apifault.Proxy, string) {
	GinkgoHelper()
	proxy, err := apifault.Start(cluster.Config())
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(proxy.Close)
	path := filepath.Join(cluster.RunDir(), "kubeconfig-proxy")
	Expect(proxy.WriteKubeconfig(path)).To(Succeed())
	return proxy, path
}

var _ = Describe("API server trouble", Ordered, func() {
	var ns string
	var proxy *apifault.Proxy
	var proxied string
	var manager *rig.Supervised

	BeforeAll(func(ctx SpecContext) {
		ts := installTripswitch(ctx, 2)
		proxy, proxied = proxiedKubeconfig()
		// The manager exits when it loses its lease; like a kubelet, the rig starts it again.
		manager = cluster.StartSupervised("manager-proxied", func() *exec.Cmd {
			cmd := exec.Command(ts.bin, managerFlags()...)
			cmd.Env = append(os.Environ(), "KUBECONFIG="+proxied)
			return cmd
		})
		ns = cluster.NewNamespace("apitrouble")
	})

	It("keeps every gate through 30 s of a blackholed API server, and converges within seconds after 2 minutes of failing slice writes", func(ctx SpecContext) {
		steady := target(ctx, ns, "steady-backend", 2)
		breaker(ctx, ns, "steady", `{target: {service: steady-backend, port: http}, probe: {interval: 100ms},
			trip: {consecutiveFailures: 3}, recovery: {openDuration: 10m}}`)
		target(ctx, ns, "down-backend", 2)
		breaker(ctx, ns, "down", `{target: {service: down-backend, port: http}, mode: ForceOpen}`)
		steadyFront, downFront := frontAddress(ctx, ns, "steady"), frontAddress(ctx, ns, "down")
		clients := rig.NewClients(2)
		get := func(c *rig.Client, front, host string) rig.Attempt {
			return c.Attempt(ctx, rig.LoadSpec{Target: front, Host: host, Headers: loadHeaders})
		}
		Eventually(func() string { return servedBy(get(clients[0], steadyFront, "steady."+ns)) }).Should(HavePrefix("steady-backend-"))
		Eventually(func() bool { return answeredByResponder(get(clients[1], downFront, "down."+ns)) }).Should(BeTrue())

		By("blackholing the API server for the manager for 30 s")
		toSteady := clients[:1].Start(rig.LoadSpec{Target: steadyFront, Host: "steady." + ns, Rate: 20, Headers: loadHeaders})
		toDown := clients[1:].Start(rig.LoadSpec{Target: downFront, Host: "down." + ns, Rate: 20, Headers: loadHeaders})
		proxy.Blackhole()
		Consistently(func() rig.Results {
			return toSteady.Snapshot().Where(func(a rig.Attempt) bool { return !servedByTarget(a) })
		},
			30*time.Second, time.Second).Should(BeEmpty(), "the Closed front keeps its target while the API server is away")
		proxy.Heal()
		steadyCalls, downCalls := toSteady.Stop(), toDown.Stop()
		AddReportEntry(fmt.Sprintf("%s, 30 s blackhole", cluster.ProxyMode()), fmt.Sprintf(
			"manager restarted %d times; Closed front: %s; Open front: %s", manager.Restarts(), steadyCalls, downCalls))
		Expect(steadyCalls.Where(servedByTarget)).To(HaveLen(len(steadyCalls)), "the Closed front keeps its target: %s", steadyCalls)
		Expect(downCalls.Where(answeredByResponder)).To(HaveLen(len(downCalls)), "the Open front keeps the responder: %s", downCalls)

		By("failing every EndpointSlice write for 2 minutes while the target fails")
		Eventually(func() string { return manager.Current().Log() }, time.Minute).Should(ContainSubstring(leaseAcquired),
			"a manager leads again")
		proxy.BreakWrites("endpointslices")
		setBehavior(steady, rig.Unavailable)
		Eventually(breakerStatus(ctx, ns, "steady")).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
		Consistently(func() string { return servedBy(get(clients[0], steadyFront, "steady."+ns)) }, 2*time.Minute, time.Second).Should(
			HavePrefix("steady-backend-"), "the front keeps its last gate while its writes fail")
		failed := proxy.Refused()
		proxy.Heal()
		healedAt := time.Now()
		Eventually(func() bool { return answeredByResponder(get(clients[0], steadyFront, "steady."+ns)) }, 30*time.Second, 10*time.Millisecond).
			Should(BeTrue())
		converged := time.Since(healedAt)
		AddReportEntry(fmt.Sprintf("%s, 2 minutes of failing EndpointSlice writes", cluster.ProxyMode()),
			fmt.Sprintf("%d writes refused; clients got the responder %v after writes healed", failed, converged.Round(10*time.Millisecond)))
		Expect(converged).To(BeNumerically("<", 5*time.Second))
	})
})
