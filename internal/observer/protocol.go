// Package observer is the wire between the leader and the observers that give it a second
// opinion (the README's "A second opinion from other nodes"): the leader asks an observer on
// another node to probe, once, endpoints that its own probes see failing, and the observer
// answers with what it saw.
//
// An observer is not a relay. It probes only the endpoints that a CircuitBreaker it can read
// publishes in its front Service's EndpointSlices, only with that breaker's own probe spec,
// and only for a caller that authenticates as the manager's service account. So the worst a
// stolen credential buys is probes the manager makes anyway.
package observer

import (
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// Path is where an observer serves its requests.
const Path = "/v1/observe"

// Audience is the audience of the service-account tokens the leader sends, so that a token
// meant for an observer is good for nothing else, and no other token is good for it.
const Audience = "tripswitch-observer"

// MaxEndpoints bounds one request, so that a request cannot make an observer probe without
// limit. A suspicion names the endpoints of one breaker that failed on the leader.
const MaxEndpoints = 256

// maxBody bounds a request's body: MaxEndpoints addresses with room to spare.
const maxBody = 64 << 10

// Request asks an observer to probe endpoints of one breaker once.
type Request struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Endpoints are "address:port", as the leader probes them.
	Endpoints []string `json:"endpoints"`
}

// Response is what the observer saw.
type Response struct {
	// Observer names the observer's node.
	Observer string `json:"observer"`
	// Results are in the order of the request's endpoints.
	Results []Result `json:"results"`
}

// Result is one endpoint's probe.
type Result struct {
	Endpoint            string `json:"endpoint"`
	Outcome             string `json:"outcome"`
	LatencyMilliseconds int64  `json:"latencyMilliseconds"`
	Message             string `json:"message,omitempty"`
	// Local names an error of the observer's own (its Outcome is Neutral): it says nothing of
	// the endpoint.
	Local string `json:"local,omitempty"`
}

// resultOf puts a probe's result on the wire.
func resultOf(r probe.Result) Result {
	return Result{Endpoint: r.Endpoint.String(), Outcome: r.Outcome.String(),
		LatencyMilliseconds: r.Latency.Milliseconds(), Message: r.Message, Local: r.Local}
}

// Outcomes returns the response's outcomes as the breaker counts them; an outcome it does not
// know counts as Neutral, that is for nothing.
func (r Response) Outcomes() []breaker.Outcome {
	out := make([]breaker.Outcome, len(r.Results))
	for i, res := range r.Results {
		out[i] = breaker.Neutral
		for _, o := range []breaker.Outcome{breaker.Success, breaker.Failure, breaker.Slow} {
			if res.Outcome == o.String() {
				out[i] = o
			}
		}
	}
	return out
}

// Detail is the first failure's endpoint and message, for a condition: "HTTP 503 from
// 10.0.0.7:8080"; empty when nothing failed.
func (r Response) Detail() string {
	for _, res := range r.Results {
		if res.Outcome == breaker.Failure.String() {
			return res.Message + " from " + res.Endpoint
		}
	}
	return ""
}
