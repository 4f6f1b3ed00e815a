//go:build linux

package flows

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The test network: it exists only inside the namespaces the tests create.
var (
	nodeIP4 = netip.MustParseAddr("10.250.0.1")
	nodeIP6 = netip.MustParseAddr("fd00:250::1")
	// front4 and front6 stand for a front Service's ClusterIPs, otherFront4 for another's.
	front4      = netip.MustParseAddrPort("10.96.0.10:80")
	front6      = netip.MustParseAddrPort("[fd00:96::10]:80")
	otherFront4 = netip.MustParseAddrPort("10.96.0.11:80")
)

const (
	// backendPort is every backend's target port, TCP (HTTP) and UDP (echo).
	backendPort = 8080
	// nsPrefix starts the name of every namespace the tests create, then the test binary's
	// process id, so that a later run can delete what a killed run left behind.
	nsPrefix = "tsflows-"
	// proxyTable is the node's stand-in for kube-proxy's rules.
	proxyTable = "tsflows-proxy"
)

// requireRoot skips the test when it cannot run here, with one line that says why; under
// CI=true it fails instead, so that CI never passes without these tests.
func requireRoot(t testing.TB) {
	t.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "needs root for network namespaces, conntrack and nftables"
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil && reason == "" {
			reason = fmt.Sprintf("needs %s (iproute2, nftables)", tool)
		}
	}
	switch {
	case reason != "" && os.Getenv("CI") == "true":
		t.Fatalf("flows: %s, and CI=true forbids skipping", reason)
	case reason != "":
		t.Skipf("flows: %s", reason)
	}
}

// netNS is a network namespace the test made, with a thread inside it that runs do's
// functions.
type netNS struct {
	name string
	work chan func()
}

var (
	nsCount   atomic.Int32
	sweepOnce sync.Once
)

// newNetNS creates a network namespace, deleted when the test ends.
func newNetNS(t testing.TB, role string) *netNS {
	t.Helper()
	sweepOnce.Do(sweepLeftovers)
	n := &netNS{
		name: fmt.Sprintf("%s%d-%d-%s", nsPrefix, os.Getpid(), nsCount.Add(1), role),
		work: make(chan func()),
	}
	run(t, nil, "ip", "netns", "add", n.name)
	t.Cleanup(func() {
		close(n.work)
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	started := make(chan error)
	go func() {
		// Never unlocked: the thread stays in the namespace, and ends with the goroutine.
		runtime.LockOSThread()
		handle, err := netns.GetFromName(n.name)
		if err == nil {
			err = netns.Set(handle)
			_ = handle.Close()
		}
		started <- err
		if err != nil {
			return
		}
		for fn := range n.work {
			fn()
		}
	}()
	if err := <-started; err != nil {
		t.Fatalf("enter network namespace %s: %v", n.name, err)
	}
	return n
}

// sweepLeftovers deletes the namespaces of test runs that were killed before their cleanup.
func sweepLeftovers() {
	names, _ := filepath.Glob(filepath.Join("/run/netns", nsPrefix+"*"))
	for _, path := range names {
		name := filepath.Base(path)
		pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(name, nsPrefix), "-", 2)[0])
		if err == nil && pid != os.Getpid() && errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			_ = exec.Command("ip", "netns", "del", name).Run()
		}
	}
}

// do runs fn on the namespace's thread: sockets and netlink handles made in fn belong to the
// namespace, and can be used from any goroutine afterwards.
func (n *netNS) do(fn func()) {
	done := make(chan struct{})
	n.work <- func() {
		defer close(done)
		fn()
	}
	<-done
}

// sysctl writes a sysctl of the namespace (key as under /proc/sys): the namespace's thread
// opens the file, and the kernel picks the namespace of the thread that opens it.
func (n *netNS) sysctl(t testing.TB, key, value string) {
	t.Helper()
	var err error
	n.do(func() { err = os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644) })
	if err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, n.name, err)
	}
}

// ip runs ip commands, one per line, in the namespace.
func (n *netNS) ip(t testing.TB, commands ...string) {
	t.Helper()
	run(t, strings.NewReader(strings.Join(commands, "\n")+"\n"), "ip", "-n", n.name, "-batch", "-")
}

// nft runs an nft script, one transaction, in the namespace.
func (n *netNS) nft(t testing.TB, script string) {
	t.Helper()
	run(t, strings.NewReader(script), "ip", "netns", "exec", n.name, "nft", "-f", "-")
}

