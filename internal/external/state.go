package external

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Address is one published address of a host.
type Address struct {
	Addr netip.Addr
	// LastSeen is when an answer last named it.
	LastSeen time.Time
	// TTL is the TTL of that answer.
	TTL time.Duration
}

// Problem says why the last resolution gave no usable addresses.
type Problem string

const (
	// NoProblem: the last resolution gave usable addresses.
	NoProblem Problem = ""
	// ResolutionFailed: the lookup failed (timeout, SERVFAIL, NXDOMAIN, no addresses).
	ResolutionFailed Problem = "ResolutionFailed"
	// AddressesRefused: every address of the answer is one that is never published.
	AddressesRefused Problem = "AddressesRefused"
)

// Refuser says why an address must never be published (such as "a cluster Service address"),
// or "" when it may be.
type Refuser func(netip.Addr) string

// State is what is known of one host: the addresses to publish and the last resolution. Its
// methods are pure functions of the state, the answer and the time given.
type State struct {
	Host string
	// Addresses are sorted by address.
	Addresses []Address
	// Refused are the addresses of the last answer that were refused, with why, sorted.
	Refused []RefusedAddress
	// Server is the DNS server that gave the last answer.
	Server string
	// LastResolution and LastSuccess are zero until the first resolution ends.
	LastResolution, LastSuccess time.Time
	// NextResolution is when the host should be resolved again.
	NextResolution time.Time
	// Problem and Err say why the last resolution failed; both empty after a success.
	Problem Problem
	Err     string
	// Failures counts the failed resolutions since the last success.
	Failures int
	// Incomplete says that one address family failed in the last resolution; its addresses
	// were kept as they were.
	Incomplete string
}

// RefusedAddress is an address an answer named that is never published.
type RefusedAddress struct {
	Addr netip.Addr
	Why  string
}

// Resolved says whether any resolution of the host has succeeded, in this process or (for a
// state restored from status) before.
func (s *State) Resolved() bool { return !s.LastSuccess.IsZero() }

// AddrPorts are the published addresses with port.
func (s *State) AddrPorts(port uint16) []netip.AddrPort {
	out := make([]netip.AddrPort, len(s.Addresses))
	for i, a := range s.Addresses {
		out[i] = netip.AddrPortFrom(a.Addr, port)
	}
	return out
}

// Apply takes one resolution's result at now and returns whether the published addresses
// changed. A failed lookup, or an answer with no address that may be published, keeps every
// address: only an answer replaces addresses, and then only those unseen for longer than their
// retention. At most maxAddresses stay, those seen most recently first.
func (s *State) Apply(now time.Time, answer Answer, err error, refuse Refuser, maxAddresses int) bool {
	s.LastResolution = now
	if err == nil && len(answer.Addresses) == 0 {
		err = errors.New("the answer holds no addresses")
	}
	if err != nil {
		s.fail(now, ResolutionFailed, err.Error())
		return false
	}
	var usable []netip.Addr
	s.Refused = nil
	for _, a := range answer.Addresses {
		a = a.Unmap()
		if why := refuse(a); why != "" {
			s.Refused = append(s.Refused, RefusedAddress{Addr: a, Why: why})
			continue
		}
		usable = append(usable, a)
	}
	slices.SortFunc(s.Refused, func(x, y RefusedAddress) int { return x.Addr.Compare(y.Addr) })
	s.Server = answer.Server
	if len(usable) == 0 {
		named := make([]string, len(s.Refused))
		for i, r := range s.Refused {
			named[i] = fmt.Sprintf("%s (%s)", r.Addr, r.Why)
		}
		s.fail(now, AddressesRefused, "every address answered is refused: "+strings.Join(named, ", "))
		return false
	}

	before := s.addrs()
	ttl := clampTTL(answer.TTL)
	answered := map[int]bool{}
	for _, f := range answer.Answered {
		answered[f] = true
	}
	kept := s.Addresses[:0:0]
	for _, a := range s.Addresses {
		switch {
		case slices.Contains(usable, a.Addr):
			// replaced below with the new sighting
		case len(answer.Answered) > 0 && !answered[family(a.Addr)]:
			// Its family did not answer: nothing is known of it, so it stays as it was.
			kept = append(kept, a)
		case now.Sub(a.LastSeen) < Retention(a.TTL):
			kept = append(kept, a)
		}
	}
	for _, addr := range usable {
		kept = append(kept, Address{Addr: addr, LastSeen: now, TTL: ttl})
	}
	if len(kept) > maxAddresses {
		// Seen most recently first; among equals, the lower address, so that every leader
		// keeps the same ones.
		slices.SortFunc(kept, func(x, y Address) int {
			return cmp.Or(y.LastSeen.Compare(x.LastSeen), x.Addr.Compare(y.Addr))
		})
		kept = kept[:maxAddresses]
	}
	slices.SortFunc(kept, func(x, y Address) int { return x.Addr.Compare(y.Addr) })
	s.Addresses = kept
	s.LastSuccess, s.Problem, s.Err, s.Failures = now, NoProblem, "", 0
	s.Incomplete = ""
	if answer.Incomplete != nil {
		s.Incomplete = answer.Incomplete.Error()
	}
	s.NextResolution = now.Add(ttl)
	return !slices.Equal(before, s.addrs())
}

func (s *State) fail(now time.Time, p Problem, message string) {
	s.Problem, s.Err = p, message
	s.Failures++
	s.NextResolution = now.Add(retryAfter(s.Failures))
}

func (s *State) addrs() []netip.Addr {
	out := make([]netip.Addr, len(s.Addresses))
	for i, a := range s.Addresses {
		out[i] = a.Addr
	}
	return out
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// Clone returns a deep copy.
func (s State) Clone() State {
	s.Addresses = slices.Clone(s.Addresses)
	s.Refused = slices.Clone(s.Refused)
	return s
}
