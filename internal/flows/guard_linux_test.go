//go:build linux

package flows

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// resetWithin is how soon a cut client must see its reset: at once, but a loaded 2-core CI
// machine schedules late. Without the guard a loose=0 client waits its own timeout instead.
const resetWithin = time.Second

// pooledThroughA opens a keep-alive connection from the client pod through front, which the
// node sends to backend a, then points the front at b (kube-proxy's sync after a trip), and
// returns the client and the answer that opened the connection.
func pooledThroughA(t *testing.T, c *cluster, front netip.AddrPort) (*http.Client, answer) {
	t.Helper()
	return pooledFromThroughA(t, c, c.client, front)
}

func pooledFromThroughA(t *testing.T, c *cluster, from *pod, front netip.AddrPort) (*http.Client, answer) {
	t.Helper()
	a, b := c.backends[0], c.backends[1]
	c.proxy(t, route{front, a.endpoint(front)})
	client := from.httpClient(t, 0)
	opened := mustGet(t, client, front, "a", false)
	if again := mustGet(t, client, front, "a", true); again.local != opened.local {
		t.Fatalf("the pool answered from %v, then %v: want one connection", opened.local, again.local)
	}
	c.proxy(t, route{front, b.endpoint(front)})
	return client, opened
}

// cutToA cuts the flows through the target's front that reach backend a, and checks that
// exactly the pooled connection opened was cut.
func cutToA(t *testing.T, c *cluster, table *Table, target Target, opened answer, front netip.AddrPort) []Flow {
	t.Helper()
	target.Key = "shop/checkout/trip"
	target.Backends = []netip.AddrPort{c.backends[0].endpoint(front)}
	start := time.Now()
	flows, err := table.Cut([]Target{target})
	t.Logf("Cut took %s", time.Since(start))
	if err != nil {
		t.Fatalf("Cut: %v", err)
	}
	want := Flow{Key: target.Key, Client: opened.local, Destination: front, Backend: target.Backends[0]}
	if len(flows) != 1 || flows[0] != want {
		t.Fatalf("Cut returned %v, want [%v]", flows, want)
	}
	return flows
}

// expectReset sends a POST on the client's pooled connection, which must draw a reset at
// once, and then a GET, which must redial and reach backend b.
func expectReset(t *testing.T, client *http.Client, front netip.AddrPort) {
	t.Helper()
	start := time.Now()
	_, err := call(client, http.MethodPost, front, 5*time.Second)
	elapsed := time.Since(start)
	t.Logf("the pooled connection's next request failed after %s: %v", elapsed, err)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the pooled connection's next request: %v, want a connection reset", err)
	}
	if elapsed > resetWithin {
		t.Fatalf("the reset came after %s, want within %s", elapsed, resetWithin)
	}
	mustGet(t, client, front, "b", false)
}

// resets returns how many packets the guard's rule for the front's family reset in chain.
func resets(t *testing.T, c *cluster, chain string, front netip.AddrPort) uint64 {
	t.Helper()
	var conn *nftables.Conn
	var err error
	c.node.do(func() { conn, err = nftables.New(nftables.AsLasting()) })
	if err != nil {
		t.Fatalf("nftables in the node namespace: %v", err)
	}
	defer func() { _ = conn.CloseLasting() }()
	rules, err := conn.GetRules(guardTable(), &nftables.Chain{Name: chain, Table: guardTable()})
	if err != nil {
		t.Fatalf("list the guard's %s rules: %v", chain, err)
	}
	if len(rules) != len(guardFamilies) {
		t.Fatalf("the guard's %s chain has %d rules, want %d", chain, len(rules), len(guardFamilies))
	}
	family := 0
	if front.Addr().Is6() {
		family = 1
	}
	for _, e := range rules[family].Exprs {
		if counter, ok := e.(*expr.Counter); ok {
			return counter.Packets
		}
	}
	t.Fatalf("the guard's %s rule %d has no counter", chain, family)
	return 0
}

