package confirm

import "github.com/tripswitch/tripswitch/internal/breaker"

// Rule says which of an observer's probe outcomes count as the failure the leader saw.
type Rule struct {
	// Slow: slow successes count as failures (the suspicion is a slow-rate trip).
	Slow bool
	// Percent: the observer sees the failure when at least this share of its counted probes
	// failed (a failure-rate or slow-rate trip's own percent). 0 means more than half, for
	// consecutive-failure trips and ejections: one probe of each endpoint is no streak.
	Percent int
}

// Judge turns an observer's one probe of each endpoint it was asked about into its vote.
// Neutral outcomes (an HTTP 429, or an error of the observer's own, such as its file
// descriptors or its cancellation) count for nothing; with nothing counted the observer is
// Silent, not Healthy: it saw nothing either way.
func Judge(outcomes []breaker.Outcome, rule Rule) Verdict {
	counted, bad := 0, 0
	for _, o := range outcomes {
		switch o {
		case breaker.Failure:
			counted++
			bad++
		case breaker.Slow:
			counted++
			if rule.Slow {
				bad++
			}
		case breaker.Success:
			counted++
		}
	}
	switch {
	case counted == 0:
		return Silent
	case rule.Percent > 0 && bad*100 >= rule.Percent*counted:
		return Failing
	case rule.Percent <= 0 && 2*bad > counted:
		return Failing
	}
	return Healthy
}
