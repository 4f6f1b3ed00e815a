// Package confirm is tripswitch's second opinion: before a trip or an ejection that the
// leader's own probes call for takes traffic away, observers on other nodes probe the same
// endpoints once, and the change goes ahead only when a majority of those who answered, the
// leader included, see the failure.
//
// One observer cannot tell a failing target from its own sick network: the detector and the
// clients see different things (a gray failure). Production health checkers answer with
// several vantage points: Route 53 counts an endpoint healthy while more than 18% of its
// checkers agree, SWIM asks k other members for an indirect probe before it suspects one, and
// Lifeguard lowers the weight of a member that is itself slow. This package holds those rules
// as pure functions of their inputs and the time:
//   - Choose picks the observers to ask, other zones first;
//   - Judge turns one observer's probes into its vote;
//   - Tally decides from the votes so far, as early as the outcome is certain;
//   - Health marks an observer that disagrees with its peers about many unrelated targets as
//     degraded, so that its votes weigh less until it agrees again.
//
// It does no I/O and reads no clock; the runner asks, waits and applies.
package confirm

import (
	"fmt"
	"slices"
	"strings"
)

// Verdict is what one observer says of the endpoints it was asked about.
type Verdict string

const (
	// Silent: no usable answer (no reply by the deadline, a refusal, or only the observer's
	// own errors). A silent observer does not vote.
	Silent Verdict = "Silent"
	// Failing: the observer sees the failure the leader saw.
	Failing Verdict = "Failing"
	// Healthy: the observer reaches the endpoints.
	Healthy Verdict = "Healthy"
)

// Observer is one vantage point: a node, named as its Node object is, and its zone
// (topology.kubernetes.io/zone; "" when the node has none).
type Observer struct {
	Name string
	Zone string
}

// Ballot is one observer's vote on one suspicion.
type Ballot struct {
	Observer Observer
	Verdict  Verdict
	// Degraded observers' votes weigh DegradedWeight instead of 1 (see Health).
	Degraded bool
	// Detail says what the observer saw, for status and events ("HTTP 503 from
	// 10.0.0.7:8080").
	Detail string
}

// DegradedWeight is the weight of a degraded observer's vote: half, as Lifeguard halves
// the say of a member that is itself slow, so that two sound observers outvote it but its
// vote still counts when it agrees with one of them.
const DegradedWeight = 0.5

func (b Ballot) weight() float64 {
	if b.Degraded {
		return DegradedWeight
	}
	return 1
}

// Outcome is where a suspicion stands.
type Outcome string

const (
	// Pending: observers that have not answered yet could still change the outcome.
	Pending Outcome = "Pending"
	// Confirmed: more than half the weight of those who answered, the leader included, sees
	// the failure. The trip or ejection goes ahead.
	Confirmed Outcome = "Confirmed"
	// Refuted: at least half of it sees the target healthy. Nothing is taken away; the leader
	// counts itself as a suspect observer (see Health).
	Refuted Outcome = "Refuted"
	// Unconfirmed: no observer answered by the deadline, or there was none to ask. The
	// caller falls back to the single-observer rule, under the observer guard.
	Unconfirmed Outcome = "Unconfirmed"
)

// Result is a tally: the outcome, the weights on each side and who voted what.
type Result struct {
	Outcome Outcome
	// Failing and Healthy are the summed weights of the votes on each side, the leader's
	// included in Failing.
	Failing, Healthy float64
	// Leader is the leader's own ballot; Ballots are the observers' in the order asked.
	Leader  Ballot
	Ballots []Ballot
}

