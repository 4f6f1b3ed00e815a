package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/observer"
	"github.com/tripswitch/tripswitch/test/e2e/rig"
)

// The second opinion (issue 23) on a cluster of three nodes, in three zones: the manager (the
// leader) and the responder on the first node, a node agent observing on each of the other
// two, and the stories' backends on those two. Each node has its own kube-proxy, and the
// network between the nodes is routed, so a rule in the first node's namespace can cut the
// manager off from one node while clients, and the other nodes, still reach it.
//
// The stories run in two containers, each on a cluster of its own: the one that times a
// trip runs with the other timed stories, alone on the machine; the others, which time
// nothing tighter than seconds, run beside the builds.
var _ = Describe("with observers on other nodes, timed", Ordered, Label("timed"), func() {
	var node2, node3 *rig.Node
	BeforeAll(func(ctx SpecContext) { node2, node3 = startObserverNodes(ctx) })
	AfterEach(func() { writeNodeRules(node2, node3) })

	It("trips on a real failure within the floor, one probe timeout and 100 ms", timedRetry, func(ctx SpecContext) {
		ns := cluster.NewNamespace("confirmed")
		name := attempt("payments")
		bs := targetOn(ctx, ns, name+"-backend", node2, node3)
		breaker(ctx, ns, name, `{target: {service: `+name+`-backend, port: http}, probe: {interval: 100ms, timeout: 100ms},
			trip: {consecutiveFailures: 3}, recovery: {openDuration: 1m}}`)
		front := frontIP(ctx, ns, name)
		Eventually(published(ctx, ns, name)).Should(ConsistOf(ips(bs)))
		load := rig.NewClients(loadClients).Start(rig.LoadSpec{Target: net.JoinHostPort(front, "80"), Host: name + "." + ns,
			Rate: loadRate, Headers: loadHeaders, Timeout: 2 * time.Second, Mode: rig.HTTPGet})
		Eventually(func() int {
			return len(load.Snapshot().Where(func(a rig.Attempt) bool { return a.Status == http.StatusOK }))
		}).Should(BeNumerically(">=", loadClients*loadRate), "a second of steady traffic before the failure")

		failedAt := time.Now()
		setBehavior(bs, rig.Unavailable)
		Eventually(breakerStatus(ctx, ns, name)).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
		openAfter := time.Since(failedAt)
		Consistently(breakerStatus(ctx, ns, name), time.Second).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
		results := load.Stop()
		delays := switchDelays(results, failedAt, loadClients)
		// 3 failures at 100 ms across two endpoints: the floor is about 100 ms; one
		// confirmation may add a probe timeout (100 ms) and 100 ms; 150 ms is what the one-node
		// stories allow for kube-proxy's sync and the machine.
		const floor, timeout = 100 * time.Millisecond, 100 * time.Millisecond
		summary := fmt.Sprintf("Open %v after the failure; callers failed fast after p50 %v, p99 %v (bound %v)",
			openAfter.Round(time.Millisecond), percentile(delays, 0.5).Round(time.Millisecond),
			percentile(delays, 0.99).Round(time.Millisecond), floor+timeout+100*time.Millisecond+150*time.Millisecond)
		AddReportEntry("confirmed trip", summary)
		st := breakerStatus(ctx, ns, name)(Default)
		Expect(st.Confirmation).NotTo(BeNil())
		Expect(st.Confirmation.Outcome).To(Equal("Confirmed"), "%s", st.Confirmation.Message)
		Expect(st.TransitionMessage).To(ContainSubstring("confirmed: "))
		Expect(percentile(delays, 0.99)).To(BeNumerically("<=", floor+timeout+100*time.Millisecond+150*time.Millisecond), summary)
	})
})

