// Package responder is tripswitch's open responder: it answers, at once, the clients that an
// Open breaker's front Service sends to it, so that they fail fast instead of waiting out the
// SYN retransmits that kube-proxy's rate-limited ICMP reject leads to.
//
// It has two listeners. The HTTP listener speaks HTTP/1.1 and cleartext HTTP/2 (h2c with
// prior knowledge) and answers every request without reading its body: gRPC with a
// trailers-only UNAVAILABLE and grpc-retry-pushback-ms, anything else with 503 and
// Retry-After. The reset listener accepts every connection and resets it (SO_LINGER 0).
// Neither keeps a connection, because kube-proxy steers only new connections: a client kept
// alive on the responder would go on being refused after the breaker closes.
//
// A responder is there to take storms of new connections from clients that retry, so on
// Linux it accepts them itself (accept4, no network poller): the reset listener resets each
// with three system calls, and the HTTP listener answers a complete, bodiless HTTP/1.x
// request from its first read on a fast path (fastpath.go), handing everything else, HTTP/2
// included, to net/http with the bytes already read. That halves the CPU of an answer.
//
// A request names its breaker by its Host or :authority header, the front Service's DNS
// name (ParseHost); the Index maps it to the breaker's state and openUntil, which the
// Reconciler keeps in step with the cluster's CircuitBreakers. Decide turns the two into the
// answer, a pure function of the breaker and the time.
//
// The responder only reads CircuitBreakers (get, list, watch) and runs in every replica: no
// leader election, since each replica answers the connections kube-proxy sends it.
package responder
