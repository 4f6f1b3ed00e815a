//go:build linux

package flows

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
)

// netlinkTimeout bounds each wait for the kernel, so that a wedged netlink socket fails a cut
// instead of hanging the agent. A dump arrives in many messages; the bound is per message.
const netlinkTimeout = 10 * time.Second

// dumpAttempts is kube-proxy's (pkg/proxy/util.MaxAttemptsEINTR): the kernel interrupts a
// dump when the table changes under it, and a busy node's table always changes, so a few
// fresh dumps are tried before the partial one stands.
var dumpAttempts = wait.Backoff{Steps: 5}

// Table deletes conntrack entries in one network namespace, over netlink. It is safe for
// concurrent use (netlink serialises the requests on its socket) until Close.
type Table struct {
	handle *netlink.Handle
	// sockets holds a netlink socket of the table's namespace for the requests netlink's
	// Handle cannot make: filtered dumps and deletions of one entry.
	sockets map[int]*nl.SocketHandle
	// filter says whether the kernel filters dumps (filterWorks), ignores the filter
	// (filterNone), or has not been asked yet.
	filter int
}

// OpenTable opens conntrack in the network namespace of the calling thread, as it is at the
// time of the call.
func OpenTable() (*Table, error) {
	handle, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("flows: open a conntrack netlink socket: %w", err)
	}
	if err := handle.SetSocketTimeout(netlinkTimeout); err != nil {
		handle.Close()
		return nil, fmt.Errorf("flows: set the conntrack netlink socket's timeout: %w", err)
	}
	sock, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		handle.Close()
		return nil, fmt.Errorf("flows: open a conntrack netlink socket: %w", err)
	}
	tv := unix.NsecToTimeval(netlinkTimeout.Nanoseconds())
	if err := errors.Join(sock.SetSendTimeout(&tv), sock.SetReceiveTimeout(&tv)); err != nil {
		sock.Close()
		handle.Close()
		return nil, fmt.Errorf("flows: set the conntrack netlink socket's timeout: %w", err)
	}
	return &Table{handle: handle, sockets: map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: {Socket: sock}}}, nil
}

// Cut deletes the TCP conntrack entries that some Target claims: original destination in its
// Destinations or original destination port in its NodePorts, and reply source in its
// Backends. Each address family that some Target can claim is dumped once for all of them.
// Cut returns the flows it deleted, each once, with the Key of the first Target that claims
// it.
//
// When the kernel keeps interrupting a dump (the table changed under it), the flows matched
// in the partial dump are still cut and returned, with an error that wraps
// netlink.ErrDumpInterrupted. A failed deletion is not a cut; netlink reports an entry that
// vanished between the dump and its deletion as deleted, so Cut returns it too.
func (t *Table) Cut(targets []Target) ([]Flow, error) {
	return t.CutEach(targets, nil)
}

// eachBatch is how many deleted flows CutEach gathers before it hands them on: the first
// clients are reset after a few deletions rather than after the whole table, and each batch
// costs the guard one transaction.
const eachBatch = 16

// CutEach is Cut, handing the flows it has deleted to each (when not nil) as it goes, in
// batches of up to eachBatch, on the calling goroutine between deletions. What must follow a
// deletion (arming the guard, probing the client) then starts while the dump is still being
// worked through: on a busy node, deleting hundreds of entries one by one takes a while.
func (t *Table) CutEach(targets []Target, each func([]Flow)) ([]Flow, error) {
	ix := newIndex(targets)
	if sels := ix.selectors(); t.filter != filterNone && len(sels) > 0 && len(sels) <= maxFilteredDumps {
		if cut, filtered, err := t.cutFiltered(ix, targets, sels, each); filtered {
			return cut, err
		}
	}
	families := []struct {
		name   string
		family netlink.InetFamily
		needed bool
	}{
		{"IPv4", unix.AF_INET, ix.ipv4},
		{"IPv6", unix.AF_INET6, ix.ipv6},
	}
	var cut []Flow
	var errs []error
	for _, f := range families {
		if !f.needed {
			continue
		}
		rec := &recorder{index: ix, targets: targets, each: each}
		err := retry.OnError(dumpAttempts, interrupted, func() error {
			_, err := t.handle.ConntrackDeleteFilters(netlink.ConntrackTable, f.family, rec, deleteFailed{rec})
			rec.settle()
			rec.handOn(1)
			return err
		})
		cut = append(cut, rec.cut...)
		if err != nil {
			errs = append(errs, fmt.Errorf("flows: cut %s conntrack entries (%d cut): %w", f.name, len(rec.cut), err))
		}
	}
	return cut, errors.Join(errs...)
}

