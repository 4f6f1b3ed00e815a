package confirm

import (
	"cmp"
	"hash/fnv"
	"slices"
)

// ZonePolicy says how Choose weighs the observers' zones against the leader's.
type ZonePolicy string

const (
	// ZonesPrefer asks observers in other zones first, then other nodes in the leader's zone:
	// a second opinion from another zone is the one least likely to share the leader's
	// trouble.
	ZonesPrefer ZonePolicy = "Prefer"
	// ZonesRequire asks observers in other zones only. With none, the suspicion is
	// Unconfirmed.
	ZonesRequire ZonePolicy = "Require"
	// ZonesIgnore asks any other node.
	ZonesIgnore ZonePolicy = "Ignore"
)

// Choose picks up to k observers to ask about the suspicion named key, never the leader's
// own node. The order:
//   - sound observers before degraded ones (degraded may be nil): a degraded observer is
//     likely sick itself, wherever it is, and its vote weighs half;
//   - then by zone, as policy says (an observer or a leader without a zone is not known to
//     be elsewhere, so it counts as the leader's zone);
//   - as many distinct zones as k allows before a second observer from any zone (sound
//     observers in known zones only: an unknown zone may be one already asked);
//   - within that, a rotation fixed by key, so that suspicions of different breakers spread
//     over the observers while one breaker asks the same ones each time.
func Choose(k int, policy ZonePolicy, leader Observer, candidates []Observer, degraded func(name string) bool, key string) []Observer {
	if k <= 0 {
		return nil
	}
	type ranked struct {
		Observer
		elsewhere, degraded bool
		spin                uint64
	}
	var pool []ranked
	seen := map[string]bool{leader.Name: true}
	for _, c := range candidates {
		if c.Name == "" || seen[c.Name] {
			continue
		}
		seen[c.Name] = true
		elsewhere := c.Zone != "" && leader.Zone != "" && c.Zone != leader.Zone
		if policy == ZonesRequire && !elsewhere {
			continue
		}
		pool = append(pool, ranked{Observer: c, elsewhere: elsewhere, degraded: degraded != nil && degraded(c.Name), spin: spin(key, c.Name)})
	}
	slices.SortFunc(pool, func(a, b ranked) int {
		if a.degraded != b.degraded {
			if b.degraded {
				return -1
			}
			return 1
		}
		if policy != ZonesIgnore && a.elsewhere != b.elsewhere {
			if a.elsewhere {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(a.spin, b.spin), cmp.Compare(a.Name, b.Name))
	})
	// Two passes over the order: the first takes the first sound observer of each known zone
	// not yet taken, the second fills up with the rest, still in order.
	chosen := make([]Observer, 0, min(k, len(pool)))
	taken := make([]bool, len(pool))
	zones := map[string]bool{leader.Zone: policy != ZonesIgnore}
	for pass := 0; pass < 2 && len(chosen) < k; pass++ {
		for i, r := range pool {
			if len(chosen) == k {
				break
			}
			if taken[i] || (pass == 0 && (r.degraded || r.Zone == "" || zones[r.Zone])) {
				continue
			}
			taken[i] = true
			zones[r.Zone] = true
			chosen = append(chosen, r.Observer)
		}
	}
	return chosen
}

// spin is a stable pseudo-random rank of an observer for one key: FNV-1a, whose last bytes
// barely reach the high bits, then murmur3's finalizer, so that names differing in one
// character rank independently.
func spin(key, name string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(name))
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
