package controller

import (
	"time"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// modeInEffect is the mode a breaker runs in at now: spec.mode until spec.modeUntil, Auto from
// then on (and when unset). It also says how long the mode has left, zero when it does not
// end. The manager never rewrites spec.mode: Git, for Argo CD and Flux, stays the truth.
func modeInEffect(spec *tripswitchv1alpha1.CircuitBreakerSpec, now time.Time) (tripswitchv1alpha1.Mode, time.Duration) {
	if spec.Mode == "" || spec.Mode == tripswitchv1alpha1.ModeAuto {
		return tripswitchv1alpha1.ModeAuto, 0
	}
	if spec.ModeUntil == nil {
		return spec.Mode, 0
	}
	left := spec.ModeUntil.Sub(now)
	if left <= 0 {
		return tripswitchv1alpha1.ModeAuto, 0
	}
	return spec.Mode, left
}