// Tally decides a suspicion from the leader's ballot (it saw the failure, so its verdict is
// Failing) and the observers' ballots so far, Silent for those that have not answered. With
// final false it decides early only when the outcome is certain, whatever the others answer:
// a confirmation costs no more than the slowest vote it needs. With final true (the deadline
// has passed, or all have answered) it always decides.
func Tally(leader Ballot, ballots []Ballot, final bool) Result {
	leader.Verdict = Failing
	r := Result{Leader: leader, Ballots: slices.Clone(ballots), Failing: leader.weight()}
	var outstanding float64
	answered := 0
	for _, b := range ballots {
		switch b.Verdict {
		case Failing:
			r.Failing += b.weight()
			answered++
		case Healthy:
			r.Healthy += b.weight()
			answered++
		default:
			outstanding += b.weight()
		}
	}
	switch {
	case len(ballots) == 0:
		r.Outcome = Unconfirmed
	case !final && answered > 0 && r.Failing > r.Healthy+outstanding:
		// Even if every observer still out says healthy, the failing side has the majority.
		// At least one must have answered: the leader alone is the rule this replaces.
		r.Outcome = Confirmed
	case !final && r.Healthy >= r.Failing+outstanding:
		r.Outcome = Refuted
	case !final:
		r.Outcome = Pending
	case answered == 0:
		r.Outcome = Unconfirmed
	case r.Failing > r.Healthy:
		r.Outcome = Confirmed
	default:
		r.Outcome = Refuted
	}
	return r
}

// Voters returns the names of the observers that voted v, the leader first when it did.
func (r Result) Voters(v Verdict) []string {
	var names []string
	for _, b := range r.Ballots {
		if b.Verdict == v {
			names = append(names, b.Observer.Name)
		}
	}
	// By name, not in the order asked (a rotation per breaker), so that messages read the
	// same for every breaker; the leader, when it voted so, comes first.
	slices.Sort(names)
	if r.Leader.Verdict == v {
		names = append([]string{r.Leader.Observer.Name}, names...)
	}
	return names
}

// Message says the outcome in one line for a condition or an event, naming who saw what:
// "held: 2 of 3 observers see payments healthy (from b, c); a sees it failing".
func (r Result) Message(subject string) string {
	failing, healthy, silent := r.Voters(Failing), r.Voters(Healthy), r.Voters(Silent)
	voted := len(failing) + len(healthy)
	var s string
	switch r.Outcome {
	case Confirmed:
		s = fmt.Sprintf("confirmed: %d of %d observers see %s failing (%s)", len(failing), voted, subject, strings.Join(failing, ", "))
		if len(healthy) > 0 {
			s += fmt.Sprintf("; %s see%s it healthy", strings.Join(healthy, ", "), verbS(len(healthy)))
		}
	case Refuted:
		s = fmt.Sprintf("held: %d of %d observers see %s healthy (%s); %s see%s it failing",
			len(healthy), voted, subject, strings.Join(healthy, ", "), strings.Join(failing, ", "), verbS(len(failing)))
	case Unconfirmed:
		if len(r.Ballots) == 0 {
			return fmt.Sprintf("unconfirmed: no other observer to ask about %s; deciding on %s's probes alone, under the observer guard",
				subject, r.Leader.Observer.Name)
		}
		return fmt.Sprintf("unconfirmed: no observer answered about %s in time (%s); deciding on %s's probes alone, under the observer guard",
			subject, strings.Join(silent, ", "), r.Leader.Observer.Name)
	default:
		s = fmt.Sprintf("asking: %d of %d observers answered about %s", voted-1, len(r.Ballots), subject)
	}
	if r.Outcome != Pending && len(silent) > 0 {
		s += fmt.Sprintf("; no answer from %s", strings.Join(silent, ", "))
	}
	if degraded := r.degraded(); len(degraded) > 0 {
		s += fmt.Sprintf("; degraded (alone seeing unrelated targets fail), so their votes weigh half: %s",
			strings.Join(degraded, ", "))
	}
	return s
}

// degraded names the voters that are degraded, the leader first.
func (r Result) degraded() []string {
	var names []string
	for _, b := range r.Ballots {
		if b.Degraded && b.Verdict != Silent {
			names = append(names, b.Observer.Name)
		}
	}
	slices.Sort(names)
	if r.Leader.Degraded {
		names = append([]string{r.Leader.Observer.Name}, names...)
	}
	return names
}

// verbS is the verb's s for a subject of n names ("b sees", "b, c see").
func verbS(n int) string {
	if n == 1 {
		return "s"
	}
	return ""
}
