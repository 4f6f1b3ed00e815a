//go:build linux

package flows

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestRecorderKeepsOnlyDeletedEntries drives the two filters as netlink v1.3.1's
// ConntrackDeleteFilters does (ask each filter in turn; delete on a match; on success move to
// the next entry, on failure ask the next filter), with one failed deletion: that entry is
// not returned as cut.
func TestRecorderKeepsOnlyDeletedEntries(t *testing.T) {
	ap := netip.MustParseAddrPort
	front, backend := ap("10.96.0.10:80"), ap("10.244.0.3:8080")
	targets := []Target{{Key: "k", Destinations: []netip.AddrPort{front}, Backends: []netip.AddrPort{backend}}}
	entry := func(client string, proto uint8, replySource netip.AddrPort) *netlink.ConntrackFlow {
		c := ap(client)
		return &netlink.ConntrackFlow{
			Forward: netlink.IPTuple{Protocol: proto, SrcIP: net.IP(c.Addr().AsSlice()), SrcPort: c.Port(), DstIP: net.IP(front.Addr().AsSlice()), DstPort: front.Port()},
			Reverse: netlink.IPTuple{Protocol: proto, SrcIP: net.IP(replySource.Addr().AsSlice()), SrcPort: replySource.Port()},
		}
	}
	entries := []*netlink.ConntrackFlow{
		entry("10.244.0.2:1001", unix.IPPROTO_TCP, backend),
		entry("10.244.0.2:1002", unix.IPPROTO_TCP, ap("10.244.0.4:8080")),
		entry("10.244.0.2:1003", unix.IPPROTO_TCP, backend), // its deletion fails
		entry("10.244.0.2:1004", unix.IPPROTO_UDP, backend),
		entry("10.244.0.2:1005", unix.IPPROTO_TCP, backend),
	}
	rec := &recorder{index: newIndex(targets), targets: targets}
	filters := []netlink.CustomConntrackFilter{rec, deleteFailed{rec}}
	for i, e := range entries {
		for _, f := range filters {
			if f.MatchConntrackFlow(e) && i != 2 {
				break
			}
		}
	}
	rec.settle()
	var got []string
	for _, f := range rec.cut {
		got = append(got, f.Client.String())
	}
	if strings.Join(got, " ") != "10.244.0.2:1001 10.244.0.2:1005" {
		t.Fatalf("cut %v, want 10.244.0.2:1001 and 10.244.0.2:1005", got)
	}
}

// TestNewGuardRejectsTTL: the kernel keeps element timeouts in milliseconds.
func TestNewGuardRejectsTTL(t *testing.T) {
	for _, ttl := range []time.Duration{0, -time.Second, time.Microsecond} {
		if g, err := NewGuard(ttl); err == nil {
			_ = g.Close()
			t.Errorf("NewGuard(%s) succeeded", ttl)
		}
	}
}
