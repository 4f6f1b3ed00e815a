package rig

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2" //nolint:revive
	. "github.com/onsi/gomega"    //nolint:revive
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// ProxyMode is kube-proxy's --proxy-mode.
type ProxyMode string

// The proxy modes the rig runs.
const (
	IPTables ProxyMode = "iptables"
	NFTables ProxyMode = "nftables"
)

// ProxyModes lists every mode, for suites that run their specs in each.
var ProxyModes = []ProxyMode{IPTables, NFTables}

// NodeName is the one Node: kube-proxy's --hostname-override and every Pod's spec.nodeName.
const NodeName = "node1"

// Options configure Start.
type Options struct {
	// CRDDirectoryPaths are installed into the API server, such as config/crd/bases.
	CRDDirectoryPaths []string
	// ProxyMode is kube-proxy's first mode; SetProxyMode changes it. Default iptables.
	ProxyMode ProxyMode
	// ControllerManagerArgs are added to kube-controller-manager's flags.
	ControllerManagerArgs []string
	// KubeProxyArgs are added to kube-proxy's flags.
	KubeProxyArgs []string
}

// Rig is a one-node cluster in the node namespace: etcd and kube-apiserver (through envtest),
// kube-controller-manager with the EndpointSlice, EndpointSlice-mirroring and garbage-collector
// controllers, kube-proxy and a Node object. Pods have no kubelet: NewBackend plays its part.
type Rig struct {
	env        *envtest.Environment
	cfg        *rest.Config
	client     client.Client
	scheme     *runtime.Scheme
	kubeconfig string
	opts       Options

	mu           sync.Mutex
	processes    []*Process // every process, for WriteLogTails
	kcm          *Process
	proxy        *Process
	proxyMode    ProxyMode
	proxyArgs    []string // SetProxyMode's extra arguments of the running kube-proxy
	proxyMetrics string   // kube-proxy's metrics address
	built        map[string]string
	// apiForward is ForwardAPI's kubeconfig, once it runs; apiForwardListener its listener.
	apiForward         string
	apiForwardListener net.Listener
}

// Start starts the rig, and stops it in the current Ginkgo node's cleanup (call it from
// BeforeSuite). It fails the node, with the tails of the logs, when a part does not start.
func Start(opts Options) *Rig {
	GinkgoHelper()
	Expect(inNode).To(BeTrue(), "the rig runs only in the node namespace: the suite's TestMain must call rig.Main")
	if opts.ProxyMode == "" {
		opts.ProxyMode = IPTables
	}
	r := &Rig{opts: opts, scheme: runtime.NewScheme(), built: map[string]string{}}
	utilruntime.Must(clientgoscheme.AddToScheme(r.scheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(r.scheme))
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(r.scheme))
	fmt.Fprintf(GinkgoWriter, "e2e: run directory %s\n", runDir)
	defer func() {
		if e := recover(); e != nil {
			r.WriteLogTails(GinkgoWriter, 30)
			panic(e)
		}
	}()

	r.startControlPlane()
	// Before the control plane stops: the API server waits for its watchers to go.
	DeferCleanup(r.stopOwned)
	r.createNodeObject(NodeName, NodeIP, PodCIDR, nil)
	kcm, err := binary("kube-controller-manager")
	Expect(err).NotTo(HaveOccurred())
	r.kcm = r.startOwned("kube-controller-manager", kcm, append([]string{
		"--kubeconfig=" + r.kubeconfig,
		"--controllers=endpointslice-controller,endpointslice-mirroring-controller,garbage-collector-controller",
		"--leader-elect=false",
		"--secure-port=0",
		"--v=2",
	}, opts.ControllerManagerArgs...)...)
	r.SetProxyMode(opts.ProxyMode)
	return r
}

