package rig

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2" //nolint:revive
	. "github.com/onsi/gomega"    //nolint:revive
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Node is one more node of the cluster: a network namespace of its own (its host network
// namespace) with its address on its loopback, its own kube-proxy, a Node object and pods of
// its own. It is routed to the first node (the one the test process runs in, NodeName) over a
// veth pair, and through it to every other node, as a flat routed network (Calico without
// encapsulation) would carry it:
//
//   - node k (2, 3, ...) has the address 10.250.k.1 and pods from 10.244.(200+k).0/24;
//   - the first node routes both to it, and node k's default route goes to the first node, so
//     traffic between two added nodes crosses the first node's forward hook only;
//   - node k reaches the API server through the first node's address (ForwardAPI).
//
// Partition cuts the first node's own traffic (not what it forwards) to and from a node.
type Node struct {
	// Name is the Node object's name, its kube-proxy's --hostname-override and its pods'
	// spec.nodeName.
	Name string
	// IP is its InternalIP, on its loopback.
	IP netip.Addr
	// PodCIDR holds its pods' addresses.
	PodCIDR netip.Prefix
	// Net is its host network namespace: Net.Command runs a program there (as a hostNetwork
	// pod or a node's daemon), Net.HTTPClient calls from there.
	Net *PodNet

	rig          *Rig
	proxy        *Process
	proxyMetrics string
	pods         atomic.Int32
}

var nodeIndex atomic.Int32

// AddNode adds a node with labels (such as topology.kubernetes.io/zone) and starts its
// kube-proxy in mode, and removes everything in the current Ginkgo node's cleanup. The first
// node's kube-proxy mode is SetProxyMode's.
func (r *Rig) AddNode(name string, labels map[string]string, mode ProxyMode) *Node {
	GinkgoHelper()
	k := int(nodeIndex.Add(1)) + 1
	Expect(k).To(BeNumerically("<", 50), "the rig has addresses for at most 49 nodes")
	n := &Node{Name: name, rig: r, IP: netip.AddrFrom4([4]byte{10, 250, byte(k), 1}),
		PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(200 + k), 0}), 24)}
	n.Net = &PodNet{Name: fmt.Sprintf("%snode%d-%s", nsPrefix, k, unsafeNameChars.ReplaceAllString(name, "_")), IP: n.IP,
		work: make(chan func())}
	Expect(n.createNet("tsn" + strconv.Itoa(k))).To(Succeed())
	DeferCleanup(n.Net.Close)
	r.createNodeObject(name, n.IP.String(), n.PodCIDR.String(), labels)
	DeferCleanup(func(ctx SpecContext) {
		Expect(client.IgnoreNotFound(r.client.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}))).To(Succeed())
	})
	n.startProxy(mode)
	return n
}

// createNet makes the node's namespace and its veth pair (veth on the first node's side).
func (n *Node) createNet(veth string) error {
	p := n.Net
	if err := ip("netns", "add", p.Name); err != nil {
		return err
	}
	if err := ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", p.Name); err != nil {
		_ = ip("netns", "del", p.Name)
		return err
	}
	first := fmt.Sprintf("link set %[1]s up\nroute add %[2]s/32 dev %[1]s scope link\nroute add %[3]s via %[2]s dev %[1]s onlink\n",
		veth, n.IP, n.PodCIDR)
	self := fmt.Sprintf("link set lo up\naddr add %s/32 dev lo\nlink set eth0 up\nroute add default via %s dev eth0 onlink\n",
		n.IP, NodeIP)
	err := ipBatch(first)
	if err == nil {
		err = ipBatch(self, "-n", p.Name)
	}
	if err == nil {
		// A new namespace starts with the kernel's defaults: forwarding off.
		var out []byte
		out, err = exec.Command("ip", "netns", "exec", p.Name, "sh", "-c",
			"echo 1 > /proc/sys/net/ipv4/ip_forward && echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("sysctls in %s: %w: %s", p.Name, err, out)
		}
	}
	if err == nil {
		err = p.startWorker()
	}
	if err != nil {
		_ = ip("netns", "del", p.Name)
	}
	return err
}

// startProxy runs the node's kube-proxy and waits for its first sync.
func (n *Node) startProxy(mode ProxyMode) {
	GinkgoHelper()
	path, err := binary("kube-proxy")
	Expect(err).NotTo(HaveOccurred())
	n.proxyMetrics = net.JoinHostPort("127.0.0.1", "10249")
	cmd := n.Net.Command(context.Background(), path,
		kubeProxyArgs(n.rig.ForwardAPI(), mode, n.Name, n.proxyMetrics, "127.0.0.1:10256")...)
	p, err := startProcess("kube-proxy-"+n.Name, cmd)
	Expect(err).NotTo(HaveOccurred())
	n.rig.track(p)
	n.proxy = p
	DeferCleanup(p.Stop)
	hc := n.Net.HTTPClient(2 * time.Second)
	Eventually(func(g Gomega) {
		g.Expect(p.Exited()).To(BeFalse(), "kube-proxy exited:\n%s", p.Tail(30))
		synced, err := proxySyncedAt(hc, n.proxyMetrics)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(synced.IsZero()).To(BeFalse(), "kube-proxy has not synced its rules yet")
	}).WithTimeout(60*time.Second).WithPolling(100*time.Millisecond).Should(Succeed(), "kube-proxy on %s did not start; see %s", n.Name, p.LogPath)
}

