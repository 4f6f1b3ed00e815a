//go:build linux

package flows

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// A synthetic node's table: many established TCP entries, of which the 100 targets (one per
// tripped breaker) claim only the few hits.
const (
	syntheticTargets = 100
	syntheticHits    = 5
)

// syntheticTargets: target k's front is 10.96.1.k:80 (and node port 30000+k), its cut
// backends 10.244.{1,2,3}.k:8080.
func syntheticTargetList() []Target {
	targets := make([]Target, syntheticTargets)
	for k := range targets {
		targets[k] = Target{
			Key:          fmt.Sprintf("shop/breaker-%d/trip", k),
			Destinations: []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 1, byte(k)}), 80)},
			NodePorts:    []uint16{uint16(30000 + k)},
		}
		for n := byte(1); n <= 3; n++ {
			targets[k].Backends = append(targets[k].Backends, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, n, byte(k)}), 8080))
		}
	}
	return targets
}

// fillTable adds the entries from..to-1 that no target claims: half go through a target's
// front to an endpoint it still publishes (10.244.9.k), half through fronts no target names.
func fillTable(t testing.TB, h *netlink.Handle, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		client := netip.AddrFrom4([4]byte{10, byte(1 + i>>16), byte(i >> 8), byte(i)})
		k := byte(i % syntheticTargets)
		front := netip.AddrFrom4([4]byte{10, 96, 1 + byte(i%2), k})
		backend := netip.AddrFrom4([4]byte{10, 244, 9, k})
		createEntry(t, h, netip.AddrPortFrom(client, 40000), netip.AddrPortFrom(front, 80), netip.AddrPortFrom(backend, 8080))
	}
}

// addHits adds the entries the targets claim, and returns them as Cut should.
func addHits(t testing.TB, h *netlink.Handle) []Flow {
	t.Helper()
	var hits []Flow
	for j := range syntheticHits {
		k := j * syntheticTargets / syntheticHits
		flow := Flow{
			Key:         fmt.Sprintf("shop/breaker-%d/trip", k),
			Client:      netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 200, 0, byte(j)}), 50000),
			Destination: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 1, byte(k)}), 80),
			Backend:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, 1 + byte(j%3), byte(k)}), 8080),
		}
		if j == syntheticHits-1 { // one through the target's node port, on the node's address
			flow.Destination = netip.AddrPortFrom(nodeIP4, uint16(30000+k))
		}
		createEntry(t, h, flow.Client, flow.Destination, flow.Backend)
		hits = append(hits, flow)
	}
	return hits
}

// createEntry creates an established TCP entry from client to front, NATed to backend.
func createEntry(t testing.TB, h *netlink.Handle, client, front, backend netip.AddrPort) {
	err := h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, &netlink.ConntrackFlow{
		FamilyType: unix.AF_INET,
		Forward: netlink.IPTuple{
			Protocol: unix.IPPROTO_TCP,
			SrcIP:    net.IP(client.Addr().AsSlice()), SrcPort: client.Port(),
			DstIP: net.IP(front.Addr().AsSlice()), DstPort: front.Port(),
		},
		Reverse: netlink.IPTuple{
			Protocol: unix.IPPROTO_TCP,
			SrcIP:    net.IP(backend.Addr().AsSlice()), SrcPort: backend.Port(),
			DstIP: net.IP(client.Addr().AsSlice()), DstPort: client.Port(),
		},
		TimeOut:   600,
		ProtoInfo: &netlink.ProtoInfoTCP{State: nl.TCP_CONNTRACK_ESTABLISHED},
	})
	if err != nil {
		t.Fatalf("create conntrack entry %v -> %v (%v): %v", client, front, backend, err)
	}
}

