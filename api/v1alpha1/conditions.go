package v1alpha1

// Condition types. Ready summarises reconciliation; Reconciling and Stalled are the kstatus
// abnormal-true conditions, present only while they are True.
const (
	ConditionReady       = "Ready"
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
	// ConditionAnnotationsApplied says whether every object in spec.gate.annotations carries
	// the breaker's state. A missing object makes it False without failing the breaker.
	ConditionAnnotationsApplied = "AnnotationsApplied"
	// ConditionObserverGuard is True while the observer guard holds the breaker's trip: a
	// trip rule holds, but too many breakers would trip at once, so the breaker stays Closed
	// and traffic keeps flowing. It is absent otherwise.
	ConditionObserverGuard = "ObserverGuard"
	// ConditionResponder says, while the gate calls for tripswitch's responder (whenOpen
	// Respond, Open without a fallback or HalfOpen), whether the front publishes it: True with
	// ResponderPublished, False with NoReadyResponder, when clients get kube-proxy's ICMP
	// reject instead. It is absent otherwise.
	ConditionResponder = "Responder"
	// ConditionEndpointsNotProbed is True while some ready endpoints of the target lie
	// outside the manager's --probe-allowed-cidrs: they are never dialled and count as if not
	// ready, and the message names a few. It is absent otherwise.
	ConditionEndpointsNotProbed = "EndpointsNotProbed"
	// ConditionEjection describes the endpoint level while spec.ejection or
	// spec.recovery.slowStart is set: True while some endpoint is held back or would be
	// (reasons EndpointsEjected, EjectionCapped, Panic, EjectionHeld, EjectionNotApplied,
	// SlowStart), False with NoEndpointsEjected when every endpoint is published. It is absent
	// otherwise.
	ConditionEjection = "Ejection"
	// ConditionQueriesFailing is True while the last evaluation of some query rule failed
	// (no --prometheus-url, Prometheus unreachable, a timeout, a result that is not one
	// number): those rules cannot trip the breaker. It is absent otherwise.
	ConditionQueriesFailing = "QueriesFailing"
	// ConditionResolved says, for an external target, whether its host's last resolution
	// gave usable addresses: True with Resolved; False with ResolutionFailed (the last good
	// addresses stay published), AddressesRefused (every address answered is one tripswitch
	// never publishes) or ExternalHostNotAllowed. It is absent for Service targets.
	ConditionResolved = "Resolved"
	// ConditionConfirmation reports the newest second opinion on a trip (status.confirmation):
	// True with TripConfirmed, False with TripRefuted while the observers hold the trip,
	// Unknown with Asking while answers are due or with Unconfirmed when nobody answered and
	// the manager's probes alone decided. It is absent before the first.
	ConditionConfirmation = "Confirmation"
)

