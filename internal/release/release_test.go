package release

import (
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestHolder(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	lease := func(holder *string, renewedAgo time.Duration, duration *int32) *coordinationv1.Lease {
		l := &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: holder, LeaseDurationSeconds: duration}}
		if renewedAgo >= 0 {
			l.Spec.RenewTime = &metav1.MicroTime{Time: now.Add(-renewedAgo)}
		}
		return l
	}
	for _, tc := range []struct {
		name  string
		lease *coordinationv1.Lease
		want  string
	}{
		{"no holder", lease(nil, time.Second, ptr.To[int32](15)), ""},
		{"released on cancel: empty holder", lease(ptr.To(""), time.Second, ptr.To[int32](1)), ""},
		{"renewed within its duration", lease(ptr.To("pod-a"), 5*time.Second, ptr.To[int32](15)), "pod-a"},
		{"renewed exactly its duration ago", lease(ptr.To("pod-a"), 15*time.Second, ptr.To[int32](15)), "pod-a"},
		{"expired", lease(ptr.To("pod-a"), 16*time.Second, ptr.To[int32](15)), ""},
		// Without a renew time or a duration nothing says it expired: it is held.
		{"never renewed", lease(ptr.To("pod-a"), -1, ptr.To[int32](15)), "pod-a"},
		{"no duration", lease(ptr.To("pod-a"), time.Hour, nil), "pod-a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Holder(tc.lease, now); got != tc.want {
				t.Fatalf("Holder = %q, want %q", got, tc.want)
			}
		})
	}
}
