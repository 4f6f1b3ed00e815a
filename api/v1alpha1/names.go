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

	// GateStateAnnotation, on a front Service's EndpointSlices, is the gate state they were
	// written for: Closed, Open or HalfOpen. The node agent reads it beside the endpoints in
	// one object, so it never has to join a slice with a status written a moment later: the
	// target endpoints that an Open slice withholds are withheld by the trip.
	GateStateAnnotation = "tripswitch.io/gate-state"
	// EndpointsOfAnnotation, on a front Service's EndpointSlices, says whose endpoints the
	// slice lists: the target's (EndpointsOfTarget), the responder's or the fallback's. A
	// slice never mixes them. The node agent cuts connections to target endpoints only: the
	// responder and a fallback are what clients are sent to instead.
	EndpointsOfAnnotation = "tripswitch.io/endpoints-of"
	// HeldBackAnnotation, on a front Service's EndpointSlices, lists (comma-separated) the
	// addresses in that slice that the endpoint level holds back: ejected, or waiting for slow
	// start. Absent when there are none. It tells the node agent that an endpoint published
	// neither ready nor serving is held back by tripswitch, not merely unready in the target.
	HeldBackAnnotation = "tripswitch.io/held-back"
	// CutConnectionsAnnotation, on a front Service's EndpointSlices, is "false" when the
	// breaker's gate.endpointSlice.cutConnections is false, and absent otherwise: the node
	// agent then cuts no connection to this front.
	CutConnectionsAnnotation = "tripswitch.io/cut-connections"
)

// The values of EndpointsOfAnnotation.
const (
	EndpointsOfTarget    = "target"
	EndpointsOfResponder = "responder"
	EndpointsOfFallback  = "fallback"
)
