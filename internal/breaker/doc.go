// Package breaker is tripswitch's circuit-breaker state machine. It is pure: no Kubernetes
// client, no goroutines, no time.Now; time comes from an injected clock and jitter from a
// seeded function, so every decision is reproducible.
//
// # Model
//
// A Breaker turns a stream of probe outcomes into states:
//
//	          trip rule holds                 openUntil reached (Tick)
//	Closed ───────────────────▶ Open ─────────────────────────────▶ HalfOpen
//	   ▲                          ▲                                    │
//	   │                          └──────── a trial fails ─────────────┤
//	   └──────────── successThreshold trials succeed ──────────────────┘
//
// Outcomes are Success, Failure, Slow (a success slower than the probe's slowThreshold) and
// Neutral. Slow counts toward the slow rate and otherwise as a success; Neutral counts toward
// nothing at all.
//
// Closed: every outcome is recorded. The breaker trips when any rule holds: consecutive
// failures ≥ N, or the failure (slow) share of the last W counted outcomes ≥ P%, judged only once
// the window holds minimumProbes outcomes. One ring buffer, sized to the largest window, keeps
// a running count per rule, so Record is O(1) and does not allocate.
//
// Open: outcomes are dropped. The breaker stays Open until openUntil = now + openDuration ×
// factor^(openStreak−1), capped at maxOpenDuration, then spread by ± jitterPercent. It never
// leaves Open lazily: NextDeadline says when it wants attention, and the owner calls Tick then.
//
// HalfOpen: Admit hands out at most trialProbes trial slots; outcomes without a slot are
// dropped. A failed trial reopens the breaker with openStreak+1; a Neutral one gives its slot
// back; successThreshold successes close it. Closing clears the window and openStreak.
//
// Every admitted probe holds a Ticket, and its outcome is recorded with it. Each change of
// state starts a new attempt, and an outcome counts only in the attempt its ticket was handed
// out in: a probe admitted while Closed that returns after the breaker opened, or a trial of an
// earlier HalfOpen attempt, decides nothing. A probe that will have no outcome gives its trial
// slot back with Release, and trials left without an outcome for TrialTimeout are written off
// at the next Tick, so no lost trial can keep a breaker HalfOpen for good.
//
// A TripPermit, when set, is asked before every trip out of Closed; when it refuses, the
// breaker stays Closed, Held reports the rule that holds, and the permit is asked again on the
// next outcome for which a rule holds. The observer guard holds trips this way.
//
// Modes (Auto, ForceOpen, ForceClosed, Observe) never stop the state machine; they only decide
// the gate state, the state that traffic sees. Every change of state or gate is returned as a
// Transition value with a Reason. Reset closes the breaker; Reconfigure applies a new Config,
// keeping the state, the counters and the newest outcomes that still fit.
//
// Snapshot and Restore carry exactly what the CircuitBreaker status holds, so a restarted
// manager or a new leader resumes an Open breaker with the same openUntil. The rate window is
// not in status and starts empty after Restore; minimumProbes keeps it from judging too soon.
//
// A Breaker is not safe for concurrent use: its owner serializes calls.
package breaker
