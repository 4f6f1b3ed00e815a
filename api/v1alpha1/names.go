package v1alpha1

// Well-known names that tripswitch writes on objects other than CircuitBreakers.
const (
	// ClaimAnnotation, on a front Service, names the breaker that gates it: the breaker that
	// created or adopted the Service and owns its EndpointSlices. It is a key of its own, one
	// that the annotation gate never writes, so that no breaker can take another's front by
	// listing it in spec.gate.annotations.
	ClaimAnnotation = "tripswitch.io/gated-by"
	// LegacyClaimAnnotation is the claim that releases before ClaimAnnotation used. A breaker
	// still finds its own fronts by it, and moves them to ClaimAnnotation.
	LegacyClaimAnnotation = BreakerAnnotation
	// HandBackAnnotation, on a front Service's EndpointSlices, says since when tripswitch has
	// been handing the Service back to Kubernetes. The slices stay until Kubernetes publishes
	// ready endpoints of its own, or until the hand-back timeout has passed since then.
	HandBackAnnotation = "tripswitch.io/handing-back-since"
)