// TestGuardResetsTheCutConnection: with the guard armed for what Cut returned, the pooled
// connection's next request draws a reset at once whatever nf_conntrack_tcp_loose says, from
// the guard (its counter moves), and the client's redial reaches the backend the front
// publishes now. With loose=1 the guard is armed before the cut, with loose=0 after it, as
// the agent does.
func TestGuardResetsTheCutConnection(t *testing.T) {
	for _, loose := range []string{"0", "1"} {
		t.Run("loose="+loose, func(t *testing.T) {
			c := newCluster(t, 2)
			c.node.sysctl(t, "net/netfilter/nf_conntrack_tcp_loose", loose)
			table, guard := openTable(t, c.node), newGuard(t, c.node, time.Minute)
			client, opened := pooledThroughA(t, c, front4)
			if loose == "1" {
				if err := guard.Arm([]Flow{{Client: opened.local, Destination: front4}}); err != nil {
					t.Fatalf("Arm: %v", err)
				}
				cutToA(t, c, table, Target{Destinations: []netip.AddrPort{front4}}, opened, front4)
			} else {
				flows := cutToA(t, c, table, Target{Destinations: []netip.AddrPort{front4}}, opened, front4)
				if err := guard.Arm(flows); err != nil {
					t.Fatalf("Arm: %v", err)
				}
			}
			expectReset(t, client, front4)
			if n := resets(t, c, guardChainPrerouting, front4); n == 0 {
				t.Errorf("the guard's prerouting rule reset no packet: the reset came from elsewhere")
			}
		})
	}
}

// TestWithoutGuardLooseZeroHangs shows why the guard exists: with loose=0 and no guard, the
// cut connection's next request gets no reset; the client waits out its own timeout.
func TestWithoutGuardLooseZeroHangs(t *testing.T) {
	c := newCluster(t, 2)
	c.node.sysctl(t, "net/netfilter/nf_conntrack_tcp_loose", "0")
	client, opened := pooledThroughA(t, c, front4)
	cutToA(t, c, openTable(t, c.node), Target{Destinations: []netip.AddrPort{front4}}, opened, front4)
	const timeout = time.Second
	start := time.Now()
	_, err := call(client, http.MethodPost, front4, timeout)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < timeout {
		t.Fatalf("without the guard the request ended after %s with %v, want the client's %s timeout", time.Since(start), err, timeout)
	}
}

// TestGuardSparesANewConnectionOnACutTuple: after a cut and a reset, a new connection from the
// same client port to the same front works, request after request, while the tuple is armed:
// its SYN and its established packets are not the guard's.
func TestGuardSparesANewConnectionOnACutTuple(t *testing.T) {
	c := newCluster(t, 2)
	c.node.sysctl(t, "net/netfilter/nf_conntrack_tcp_loose", "0")
	table, guard := openTable(t, c.node), newGuard(t, c.node, time.Minute)
	client, opened := pooledThroughA(t, c, front4)
	if err := guard.Arm(cutToA(t, c, table, Target{Destinations: []netip.AddrPort{front4}}, opened, front4)); err != nil {
		t.Fatalf("Arm: %v", err)
	}
	expectReset(t, client, front4)
	before := resets(t, c, guardChainPrerouting, front4)

	again := c.client.httpClient(t, opened.local.Port())
	first := mustGet(t, again, front4, "b", false)
	if first.local != opened.local {
		t.Fatalf("the new connection is from %v, want the cut tuple's %v", first.local, opened.local)
	}
	for range 3 {
		mustGet(t, again, front4, "b", true)
	}
	if n := resets(t, c, guardChainPrerouting, front4); n != before {
		t.Errorf("the guard reset %d packets of the new connection", n-before)
	}
}

// TestCutNodePort cuts a flow to the front's node port on the node's address, which no
// Destination names, and leaves a flow to the same node port that reaches b.
func TestCutNodePort(t *testing.T) {
	c := newCluster(t, 2)
	c.node.sysctl(t, "net/netfilter/nf_conntrack_tcp_loose", "0")
	table, guard := openTable(t, c.node), newGuard(t, c.node, time.Minute)
	nodePort := netip.AddrPortFrom(nodeIP4, 30080)
	c.proxy(t, route{nodePort, c.backends[1].endpoint(nodePort)})
	toB := mustGet(t, c.client.httpClient(t, 0), nodePort, "b", false)

	client, opened := pooledThroughA(t, c, nodePort)
	flows := cutToA(t, c, table, Target{NodePorts: []uint16{nodePort.Port()}}, opened, nodePort)
	if _, ok := c.entries(t)[tuple{6, toB.local, nodePort}]; !ok {
		t.Errorf("the node-port flow to b was cut too")
	}
	if err := guard.Arm(flows); err != nil {
		t.Fatalf("Arm: %v", err)
	}
	expectReset(t, client, nodePort)
}

