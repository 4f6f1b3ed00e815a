package controller

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/gate"
)

func sliceBy(manager, breakerLabel string) discoveryv1.EndpointSlice {
	labels := map[string]string{discoveryv1.LabelServiceName: "payments"}
	if manager != "" {
		labels[discoveryv1.LabelManagedBy] = manager
	}
	if breakerLabel != "" {
		labels[gate.BreakerLabel] = breakerLabel
	}
	return discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Labels: labels}}
}

func frontWith(annotations map[string]string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "payments", Annotations: annotations}}
}

func TestClaimedBy(t *testing.T) {
	long := "payments-" + strings.Repeat("x", 70)
	for _, tt := range []struct {
		name        string
		annotations map[string]string
		slices      []discoveryv1.EndpointSlice
		self, want  string
	}{
		{"the claim names the breaker", map[string]string{tripswitchv1alpha1.ClaimAnnotation: "a"}, nil, "b", "a"},
		{"the claim wins over slices", map[string]string{tripswitchv1alpha1.ClaimAnnotation: "a"},
			[]discoveryv1.EndpointSlice{sliceBy(tripswitchv1alpha1.ManagedBy, "b")}, "b", "a"},
		{"unclaimed", nil, nil, "b", ""},
		{"a legacy claim backed by the breaker's slices",
			map[string]string{tripswitchv1alpha1.LegacyClaimAnnotation: "a"},
			[]discoveryv1.EndpointSlice{sliceBy(tripswitchv1alpha1.ManagedBy, "a")}, "b", "a"},
		{"a legacy claim without slices is only the annotation gate's annotation",
			map[string]string{tripswitchv1alpha1.LegacyClaimAnnotation: "promo", tripswitchv1alpha1.StateAnnotation: "Closed"},
			nil, "b", ""},
		{"a legacy claim overwritten by another breaker's annotation gate: our slices prove ours",
			map[string]string{tripswitchv1alpha1.LegacyClaimAnnotation: "promo"},
			[]discoveryv1.EndpointSlice{sliceBy(tripswitchv1alpha1.ManagedBy, "wallet")}, "wallet", "wallet"},
		{"a long name is found by its label value",
			map[string]string{tripswitchv1alpha1.LegacyClaimAnnotation: long},
			[]discoveryv1.EndpointSlice{sliceBy(tripswitchv1alpha1.ManagedBy, gate.BreakerLabelValue(long))}, "b", long},
		{"a released copy proves nothing", nil, []discoveryv1.EndpointSlice{sliceBy(gate.ReleasedManagedBy, "")}, "b", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			NewWithT(t).Expect(claimedBy(frontWith(tt.annotations), tt.slices, tt.self)).To(Equal(tt.want))
		})
	}
}

func TestForeignManagers(t *testing.T) {
	g := NewWithT(t)
	g.Expect(foreignManagers([]discoveryv1.EndpointSlice{
		sliceBy(tripswitchv1alpha1.ManagedBy, "payments"),
		sliceBy(gate.ReleasedManagedBy, ""),
	}, "payments")).To(BeEmpty(), "our own slices and a released copy are not foreign")
	g.Expect(foreignManagers([]discoveryv1.EndpointSlice{
		sliceBy("endpointslice-controller.k8s.io", ""),
		sliceBy("endpointslicemirroring-controller.k8s.io", ""),
		sliceBy("endpointslice-controller.k8s.io", ""),
		sliceBy(tripswitchv1alpha1.ManagedBy, "other"),
		sliceBy("", ""),
	}, "payments")).To(Equal([]string{"endpointslice-controller.k8s.io", "endpointslicemirroring-controller.k8s.io",
		"nobody (no managed-by label)", "tripswitch.io (breaker other)"}))
}

func TestReserved(t *testing.T) {
	g := NewWithT(t)
	g.Expect(reserved("default", "kubernetes")).To(ContainSubstring("API server"))
	g.Expect(reserved("shop", "kubernetes")).To(BeEmpty())
	g.Expect(reserved("default", "payments")).To(BeEmpty())
}

func TestReadyEndpoints(t *testing.T) {
	g := NewWithT(t)
	ready, notReady := true, false
	kube := sliceBy(endpointSliceControllerName, "")
	kube.Endpoints = []discoveryv1.Endpoint{{Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
		{Conditions: discoveryv1.EndpointConditions{Ready: &notReady}}, {}}
	ours := sliceBy(tripswitchv1alpha1.ManagedBy, "payments")
	ours.Endpoints = []discoveryv1.Endpoint{{}}
	list := []discoveryv1.EndpointSlice{kube, ours}
	g.Expect(readyEndpoints(list, endpointSliceControllerName)).To(Equal(2), "an unset ready condition means ready")
	g.Expect(readyEndpoints(list, "")).To(Equal(3))
}

func TestRoutableEndpoints(t *testing.T) {
	for _, tt := range []struct {
		name           string
		ready, serving *bool
		want           bool
	}{
		{"ready", ptr.To(true), ptr.To(true), true},
		{"unset conditions read as ready", nil, nil, true},
		{"serving while terminating is kube-proxy's fallback", ptr.To(false), ptr.To(true), true},
		{"not ready, serving unknown", ptr.To(false), nil, true},
		{"neither, as an Open front publishes the target", ptr.To(false), ptr.To(false), false},
	} {
		ep := discoveryv1.Endpoint{Conditions: discoveryv1.EndpointConditions{Ready: tt.ready, Serving: tt.serving}}
		if got := routable(ep); got != tt.want {
			t.Errorf("%s: routable = %v, want %v", tt.name, got, tt.want)
		}
	}
}
