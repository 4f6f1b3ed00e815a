//go:build linux

package flows

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/util/retry"
)

// A whole dump of a busy node's conntrack table costs far more than the cut itself: the kernel
// copies every entry, of every network namespace's table that shares its hash, and netlink
// parses each (a sweep over 10,000 entries took 42-59 ms, over 100,000 380-657 ms). Since
// Linux 5.8 ctnetlink filters a dump in the kernel (CTA_FILTER): Cut asks for the TCP flows to
// each front address, or to each node port, and gets just those. A kernel without the filter
// ignores the attribute and sends everything; Cut notices (an entry the filter would not have
// let through) and dumps the whole table once from then on.
const (
	ctaFilter                  = 25 // CTA_FILTER in enum ctattr_type
	ctaFilterOrigFlags         = 1  // CTA_FILTER_ORIG_FLAGS
	ctaFilterFlagIPDst         = 1 << 1
	ctaFilterFlagProtoNum      = 1 << 3
	ctaFilterFlagProtoDstPort  = 1 << 5
	ctaIPv6Src                 = 3 // CTA_IP_V6_SRC
	ctaIPv6Dst                 = 4 // CTA_IP_V6_DST
	ctaProtoinfo               = 4 // CTA_PROTOINFO
	ctaProtoinfoTCP            = 1 // CTA_PROTOINFO_TCP
	ctaProtoDstPort            = 3 // CTA_PROTO_DST_PORT
	ipv4Family, ipv6Family     = unix.AF_INET, unix.AF_INET6
	nfgenHeader                = 4 // struct nfgenmsg, before the attributes
	nfNetlinkConntrack         = 1 // NFNL_SUBSYS_CTNETLINK, the high byte of the message type
	filterUnknown, filterNone  = 0, 1
	filterWorks                = 2
	maxFilteredDumps           = 8
	conntrackMessage           = nfNetlinkConntrack<<8 | nl.IPCTNL_MSG_CT_GET
	conntrackDeleteMessageType = nfNetlinkConntrack<<8 | nl.IPCTNL_MSG_CT_DELETE
)

// selector is one filtered dump: the TCP flows of a family to addr on any port, or, when addr
// is not valid, to port on any address (a node port).
type selector struct {
	family uint8
	addr   netip.Addr
	port   uint16
}

// selectors are the filtered dumps that find every flow the index can claim.
func (ix *index) selectors() []selector {
	seen := map[selector]bool{}
	var out []selector
	add := func(s selector) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for k := range ix.byDestination {
		if k.front.Addr().Is4() {
			add(selector{family: ipv4Family, addr: k.front.Addr()})
		} else {
			// Linux 6.18 compares IPv6 addresses in the dump filter the wrong way round (it lets
			// through the entries whose address differs), so an IPv6 front is found by its port.
			add(selector{family: ipv6Family, port: k.front.Port()})
		}
	}
	for k := range ix.byNodePort {
		add(selector{family: familyOf(k.backend.Addr()), port: k.port})
	}
	return out
}

func familyOf(a netip.Addr) uint8 {
	if a.Is4() {
		return ipv4Family
	}
	return ipv6Family
}

// passes says whether the kernel's filter for s lets e through: when it did not, the kernel
// ignored the filter.
func (s selector) passes(e entry) bool {
	if s.addr.IsValid() {
		return e.destination.Addr() == s.addr
	}
	return e.destination.Port() == s.port
}

// entry is what a cut needs of a conntrack entry.
type entry struct {
	proto                        uint8
	client, destination, backend netip.AddrPort
	tcpState                     uint8
	hasState                     bool
	zone                         uint16
}

// finished says conntrack has seen the flow end (see finished in table_linux.go).
func (e entry) finished() bool { return e.hasState && finishedState(e.tcpState) }