var _ = Describe("with observers on other nodes", Ordered, func() {
	var node2, node3 *rig.Node
	BeforeAll(func(ctx SpecContext) { node2, node3 = startObserverNodes(ctx) })
	AfterEach(func() { writeNodeRules(node2, node3) })

	It("keeps every endpoint published when only the manager's node loses its route to a backend's node, and names it degraded", func(ctx SpecContext) {
		ns := cluster.NewNamespace("partition")
		// a and b have a backend on each observer's node; c has both on node2.
		placement := map[string][]*rig.Node{"a": {node2, node3}, "b": {node2, node3}, "c": {node2, node2}}
		fronts := map[string]string{}
		backends := map[string][]string{}
		for _, name := range []string{"a", "b", "c"} {
			backends[name] = ips(targetOn(ctx, ns, name+"-backend", placement[name]...))
			breaker(ctx, ns, name, `{target: {service: `+name+`-backend, port: http}, probe: {interval: 200ms, timeout: 200ms},
				trip: {consecutiveFailures: 3}, ejection: {consecutiveFailures: 3}, recovery: {openDuration: 1m}}`)
			fronts[name] = frontIP(ctx, ns, name)
		}
		for _, name := range []string{"a", "b", "c"} {
			Eventually(published(ctx, ns, name)).Should(ConsistOf(backends[name]), "%s: Closed, both endpoints published", name)
		}
		var loads []*rig.Load
		for _, name := range []string{"a", "b", "c"} {
			loads = append(loads, rig.NewClients(2).Start(rig.LoadSpec{Target: net.JoinHostPort(fronts[name], "80"),
				Host: name + "." + ns, Rate: 20, Headers: loadHeaders, Timeout: 2 * time.Second, Mode: rig.HTTPKeepAlive}))
		}

		cutAt := time.Now()
		heal := cluster.Partition(node2)
		for _, name := range []string{"a", "b", "c"} {
			Eventually(breakerStatus(ctx, ns, name), 15*time.Second).Should(HaveField("Confirmation",
				And(Not(BeNil()), HaveField("Outcome", "Refuted"))), "%s: the observers hold what only the manager sees", name)
		}
		AddReportEntry("partition: every breaker's first refutation", time.Since(cutAt).Round(time.Millisecond).String())
		Eventually(func(g Gomega) []string {
			var messages []string
			for _, name := range []string{"a", "b", "c"} {
				st := breakerStatus(ctx, ns, name)(g)
				if c := meta.FindStatusCondition(st.Conditions, tripswitchv1alpha1.ConditionConfirmation); c != nil {
					messages = append(messages, c.Message)
				}
			}
			return messages
		}, 20*time.Second).Should(ContainElement(ContainSubstring("so their votes weigh half: "+rig.NodeName)),
			"the manager's node, alone seeing three targets fail, is named degraded")
		Consistently(func(g Gomega) {
			for _, name := range []string{"a", "b", "c"} {
				g.Expect(breakerStatus(ctx, ns, name)(g).State).To(Equal(tripswitchv1alpha1.StateClosed), name)
				g.Expect(published(ctx, ns, name)(g)).To(ConsistOf(backends[name]), "%s: nothing ejected", name)
			}
		}, 3*time.Second).Should(Succeed())
		heal()

		for i, load := range loads {
			results := load.Stop()
			name := []string{"a", "b", "c"}[i]
			AddReportEntry("partition: "+name+"'s callers", results.String())
			Expect(len(results.Between(cutAt, time.Now()))).To(BeNumerically(">", 50), "%s: callers kept calling", name)
			Expect(results.Where(func(a rig.Attempt) bool { return a.Status != http.StatusOK })).To(BeEmpty(),
				"%s: no call failed: tripswitch took nothing away, and clients' pods still reach node2", name)
		}
		st := breakerStatus(ctx, ns, "c")(Default)
		Expect(st.Confirmation.Votes).To(ContainElement(And(HaveField("Observer", "node3"), HaveField("Verdict", "Healthy"))))
	})

	It("trips all of 10 breakers whose targets really fail at once: the observers agree, so the guard holds none", func(ctx SpecContext) {
		ns := cluster.NewNamespace("ten")
		var all []*rig.Backend
		var names []string
		for i := range 10 {
			name := fmt.Sprintf("t%d", i)
			names = append(names, name)
			bs := targetOn(ctx, ns, name+"-backend", node2, node3)
			all = append(all, bs...)
			breaker(ctx, ns, name, `{target: {service: `+name+`-backend, port: http}, probe: {interval: 200ms, timeout: 200ms},
				trip: {consecutiveFailures: 3}, recovery: {openDuration: 1m}}`)
		}
		for _, name := range names {
			Eventually(published(ctx, ns, name)).Should(HaveLen(2), name)
		}
		failedAt := time.Now()
		setBehavior(all, rig.Unavailable)
		open := func(g Gomega) []string {
			var out []string
			for _, name := range names {
				if breakerStatus(ctx, ns, name)(g).State == tripswitchv1alpha1.StateOpen {
					out = append(out, name)
				}
			}
			return out
		}
		Eventually(open, 15*time.Second).Should(ConsistOf(names), "all ten trip; the guard (at most half) would hold five")
		AddReportEntry("ten real failures: all Open after", time.Since(failedAt).Round(time.Millisecond).String())
		for _, name := range names {
			st := breakerStatus(ctx, ns, name)(Default)
			Expect(st.Confirmation.Outcome).To(Equal("Confirmed"), name)
			Expect(meta.FindStatusCondition(st.Conditions, tripswitchv1alpha1.ConditionObserverGuard)).To(
				Or(BeNil(), HaveField("Status", metav1.ConditionFalse)), "%s: never held", name)
		}
	})

	It("falls back to the manager's own probes when no observer can be reached, and says so", func(ctx SpecContext) {
		ns := cluster.NewNamespace("alone")
		labels := map[string]string{"app": "orders-backend"}
		bs := []*rig.Backend{cluster.NewBackend(ns, "orders-backend-0", labels), cluster.NewBackend(ns, "orders-backend-1", labels)}
		Expect(cluster.Client().Create(ctx, service(ns, "orders-backend", labels))).To(Succeed())
		breaker(ctx, ns, "orders", `{target: {service: orders-backend, port: http}, probe: {interval: 100ms, timeout: 100ms},
			trip: {consecutiveFailures: 3}, recovery: {openDuration: 1m}}`)
		Eventually(published(ctx, ns, "orders")).Should(ConsistOf(ips(bs)))
		heal2, heal3 := cluster.Partition(node2), cluster.Partition(node3)
		defer heal2()
		defer heal3()

		failedAt := time.Now()
		setBehavior(bs, rig.Unavailable)
		Eventually(breakerStatus(ctx, ns, "orders")).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
		AddReportEntry("observers unreachable: Open after", time.Since(failedAt).Round(time.Millisecond).String())
		st := breakerStatus(ctx, ns, "orders")(Default)
		Expect(meta.FindStatusCondition(st.Conditions, tripswitchv1alpha1.ConditionConfirmation)).To(And(
			HaveField("Status", metav1.ConditionUnknown), HaveField("Reason", tripswitchv1alpha1.ReasonUnconfirmed),
			HaveField("Message", ContainSubstring("deciding on "+rig.NodeName+"'s probes alone, under the observer guard"))))
		Expect(st.TransitionMessage).To(ContainSubstring("unconfirmed: "))
	})
})

