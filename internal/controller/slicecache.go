package controller

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/gate"
)

// StubAnnotation marks an EndpointSlice that the manager's cache holds without its endpoints
// and ports, because no breaker read its Service when it arrived. It exists only in the
// manager's memory, never in the API.
const StubAnnotation = "tripswitch.io/cache-stub"

// stubLookupTimeout bounds how long the cache waits for the CircuitBreaker informer to sync
// before it decides whether a slice is needed; past it, the slice is kept whole.
const stubLookupTimeout = time.Minute

// SliceCache keeps the manager's EndpointSlice cache to what tripswitch reads. A cluster holds
// slices of every Service, and tripswitch reads those of a few: its own (on fronts), the
// targets', fallbacks' and fronts' that breakers name, and the responder's. Every other slice
// is cached as a stub, its metadata and labels without endpoints or ports, so that events still
// find the breakers that care (by the service-name label) and foreign managers of a front are
// still seen, at a fraction of the memory.
//
// A slice that arrived before a breaker named its Service stays a stub until it next changes.
// Reads go through complete, which replaces the stubs of a Service by its slices read live, and
// keeps that read for as long as the cache shows the same resource versions. Nothing that
// gates traffic ever reads a stub as if the Service had no endpoints: a stub that cannot be
// completed is an error, and the gate keeps what it published (fail static).
type SliceCache struct {
	// needs says whether any breaker reads a Service; nil until Setup connects it, and then
	// every slice is kept whole.
	needs atomic.Pointer[func(ctx context.Context, namespace, service string) (bool, error)]
	// live reads slices from the API server when the cache holds stubs; set by Setup.
	live client.Reader

	mu sync.Mutex
	// copies are the live reads of Services whose slices the cache holds as stubs.
	copies map[types.NamespacedName][]discoveryv1.EndpointSlice
}

// NewSliceCache returns a SliceCache; give its Options to the manager and it to Setup.
func NewSliceCache() *SliceCache {
	return &SliceCache{copies: map[types.NamespacedName][]discoveryv1.EndpointSlice{}}
}

// Options returns base with the EndpointSlice transform that stubs unneeded slices, and
// managed fields (which tripswitch never reads) stripped from every cached object.
func (s *SliceCache) Options(base cache.Options) cache.Options {
	if base.DefaultTransform == nil {
		base.DefaultTransform = cache.TransformStripManagedFields()
	}
	byObject := map[client.Object]cache.ByObject{}
	for obj, by := range base.ByObject {
		byObject[obj] = by
	}
	byObject[&discoveryv1.EndpointSlice{}] = cache.ByObject{Transform: s.transform}
	base.ByObject = byObject
	return base
}

// connect makes the cache ask needs which slices to keep, and read stubs' Services through live.
func (s *SliceCache) connect(live client.Reader, needs func(ctx context.Context, namespace, service string) (bool, error)) {
	s.live = live
	s.needs.Store(&needs)
}

var _ toolscache.TransformFunc = (&SliceCache{}).transform

// transform keeps a slice whole when tripswitch may read it, and makes it a stub otherwise.
func (s *SliceCache) transform(obj any) (any, error) {
	slice, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	slice.ManagedFields = nil
	if s.needed(slice) {
		return slice, nil
	}
	return &discoveryv1.EndpointSlice{
		TypeMeta: slice.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Namespace: slice.Namespace, Name: slice.Name, UID: slice.UID,
			ResourceVersion: slice.ResourceVersion, Generation: slice.Generation, Labels: slice.Labels,
			DeletionTimestamp: slice.DeletionTimestamp, Annotations: map[string]string{StubAnnotation: "true"}},
		AddressType: slice.AddressType,
	}, nil
}

// needed says that a slice may be read: one of tripswitch's, or of a Service a breaker names.
// When in doubt (not connected yet, or the breakers cannot be listed) it is kept whole.
func (s *SliceCache) needed(slice *discoveryv1.EndpointSlice) bool {
	switch slice.Labels[discoveryv1.LabelManagedBy] {
	case tripswitchv1alpha1.ManagedBy, gate.ReleasedManagedBy:
		return true
	}
	service := slice.Labels[discoveryv1.LabelServiceName]
	needs := s.needs.Load()
	if needs == nil {
		return true
	}
	if service == "" {
		return false // no Service's slice: nothing reads it
	}
	// Blocks until the breakers are cached: slices that arrive first are judged by them.
	ctx, cancel := context.WithTimeout(context.Background(), stubLookupTimeout)
	defer cancel()
	need, err := (*needs)(ctx, slice.Namespace, service)
	return need || err != nil
}

// complete returns a Service's slices as read from the cache, with its stubs replaced: when
// any slice is a stub, all of the Service's slices as last read live, read again whenever the
// cache shows slices or resource versions that read did not.
func (s *SliceCache) complete(ctx context.Context, namespace, service string, cached []discoveryv1.EndpointSlice) ([]discoveryv1.EndpointSlice, error) {
	key := types.NamespacedName{Namespace: namespace, Name: service}
	stubs := false
	for i := range cached {
		if _, ok := cached[i].Annotations[StubAnnotation]; ok {
			stubs = true
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !stubs {
		delete(s.copies, key)
		return cached, nil
	}
	if s.live == nil {
		return nil, fmt.Errorf("EndpointSlices of Service %q are cached without endpoints and cannot be read live", service)
	}
	if copies, ok := s.copies[key]; ok && sameVersions(cached, copies) {
		return copies, nil
	}
	var list discoveryv1.EndpointSliceList
	if err := s.live.List(ctx, &list, client.InNamespace(namespace), client.MatchingLabels{discoveryv1.LabelServiceName: service}); err != nil {
		return nil, fmt.Errorf("reading EndpointSlices of Service %q from the API server: %w", service, err)
	}
	for i := range list.Items {
		list.Items[i].ManagedFields = nil
	}
	s.copies[key] = list.Items
	return list.Items, nil
}

// sameVersions says that two lists hold the same slices at the same resource versions.
func sameVersions(a, b []discoveryv1.EndpointSlice) bool {
	if len(a) != len(b) {
		return false
	}
	versions := make(map[types.UID]string, len(b))
	for i := range b {
		versions[b[i].UID] = b[i].ResourceVersion
	}
	for i := range a {
		if v, ok := versions[a[i].UID]; !ok || v != a[i].ResourceVersion {
			return false
		}
	}
	return true
}