// cutFiltered cuts the flows ix claims with a filtered dump per selector, and reports false
// (having deleted nothing) when the kernel turns out to ignore the filter.
func (t *Table) cutFiltered(ix *index, targets []Target, sels []selector, each func([]Flow)) (cut []Flow, filtered bool, err error) {
	var matched []entry
	var flows []Flow
	seen := map[[2]netip.AddrPort]bool{}
	var errs []error
	for _, sel := range sels {
		ignored := false
		err := retry.OnError(dumpAttempts, interrupted, func() error {
			return t.dump(sel, func(e entry) {
				if !sel.passes(e) || e.proto != unix.IPPROTO_TCP {
					ignored = true
					return
				}
				if e.finished() || seen[[2]netip.AddrPort{e.client, e.destination}] {
					return
				}
				target, ok := ix.match(e.destination, e.backend)
				if !ok {
					return
				}
				seen[[2]netip.AddrPort{e.client, e.destination}] = true
				matched = append(matched, e)
				flows = append(flows, Flow{Key: targets[target].Key, Client: e.client, Destination: e.destination, Backend: e.backend})
			})
		})
		if ignored {
			t.filter = filterNone
			return nil, false, nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("flows: dump the conntrack entries to %v: %w", sel, err))
		}
	}
	t.filter = filterWorks
	handedOn := 0
	for i, e := range matched {
		err := t.delete(e)
		switch {
		case err == nil:
			cut = append(cut, flows[i])
		case errors.Is(err, fs.ErrNotExist): // gone by itself meanwhile: nothing to cut
		default:
			errs = append(errs, fmt.Errorf("flows: delete the conntrack entry of %v to %v: %w", e.client, e.destination, err))
		}
		if each != nil && len(cut)-handedOn >= eachBatch {
			each(cut[handedOn:len(cut):len(cut)])
			handedOn = len(cut)
		}
	}
	if each != nil && len(cut) > handedOn {
		each(cut[handedOn:len(cut):len(cut)])
	}
	return cut, true, errors.Join(errs...)
}

// dump asks the kernel for the TCP entries sel selects, and hands each to fn.
func (t *Table) dump(sel selector, fn func(entry)) error {
	req := nl.NewNetlinkRequest(conntrackMessage, unix.NLM_F_DUMP)
	req.Sockets = t.sockets
	req.AddData(&nl.Nfgenmsg{NfgenFamily: sel.family, Version: nl.NFNETLINK_V0})
	tuple := nl.NewRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG, nil)
	flags := uint32(ctaFilterFlagProtoNum)
	if sel.addr.IsValid() {
		ip := tuple.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
		kind := nl.CTA_IP_V4_DST
		if sel.family == ipv6Family {
			kind = ctaIPv6Dst
		}
		ip.AddRtAttr(kind, sel.addr.AsSlice())
		flags |= ctaFilterFlagIPDst
	}
	proto := tuple.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
	proto.AddRtAttr(nl.CTA_PROTO_NUM, []byte{unix.IPPROTO_TCP})
	if !sel.addr.IsValid() {
		proto.AddRtAttr(ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, sel.port))
		flags |= ctaFilterFlagProtoDstPort
	}
	req.AddData(tuple)
	filter := nl.NewRtAttr(unix.NLA_F_NESTED|ctaFilter, nil)
	filter.AddRtAttr(ctaFilterOrigFlags, nl.Uint32Attr(flags))
	req.AddData(filter)
	return req.ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		if e, ok := parseEntry(msg); ok {
			fn(e)
		}
		return true
	})
}

// delete deletes the entry of e's original tuple (in its zone).
func (t *Table) delete(e entry) error {
	req := nl.NewNetlinkRequest(conntrackDeleteMessageType, unix.NLM_F_ACK)
	req.Sockets = t.sockets
	req.AddData(&nl.Nfgenmsg{NfgenFamily: familyOf(e.client.Addr()), Version: nl.NFNETLINK_V0})
	tuple := nl.NewRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG, nil)
	ip := tuple.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
	src, dst := nl.CTA_IP_V4_SRC, nl.CTA_IP_V4_DST
	if e.client.Addr().Is6() {
		src, dst = ctaIPv6Src, ctaIPv6Dst
	}
	ip.AddRtAttr(src, e.client.Addr().AsSlice())
	ip.AddRtAttr(dst, e.destination.Addr().AsSlice())
	proto := tuple.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
	proto.AddRtAttr(nl.CTA_PROTO_NUM, []byte{e.proto})
	proto.AddRtAttr(nl.CTA_PROTO_SRC_PORT, binary.BigEndian.AppendUint16(nil, e.client.Port()))
	proto.AddRtAttr(ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, e.destination.Port()))
	req.AddData(tuple)
	if e.zone != 0 {
		req.AddData(nl.NewRtAttr(nl.CTA_ZONE, binary.BigEndian.AppendUint16(nil, e.zone)))
	}
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if errors.Is(err, syscall.ENOENT) {
		return fs.ErrNotExist
	}
	return err
}

