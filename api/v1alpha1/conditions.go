package v1alpha1

// Condition types. Ready summarises reconciliation; Reconciling and Stalled are the kstatus
// abnormal-true conditions, present only while they are True.
const (
	ConditionReady       = "Ready"
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
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
	// ReasonReconcileError: an API call failed; the reconcile is retried with backoff.
	ReasonReconcileError = "ReconcileError"
)
