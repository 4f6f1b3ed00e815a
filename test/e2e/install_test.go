package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tripswitch/tripswitch/test/e2e/rig"
)

// systemNamespace is where the install runs, as in the default install.
const systemNamespace = "tripswitch-system"

// responderService is the manager's --responder-service default.
const responderService = "tripswitch-responder"

// The responder's listeners, as the default install's Deployment binds them.
const (
	responderHTTPPort   = 8480
	responderResetPort  = 8481
	responderHealthPort = 8482
)

// install is tripswitch as the default install runs it, on the rig: the responder's pods in
// pod namespaces of their own behind the tripswitch-responder Service, which Kubernetes'
// EndpointSlice controller publishes while a readiness prober (the kubelet's part) finds them
// ready, and managers in the node namespace, as hostNetwork pods would be.
type install struct {
	bin string
	// podKubeconfig reaches the API server from a pod namespace, through the rig's forward.
	podKubeconfig string
	responders    []*rig.Process
}

// installTripswitch starts the responders; managers are the stories' to start. Everything
// stops in the current node's cleanup.
func installTripswitch(ctx context.Context, responders int) *install {
	GinkgoHelper()
	in := &install{bin: cluster.GoBuild("./cmd/manager")}
	c := cluster.Client()
	err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNamespace}})
	Expect(client.IgnoreAlreadyExists(err)).To(Succeed())
	in.podKubeconfig = cluster.ForwardAPI()

	labels := map[string]string{"app.kubernetes.io/name": "tripswitch", "app.kubernetes.io/component": "responder"}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: responderService},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "http", Port: responderHTTPPort, TargetPort: intstr.FromString("http"), AppProtocol: ptr.To("http")},
			{Name: "reset", Port: responderResetPort, TargetPort: intstr.FromString("reset")},
		}},
	}
	Expect(client.IgnoreAlreadyExists(c.Create(ctx, svc))).To(Succeed())
	for i := range responders {
		in.responders = append(in.responders, in.startResponder(ctx, fmt.Sprintf("tripswitch-responder-%d", i), labels))
	}
	return in
}

// startResponder runs `manager responder` in a pod namespace of its own, with a Pod object
// whose readiness follows the responder's /readyz.
func (in *install) startResponder(ctx context.Context, name string, labels map[string]string) *rig.Process {
	GinkgoHelper()
	pod := cluster.NewPod(systemNamespace, name, labels, []corev1.ContainerPort{
		{Name: "http", ContainerPort: responderHTTPPort, Protocol: corev1.ProtocolTCP},
		{Name: "reset", ContainerPort: responderResetPort, Protocol: corev1.ProtocolTCP},
	})
	cmd := pod.Net.Command(context.Background(), in.bin, "responder",
		fmt.Sprintf("--http-bind-address=:%d", responderHTTPPort),
		fmt.Sprintf("--reset-bind-address=:%d", responderResetPort),
		fmt.Sprintf("--health-probe-bind-address=:%d", responderHealthPort),
		"--metrics-bind-address=0")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+in.podKubeconfig)
	p := cluster.StartCommand(name, cmd)
	pod.ProbeReadiness(fmt.Sprintf("http://%s:%d/readyz", pod.Net.IP, responderHealthPort))
	return p
}

// managerFlags are the default install's manager flags, where they matter here.
func managerFlags(extra ...string) []string {
	return append([]string{
		"--leader-elect", "--leader-election-namespace=" + systemNamespace,
		"--health-probe-bind-address=0", "--metrics-bind-address=0",
		"--responder-service=" + systemNamespace + "/" + responderService,
	}, extra...)
}

// startManager runs a manager in the node namespace.
func (in *install) startManager(name string, extra ...string) *rig.Process {
	GinkgoHelper()
	return cluster.StartProcess(name, in.bin, managerFlags(extra...)...)
}

// answeredByResponder says the attempt got the responder's answer: a 503 naming a breaker.
func answeredByResponder(a rig.Attempt) bool {
	return a.Outcome == rig.Responded && a.Status == http.StatusServiceUnavailable && a.Headers[breakerHeader] != ""
}

