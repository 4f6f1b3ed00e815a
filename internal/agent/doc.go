// Package agent is tripswitch's node agent. kube-proxy steers only new connections: a
// pooled keep-alive HTTP/1.1, HTTP/2 or gRPC connection that conntrack already tracks keeps
// reaching its endpoint after a breaker's front stops publishing it. The agent runs on every
// node, in the host network namespace, and watches the EndpointSlices of the fronts tripswitch
// owns; when a front withholds a target endpoint it published a moment before, because the
// breaker tripped or the endpoint level ejected it, the agent cuts this node's conntrack
// entries of flows from that front to that endpoint (package flows), so that the clients' next
// packet draws a reset and their pools reconnect to what the front publishes now.
//
// Fronts decides what to cut from slice changes alone (the slices say their gate state, whose
// endpoints they list and which are held back, and when their endpoints last changed);
// Sweeper waits until kube-proxy has applied the change, cuts in one pass over the table for
// every breaker at once, and sweeps again a few times for connections redialled before
// kube-proxy caught up. It is fail-safe by construction: it cuts only flows whose original
// destination is a front Service that tripswitch claims and whose reply source is a target
// endpoint that front stopped publishing, only on a change it sees within MaxChangeAge of when
// it was made, at most once per transition (each change is judged against the last view), and
// never from the view it starts with. An agent that is missing or crashed leaves clients as
// kube-proxy alone would.
package agent