// observerAgentService is the agents' Service, as config/observers names it.
const observerAgentService = "tripswitch-agent"

// startObserverNodes adds node2 and node3 (zones b and c; the first node is put in zone a),
// installs tripswitch with an observing agent on each of them and the manager on the first,
// and removes it all when the current container ends.
func startObserverNodes(ctx context.Context) (node2, node3 *rig.Node) {
	GinkgoHelper()
	cluster.SetProxyMode(rig.NFTables)
	labelNode(ctx, rig.NodeName, "zone-a")
	node2 = cluster.AddNode("node2", map[string]string{corev1.LabelTopologyZone: "zone-b"}, rig.NFTables)
	node3 = cluster.AddNode("node3", map[string]string{corev1.LabelTopologyZone: "zone-c"}, rig.NFTables)
	in := installTripswitch(ctx, 1)

	// The manager's service account and its projected token for the observers' audience.
	const managerSA = "tripswitch-controller-manager"
	c := cluster.Client()
	Expect(client.IgnoreAlreadyExists(c.Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: managerSA}}))).To(Succeed())
	token, err := kubernetes.NewForConfigOrDie(cluster.Config()).CoreV1().ServiceAccounts(systemNamespace).CreateToken(ctx, managerSA,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{observer.Audience},
			ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	Expect(err).NotTo(HaveOccurred())
	tokenFile := filepath.Join(cluster.RunDir(), "observer-token")
	Expect(os.WriteFile(tokenFile, []byte(token.Status.Token), 0o600)).To(Succeed())

	// The agents, as config/observers runs them: hostNetwork pods behind a headless Service
	// whose EndpointSlices tell the manager where they are and in which zone.
	labels := map[string]string{"app.kubernetes.io/name": "tripswitch", "app.kubernetes.io/component": "agent"}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: observerAgentService},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: labels, Ports: []corev1.ServicePort{
			{Name: "observer", Port: 8493, TargetPort: intstr.FromString("observer")}}}}
	Expect(c.Create(ctx, svc)).To(Succeed())
	DeferCleanup(func(ctx SpecContext) { Expect(client.IgnoreNotFound(c.Delete(ctx, svc))).To(Succeed()) })
	for _, node := range []*rig.Node{node2, node3} {
		startObserver(in, node, labels, systemNamespace+"/"+managerSA)
	}
	Eventually(func(g Gomega) []string {
		var slices discoveryv1.EndpointSliceList
		g.Expect(c.List(ctx, &slices, client.InNamespace(systemNamespace),
			client.MatchingLabels{discoveryv1.LabelServiceName: observerAgentService})).To(Succeed())
		var zones []string
		for _, sl := range slices.Items {
			for _, ep := range sl.Endpoints {
				if ep.Zone != nil && ptr.Deref(ep.Conditions.Ready, false) {
					zones = append(zones, ptr.Deref(ep.NodeName, "")+"/"+*ep.Zone)
				}
			}
		}
		return zones
	}).Should(ConsistOf("node2/zone-b", "node3/zone-c"), "the agents' Service publishes both observers with their zones")

	in.startManager("manager", "--observer-service="+systemNamespace+"/"+observerAgentService, "--node-name="+rig.NodeName,
		"--observer-token-file="+tokenFile)
	return node2, node3
}