func run(t testing.TB, stdin io.Reader, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = stdin
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// cluster is one node's network: a node namespace with IP forwarding, and pods in namespaces
// of their own, routed through it (not bridged): /32 and /128 routes on the node, and each
// pod's default route via the node. The node's nftables DNAT rules stand in for kube-proxy.
type cluster struct {
	node     *netNS
	client   *pod
	backends []*pod
	// conntrack reads the node's conntrack table.
	conntrack *netlink.Handle
}

// pod is a network namespace with an address of each family on its eth0.
type pod struct {
	name     string
	ns       *netNS
	ip4, ip6 netip.Addr
}

// newCluster makes a node, a client pod and backends a, b, c..., each backend
// serving HTTP and a UDP echo on backendPort over IPv4 and IPv6.
func newCluster(t testing.TB, backends int) *cluster {
	t.Helper()
	requireRoot(t)
	node := newNetNS(t, "node")
	c := &cluster{node: node}
	node.sysctl(t, "net/ipv6/conf/default/accept_dad", "0")
	node.ip(t,
		"link set lo up",
		"addr add "+nodeIP4.String()+"/32 dev lo",
		"addr add "+nodeIP6.String()+"/128 dev lo nodad",
		// A packet to a ClusterIP that kube-proxy did not NAT (an INVALID one) reaches no
		// backend; here it is dropped at once, as it would be by kube-proxy's INVALID rule.
		"route add blackhole 10.96.0.0/16",
		"route add blackhole fd00:96::/64",
	)
	c.client = c.addPod(t, "client", 2)
	for i := range backends {
		b := c.addPod(t, string(rune('a'+i)), 3+i)
		b.serve(t)
		c.backends = append(c.backends, b)
	}
	node.sysctl(t, "net/ipv4/ip_forward", "1")
	node.sysctl(t, "net/ipv6/conf/all/forwarding", "1")
	// kube-proxy drops INVALID packets on their way through the node.
	node.nft(t, `table inet `+proxyTable+` {
	chain prerouting { type nat hook prerouting priority dstnat; }
	chain output { type nat hook output priority -100; }
	chain forward { type filter hook forward priority filter; ct state invalid drop; }
}
`)
	var err error
	node.do(func() { c.conntrack, err = netlink.NewHandle(unix.NETLINK_NETFILTER) })
	if err != nil {
		t.Fatalf("conntrack netlink handle in the node namespace: %v", err)
	}
	t.Cleanup(c.conntrack.Close)
	return c
}

func (c *cluster) addPod(t testing.TB, name string, n int) *pod {
	t.Helper()
	p := &pod{
		name: name,
		ns:   newNetNS(t, name),
		ip4:  netip.AddrFrom4([4]byte{10, 244, 0, byte(n)}),
		ip6:  netip.MustParseAddr(fmt.Sprintf("fd00:244::%d", n)),
	}
	p.ns.sysctl(t, "net/ipv6/conf/default/accept_dad", "0")
	veth := fmt.Sprintf("veth%d", n)
	c.node.ip(t,
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", veth, p.ns.name),
		"link set "+veth+" up",
		// Every pod's IPv6 gateway is fe80::1 on its own link, as IPv4's is the node address.
		"addr add fe80::1/64 dev "+veth+" nodad",
		fmt.Sprintf("route add %s/32 dev %s scope link", p.ip4, veth),
		fmt.Sprintf("route add %s/128 dev %s", p.ip6, veth),
	)
	p.ns.ip(t,
		"link set lo up",
		fmt.Sprintf("addr add %s/32 dev eth0", p.ip4),
		fmt.Sprintf("addr add %s/128 dev eth0 nodad", p.ip6),
		"link set eth0 up",
		// quickack: a delayed ACK would cross the node up to 40 ms after a call returned,
		// and conntrack would pick it up as a new flow after a test's cut.
		fmt.Sprintf("route add default via %s dev eth0 onlink quickack 1", nodeIP4),
		"route add default via fe80::1 dev eth0 quickack 1",
	)
	return p
}

// endpoint is the pod's backend endpoint in the family of front.
func (p *pod) endpoint(front netip.AddrPort) netip.AddrPort {
	if front.Addr().Is6() {
		return netip.AddrPortFrom(p.ip6, backendPort)
	}
	return netip.AddrPortFrom(p.ip4, backendPort)
}

// route is one DNAT rule: new connections to front (TCP and UDP) go to backend.
type route struct{ front, backend netip.AddrPort }

// proxy stands in for kube-proxy's sync: it replaces the node's DNAT rules, which apply to new
// connections only.
func (c *cluster) proxy(t testing.TB, routes ...route) {
	t.Helper()
	script := fmt.Sprintf("flush chain inet %[1]s prerouting\nflush chain inet %[1]s output\n", proxyTable)
	for _, r := range routes {
		family := "ip"
		if r.front.Addr().Is6() {
			family = "ip6"
		}
		for _, chain := range []string{"prerouting", "output"} {
			script += fmt.Sprintf("add rule inet %s %s %s daddr %s meta l4proto { tcp, udp } th dport %d dnat %s to %s\n",
				proxyTable, chain, family, r.front.Addr(), r.front.Port(), family, r.backend)
		}
	}
	c.node.nft(t, script)
}

// serve answers HTTP requests with the pod's name, and echoes UDP, on backendPort over both
// families, until the test ends.
func (p *pod) serve(t testing.TB) {
	t.Helper()
	server := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(w, p.name)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	t.Cleanup(func() { _ = server.Close() })
	for _, addr := range []netip.Addr{p.ip4, p.ip6} {
		address := netip.AddrPortFrom(addr, backendPort).String()
		var ln net.Listener
		var conn net.PacketConn
		var err, udpErr error
		p.ns.do(func() {
			ln, err = net.Listen("tcp", address)
			conn, udpErr = net.ListenPacket("udp", address)
		})
		if err = errors.Join(err, udpErr); err != nil {
			t.Fatalf("listen on %s in %s: %v", address, p.name, err)
		}
		go func() { _ = server.Serve(ln) }()
		t.Cleanup(func() { _ = conn.Close() })
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := conn.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = conn.WriteTo(buf[:n], from)
			}
		}()
	}
}

