//go:build linux

package flows

import (
	"fmt"
	"maps"
	"net/netip"
	"testing"
)

// A Cut asks the kernel for the flows to each IPv4 front address and to each port of an IPv6
// front or a node port (Linux 6.18 inverts the IPv6 address comparison of its dump filter), and
// notices a kernel that let through what the filter should have kept back.
func TestSelectors(t *testing.T) {
	ap := netip.MustParseAddrPort
	ix := newIndex([]Target{
		{Destinations: []netip.AddrPort{ap("10.96.0.10:80"), ap("10.96.0.10:443"), ap("[fd00:96::10]:80")},
			NodePorts: []uint16{30080}, Backends: []netip.AddrPort{ap("10.244.0.3:8080"), ap("[fd00:244::3]:8080")}},
	})
	got := map[string]bool{}
	for _, s := range ix.selectors() {
		got[fmt.Sprintf("%d %v %d", s.family, s.addr, s.port)] = true
	}
	want := map[string]bool{
		"2 10.96.0.10 0": true, "10 invalid IP 80": true, "2 invalid IP 30080": true, "10 invalid IP 30080": true,
	}
	if !maps.Equal(got, want) {
		t.Errorf("selectors %v, want %v", got, want)
	}
	byAddr := selector{family: ipv4Family, addr: netip.MustParseAddr("10.96.0.10")}
	byPort := selector{family: ipv6Family, port: 80}
	for _, tt := range []struct {
		sel  selector
		dst  string
		want bool
	}{
		{byAddr, "10.96.0.10:80", true}, {byAddr, "10.96.0.11:80", false},
		{byPort, "[fd00:96::10]:80", true}, {byPort, "[fd00:96::10]:81", false},
	} {
		if got := tt.sel.passes(entry{destination: ap(tt.dst)}); got != tt.want {
			t.Errorf("%+v passes %s: %v, want %v", tt.sel, tt.dst, got, tt.want)
		}
	}
}