// breakerHeader is the header in which the responder names the breaker it answers for.
const breakerHeader = "X-Tripswitch-Breaker"

// loadHeaders are the response headers the stories record.
var loadHeaders = []string{rig.BackendHeader, breakerHeader, "Retry-After"}

// servedBy names who answered an attempt: a backend's name, "responder", or the outcome.
func servedBy(a rig.Attempt) string {
	switch {
	case answeredByResponder(a):
		return "responder"
	case a.Backend() != "":
		return a.Backend()
	default:
		return strings.ToLower(string(a.Outcome))
	}
}

// nodeAgent is `manager agent` on the rig's node: in the node namespace, as the DaemonSet runs
// it in the host network namespace, reading the running kube-proxy's metrics.
type nodeAgent struct {
	*rig.Process
	health, metrics string
}

// startAgent runs the node agent and waits until it is ready (informers synced, conntrack
// answering). It stops in the current node's cleanup. SetProxyMode flushes the node's
// nftables ruleset, the agent's reset guard with it: start agents after it.
func startAgent(name string, extra ...string) *nodeAgent {
	GinkgoHelper()
	a := &nodeAgent{health: rig.FreePort(), metrics: rig.FreePort()}
	a.Process = cluster.StartProcess(name, cluster.GoBuild("./cmd/manager"), append([]string{"agent",
		"--health-probe-bind-address=" + a.health, "--metrics-bind-address=" + a.metrics,
		"--kube-proxy-metrics-url=" + cluster.KubeProxyMetricsURL()}, extra...)...)
	Eventually(func(g Gomega) {
		g.Expect(a.Exited()).To(BeFalse(), "the agent exited:\n%s", a.Tail(20))
		resp, err := http.Get("http://" + a.health + "/readyz")
		g.Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	}).Should(Succeed(), "the agent gets ready")
	return a
}

// cutLog is one of the agent's "Cut flows" log lines.
type cutLog struct {
	Breakers           []string `json:"breakers"`
	Endpoints          int      `json:"endpoints"`
	Flows              int      `json:"flows"`
	Armed              int      `json:"armed"`
	Sweep              string   `json:"sweep"`
	Resweep            bool     `json:"resweep"`
	SinceChange        string   `json:"sinceChange"`
	WaitedForKubeProxy string   `json:"waitedForKubeProxy"`
}

// cutLogs are the agent's cut lines that name the breaker ns/name.
func (a *nodeAgent) cutLogs(ns, name string) []cutLog {
	var out []cutLog
	for _, line := range strings.Split(a.Log(), "\n") {
		var entry struct {
			Msg string `json:"msg"`
			cutLog
		}
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Msg != "Cut flows" {
			continue
		}
		if slices.ContainsFunc(entry.Breakers, func(b string) bool { return strings.HasPrefix(b, ns+"/"+name+" (") }) {
			out = append(out, entry.cutLog)
		}
	}
	return out
}

// cutsOf describes the agent's cuts for a breaker: the first sweep's timing and what every
// sweep cut.
func (a *nodeAgent) cutsOf(ns, name string) string {
	logs := a.cutLogs(ns, name)
	if len(logs) == 0 {
		return "no cut"
	}
	var parts []string
	for _, l := range logs {
		if !l.Resweep {
			parts = append(parts, fmt.Sprintf("cut %d flows of %d endpoint ports %s after the slice change (waited %s for kube-proxy, swept in %s)",
				l.Flows, l.Endpoints, l.SinceChange, l.WaitedForKubeProxy, l.Sweep))
		} else {
			parts = append(parts, fmt.Sprintf("a resweep cut %d more", l.Flows))
		}
	}
	return strings.Join(parts, "; ")
}

// metric returns the sum of a metric's samples on the agent's metrics endpoint whose lines
// contain all of match (a histogram's _count or _sum, a counter's series).
func (a *nodeAgent) metric(g Gomega, name string, match ...string) float64 {
	resp, err := http.Get("http://" + a.metrics + "/metrics")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	sum := 0.0
lines:
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		for _, m := range match {
			if !strings.Contains(line, m) {
				continue lines
			}
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		g.Expect(err).NotTo(HaveOccurred())
		sum += v
	}
	return sum
}