// TestGuardResetsANodeLocalClient: a client in the node's own namespace (a host-network pod)
// that reaches the front by its node port on the node's address is reset by the output
// chain's rule.
func TestGuardResetsANodeLocalClient(t *testing.T) {
	c := newCluster(t, 2)
	c.node.sysctl(t, "net/netfilter/nf_conntrack_tcp_loose", "0")
	table, guard := openTable(t, c.node), newGuard(t, c.node, time.Minute)
	nodePort := netip.AddrPortFrom(nodeIP4, 30080)
	hostNetwork := &pod{name: "host-network", ns: c.node, ip4: nodeIP4, ip6: nodeIP6}
	client, opened := pooledFromThroughA(t, c, hostNetwork, nodePort)
	if err := guard.Arm(cutToA(t, c, table, Target{NodePorts: []uint16{nodePort.Port()}}, opened, nodePort)); err != nil {
		t.Fatalf("Arm: %v", err)
	}
	expectReset(t, client, nodePort)
	if n := resets(t, c, guardChainOutput, nodePort); n == 0 {
		t.Errorf("the guard's output rule reset no packet: the reset came from elsewhere")
	}
}

// TestCutAndGuardIPv6 is the cut and the reset over IPv6, which leave an IPv4 flow through
// the front to a alone.
func TestCutAndGuardIPv6(t *testing.T) {
	c := newCluster(t, 2)
	c.node.sysctl(t, "net/netfilter/nf_conntrack_tcp_loose", "0")
	table, guard := openTable(t, c.node), newGuard(t, c.node, time.Minute)
	c.proxy(t, route{front4, c.backends[0].endpoint(front4)})
	ipv4 := mustGet(t, c.client.httpClient(t, 0), front4, "a", false)

	client, opened := pooledThroughA(t, c, front6)
	target := Target{Destinations: []netip.AddrPort{front6}, NodePorts: []uint16{front4.Port()}}
	flows := cutToA(t, c, table, target, opened, front6)
	if _, ok := c.entries(t)[tuple{6, ipv4.local, front4}]; !ok {
		t.Errorf("the IPv4 flow was cut too")
	}
	if err := guard.Arm(flows); err != nil {
		t.Fatalf("Arm: %v", err)
	}
	expectReset(t, client, front6)
	if n := resets(t, c, guardChainPrerouting, front6); n == 0 {
		t.Errorf("the guard's IPv6 prerouting rule reset no packet: the reset came from elsewhere")
	}
}

// TestNewGuardAdoptsItsTable: a second NewGuard (an agent restart) keeps the armed tuples and
// does not duplicate the rules; a table of an older layout is replaced; Remove deletes the
// table, and removing it again is no error.
func TestNewGuardAdoptsItsTable(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t, "guard")
	first := newGuard(t, ns, time.Minute)
	armed := []Flow{
		{Client: netip.MustParseAddrPort("10.244.0.2:40000"), Destination: front4},
		{Client: netip.MustParseAddrPort("[fd00:244::2]:40000"), Destination: front6},
	}
	if err := first.Arm(armed); err != nil {
		t.Fatalf("Arm: %v", err)
	}
	second := newGuard(t, ns, time.Minute)
	layout := guardLayout(t, ns)
	want := "prerouting: 2 rules; output: 2 rules; probes: 2 rules; cut-ipv4: 1 tuples; cut-ipv6: 1 tuples"
	if layout != want {
		t.Fatalf("after a second NewGuard: %s; want %s", layout, want)
	}

	ns.nft(t, `delete table inet tripswitch-agent
table inet tripswitch-agent {
	set cut-ipv4 { type ipv4_addr . inet_service; flags timeout; elements = { 10.244.0.2 . 40000 timeout 1m } }
	chain prerouting { type filter hook prerouting priority mangle; }
}
`)
	newGuard(t, ns, time.Minute)
	if layout, want := guardLayout(t, ns), "prerouting: 2 rules; output: 2 rules; probes: 2 rules; cut-ipv4: 0 tuples; cut-ipv6: 0 tuples"; layout != want {
		t.Fatalf("after NewGuard over an older layout: %s; want %s", layout, want)
	}

	if err := second.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if layout := guardLayout(t, ns); layout != "no table" {
		t.Fatalf("after Remove: %s", layout)
	}
	if err := second.Remove(); err != nil {
		t.Fatalf("Remove once more: %v", err)
	}
}