// dialer dials from the pod, from localPort when it is not 0.
func (p *pod) dialer(localPort uint16) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		d := net.Dialer{KeepAlive: -1, Control: reuseAddr}
		if localPort != 0 {
			source := p.ip4
			if ap, err := netip.ParseAddrPort(address); err == nil && ap.Addr().Is6() {
				source = p.ip6
			}
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(source, localPort))
		}
		var conn net.Conn
		var err error
		p.ns.do(func() { conn, err = d.DialContext(ctx, network, address) })
		return conn, err
	}
}

// reuseAddr lets a test bind the local port of a connection that was just reset.
func reuseAddr(_, _ string, rc syscall.RawConn) error {
	var err error
	if e := rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }); e != nil {
		return e
	}
	return err
}

// httpClient is a pooled keep-alive client in the pod, with one idle connection per host so
// that each request reuses the same connection while it lives.
func (p *pod) httpClient(t testing.TB, localPort uint16) *http.Client {
	transport := &http.Transport{DialContext: p.dialer(localPort), MaxIdleConnsPerHost: 1, DisableCompression: true}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}
}

// answer is what one request got.
type answer struct {
	backend string         // the body: the name of the backend that answered
	reused  bool           // whether the request went on a pooled connection
	local   netip.AddrPort // the connection's local address
}

// call sends one request through client to front, within timeout. A POST carries a body and
// is not idempotent, so net/http returns its error instead of retrying it on a new connection.
func call(client *http.Client, method string, front netip.AddrPort, timeout time.Duration) (answer, error) {
	var a answer
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		a.reused = info.Reused
		if addr, ok := info.Conn.LocalAddr().(*net.TCPAddr); ok {
			a.local = canonical(addr.AddrPort())
		}
	}})
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader("ping")
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+front.String()+"/", body)
	if err != nil {
		return a, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return a, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	a.backend = string(b)
	return a, err
}

// mustGet sends a GET that must be answered by backend, on a pooled connection or not.
func mustGet(t testing.TB, client *http.Client, front netip.AddrPort, backend string, reused bool) answer {
	t.Helper()
	a, err := call(client, http.MethodGet, front, 5*time.Second)
	switch {
	case err != nil:
		t.Fatalf("GET %s: %v", front, err)
	case a.backend != backend:
		t.Fatalf("GET %s: answered by %q, want %q", front, a.backend, backend)
	case a.reused != reused:
		t.Fatalf("GET %s: on a pooled connection: %v, want %v", front, a.reused, reused)
	}
	return a
}

// tuple names a conntrack entry by protocol and original direction.
type tuple struct {
	proto               uint8
	client, destination netip.AddrPort
}

// entries lists the node's conntrack entries of both families, by original tuple, with each
// entry's reply source.
func (c *cluster) entries(t testing.TB) map[tuple]netip.AddrPort {
	t.Helper()
	entries := map[tuple]netip.AddrPort{}
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		list, err := c.conntrack.ConntrackTableList(netlink.ConntrackTable, family)
		if err != nil {
			t.Fatalf("list conntrack entries: %v", err)
		}
		for _, e := range list {
			client, _ := addrPort(e.Forward.SrcIP, e.Forward.SrcPort)
			destination, _ := addrPort(e.Forward.DstIP, e.Forward.DstPort)
			entries[tuple{e.Forward.Protocol, client, destination}], _ = addrPort(e.Reverse.SrcIP, e.Reverse.SrcPort)
		}
	}
	return entries
}

// openTable opens a Table in the namespace.
func openTable(t testing.TB, n *netNS) *Table {
	t.Helper()
	var table *Table
	var err error
	n.do(func() { table, err = OpenTable() })
	if err != nil {
		t.Fatalf("OpenTable in %s: %v", n.name, err)
	}
	t.Cleanup(table.Close)
	return table
}

// newGuard makes a Guard in the namespace.
func newGuard(t testing.TB, n *netNS, ttl time.Duration) *Guard {
	t.Helper()
	var guard *Guard
	var err error
	n.do(func() { guard, err = NewGuard(ttl) })
	if err != nil {
		t.Fatalf("NewGuard in %s: %v", n.name, err)
	}
	t.Cleanup(func() { _ = guard.Close() })
	return guard
}