// writeNodeRules writes the added nodes' nftables rules when the spec failed.
func writeNodeRules(nodes ...*rig.Node) {
	if !CurrentSpecReport().Failed() {
		return
	}
	for _, node := range nodes {
		if node == nil {
			continue
		}
		out, _ := node.Net.Command(context.Background(), "nft", "list", "ruleset").CombinedOutput()
		fmt.Fprintf(GinkgoWriter, "\n----- nft list ruleset on %s -----\n%s", node.Name, out)
	}
}

// labelNode puts a Node in zone.
func labelNode(ctx context.Context, name, zone string) {
	GinkgoHelper()
	node := &corev1.Node{}
	Expect(cluster.Client().Get(ctx, client.ObjectKey{Name: name}, node)).To(Succeed())
	patch := client.MergeFrom(node.DeepCopy())
	node.Labels[corev1.LabelTopologyZone] = zone
	Expect(cluster.Client().Patch(ctx, node, patch)).To(Succeed())
}

// startObserver runs `manager agent` as an observer in node's host network namespace, with a
// hostNetwork Pod that is Ready once the agent is, as a kubelet on that node would see it.
func startObserver(in *install, node *rig.Node, labels map[string]string, managerSA string) {
	GinkgoHelper()
	pod := node.NewHostPod(systemNamespace, "tripswitch-agent-"+node.Name, labels, []corev1.ContainerPort{
		{Name: "observer", ContainerPort: 8493, Protocol: corev1.ProtocolTCP}})
	cmd := node.Net.Command(context.Background(), in.bin, "agent",
		"--health-probe-bind-address=127.0.0.1:8491", "--metrics-bind-address=0",
		"--kube-proxy-metrics-url="+node.KubeProxyMetricsURL(),
		"--manager-service-account="+managerSA,
		"--observer-bind-address="+net.JoinHostPort(node.IP.String(), "8493"),
		"--node-name="+node.Name)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+cluster.ForwardAPI())
	p := cluster.StartCommand("agent-"+node.Name, cmd)
	hc := node.Net.HTTPClient(time.Second)
	Eventually(func(g Gomega) {
		g.Expect(p.Exited()).To(BeFalse(), "the agent exited:\n%s", p.Tail(20))
		resp, err := hc.Get("http://127.0.0.1:8491/readyz")
		g.Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	}).Should(Succeed(), "the agent on %s gets ready", node.Name)
	pod.SetReady(true)
}

// targetOn is target with one backend on each of nodes, in order.
func targetOn(ctx context.Context, ns, name string, nodes ...*rig.Node) []*rig.Backend {
	GinkgoHelper()
	labels := map[string]string{"app": name}
	var bs []*rig.Backend
	for i, node := range nodes {
		bs = append(bs, node.NewBackend(ns, fmt.Sprintf("%s-%d", name, i), labels))
	}
	Expect(cluster.Client().Create(ctx, service(ns, name, labels))).To(Succeed())
	return bs
}

// published returns the ready addresses that the breaker's front publishes (tripswitch's
// slices): its target's backends while Closed, the responder's while Open.
func published(ctx SpecContext, ns, name string) func(Gomega) []string {
	return func(g Gomega) []string { return readyAddresses(ctx, g, ns, name, tripswitchv1alpha1.ManagedBy) }
}

// ips returns the backends' addresses, to compare with published.
func ips(bs []*rig.Backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.IP()
	}
	return out
}