// syntheticNode returns a namespace's Table and a netlink handle to fill its conntrack table.
func syntheticNode(t testing.TB) (*Table, *netlink.Handle) {
	t.Helper()
	requireRoot(t)
	ns := newNetNS(t, "large")
	var h *netlink.Handle
	var err error
	ns.do(func() { h, err = netlink.NewHandle(unix.NETLINK_NETFILTER) })
	if err != nil {
		t.Fatalf("conntrack netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return openTable(t, ns), h
}

// TestCutLargeTable: among 3,000 entries, 100 targets (more than the kernel's filtered dumps
// are worth: one whole dump) cut exactly their 5, each once, with its own target's Key.
// BenchmarkCut goes to 100,000 entries; the test keeps the kernel's shared table small, for
// the data-plane suite may be sweeping it at the same time.
func TestCutLargeTable(t *testing.T) {
	table, h := syntheticNode(t)
	const entries = 3_000
	start := time.Now()
	fillTable(t, h, 0, entries)
	t.Logf("created %d conntrack entries in %s", entries, time.Since(start))
	want := addHits(t, h)

	start = time.Now()
	flows, err := table.Cut(syntheticTargetList())
	t.Logf("Cut with %d targets over %d entries took %s", syntheticTargets, entries+syntheticHits, time.Since(start))
	if err != nil {
		t.Fatalf("Cut: %v", err)
	}
	sort.Slice(flows, func(i, j int) bool { return flows[i].Client.Addr().Less(flows[j].Client.Addr()) })
	if fmt.Sprint(flows) != fmt.Sprint(want) {
		t.Fatalf("Cut returned\n%v\nwant\n%v", flows, want)
	}
	left, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil || len(left) != entries {
		t.Fatalf("after the cut conntrack holds %d entries (%v), want %d", len(left), err, entries)
	}
}

// BenchmarkCut times one Cut of 100 targets, which claim 5 entries, over 10,000 and then
// 100,000 conntrack entries.
//
// With 100 targets Cut dumps the whole table; with one (a breaker that trips alone, the usual
// case) the kernel filters the dump by the front's address and node port.
func BenchmarkCut(b *testing.B) {
	table, h := syntheticNode(b)
	all := syntheticTargetList()
	hit := addHits(b, h)[0]
	one := []Target{all[0]}
	filled := 0
	for _, entries := range []int{10_000, 100_000} {
		fillTable(b, h, filled, entries)
		filled = entries
		for _, bench := range []struct {
			name    string
			targets []Target
			hits    func() int
		}{
			{"targets=100", all, func() int { addHits(b, h); return syntheticHits }},
			{"targets=1", one, func() int {
				createEntry(b, h, hit.Client, hit.Destination, hit.Backend)
				return 1
			}},
		} {
			b.Run(fmt.Sprintf("entries=%d/%s", entries, bench.name), func(b *testing.B) {
				for range b.N {
					b.StopTimer()
					want := bench.hits()
					b.StartTimer()
					flows, err := table.Cut(bench.targets)
					if err != nil || len(flows) != want {
						b.Fatalf("Cut: %d flows, %v; want %d", len(flows), err, want)
					}
				}
			})
		}
	}
}

// TestCutEachHandsOnEveryCutFlowOnceAsItGoes: the flows come in batches while the dump is
// worked through, every one of them once, as Cut returns them.
func TestCutEachHandsOnEveryCutFlowOnceAsItGoes(t *testing.T) {
	table, h := syntheticNode(t)
	fillTable(t, h, 0, 1000)
	target := Target{Key: "k", Destinations: []netip.AddrPort{netip.MustParseAddrPort("10.96.2.1:80")},
		Backends: []netip.AddrPort{netip.MustParseAddrPort("10.244.7.1:8080")}}
	const hits = 3*eachBatch + 5
	for i := range hits {
		createEntry(t, h, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 201, 0, byte(i)}), 40000), target.Destinations[0], target.Backends[0])
	}
	var batches [][]Flow
	flows, err := table.CutEach([]Target{target}, func(batch []Flow) { batches = append(batches, batch) })
	if err != nil {
		t.Fatalf("CutEach: %v", err)
	}
	var handed []Flow
	for _, b := range batches {
		if len(b) > eachBatch {
			t.Errorf("a batch of %d flows, more than %d", len(b), eachBatch)
		}
		handed = append(handed, b...)
	}
	if len(flows) != hits || fmt.Sprint(handed) != fmt.Sprint(flows) || len(batches) != 4 {
		t.Fatalf("CutEach cut %d flows and handed on %d in %d batches, want %d in 4", len(flows), len(handed), len(batches), hits)
	}
}
