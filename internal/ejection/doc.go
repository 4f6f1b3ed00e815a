// Package ejection is the per-endpoint level of tripswitch's two-level breaking: it ejects
// failing endpoints of one breaker's target, under a cap and a panic threshold, and re-admits
// them (and, after the breaker closes, every endpoint) in steps. It is pure like
// internal/breaker: no Kubernetes client, no goroutines, time from an injected clock.
//
// # Model (Envoy's outlier detection where it fits)
//
// Each tracked endpoint is Healthy, Ejected or SlowStart.
//
// Healthy: every non-Neutral outcome counts (Slow as a success). When ConsecutiveFailures in a
// row, or the FailureRate over the endpoint's last Window outcomes, holds, the endpoint is
// ejected for BaseEjectionTime × its ejection count (counted after this ejection), capped at
// MaxEjectionTime. The count drops by one for every BaseEjectionTime the endpoint spent
// un-ejected since its last return (Envoy decrements it per interval while healthy).
//
// The cap: at most floor(endpoints × MaxEjectedPercent / 100) endpoints are ejected at once,
// and never every endpoint. An endpoint whose rule holds beyond the cap stays published and is
// Capped; it is ejected on a later failure if room was made. Envoy ejects one endpoint even
// when the percentage rounds to zero; tripswitch never exceeds the percentage. When the cap
// falls below the endpoints ejected (endpoints removed, a lower percentage, a restore), the
// ejections that end soonest end at once, straight to published.
//
// Ejected: outcomes are ignored until the ejection ends. The first non-Neutral outcome after
// that is its trial: a success returns it (to SlowStart if a slow-start window is set, else
// Healthy, counters cleared); a failure ejects it again (reason TrialFailed, count + 1). The
// owner sends that trial at once: DueTrials lists the endpoints whose ejection ended, from the
// moment it ends.
//
// Panic: healthy = endpoints neither ejected nor Capped. When healthy × 100 < endpoints ×
// PanicThresholdPercent, every endpoint is published (HeldBack is empty), as Envoy routes to
// all hosts in panic mode. Envoy counts hosts that the cap kept in as healthy; tripswitch does
// not, since they fail: so with every endpoint failing the breaker panics whatever the cap.
//
// Slow start: kube-proxy has no per-endpoint weights, so re-admission is the only ramp.
// Endpoints that return from an ejection, and after StartRamp every endpoint but the first
// keep, join one cohort, which lasts one window from its first member's join: endpoints coming
// back a probe apart share its steps. Of the cohort's C members, the ramp publishes 1 at once,
// ceil(25% C) from a third of the window, ceil(50% C) from two thirds, and all at its end; the
// members are admitted in the order they joined, then by address, and one ejected while waiting
// counts as done. Whatever the step, the ramp never holds back the last endpoint that is not
// ejected. New endpoints of the target are
// published at once, never ramped: a rollout replaces every pod, and holding new ones back
// while the old ones terminate could empty the front.
//
// The observer guard: SetPermit installs a function asked before a breaker's first ejection
// (none in force). When it refuses, nothing is ejected and View.Held is set until an
// ejection is permitted or no endpoint's rule holds any more.
//
// The second opinion: SetConfirm installs a function asked before each ejection, after the
// cap and before the guard. When it refuses, the endpoint stays published and healthy; its
// owner asks observers on other nodes and calls Retry when they agree (RuleHolds says whether
// there is still something to agree to).
//
// Restart: Restore reads back the endpoints status listed (at most MaxListed); the others
// start Healthy. Status lists who waits on a ramp, not who was admitted, so a restored ramp
// counts one admitted member (the first always is): it may admit sooner, never later.
package ejection