// interrupted matches netlink.ErrDumpInterrupted, which matches EINTR (what netlink returned
// for it before it had a name of its own), and EINTR itself.
func interrupted(err error) bool { return errors.Is(err, unix.EINTR) }

// Ping checks that conntrack answers over netlink, cheaply: it dumps the expectation table,
// which holds next to nothing, rather than the flow table.
func (t *Table) Ping() error {
	_, err := t.handle.ConntrackTableList(netlink.ConntrackExpectTable, unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("flows: conntrack does not answer over netlink: %w", err)
	}
	return nil
}

// Close closes the netlink sockets.
func (t *Table) Close() {
	for _, sh := range t.sockets {
		sh.Socket.Close()
	}
	t.handle.Close()
}

// recorder is the filter that Cut hands to ConntrackDeleteFilters. netlink asks it about each
// entry of the dump, deletes the entry when it says yes, and does not say how the deletion
// went; but after a failed deletion it asks the next filter, deleteFailed, about the same
// entry. So a matched entry is pending until netlink moves on: to deleteFailed (it was not
// cut) or to the next entry (it was).
type recorder struct {
	index   *index
	targets []Target
	// pending is the entry netlink is deleting now, and pendingFlow what it cuts.
	pending     *netlink.ConntrackFlow
	pendingFlow Flow
	cut         []Flow
	// each gets the cut flows from handedOn on, once there are enough of them.
	each     func([]Flow)
	handedOn int
}

// handOn gives each the flows cut since the last time, when there are at least least.
func (r *recorder) handOn(least int) {
	if r.each != nil && len(r.cut)-r.handedOn >= least {
		r.each(r.cut[r.handedOn:len(r.cut):len(r.cut)])
		r.handedOn = len(r.cut)
	}
}

// MatchConntrackFlow says whether a Target claims entry.
func (r *recorder) MatchConntrackFlow(entry *netlink.ConntrackFlow) bool {
	r.settle()
	if entry.Forward.Protocol != unix.IPPROTO_TCP || finished(entry) {
		return false
	}
	client, ok1 := addrPort(entry.Forward.SrcIP, entry.Forward.SrcPort)
	destination, ok2 := addrPort(entry.Forward.DstIP, entry.Forward.DstPort)
	backend, ok3 := addrPort(entry.Reverse.SrcIP, entry.Reverse.SrcPort)
	if !ok1 || !ok2 || !ok3 {
		return false
	}
	target, ok := r.index.match(destination, backend)
	if !ok {
		return false
	}
	r.pending = entry
	r.pendingFlow = Flow{Key: r.targets[target].Key, Client: client, Destination: destination, Backend: backend}
	return true
}

// settle records the pending entry as cut: netlink has moved on without reporting a failure.
func (r *recorder) settle() {
	if r.pending != nil {
		r.cut = append(r.cut, r.pendingFlow)
		r.pending = nil
		r.handOn(eachBatch)
	}
}

// deleteFailed is asked about an entry only after its deletion failed, or after the recorder
// declined it (then nothing is pending); it never matches, so netlink deletes nothing for it.
type deleteFailed struct{ recorder *recorder }

// MatchConntrackFlow drops the entry whose deletion failed from the recorder.
func (f deleteFailed) MatchConntrackFlow(entry *netlink.ConntrackFlow) bool {
	if entry == f.recorder.pending {
		f.recorder.pending = nil
	}
	return false
}

// finished says conntrack has seen the flow end (TIME_WAIT, CLOSE): nothing uses it any more,
// and cutting it would cost a deletion, a guard tuple and a probe for nothing. A client that
// opens a connection per call leaves thousands of these behind.
func finished(entry *netlink.ConntrackFlow) bool {
	tcp, ok := entry.ProtoInfo.(*netlink.ProtoInfoTCP)
	return ok && finishedState(tcp.State)
}

func finishedState(state uint8) bool {
	return state == nl.TCP_CONNTRACK_TIME_WAIT || state == nl.TCP_CONNTRACK_CLOSE
}

func addrPort(ip net.IP, port uint16) (netip.AddrPort, bool) {
	addr, ok := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(addr.Unmap(), port), ok
}
