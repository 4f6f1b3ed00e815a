package controller

import (
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/gate"
)

// The cache finds EndpointSlices by label only by looking at every slice of the namespace, so
// at 10,000 breakers in one namespace each reconcile scanned tens of thousands of slices, a few
// times over. These indexes find a Service's slices, and a breaker's, directly; labels then
// narrow the few slices found.
const (
	// sliceServiceIndex indexes EndpointSlices by their Service (the service-name label).
	sliceServiceIndex = "tripswitch.io/slice-service"
	// sliceBreakerIndex indexes tripswitch's EndpointSlices by their breaker label.
	sliceBreakerIndex = "tripswitch.io/slice-breaker"
)

// sliceIndexes are the EndpointSlice indexes, by name, for the manager's cache and for tests.
var sliceIndexes = map[string]client.IndexerFunc{
	sliceServiceIndex: func(obj client.Object) []string {
		if service := obj.GetLabels()[discoveryv1.LabelServiceName]; service != "" {
			return []string{service}
		}
		return nil
	},
	sliceBreakerIndex: func(obj client.Object) []string {
		labels := obj.GetLabels()
		if labels[discoveryv1.LabelManagedBy] != tripswitchv1alpha1.ManagedBy || labels[gate.BreakerLabel] == "" {
			return nil
		}
		return []string{labels[gate.BreakerLabel]}
	},
}