func (r *Rig) startControlPlane() {
	GinkgoHelper()
	logFile := func(name string) *os.File {
		f, err := os.Create(filepath.Join(runDir, name+".log"))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(f.Close)
		return f
	}
	etcdLog, apiLog := logFile("etcd"), logFile("kube-apiserver")
	r.env = &envtest.Environment{
		CRDDirectoryPaths:     r.opts.CRDDirectoryPaths,
		ErrorIfCRDPathMissing: true,
	}
	r.env.ControlPlane.Etcd = &envtest.Etcd{Out: etcdLog, Err: etcdLog}
	api := r.env.ControlPlane.GetAPIServer()
	api.Out, api.Err = apiLog, apiLog
	api.Configure().
		Set("service-cluster-ip-range", ServiceCIDR).
		Set("advertise-address", NodeIP).
		// The node namespace has no default route, and nothing should publish the
		// kubernetes Service's endpoints anyway.
		Set("endpoint-reconciler-type", "none")
	var err error
	r.cfg, err = r.env.Start()
	Expect(err).NotTo(HaveOccurred(), "starting etcd and kube-apiserver; see %s and %s", etcdLog.Name(), apiLog.Name())
	DeferCleanup(r.env.Stop)

	r.client, err = client.New(r.cfg, client.Options{Scheme: r.scheme})
	Expect(err).NotTo(HaveOccurred())
	admin, err := r.env.AddUser(envtest.User{Name: "e2e-admin", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	kubeconfig, err := admin.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	r.kubeconfig = filepath.Join(runDir, "kubeconfig")
	Expect(os.WriteFile(r.kubeconfig, kubeconfig, 0o600)).To(Succeed())
}

// createNodeObject creates a Node object, with labels, the addresses and the Ready condition a
// kubelet would report.
func (r *Rig) createNodeObject(name, address, podCIDR string, labels map[string]string) {
	GinkgoHelper()
	ctx := context.Background()
	all := map[string]string{corev1.LabelHostname: name}
	for k, v := range labels {
		all[k] = v
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: all},
		Spec:       corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}},
	}
	Expect(r.client.Create(ctx, node)).To(Succeed())
	now := metav1.Now()
	node.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: address},
			{Type: corev1.NodeHostName, Address: name},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
	}
	Expect(r.client.Status().Update(ctx, node)).To(Succeed())
}

// startOwned starts a process whose life the rig manages (not the current node's cleanup).
func (r *Rig) startOwned(name, path string, args ...string) *Process {
	GinkgoHelper()
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+r.kubeconfig)
	p, err := startProcess(name, cmd)
	Expect(err).NotTo(HaveOccurred())
	r.track(p)
	return p
}

func (r *Rig) track(p *Process) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.processes = append(r.processes, p)
}

// stopOwned stops kube-proxy and kube-controller-manager.
func (r *Rig) stopOwned() {
	r.mu.Lock()
	owned := []*Process{r.proxy, r.kcm}
	if r.apiForwardListener != nil {
		_ = r.apiForwardListener.Close()
	}
	r.mu.Unlock()
	for _, p := range owned {
		if p != nil {
			p.Stop()
		}
	}
}

// SetProxyMode runs kube-proxy in mode, with extra arguments beside the rig's (such as
// --conntrack-tcp-be-liberal): it stops the running kube-proxy, if it runs in another mode or
// with other extra arguments, removes its rules (kube-proxy --cleanup) and checks that none are
// left, then starts kube-proxy and waits for its first full sync. Removing the rules flushes
// the node namespace's whole nftables ruleset, the tables of anything else (a node agent's)
// included.
func (r *Rig) SetProxyMode(mode ProxyMode, extra ...string) {
	GinkgoHelper()
	r.mu.Lock()
	running, current, currentArgs := r.proxy, r.proxyMode, r.proxyArgs
	r.mu.Unlock()
	if running != nil && !running.Exited() && current == mode && slices.Equal(currentArgs, extra) {
		return
	}
	path, err := binary("kube-proxy")
	Expect(err).NotTo(HaveOccurred())
	if running != nil {
		running.Stop()
		removeProxyRules(path)
	}
	metrics, healthz := FreePort(), FreePort()
	args := append(kubeProxyArgs(r.kubeconfig, mode, NodeName, metrics, healthz), r.opts.KubeProxyArgs...)
	args = append(args, extra...)
	p := r.startOwned("kube-proxy-"+string(mode), path, args...)
	r.mu.Lock()
	r.proxy, r.proxyMode, r.proxyArgs, r.proxyMetrics = p, mode, slices.Clone(extra), metrics
	r.mu.Unlock()
	Eventually(func(g Gomega) {
		g.Expect(p.Exited()).To(BeFalse(), "kube-proxy exited:\n%s", p.Tail(30))
		synced, err := r.ProxySyncedAt()
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(synced.IsZero()).To(BeFalse(), "kube-proxy has not synced its rules yet")
	}).WithTimeout(60*time.Second).WithPolling(100*time.Millisecond).Should(Succeed(), "kube-proxy (%s) did not start; see %s", mode, p.LogPath)
}