// Condition reasons.
const (
	// ReasonReconciled: the breaker's spec is in force. It says nothing about the target's
	// health; an Open breaker is Ready.
	ReasonReconciled = "Reconciled"
	// ReasonTargetNotFound: spec.target.service does not exist (yet). The breaker recovers by
	// itself when it appears.
	ReasonTargetNotFound = "TargetNotFound"
	// ReasonTargetPortNotFound: the target Service has no port matching spec.target.port.
	ReasonTargetPortNotFound = "TargetPortNotFound"
	// ReasonFallbackPortNotFound: the fallback Service has no port matching its port.
	ReasonFallbackPortNotFound = "FallbackPortNotFound"
	// ReasonInvalidSpec: the spec passed admission but cannot be run; the message says why.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonFrontServiceClaimed: another breaker gates the front Service.
	ReasonFrontServiceClaimed = "FrontServiceClaimed"
	// ReasonFrontServiceHasSelector: the front Service has a selector, so Kubernetes manages
	// its endpoints and tripswitch refuses to compete.
	ReasonFrontServiceHasSelector = "FrontServiceHasSelector"
	// ReasonFrontServicePortMismatch: an adopted front Service lacks the target port's name.
	ReasonFrontServicePortMismatch = "FrontServicePortMismatch"
	// ReasonAnnotatedObjectNotFound: an object listed in spec.gate.annotations does not exist.
	ReasonAnnotatedObjectNotFound = "AnnotatedObjectNotFound"
	// ReasonReconcileError: an API call failed; the reconcile is retried with backoff.
	ReasonReconcileError = "ReconcileError"
	// ReasonFrontServiceReserved: the front Service is one tripswitch never adopts, such as
	// the API server's own Service, kubernetes in default.
	ReasonFrontServiceReserved = "FrontServiceReserved"
	// ReasonFrontServiceHasForeignEndpointSlices: somebody else publishes EndpointSlices for the
	// front Service, so tripswitch could not gate it alone; the message names them.
	ReasonFrontServiceHasForeignEndpointSlices = "FrontServiceHasForeignEndpointSlices"
	// ReasonHandingBack: a front Service the breaker no longer gates is being handed back to
	// Kubernetes; tripswitch's slices stay until Kubernetes publishes ready endpoints.
	ReasonHandingBack = "HandingBack"
	// ReasonTripHeld: the observer guard holds the breaker's trip (ConditionObserverGuard).
	ReasonTripHeld = "TripHeld"
	// ReasonResponderPublished: the front publishes the responder's ready endpoints.
	ReasonResponderPublished = "ResponderPublished"
	// ReasonNoReadyResponder: no responder endpoint is ready (or none is configured), so the
	// front publishes none and kube-proxy rejects clients with rate-limited ICMP.
	ReasonNoReadyResponder = "NoReadyResponder"
	// ReasonOutsideProbeAllowedCIDRs: ready endpoints of the target are outside the
	// manager's --probe-allowed-cidrs (ConditionEndpointsNotProbed).
	ReasonOutsideProbeAllowedCIDRs = "OutsideProbeAllowedCIDRs"
	// ReasonEndpointsEjected: some endpoints are ejected (ConditionEjection).
	ReasonEndpointsEjected = "EndpointsEjected"
	// ReasonEjectionCapped: more endpoints fail than maxEjectedPercent lets the breaker eject.
	ReasonEjectionCapped = "EjectionCapped"
	// ReasonPanic: fewer endpoints are healthy than panicThresholdPercent, so every endpoint
	// is published whatever the ejections.
	ReasonPanic = "Panic"
	// ReasonEjectionHeld: the observer guard holds the breaker's first ejection.
	ReasonEjectionHeld = "EjectionHeld"
	// ReasonEjectionNotApplied: the mode (ForceClosed, Observe) keeps the gate Closed, so
	// ejections are tracked and shown but every endpoint is published.
	ReasonEjectionNotApplied = "EjectionNotApplied"
	// ReasonSlowStart: healthy endpoints wait for their step of the slow-start ramp.
	ReasonSlowStart = "SlowStart"
	// ReasonNoEndpointsEjected: every endpoint is published.
	ReasonNoEndpointsEjected = "NoEndpointsEjected"
	// ReasonQueryFailed: a query rule's last evaluation failed (ConditionQueriesFailing).
	ReasonQueryFailed = "QueryFailed"
	// ReasonResolved: the external target's host resolved to usable addresses.
	ReasonResolved = "Resolved"
	// ReasonResolutionFailed: the last resolution failed (timeout, SERVFAIL, NXDOMAIN); the
	// last good addresses stay published.
	ReasonResolutionFailed = "ResolutionFailed"
	// ReasonAddressesRefused: every address of the last answer is one tripswitch never
	// publishes, such as the front's own ClusterIP from a cluster DNS that already rewrites
	// the host; the last good addresses stay published.
	ReasonAddressesRefused = "AddressesRefused"
	// ReasonExternalHostNotAllowed: the external target's host is not allowed by the
	// manager's --allowed-external-hosts, so it is neither resolved nor probed.
	ReasonExternalHostNotAllowed = "ExternalHostNotAllowed"
	// ReasonAsking: observers are being asked about a suspect trip (ConditionConfirmation).
	ReasonAsking = "Asking"
	// ReasonTripConfirmed: a majority of the observers that answered saw the failure.
	ReasonTripConfirmed = "TripConfirmed"
	// ReasonTripRefuted: the observers see the target healthy; the trip is held.
	ReasonTripRefuted = "TripRefuted"
	// ReasonUnconfirmed: no observer answered in time; the manager's probes alone decided.
	ReasonUnconfirmed = "Unconfirmed"
)
