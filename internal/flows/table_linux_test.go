//go:build linux

package flows

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	. "github.com/onsi/gomega"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// TestCutDeletesExactlyTheMatchingFlows cuts a pooled connection through the front to backend
// a, and nothing else: not a connection through the same front to b, not one through another
// front to a, not a direct one to a, not a UDP flow through the front to a, not an IPv6 flow
// through the front's IPv6 address to a (a Target for IPv4 addresses cannot claim it).
func TestCutDeletesExactlyTheMatchingFlows(t *testing.T) {
	c := newCluster(t, 2)
	a, b := c.backends[0], c.backends[1]

	c.proxy(t, route{front4, b.endpoint(front4)})
	toB := mustGet(t, c.client.httpClient(t, 0), front4, "b", false)

	c.proxy(t,
		route{front4, a.endpoint(front4)},
		route{otherFront4, a.endpoint(otherFront4)},
		route{front6, a.endpoint(front6)},
	)
	pooled := c.client.httpClient(t, 0)
	cut := mustGet(t, pooled, front4, "a", false)
	mustGet(t, pooled, front4, "a", true)
	otherFront := mustGet(t, c.client.httpClient(t, 0), otherFront4, "a", false)
	direct := mustGet(t, c.client.httpClient(t, 0), a.endpoint(front4), "a", false)
	ipv6 := mustGet(t, c.client.httpClient(t, 0), front6, "a", false)
	udp := udpEcho(t, c.client, front4)

	kept := map[tuple]netip.AddrPort{
		{unix.IPPROTO_TCP, toB.local, front4}:                b.endpoint(front4),
		{unix.IPPROTO_TCP, otherFront.local, otherFront4}:    a.endpoint(front4),
		{unix.IPPROTO_TCP, direct.local, a.endpoint(front4)}: a.endpoint(front4),
		{unix.IPPROTO_TCP, ipv6.local, front6}:               a.endpoint(front6),
		{unix.IPPROTO_UDP, udp, front4}:                      a.endpoint(front4),
	}
	cutTuple := tuple{unix.IPPROTO_TCP, cut.local, front4}
	before := c.entries(t)
	for tu, backend := range kept {
		if before[tu] != backend {
			t.Fatalf("before the cut, conntrack entry %+v has reply source %v, want %v", tu, before[tu], backend)
		}
	}
	if before[cutTuple] != a.endpoint(front4) {
		t.Fatalf("before the cut, no conntrack entry for the pooled connection %v", cut.local)
	}

	table := openTable(t, c.node)
	targets := []Target{
		{Key: "shop/checkout/trip", Destinations: []netip.AddrPort{front4}, Backends: []netip.AddrPort{a.endpoint(front4)}},
		// Claims nothing, but has the IPv6 table dumped too.
		{
			Key:          "shop/idle/trip",
			Destinations: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.99:80"), netip.MustParseAddrPort("[fd00:96::99]:80")},
			Backends:     []netip.AddrPort{a.endpoint(front4), a.endpoint(front6)},
		},
	}
	start := time.Now()
	flows, err := table.Cut(targets)
	t.Logf("Cut took %s", time.Since(start))
	if err != nil {
		t.Fatalf("Cut: %v", err)
	}
	want := []Flow{{Key: "shop/checkout/trip", Client: cut.local, Destination: front4, Backend: a.endpoint(front4)}}
	if diff := cmp.Diff(want, flows, cmp.Comparer(func(x, y netip.AddrPort) bool { return x == y })); diff != "" {
		t.Fatalf("Cut returned (-want +got):\n%s", diff)
	}

	after := c.entries(t)
	if _, ok := after[cutTuple]; ok {
		t.Errorf("the cut connection's conntrack entry is still there")
	}
	for tu, backend := range kept {
		if after[tu] != backend {
			t.Errorf("after the cut, conntrack entry %+v has reply source %v, want %v", tu, after[tu], backend)
		}
	}
	if len(after) != len(before)-1 {
		t.Errorf("conntrack holds %d entries after the cut, want %d - 1", len(after), len(before))
	}

	flows, err = table.Cut(targets)
	if err != nil || len(flows) != 0 {
		t.Errorf("a second Cut returned %v, %v; want nothing", flows, err)
	}
}

// udpEcho sends a datagram from the pod to front and waits for the echo, so that conntrack
// tracks the flow; it returns the pod's address of the flow.
func udpEcho(t testing.TB, p *pod, front netip.AddrPort) netip.AddrPort {
	t.Helper()
	var conn net.Conn
	var err error
	p.ns.do(func() { conn, err = net.Dial("udp", front.String()) })
	if err != nil {
		t.Fatalf("dial udp %s: %v", front, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatalf("udp to %s: %v", front, err)
	}
	if n, err := conn.Read(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("udp echo from %s: %q, %v", front, buf[:n], err)
	}
	return canonical(conn.LocalAddr().(*net.UDPAddr).AddrPort())
}

// TestPing checks that conntrack answers in the node namespace.
func TestPing(t *testing.T) {
	requireRoot(t)
	table := openTable(t, newNetNS(t, "ping"))
	if err := table.Ping(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

// TestCutLeavesFinishedFlows: a connection both sides closed lingers in conntrack (TIME_WAIT);
// nothing uses it, and a client that opens a connection per call leaves thousands of them, so
// Cut leaves them to expire instead of deleting, arming and probing each.
func TestCutLeavesFinishedFlows(t *testing.T) {
	c := newCluster(t, 2)
	table := openTable(t, c.node)
	c.proxy(t, route{front4, c.backends[0].endpoint(front4)})
	client := c.client.httpClient(t, 0)
	closed := mustGet(t, client, front4, "a", false)
	client.CloseIdleConnections()
	finishedState := func() (uint8, bool) {
		list, err := c.conntrack.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			t.Fatalf("list conntrack entries: %v", err)
		}
		for _, e := range list {
			if client, ok := addrPort(e.Forward.SrcIP, e.Forward.SrcPort); ok && client == closed.local {
				return e.ProtoInfo.(*netlink.ProtoInfoTCP).State, true
			}
		}
		return 0, false
	}
	NewWithT(t).Eventually(func() uint8 { state, _ := finishedState(); return state }).
		WithTimeout(5*time.Second).WithPolling(10*time.Millisecond).
		Should(Equal(uint8(nl.TCP_CONNTRACK_TIME_WAIT)), "the closed connection's entry lingers in TIME_WAIT")
	open := mustGet(t, c.client.httpClient(t, 0), front4, "a", false)
	flows, err := table.Cut([]Target{{Key: "k", Destinations: []netip.AddrPort{front4}, Backends: []netip.AddrPort{c.backends[0].endpoint(front4)}}})
	if err != nil {
		t.Fatalf("Cut: %v", err)
	}
	if len(flows) != 1 || flows[0].Client != open.local {
		t.Fatalf("Cut returned %v, want only the open connection from %v", flows, open.local)
	}
	if _, ok := finishedState(); !ok {
		t.Errorf("the finished flow's entry was deleted")
	}
}
