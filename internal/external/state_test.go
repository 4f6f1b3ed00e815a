package external

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func ips(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func published(s *State) []string {
	out := make([]string, len(s.Addresses))
	for i, a := range s.Addresses {
		out[i] = a.Addr.String()
	}
	return out
}

func refuseNothing(netip.Addr) string { return "" }

// refuseServiceRange stands for the cluster's Service range, where a rewritten cluster DNS
// answers the front's own ClusterIP.
func refuseServiceRange(a netip.Addr) string {
	if netip.MustParsePrefix("10.96.0.0/16").Contains(a) {
		return "the cluster's Service range"
	}
	return ""
}

func TestApply(t *testing.T) {
	type step struct {
		after   time.Duration // since t0
		answer  Answer
		err     error
		want    []string
		changed bool
		problem Problem
		next    time.Duration // NextResolution - now
	}
	cases := []struct {
		name  string
		max   int
		steps []step
	}{
		{name: "first answer publishes; TTL clamps the next resolution", max: 16, steps: []step{
			{answer: Answer{Addresses: ips("203.0.113.2", "203.0.113.1"), TTL: time.Second},
				want: []string{"203.0.113.1", "203.0.113.2"}, changed: true, next: MinTTL},
			{after: 5 * time.Second, answer: Answer{Addresses: ips("203.0.113.1", "203.0.113.2"), TTL: time.Hour},
				want: []string{"203.0.113.1", "203.0.113.2"}, next: MaxTTL},
		}},
		{name: "failures keep the last good addresses and back off", max: 16, steps: []step{
			{answer: Answer{Addresses: ips("203.0.113.1"), TTL: time.Minute}, want: []string{"203.0.113.1"}, changed: true, next: time.Minute},
			{after: time.Minute, err: errors.New("NXDOMAIN"), want: []string{"203.0.113.1"}, problem: ResolutionFailed, next: time.Second},
			{after: time.Hour, err: errors.New("timeout"), want: []string{"203.0.113.1"}, problem: ResolutionFailed, next: 2 * time.Second},
			{after: time.Hour + time.Second, err: errors.New("SERVFAIL"), want: []string{"203.0.113.1"}, problem: ResolutionFailed, next: 4 * time.Second},
			// An hour later the old address is long past its retention, and the answer replaces it.
			{after: 2 * time.Hour, answer: Answer{Addresses: ips("203.0.113.9"), TTL: time.Minute},
				want: []string{"203.0.113.9"}, changed: true, next: time.Minute},
		}},
		{name: "an empty answer is a failure", max: 16, steps: []step{
			{answer: Answer{Addresses: ips("203.0.113.1"), TTL: time.Minute}, want: []string{"203.0.113.1"}, changed: true, next: time.Minute},
			{after: time.Minute, answer: Answer{TTL: time.Minute}, want: []string{"203.0.113.1"}, problem: ResolutionFailed, next: time.Second},
		}},
		{name: "a rotating CDN answer adds up and does not flap", max: 16, steps: []step{
			{answer: Answer{Addresses: ips("198.51.100.1", "198.51.100.2"), TTL: 20 * time.Second},
				want: []string{"198.51.100.1", "198.51.100.2"}, changed: true, next: 20 * time.Second},
			{after: 20 * time.Second, answer: Answer{Addresses: ips("198.51.100.3", "198.51.100.4"), TTL: 20 * time.Second},
				want: []string{"198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"}, changed: true, next: 20 * time.Second},
			{after: 40 * time.Second, answer: Answer{Addresses: ips("198.51.100.1", "198.51.100.2"), TTL: 20 * time.Second},
				want: []string{"198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"}, next: 20 * time.Second},
			// 3 and 4 were last seen at 20 s; MinRetention later they go.
			{after: 20*time.Second + MinRetention, answer: Answer{Addresses: ips("198.51.100.1", "198.51.100.2"), TTL: 20 * time.Second},
				want: []string{"198.51.100.1", "198.51.100.2"}, changed: true, next: 20 * time.Second},
		}},
		{name: "at most max addresses, the most recently seen", max: 2, steps: []step{
			{answer: Answer{Addresses: ips("198.51.100.1", "198.51.100.2"), TTL: time.Minute},
				want: []string{"198.51.100.1", "198.51.100.2"}, changed: true, next: time.Minute},
			{after: time.Minute, answer: Answer{Addresses: ips("198.51.100.3"), TTL: time.Minute},
				want: []string{"198.51.100.1", "198.51.100.3"}, changed: true, next: time.Minute},
		}},
		{name: "an answer with the front's own address is refused, and the last good set stays", max: 16, steps: []step{
			{answer: Answer{Addresses: ips("203.0.113.1"), TTL: time.Minute}, want: []string{"203.0.113.1"}, changed: true, next: time.Minute},
			{after: time.Minute, answer: Answer{Addresses: ips("10.96.0.10"), TTL: 5 * time.Second},
				want: []string{"203.0.113.1"}, problem: AddressesRefused, next: time.Second},
			// A mixed answer publishes what may be published.
			{after: 2 * time.Minute, answer: Answer{Addresses: ips("10.96.0.10", "203.0.113.5"), TTL: time.Minute},
				want: []string{"203.0.113.1", "203.0.113.5"}, changed: true, next: time.Minute},
		}},
		{name: "a family that did not answer keeps its addresses", max: 16, steps: []step{
			{answer: Answer{Addresses: ips("203.0.113.1", "2001:db8::1"), TTL: time.Minute, Answered: []int{4, 6}},
				want: []string{"203.0.113.1", "2001:db8::1"}, changed: true, next: time.Minute},
			{after: time.Hour, answer: Answer{Addresses: ips("203.0.113.2"), TTL: time.Minute, Answered: []int{4},
				Incomplete: errors.New("AAAA: SERVFAIL")},
				want: []string{"203.0.113.2", "2001:db8::1"}, changed: true, next: time.Minute},
		}},
		{name: "IPv4-mapped IPv6 addresses are unmapped", max: 16, steps: []step{
			{answer: Answer{Addresses: ips("::ffff:203.0.113.1"), TTL: time.Minute}, want: []string{"203.0.113.1"}, changed: true, next: time.Minute},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &State{Host: "api.example.test"}
			for i, st := range tc.steps {
				now := t0.Add(st.after)
				changed := s.Apply(now, st.answer, st.err, refuseServiceRange, tc.max)
				if got := published(s); !slices.Equal(got, st.want) || changed != st.changed {
					t.Fatalf("step %d: published %v (changed %v), want %v (changed %v)", i, got, changed, st.want, st.changed)
				}
				if s.Problem != st.problem {
					t.Fatalf("step %d: problem %q (%s), want %q", i, s.Problem, s.Err, st.problem)
				}
				if got := s.NextResolution.Sub(now); got != st.next {
					t.Fatalf("step %d: next resolution in %s, want %s", i, got, st.next)
				}
			}
		})
	}
}

func TestApplyNeverFailsBeforeAnAnswer(t *testing.T) {
	s := &State{Host: "api.example.test"}
	s.Apply(t0, Answer{}, errors.New("timeout"), refuseNothing, 16)
	if s.Resolved() || len(s.Addresses) != 0 || s.Problem != ResolutionFailed {
		t.Fatalf("after a failed first lookup: resolved %v, %d addresses, problem %q", s.Resolved(), len(s.Addresses), s.Problem)
	}
}

func TestRetryAfter(t *testing.T) {
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 5: 16 * time.Second, 6: 30 * time.Second, 100: 30 * time.Second} {
		if got := retryAfter(n); got != want {
			t.Errorf("retryAfter(%d) = %s, want %s", n, got, want)
		}
	}
}

