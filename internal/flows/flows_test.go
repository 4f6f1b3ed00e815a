package flows

import (
	"net/netip"
	"testing"
)

// TestIndexMatch covers the claim rules without a kernel: destination or node port, and a
// listed backend; the first Target wins; IPv4-mapped and zoned addresses are canonical; bad
// input is ignored.
func TestIndexMatch(t *testing.T) {
	ap := netip.MustParseAddrPort
	a4, b4, a6 := ap("10.244.0.3:8080"), ap("10.244.0.4:8080"), ap("[fd00:244::3]:8080")
	ix := newIndex([]Target{
		{Key: "first", Destinations: []netip.AddrPort{ap("10.96.0.10:80"), ap("[fd00:96::10]:80")}, Backends: []netip.AddrPort{a4, a6}},
		{Key: "second", Destinations: []netip.AddrPort{ap("10.96.0.10:80")}, NodePorts: []uint16{30080}, Backends: []netip.AddrPort{a4, b4}},
		{Key: "mapped", Destinations: []netip.AddrPort{ap("[::ffff:10.96.0.20]:80")}, Backends: []netip.AddrPort{ap("[::ffff:10.244.0.5]:8080")}},
		{Key: "zoned", Destinations: []netip.AddrPort{ap("[fe80::1%eth0]:80")}, Backends: []netip.AddrPort{ap("[fe80::2%eth0]:8080")}},
		{Key: "bad", Destinations: []netip.AddrPort{{}, ap("10.96.0.30:80")}, NodePorts: []uint16{0}, Backends: []netip.AddrPort{{}}},
	})
	for _, tc := range []struct {
		destination, replySource string
		want                     int // -1: no Target claims the flow
	}{
		{"10.96.0.10:80", "10.244.0.3:8080", 0},
		{"10.96.0.10:80", "10.244.0.4:8080", 1},
		{"10.96.0.10:80", "10.244.0.9:8080", -1},   // a backend the front still publishes
		{"10.96.0.10:81", "10.244.0.3:8080", -1},   // another service port
		{"10.96.0.10:80", "10.244.0.3:9090", -1},   // another target port
		{"10.250.0.1:30080", "10.244.0.3:8080", 1}, // a node port, on any address
		{"192.0.2.7:30080", "10.244.0.4:8080", 1},
		{"[fd00:96::10]:80", "[fd00:244::3]:8080", 0},
		{"[fd00:96::10]:80", "10.244.0.3:8080", -1},
		{"10.96.0.20:80", "10.244.0.5:8080", 2},
		{"[fe80::1]:80", "[fe80::2]:8080", 3},
		{"10.96.0.30:80", "0.0.0.0:0", -1},
	} {
		got, ok := ix.match(ap(tc.destination), ap(tc.replySource))
		if !ok {
			got = -1
		}
		if got != tc.want {
			t.Errorf("match(%s, %s) = %d, want %d", tc.destination, tc.replySource, got, tc.want)
		}
	}
	if !ix.ipv4 || !ix.ipv6 {
		t.Errorf("families to dump: IPv4 %v, IPv6 %v; want both", ix.ipv4, ix.ipv6)
	}
}

// TestIndexFamilies: a family is dumped only when some Target can claim a flow of it; node
// ports count in the family of the backends.
func TestIndexFamilies(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name       string
		target     Target
		ipv4, ipv6 bool
	}{
		{"IPv4 front", Target{Destinations: []netip.AddrPort{ap("10.96.0.10:80")}, Backends: []netip.AddrPort{ap("10.244.0.3:8080")}}, true, false},
		{"IPv6 front", Target{Destinations: []netip.AddrPort{ap("[fd00:96::10]:80")}, Backends: []netip.AddrPort{ap("[fd00:244::3]:8080")}}, false, true},
		{"node port", Target{NodePorts: []uint16{30080}, Backends: []netip.AddrPort{ap("10.244.0.3:8080"), ap("[fd00:244::3]:8080")}}, true, true},
		{"no backends", Target{Destinations: []netip.AddrPort{ap("10.96.0.10:80")}, NodePorts: []uint16{30080}}, false, false},
		{"families apart", Target{Destinations: []netip.AddrPort{ap("10.96.0.10:80")}, Backends: []netip.AddrPort{ap("[fd00:244::3]:8080")}}, false, false},
	} {
		ix := newIndex([]Target{tc.target})
		if ix.ipv4 != tc.ipv4 || ix.ipv6 != tc.ipv6 {
			t.Errorf("%s: dumps IPv4 %v, IPv6 %v; want %v, %v", tc.name, ix.ipv4, ix.ipv6, tc.ipv4, tc.ipv6)
		}
	}
}