// parseEntry reads one dumped entry: its tuples, TCP state and zone.
func parseEntry(msg []byte) (entry, bool) {
	var e entry
	if len(msg) < nfgenHeader {
		return e, false
	}
	attrs, err := nl.ParseRouteAttr(msg[nfgenHeader:])
	if err != nil {
		return e, false
	}
	var origOK, replyOK bool
	for _, a := range attrs {
		switch a.Attr.Type & nl.NLA_TYPE_MASK {
		case nl.CTA_TUPLE_ORIG:
			var src, dst netip.AddrPort
			src, dst, e.proto, origOK = parseTuple(a.Value)
			e.client, e.destination = src, dst
		case nl.CTA_TUPLE_REPLY:
			e.backend, _, _, replyOK = parseTuple(a.Value)
		case ctaProtoinfo:
			e.tcpState, e.hasState = parseTCPState(a.Value)
		case nl.CTA_ZONE:
			if len(a.Value) >= 2 {
				e.zone = binary.BigEndian.Uint16(a.Value)
			}
		}
	}
	return e, origOK && replyOK
}

// parseTuple reads a CTA_TUPLE_* attribute's source, destination and protocol.
func parseTuple(b []byte) (src, dst netip.AddrPort, proto uint8, ok bool) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return src, dst, 0, false
	}
	var srcIP, dstIP netip.Addr
	var srcPort, dstPort uint16
	for _, a := range attrs {
		switch a.Attr.Type & nl.NLA_TYPE_MASK {
		case nl.CTA_TUPLE_IP:
			ips, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return src, dst, 0, false
			}
			for _, ip := range ips {
				addr, valid := netip.AddrFromSlice(ip.Value)
				if !valid {
					continue
				}
				switch ip.Attr.Type & nl.NLA_TYPE_MASK {
				case nl.CTA_IP_V4_SRC, ctaIPv6Src:
					srcIP = addr.Unmap()
				case nl.CTA_IP_V4_DST, ctaIPv6Dst:
					dstIP = addr.Unmap()
				}
			}
		case nl.CTA_TUPLE_PROTO:
			ps, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return src, dst, 0, false
			}
			for _, p := range ps {
				switch p.Attr.Type & nl.NLA_TYPE_MASK {
				case nl.CTA_PROTO_NUM:
					if len(p.Value) >= 1 {
						proto = p.Value[0]
					}
				case nl.CTA_PROTO_SRC_PORT:
					if len(p.Value) >= 2 {
						srcPort = binary.BigEndian.Uint16(p.Value)
					}
				case ctaProtoDstPort:
					if len(p.Value) >= 2 {
						dstPort = binary.BigEndian.Uint16(p.Value)
					}
				}
			}
		}
	}
	ok = srcIP.IsValid() && dstIP.IsValid()
	return netip.AddrPortFrom(srcIP, srcPort), netip.AddrPortFrom(dstIP, dstPort), proto, ok
}

// parseTCPState reads the TCP state out of a CTA_PROTOINFO attribute.
func parseTCPState(b []byte) (uint8, bool) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return 0, false
	}
	for _, a := range attrs {
		if a.Attr.Type&nl.NLA_TYPE_MASK != ctaProtoinfoTCP {
			continue
		}
		tcp, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return 0, false
		}
		for _, t := range tcp {
			if t.Attr.Type&nl.NLA_TYPE_MASK == nl.CTA_PROTOINFO_TCP_STATE && len(t.Value) >= 1 {
				return t.Value[0], true
			}
		}
	}
	return 0, false
}
