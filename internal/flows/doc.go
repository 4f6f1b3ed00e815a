// Package flows cuts the pooled connections that a breaker's front Service no longer routes,
// for the node agent. kube-proxy programs only new connections: a keep-alive HTTP/1.1, HTTP/2
// or gRPC connection that conntrack already tracks keeps its backend after the front stops
// publishing that backend, so a trip or an ejection would not reach clients that pool.
//
// Table.Cut deletes the conntrack entries whose original destination is the front (one of its
// addresses and service ports, or one of its node ports on any address) and whose reply source
// is an endpoint the front no longer publishes. Only TCP is cut, and only flows conntrack has
// not seen end (TIME_WAIT and CLOSE are left to expire): UDP has no connection to reset, and
// kube-proxy itself clears UDP entries of endpoints that go away. The kernel filters the dump
// (Linux 5.8's CTA_FILTER) by each IPv4 front address and by each port of an IPv6 front or a
// node port, so a cut of a few fronts reads a few entries, not a busy node's whole table; for
// more than a handful of fronts at once, or a kernel that ignores the filter, one whole dump
// serves them all.
//
// Deleting the entry alone is not enough. The client's next packet on the connection is then
// not part of any tracked flow: with net.netfilter.nf_conntrack_tcp_loose=1 conntrack picks it
// up as a new flow, which kube-proxy NATs to a published endpoint, which answers with a reset;
// with loose=0 it is INVALID, kube-proxy drops it, and the client hangs until its own timeout.
// The Guard closes that gap: an nftables table, inet tripswitch-agent, with one set of cut
// tuples (client address and port, front address and port) per address family, and a rule in
// prerouting and in output, both at priority mangle, that answers with a TCP reset a packet
// of such a tuple that is neither SYN nor RST and that conntrack sees as new or invalid. The
// prerouting hook at mangle (-150) runs after conntrack (-200) and before DNAT (-100): the
// packet is refused before kube-proxy could send it anywhere. The output hook covers clients
// in the node's own network namespace (host-network pods). A new connection that reuses a cut
// tuple is never reset: its SYN is excluded, and its later packets are established. Each rule
// counts what it reset (`nft list table inet tripswitch-agent`).
//
// The agent deletes first and arms second; a packet in between is at worst retransmitted after
// the guard is armed, and is reset then. Arming first works as well.
//
// A client that waits for an answer sends nothing by itself: a call in flight to a backend
// that hangs, a database client waiting for its query, an idle pooled connection. Guard.Probe
// makes it send now: a bare ACK from the front to the client, with a random sequence number,
// which the client's kernel answers with an ACK of its own (a packet outside its window asks
// for one); that answer meets the reset rule, and the client's call fails at once instead of
// at its timeout. The probes leave the node untracked (the table's probes chain, at priority
// raw in output, matches exactly a cut tuple reversed), so they create no conntrack entry
// that the client's answer could follow back.
//
// The agent leaves the table behind when it exits: the elements expire by their own timeouts
// (the Guard's ttl), after which the rules match nothing, and NewGuard adopts the table when
// the agent starts again. To remove it by hand on a node:
//
//	nft delete table inet tripswitch-agent
//
// Both Table and Guard work in the network namespace of the thread that opened them (the agent
// runs in the host's); both need CAP_NET_ADMIN, and the Guard's probes CAP_NET_RAW. The Guard needs a kernel that allows reject in
// prerouting; on an older kernel NewGuard fails, and the agent runs without it (loose=1 nodes
// still reset, loose=0 nodes let the cut clients time out).
package flows