// KubeProxy returns the node's kube-proxy.
func (n *Node) KubeProxy() *Process { return n.proxy }

// KubeProxyMetricsURL returns the node's kube-proxy's metrics URL, in the node's namespace.
func (n *Node) KubeProxyMetricsURL() string { return "http://" + n.proxyMetrics + "/metrics" }

// NewPod is Rig.NewPod for a pod on this node.
func (n *Node) NewPod(namespace, name string, labels map[string]string, ports []corev1.ContainerPort) *Pod {
	GinkgoHelper()
	i := int(n.pods.Add(1))
	Expect(i).To(BeNumerically("<", 250), "the rig has addresses for at most 249 pods a node")
	addr := netip.AddrFrom4([4]byte{10, 244, n.PodCIDR.Addr().As4()[2], byte(i + 1)})
	podNet := newNet(namespace+"-"+name, n, func(int) netip.Addr { return addr })
	return n.rig.newPod(namespace, name, labels, ports, n, podNet)
}

// NewHostPod creates a Pod object in the node's host network namespace (hostNetwork, the
// node's address), as a DaemonSet's pod is; the program is the caller's (Net.Command).
func (n *Node) NewHostPod(namespace, name string, labels map[string]string, ports []corev1.ContainerPort) *Pod {
	GinkgoHelper()
	return n.rig.newPod(namespace, name, labels, ports, n, n.Net)
}

// NewBackend is Rig.NewBackend for a backend on this node.
func (n *Node) NewBackend(namespace, name string, labels map[string]string) *Backend {
	GinkgoHelper()
	return newBackend(n.NewPod(namespace, name, labels, backendPorts))
}

// Partition drops every packet between the first node's own network stack (its processes, such
// as a manager) and node n, its pods included, except n's connections to the API server
// forward: a sick route between two nodes, while both still reach the control plane. What the
// first node forwards (its pods' traffic, traffic between other nodes) passes. It returns the
// function that heals it, which also runs in the current Ginkgo node's cleanup.
func (r *Rig) Partition(n *Node) (heal func()) {
	GinkgoHelper()
	_, apiPort, err := net.SplitHostPort(r.forwardAddr())
	Expect(err).NotTo(HaveOccurred())
	table := "tse2e_partition_" + unsafeNameChars.ReplaceAllString(n.Name, "_")
	set := fmt.Sprintf("{ %s, %s }", n.IP, n.PodCIDR)
	rules := fmt.Sprintf(`table ip %[1]s {
	chain out {
		type filter hook output priority -400; policy accept;
		ip daddr %[2]s tcp sport %[3]s accept
		ip daddr %[2]s drop
	}
	chain in {
		type filter hook input priority -400; policy accept;
		ip saddr %[2]s tcp dport %[3]s accept
		ip saddr %[2]s drop
	}
}
`, table, set, apiPort)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	out, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "nft: %s\n%s", out, rules)
	var once sync.Once
	heal = func() {
		once.Do(func() {
			// SetProxyMode may have flushed the ruleset already.
			_ = exec.Command("nft", "delete", "table", "ip", table).Run()
		})
	}
	DeferCleanup(heal)
	return heal
}

// ForwardAPI makes the API server reachable from pods and other nodes, on the first node's
// address, and returns a kubeconfig for it: the API server listens on the first node's
// loopback only. TLS passes through untouched; the kubeconfig names the certificate's address
// as the server name. The forward lasts as long as the rig.
func (r *Rig) ForwardAPI() string {
	GinkgoHelper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.apiForward != "" {
		return r.apiForward
	}
	upstream, err := url.Parse(r.cfg.Host)
	Expect(err).NotTo(HaveOccurred())
	l, err := net.Listen("tcp", net.JoinHostPort(NodeIP, "0"))
	Expect(err).NotTo(HaveOccurred())
	r.apiForwardListener = l
	go func() {
		for {
			down, err := l.Accept()
			if err != nil {
				return
			}
			go splice(down, upstream.Host)
		}
	}()
	kubeconfig, err := clientcmd.LoadFromFile(r.kubeconfig)
	Expect(err).NotTo(HaveOccurred())
	for _, c := range kubeconfig.Clusters {
		c.TLSServerName = upstream.Hostname()
		c.Server = "https://" + l.Addr().String()
	}
	path := filepath.Join(runDir, "kubeconfig-forwarded")
	Expect(clientcmd.WriteToFile(*kubeconfig, path)).To(Succeed())
	r.apiForward = path
	return path
}

// forwardAddr is the API server forward's address, ip:port.
func (r *Rig) forwardAddr() string {
	GinkgoHelper()
	r.ForwardAPI()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.apiForwardListener.Addr().String()
}

// splice copies both ways between down and a new connection to address until either ends.
func splice(down net.Conn, address string) {
	defer func() { _ = down.Close() }()
	up, err := net.Dial("tcp", address)
	if err != nil {
		return
	}
	defer func() { _ = up.Close() }()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, down); done <- struct{}{} }()
	go func() { _, _ = io.Copy(down, up); done <- struct{}{} }()
	<-done
}

// proxySyncedAt reads when a kube-proxy last synced its IPv4 rules from its metrics at addr.
func proxySyncedAt(hc *http.Client, addr string) (time.Time, error) {
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		return time.Time{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return time.Time{}, fmt.Errorf("kube-proxy metrics: %s", resp.Status)
	}
	return lastSync(resp.Body)
}
