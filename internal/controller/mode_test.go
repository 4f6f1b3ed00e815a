package controller

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

func TestModeInEffect(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(d)} }
	for _, tt := range []struct {
		name     string
		mode     tripswitchv1alpha1.Mode
		until    *metav1.Time
		want     tripswitchv1alpha1.Mode
		wantEnds time.Duration
	}{
		{name: "no end", mode: tripswitchv1alpha1.ModeForceOpen, want: tripswitchv1alpha1.ModeForceOpen},
		{name: "before the end", mode: tripswitchv1alpha1.ModeForceOpen, until: at(10 * time.Minute),
			want: tripswitchv1alpha1.ModeForceOpen, wantEnds: 10 * time.Minute},
		{name: "at the end", mode: tripswitchv1alpha1.ModeForceClosed, until: at(0), want: tripswitchv1alpha1.ModeAuto},
		{name: "after the end", mode: tripswitchv1alpha1.ModeObserve, until: at(-time.Hour), want: tripswitchv1alpha1.ModeAuto},
		{name: "Auto with an end (refused at admission) stays Auto", mode: tripswitchv1alpha1.ModeAuto, until: at(time.Minute),
			want: tripswitchv1alpha1.ModeAuto},
		{name: "unset is Auto", want: tripswitchv1alpha1.ModeAuto},
	} {
		t.Run(tt.name, func(t *testing.T) {
			spec := tripswitchv1alpha1.CircuitBreakerSpec{Mode: tt.mode, ModeUntil: tt.until}
			mode, ends := modeInEffect(&spec, now)
			if mode != tt.want || ends != tt.wantEnds {
				t.Errorf("modeInEffect = %s, %s; want %s, %s", mode, ends, tt.want, tt.wantEnds)
			}
		})
	}
}
