package release

import (
	"context"
	"errors"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
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

// Without the CRD there is no breaker to release, and the uninstall goes on.
func TestFrontsWithoutTheCRD(t *testing.T) {
	scheme := runtime.NewScheme()
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(scheme))
	noCRD := fake.NewClientBuilder().WithScheme(scheme).WithInterceptorFuncs(interceptor.Funcs{
		List: func(context.Context, client.WithWatch, client.ObjectList, ...client.ListOption) error {
			return &meta.NoKindMatchError{GroupKind: schema.GroupKind{Group: "tripswitch.io", Kind: "CircuitBreaker"}}
		}}).Build()
	if n, err := Fronts(context.Background(), noCRD); n != 0 || err != nil {
		t.Fatalf("Fronts = %d, %v; want 0, nil", n, err)
	}
	failing := fake.NewClientBuilder().WithScheme(scheme).WithInterceptorFuncs(interceptor.Funcs{
		List: func(context.Context, client.WithWatch, client.ObjectList, ...client.ListOption) error {
			return errors.New("the API server is away")
		}}).Build()
	if _, err := Fronts(context.Background(), failing); err == nil {
		t.Fatal("an API error was taken for a missing CRD")
	}
}
