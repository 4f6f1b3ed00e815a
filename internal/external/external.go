// Package external resolves the hosts of external targets (spec.target.external): who may be
// resolved (HostPatterns), what one answer does to the addresses a breaker publishes (State),
// and when each host is resolved again (Tracker). DNS failures, answers that name the
// cluster's own addresses and answers that rotate through a CDN's addresses never empty the
// front: the last good addresses stay until an answer replaces them.
package external

import "time"

// Resolution timing. An answer's TTL sets the next resolution, clamped, so that a TTL of 0
// cannot make a hot loop and a TTL of a day cannot hide a provider's move for a day.
const (
	MinTTL = 5 * time.Second
	MaxTTL = 5 * time.Minute
	// MinRetention is how long an address stays published after the last answer that named
	// it (three TTLs when that is longer). CDNs answer a few of their addresses each time;
	// dropping an address the moment an answer leaves it out would flap the front, and cut
	// the connections the node agent sees withheld.
	MinRetention = 5 * time.Minute
	// maxRetry bounds the wait between resolutions that keep failing.
	maxRetry = 30 * time.Second
	// firstRetry is the wait after the first failure, doubled after each further one.
	firstRetry = time.Second
)

// Retention is how long an address answered with ttl stays after the last answer named it.
func Retention(ttl time.Duration) time.Duration {
	return max(MinRetention, 3*clampTTL(ttl))
}

func clampTTL(ttl time.Duration) time.Duration {
	return min(max(ttl, MinTTL), MaxTTL)
}

// retryAfter is the wait before the next resolution after the n-th failure in a row (n >= 1).
func retryAfter(n int) time.Duration {
	d := firstRetry
	for i := 1; i < n && d < maxRetry; i++ {
		d *= 2
	}
	return min(d, maxRetry)
}
