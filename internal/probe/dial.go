package probe

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// DialFunc opens a connection, like net.Dialer.DialContext. Every prober dials through one,
// so tests and the local demo can reach loopback servers behind the documentation addresses
// that the API server accepts in EndpointSlices.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// AddressMap rewrites destination addresses inside From to the same offset inside To, for
// example 192.0.2.7 to 127.0.0.7 with From 192.0.2.0/24 and To 127.0.0.0/24. It is meant for
// tests and local development only.
type AddressMap struct {
	From, To netip.Prefix
}

// ParseAddressMap parses "192.0.2.0/24=127.0.0.0/24". Both prefixes must be of one family and
// length.
func ParseAddressMap(s string) (AddressMap, error) {
	from, to, ok := strings.Cut(s, "=")
	if !ok {
		return AddressMap{}, fmt.Errorf("address map %q: want FROM=TO, such as 192.0.2.0/24=127.0.0.0/24", s)
	}
	var m AddressMap
	var err error
	if m.From, err = netip.ParsePrefix(strings.TrimSpace(from)); err != nil {
		return AddressMap{}, fmt.Errorf("address map %q: %w", s, err)
	}
	if m.To, err = netip.ParsePrefix(strings.TrimSpace(to)); err != nil {
		return AddressMap{}, fmt.Errorf("address map %q: %w", s, err)
	}
	m.From, m.To = m.From.Masked(), m.To.Masked()
	if m.From.Bits() != m.To.Bits() || m.From.Addr().Is4() != m.To.Addr().Is4() {
		return AddressMap{}, fmt.Errorf("address map %q: both sides need the same family and prefix length", s)
	}
	return m, nil
}

// Rewrite maps addr into To when it lies in From, and returns it unchanged otherwise.
func (m AddressMap) Rewrite(addr netip.Addr) netip.Addr {
	if !m.From.IsValid() || !m.From.Contains(addr) {
		return addr
	}
	from, to := m.From.Addr().AsSlice(), m.To.Addr().AsSlice()
	out := addr.AsSlice()
	for i := range out {
		// Inside the prefix the network bits equal From's, so XOR swaps them for To's and
		// keeps the host bits.
		out[i] ^= from[i] ^ to[i]
	}
	mapped, _ := netip.AddrFromSlice(out)
	return mapped
}

// Dialer wraps next so that it dials rewritten addresses.
func (m AddressMap) Dialer(next DialFunc) DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		if ap, err := netip.ParseAddrPort(address); err == nil {
			address = netip.AddrPortFrom(m.Rewrite(ap.Addr()), ap.Port()).String()
		}
		return next(ctx, network, address)
	}
}

// LoopbackOnly wraps next so that it refuses every destination outside 127.0.0.0/8 and ::1.
// Tests and the local demo put it under an AddressMap, so that whatever addresses their slices
// hold, no probe leaves the machine.
func LoopbackOnly(next DialFunc) DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		if ap, err := netip.ParseAddrPort(address); err != nil || !ap.Addr().IsLoopback() {
			return nil, fmt.Errorf("refusing to dial %s: only loopback addresses are allowed here", address)
		}
		return next(ctx, network, address)
	}
}