// kubeProxyArgs are the flags of a node's kube-proxy.
func kubeProxyArgs(kubeconfig string, mode ProxyMode, node, metrics, healthz string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--proxy-mode=" + string(mode),
		"--hostname-override=" + node,
		"--cluster-cidr=" + PodCIDR,
		// Also nftables mode's; only the flag gives 0 (a config file's 0s becomes 1s).
		"--iptables-min-sync-period=0s",
		// Leave the kernel's conntrack settings alone.
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0s",
		"--conntrack-tcp-timeout-close-wait=0s",
		"--metrics-bind-address=" + metrics,
		"--healthz-bind-address=" + healthz,
		"--v=2",
	}
}

// removeProxyRules removes every kube-proxy rule from the node namespace: kube-proxy --cleanup
// first, then the rest, for --cleanup leaves the KUBE-FIREWALL chains of iptables mode behind.
// No one else has rules in the node namespace.
func removeProxyRules(kubeProxy string) {
	GinkgoHelper()
	cleanup, err := runProcess("kube-proxy-cleanup", exec.Command(kubeProxy, "--cleanup", "--v=2"))
	Expect(err).NotTo(HaveOccurred(), "kube-proxy --cleanup:\n%s", cleanup.Tail(20))
	for _, iptables := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle", "raw"} {
			for _, op := range []string{"-F", "-X"} {
				out, err := exec.Command(iptables, "-w", "-t", table, op).CombinedOutput()
				Expect(err).NotTo(HaveOccurred(), "%s -t %s %s: %s", iptables, table, op, out)
			}
		}
	}
	out, err := exec.Command("nft", "flush", "ruleset").CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "nft flush ruleset: %s", out)
	Expect(proxyRules()).To(BeEmpty(), "kube-proxy's rules are still there")
}

// proxyRules returns the lines of the node namespace's iptables and nftables rules that belong
// to kube-proxy.
func proxyRules() []string {
	var rules []string
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "tables"}} {
		out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s: %s", strings.Join(cmd, " "), out)
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "KUBE-") || strings.Contains(line, "kube-proxy") {
				rules = append(rules, line)
			}
		}
	}
	return rules
}

// ProxySyncedAt returns when kube-proxy last synced its IPv4 rules (its
// kubeproxy_sync_proxy_rules_last_timestamp_seconds), zero before its first sync.
func (r *Rig) ProxySyncedAt() (time.Time, error) {
	r.mu.Lock()
	addr := r.proxyMetrics
	r.mu.Unlock()
	return proxySyncedAt(&http.Client{Timeout: 2 * time.Second}, addr)
}

// lastSync reads kubeproxy_sync_proxy_rules_last_timestamp_seconds for IPv4 from a metrics
// page, zero before the first sync.
func lastSync(body io.Reader) (time.Time, error) {
	scanner := bufio.NewScanner(body)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	for scanner.Scan() {
		line := scanner.Text()
		if !strings.HasPrefix(line, `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} `) {
			continue
		}
		fields := strings.Fields(line)
		seconds, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil || seconds == 0 {
			return time.Time{}, err
		}
		return time.Unix(0, int64(seconds*1e9)), nil
	}
	return time.Time{}, scanner.Err()
}

// FreePort returns a free 127.0.0.1 address for a child process to listen on.
func FreePort() string {
	GinkgoHelper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = ln.Close() }()
	return ln.Addr().String()
}