// guardLayout describes the guard's table in the namespace: rules per chain, tuples per set.
func guardLayout(t *testing.T, ns *netNS) string {
	t.Helper()
	var conn *nftables.Conn
	var err error
	ns.do(func() { conn, err = nftables.New(nftables.AsLasting()) })
	if err != nil {
		t.Fatalf("nftables in %s: %v", ns.name, err)
	}
	defer func() { _ = conn.CloseLasting() }()
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	found := false
	for _, table := range tables {
		found = found || table.Name == GuardTableName
	}
	if !found {
		return "no table"
	}
	var parts []string
	for _, chain := range guardChains {
		rules, err := conn.GetRules(guardTable(), &nftables.Chain{Name: chain.name, Table: guardTable()})
		if err != nil {
			t.Fatalf("list rules of %s: %v", chain.name, err)
		}
		parts = append(parts, fmt.Sprintf("%s: %d rules", chain.name, len(rules)))
	}
	sets, err := conn.GetSets(guardTable())
	if err != nil {
		t.Fatalf("list sets: %v", err)
	}
	for _, family := range guardFamilies {
		for _, set := range sets {
			if set.Name == family.set {
				elements, err := conn.GetSetElements(set)
				if err != nil {
					t.Fatalf("list %s: %v", set.Name, err)
				}
				parts = append(parts, fmt.Sprintf("%s: %d tuples", set.Name, len(elements)))
			}
		}
	}
	return strings.Join(parts, "; ")
}

// TestArmFillsTheSets: many tuples are armed, every one of them (the library would let a
// large batch be truncated silently); when a set fills, Arm arms what fits and says how many
// flows it did not arm.
func TestArmFillsTheSets(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t, "full")
	guard := newGuard(t, ns, time.Minute)
	const ipv6Tuples = 3000
	ipv6 := make([]Flow, ipv6Tuples)
	for i := range ipv6 {
		ipv6[i] = Flow{Client: netip.AddrPortFrom(netip.AddrFrom16([16]byte{0xfd, 14: byte(i >> 8), 15: byte(i)}), 40000), Destination: front6}
	}
	ipv4 := make([]Flow, GuardSetSize+2)
	for i := range ipv4 {
		ipv4[i] = Flow{Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 40000), Destination: front4}
	}
	start := time.Now()
	if err := guard.Arm(append(ipv6, ipv4[:GuardSetSize-3]...)); err != nil {
		t.Fatalf("Arm %d flows: %v", ipv6Tuples+GuardSetSize-3, err)
	}
	t.Logf("armed %d tuples in %s", ipv6Tuples+GuardSetSize-3, time.Since(start))
	start = time.Now()
	err := guard.Arm(ipv4[GuardSetSize-3:])
	t.Logf("armed what fitted into the full set in %s: %v", time.Since(start), err)
	if err == nil || !strings.Contains(err.Error(), "2 of 5 flows not armed") {
		t.Fatalf("Arm into a set with room for 3: %v, want an error that 2 of 5 flows were not armed", err)
	}
	want := fmt.Sprintf("cut-ipv4: %d tuples; cut-ipv6: %d tuples", GuardSetSize, ipv6Tuples)
	if layout := guardLayout(t, ns); !strings.HasSuffix(layout, want) {
		t.Fatalf("the guard holds %s; want %s", layout, want)
	}
}
