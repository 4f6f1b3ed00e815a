package controller

import (
	"context"
	"errors"
	"testing"

	. "github.com/onsi/gomega"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/gate"
)

func sliceOf(service, name, managedBy, version string) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, UID: types.UID("uid-" + name), ResourceVersion: version,
			Labels:        map[string]string{discoveryv1.LabelServiceName: service, discoveryv1.LabelManagedBy: managedBy},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager"}}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080))}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.10"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}
}

func isStub(obj any) bool {
	_, ok := obj.(*discoveryv1.EndpointSlice).Annotations[StubAnnotation]
	return ok
}

func TestTheSliceCacheKeepsWholeWhatBreakersRead(t *testing.T) {
	g := NewWithT(t)
	s := NewSliceCache()
	// Not connected yet: everything is kept whole, as without the SliceCache.
	got, err := s.transform(sliceOf("other", "other-1", "endpointslice-controller.k8s.io", "1"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(isStub(got)).To(BeFalse())
	g.Expect(got.(*discoveryv1.EndpointSlice).ManagedFields).To(BeNil(), "managed fields are never cached")

	lookupFails := false
	s.connect(nil, func(_ context.Context, namespace, service string) (bool, error) {
		if lookupFails {
			return false, errors.New("the breakers are not cached yet")
		}
		return namespace == "shop" && service == "payments-backend", nil
	})
	for _, tt := range []struct {
		slice *discoveryv1.EndpointSlice
		stub  bool
	}{
		{slice: sliceOf("payments-backend", "payments-backend-x", "endpointslice-controller.k8s.io", "1")}, // a target
		{slice: sliceOf("payments", "payments-1", tripswitchv1alpha1.ManagedBy, "1")},                      // tripswitch's
		{slice: sliceOf("old-front", "old-front-1", gate.ReleasedManagedBy, "1")},                          // a last copy
		{slice: sliceOf("other", "other-1", "endpointslice-controller.k8s.io", "1"), stub: true},
		{slice: sliceOf("", "orphan", "someone", "1"), stub: true},
	} {
		got, err := s.transform(tt.slice)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(isStub(got)).To(Equal(tt.stub), tt.slice.Name)
		if tt.stub {
			stub := got.(*discoveryv1.EndpointSlice)
			g.Expect(stub.Endpoints).To(BeNil())
			g.Expect(stub.Labels).To(Equal(tt.slice.Labels), "events still find the breakers by the labels")
			g.Expect(stub.ResourceVersion).To(Equal("1"))
		}
	}
	lookupFails = true
	got, err = s.transform(sliceOf("other", "other-1", "endpointslice-controller.k8s.io", "2"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(isStub(got)).To(BeFalse(), "in doubt, kept whole")
}

func TestStubsAreReadLiveAndNeverAsEmpty(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	scheme := runtime.NewScheme()
	g.Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	live := sliceOf("payments-backend", "payments-backend-x", "endpointslice-controller.k8s.io", "")
	live.ManagedFields = nil
	api := fake.NewClientBuilder().WithScheme(scheme).WithObjects(live).Build()
	g.Expect(api.Get(ctx, client.ObjectKeyFromObject(live), live)).To(Succeed())
	lists, listFails := 0, false
	reader := interceptor.NewClient(api, interceptor.Funcs{
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			lists++
			if listFails {
				return errors.New("the API server is unwell")
			}
			return c.List(ctx, list, opts...)
		},
	})
	s := NewSliceCache()
	s.connect(reader, func(context.Context, string, string) (bool, error) { return false, nil })
	stubbed, err := s.transform(live.DeepCopy())
	g.Expect(err).NotTo(HaveOccurred())
	cached := []discoveryv1.EndpointSlice{*stubbed.(*discoveryv1.EndpointSlice)}

	got, err := s.complete(ctx, "shop", "payments-backend", cached)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(HaveLen(1))
	g.Expect(got[0].Endpoints).To(Equal(live.Endpoints), "read live")
	got, err = s.complete(ctx, "shop", "payments-backend", cached)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got[0].Endpoints).To(Equal(live.Endpoints))
	g.Expect(lists).To(Equal(1), "the live read is kept while the cache shows the same version")

	// The slice changed: the cache's stub has a new version, and the live read is redone.
	cached[0].ResourceVersion = "changed"
	listFails = true
	_, err = s.complete(ctx, "shop", "payments-backend", cached)
	g.Expect(err).To(MatchError(ContainSubstring("unwell")), "an error, never a Service without endpoints")
	g.Expect(lists).To(Equal(2))

	// Once the cache holds the slices whole, they are used as they are.
	whole := []discoveryv1.EndpointSlice{*live.DeepCopy()}
	got, err = s.complete(ctx, "shop", "payments-backend", whole)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal(whole))
	g.Expect(lists).To(Equal(2))
	g.Expect(s.copies).To(BeEmpty(), "nothing is kept for Services whose slices are cached whole")
}