// KubeProxyMetricsURL returns the running kube-proxy's metrics URL, on the node's loopback as
// a real node has it (127.0.0.1:10249 there); SetProxyMode moves it.
func (r *Rig) KubeProxyMetricsURL() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return "http://" + r.proxyMetrics + "/metrics"
}

// ProxyMode returns the mode kube-proxy runs in.
func (r *Rig) ProxyMode() ProxyMode {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proxyMode
}

// KubeProxy returns the running kube-proxy.
func (r *Rig) KubeProxy() *Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proxy
}

// ControllerManager returns kube-controller-manager.
func (r *Rig) ControllerManager() *Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.kcm
}

// Client returns a client with the Kubernetes, apiextensions and tripswitch types.
func (r *Rig) Client() client.Client { return r.client }

// Scheme returns the client's scheme.
func (r *Rig) Scheme() *runtime.Scheme { return r.scheme }

// Config returns the API server's client configuration (as the admin user).
func (r *Rig) Config() *rest.Config { return rest.CopyConfig(r.cfg) }

// Kubeconfig returns the path of a kubeconfig file for the API server, for child processes
// (--kubeconfig, or KUBECONFIG, which StartProcess sets) and for kubectl.
func (r *Rig) Kubeconfig() string { return r.kubeconfig }

// RunDir returns this run's directory: logs, the kubeconfig and GoBuild's binaries. It is
// deleted after a run that passes, unless E2E_KEEP=1.
func (r *Rig) RunDir() string { return runDir }

// WriteNetworkState writes the node namespace's iptables and nftables rules, routes and ICMP
// counters to w. A suite calls it when a spec fails.
func (r *Rig) WriteNetworkState(w io.Writer) {
	for _, cmd := range [][]string{
		{"iptables-save"}, {"nft", "list", "ruleset"}, {"ip", "route"}, {"ip", "-br", "addr"},
		{"grep", "^Icmp:", "/proc/net/snmp"}, {"conntrack", "-C"},
	} {
		out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		fmt.Fprintf(w, "\n----- %s (%v) -----\n%s", strings.Join(cmd, " "), err, out)
	}
}

// WriteLogTails writes the last n lines of every log of the run (etcd, kube-apiserver and every
// process) to w. A suite calls it when a spec fails.
func (r *Rig) WriteLogTails(w io.Writer, n int) {
	paths := []string{filepath.Join(runDir, "etcd.log"), filepath.Join(runDir, "kube-apiserver.log")}
	r.mu.Lock()
	for _, p := range r.processes {
		paths = append(paths, p.LogPath)
	}
	r.mu.Unlock()
	writeTails(w, n, paths...)
}

// GoBuild builds a main package of this module (such as "./cmd/manager") into the run
// directory once per run, and returns the binary's path.
func (r *Rig) GoBuild(pkg string) string {
	GinkgoHelper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if path, ok := r.built[pkg]; ok {
		return path
	}
	root, err := exec.Command("go", "env", "GOMOD").Output()
	Expect(err).NotTo(HaveOccurred())
	path := filepath.Join(runDir, "bin", filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", path, pkg)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	out, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "go build %s:\n%s", pkg, out)
	r.built[pkg] = path
	return path
}

// NewNamespace creates a Kubernetes namespace with a generated name and deletes it in the
// current node's cleanup. The rig runs no namespace controller: the objects in it stay.
func (r *Rig) NewNamespace(prefix string) string {
	GinkgoHelper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	Expect(r.client.Create(context.Background(), ns)).To(Succeed())
	DeferCleanup(func(ctx SpecContext) {
		Expect(client.IgnoreNotFound(r.client.Delete(ctx, ns))).To(Succeed())
	})
	return ns.Name
}

// ServiceAddress returns a Service's ClusterIP and its first port, as ip:port.
func (r *Rig) ServiceAddress(namespace, name string) string {
	GinkgoHelper()
	svc := &corev1.Service{}
	Expect(r.client.Get(context.Background(), client.ObjectKey{Namespace: namespace, Name: name}, svc)).To(Succeed())
	Expect(svc.Spec.ClusterIP).NotTo(BeEmpty())
	Expect(svc.Spec.Ports).NotTo(BeEmpty())
	return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(svc.Spec.Ports[0].Port)))
}