// FuzzApply drives a State through any sequence of answers, failures and times, and checks
// what must always hold: after the first usable answer the front never goes empty, no refused
// address is ever published, at most max addresses are, and the next resolution is never
// due before now + 1 s or later than now + MaxTTL.
func FuzzApply(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, uint8(3))
	f.Add([]byte{255, 254, 0, 0, 17, 200, 3}, uint8(1))
	f.Fuzz(func(t *testing.T, script []byte, maxAddresses uint8) {
		limit := int(maxAddresses%8) + 1
		s := &State{Host: "api.example.test"}
		now := t0
		everResolved := false
		for i := 0; i+1 < len(script); i += 2 {
			op, arg := script[i], script[i+1]
			now = now.Add(time.Duration(arg) * time.Second)
			var answer Answer
			var err error
			switch op % 4 {
			case 0:
				err = errors.New("SERVFAIL")
			default:
				// Up to 4 addresses from a small pool, some in the refused Service range.
				for j := range int(op % 5) {
					n := (int(arg) + j*int(op)) % 12
					if n < 3 {
						answer.Addresses = append(answer.Addresses, netip.AddrFrom4([4]byte{10, 96, 0, byte(n)}))
					} else {
						answer.Addresses = append(answer.Addresses, netip.AddrFrom4([4]byte{203, 0, 113, byte(n)}))
					}
				}
				answer.TTL = time.Duration(op) * time.Second
			}
			s.Apply(now, answer, err, refuseServiceRange, limit)
			if len(s.Addresses) > 0 {
				everResolved = true
			}
			switch {
			case everResolved && len(s.Addresses) == 0:
				t.Fatalf("step %d: the addresses went empty", i/2)
			case len(s.Addresses) > limit:
				t.Fatalf("step %d: %d addresses, at most %d", i/2, len(s.Addresses), limit)
			case s.NextResolution.Before(now.Add(time.Second)) || s.NextResolution.After(now.Add(MaxTTL)):
				t.Fatalf("step %d: next resolution %s after now", i/2, s.NextResolution.Sub(now))
			}
			for _, a := range s.Addresses {
				if refuseServiceRange(a.Addr) != "" {
					t.Fatalf("step %d: published refused address %s", i/2, a.Addr)
				}
			}
		}
	})
}
