//go:build linux

package flows

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// GuardTableName is the nftables table, of family inet, that the Guard owns.
	GuardTableName = "tripswitch-agent"
	// GuardSetSize is how many cut tuples each of the guard's sets (one per address family)
	// holds. A tuple leaves by its own timeout, so this bounds the flows cut within one ttl; a
	// fixed bound keeps a burst of cuts from growing kernel memory without limit.
	GuardSetSize = 65536
)

const (
	guardSetIPv4         = "cut-ipv4"
	guardSetIPv6         = "cut-ipv6"
	guardChainPrerouting = "prerouting"
	guardChainOutput     = "output"
	guardChainProbes     = "probes"
	// armBatch bounds the tuples of one transaction. The tuples travel in one netlink
	// attribute, whose length has 16 bits, and the nftables library does not check it: from
	// 64 KiB on (1,024 IPv6 tuples of 64 bytes) the length wraps and the kernel silently arms
	// a part, or fails. Past about 200 KiB the socket's send buffer refuses the batch too.
	armBatch = 512
	// tcpSYN and tcpRST are TCP header flag bits (byte 13).
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// guardFamily is what differs between the IPv4 and the IPv6 half of the guard.
type guardFamily struct {
	set     string
	nfproto byte
	keyType nftables.SetDatatype
	// addrLen and the offsets of source and destination address in the network header.
	addrLen, saddr, daddr uint32
}

var guardFamilies = []guardFamily{
	{
		set: guardSetIPv4, nfproto: unix.NFPROTO_IPV4, addrLen: 4, saddr: 12, daddr: 16,
		keyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService, nftables.TypeIPAddr, nftables.TypeInetService),
	},
	{
		set: guardSetIPv6, nfproto: unix.NFPROTO_IPV6, addrLen: 16, saddr: 8, daddr: 24,
		keyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService, nftables.TypeIP6Addr, nftables.TypeInetService),
	},
}

// guardChain is one of the guard's base chains and the rule it holds for each family.
type guardChain struct {
	name     string
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
	rule     func(guardFamily, *nftables.Set) []expr.Any
}

// guardChains are the guard's base chains: where a cut client's packet first shows up,
// arriving (prerouting) or sent from the node's own namespace (output), and, before conntrack,
// the probes Probe sends (probes).
var guardChains = []guardChain{
	{guardChainPrerouting, nftables.ChainHookPrerouting, nftables.ChainPriorityMangle, guardFamily.resetRule},
	{guardChainOutput, nftables.ChainHookOutput, nftables.ChainPriorityMangle, guardFamily.resetRule},
	{guardChainProbes, nftables.ChainHookOutput, nftables.ChainPriorityRaw, guardFamily.untrackProbeRule},
}

// Guard is the reset guard: it makes the next packet of a cut flow draw a TCP reset, whatever
// net.netfilter.nf_conntrack_tcp_loose says (see the package documentation). It is safe for
// concurrent use until Close.
type Guard struct {
	// netns is the network namespace NewGuard ran in: every operation opens its netlink
	// socket there, whatever thread it runs on.
	netns netns.NsHandle
	ttl   time.Duration
	// probes are raw sockets (IPv4, IPv6) in that namespace, for Probe; -1 when the family
	// has none (IPv6 disabled).
	probes [2]int
}

// NewGuard installs the guard's table in the network namespace of the calling thread, or
// adopts it when a previous agent left it: when the table has the guard's sets, their tuples
// stay (they expire by their own timeouts) and the chains' rules are rewritten, in one
// transaction, so that a restart neither duplicates rules nor drops armed tuples. A table of
// another layout is replaced. NewGuard fails when the kernel refuses the table (no nf_tables,
// or no reject in prerouting). Arm arms each tuple for ttl.
func NewGuard(ttl time.Duration) (*Guard, error) {
	if ttl < time.Millisecond {
		return nil, fmt.Errorf("flows: reset guard ttl %s is shorter than nftables' 1ms resolution", ttl)
	}
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("flows: open the thread's network namespace: %w", err)
	}
	g := &Guard{netns: ns, ttl: ttl, probes: [2]int{-1, -1}}
	if err := g.install(); err != nil {
		_ = ns.Close()
		return nil, err
	}
	if err := g.openProbes(); err != nil {
		_ = g.Close()
		return nil, err
	}
	return g, nil
}

func (g *Guard) conn() (*nftables.Conn, error) {
	// Not a lasting connection: a fresh socket per operation never reads another operation's
	// stray acknowledgement after an error.
	conn, err := nftables.New(nftables.WithNetNSFd(int(g.netns)))
	if err != nil {
		return nil, fmt.Errorf("flows: open nftables: %w", err)
	}
	return conn, nil
}

func guardTable() *nftables.Table {
	return &nftables.Table{Name: GuardTableName, Family: nftables.TableFamilyINet}
}

func (g *Guard) install() error {
	conn, err := g.conn()
	if err != nil {
		return err
	}
	table := guardTable()
	exists, adopt, err := inspect(conn, table)
	if err != nil {
		return fmt.Errorf("flows: reset guard: read nftables table inet %s (is nf_tables available?): %w", GuardTableName, err)
	}
	if exists && !adopt {
		conn.DelTable(table)
	}
	conn.AddTable(table)
	sets := make([]*nftables.Set, len(guardFamilies))
	for i, family := range guardFamilies {
		sets[i] = &nftables.Set{
			Table: table, Name: family.set, KeyType: family.keyType, KeyByteOrder: binaryutil.BigEndian,
			Concatenation: true, HasTimeout: true, Size: GuardSetSize,
		}
		if !adopt {
			if err := conn.AddSet(sets[i], nil); err != nil {
				return fmt.Errorf("flows: encode nftables set %s: %w", family.set, err)
			}
		}
	}
	for _, c := range guardChains {
		chain := conn.AddChain(&nftables.Chain{
			Name: c.name, Table: table, Type: nftables.ChainTypeFilter, Hooknum: c.hook, Priority: c.priority,
		})
		if adopt {
			conn.FlushChain(chain)
		}
		for i, family := range guardFamilies {
			conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: c.rule(family, sets[i])})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("flows: the kernel refused the reset guard, table inet %s (it needs nf_tables, and reject in prerouting): %w", GuardTableName, err)
	}
	return nil
}

// inspect says whether the guard's table exists and whether its layout is the guard's, sets
// and chains alike, so that NewGuard can keep it.
func inspect(conn *nftables.Conn, table *nftables.Table) (exists, same bool, err error) {
	tables, err := conn.ListTablesOfFamily(table.Family)
	if err != nil {
		return false, false, err
	}
	for _, t := range tables {
		exists = exists || t.Name == table.Name
	}
	if !exists {
		return false, false, nil
	}
	sets, err := conn.GetSets(table)
	if err != nil {
		return true, false, err
	}
	if len(sets) != len(guardFamilies) {
		return true, false, nil
	}
	for _, family := range guardFamilies {
		found := false
		for _, s := range sets {
			found = found || s.Name == family.set && s.KeyType.GetNFTMagic() == family.keyType.GetNFTMagic() &&
				s.KeyType.Bytes == family.keyType.Bytes && s.HasTimeout && s.Size == GuardSetSize &&
				!s.Interval && !s.IsMap && !s.Constant
		}
		if !found {
			return true, false, nil
		}
	}
	chains, err := conn.ListChainsOfTableFamily(table.Family)
	if err != nil {
		return true, false, err
	}
	own, matching := 0, 0
	for _, chain := range chains {
		if chain.Table.Name != table.Name {
			continue
		}
		own++
		for _, c := range guardChains {
			if chain.Name == c.name && chain.Type == nftables.ChainTypeFilter &&
				chain.Hooknum != nil && *chain.Hooknum == *c.hook &&
				chain.Priority != nil && *chain.Priority == *c.priority {
				matching++
			}
		}
	}
	return true, own == len(guardChains) && matching == len(guardChains), nil
}

// resetRule is, for the IPv4 family (IPv6 alike):
//
//	tcp flags & (syn | rst) == 0 ct state & (new | invalid) != 0
//	ip saddr . tcp sport . ip daddr . tcp dport @cut-ipv4 counter reject with tcp reset
func (f guardFamily) resetRule(set *nftables.Set) []expr.Any {
	rule := f.tcp()
	rule = append(rule,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpSYN | tcpRST}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW | expr.CtStateBitINVALID), Xor: make([]byte, 4),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	)
	rule = append(rule, f.lookup(set, f.saddr, tcpSourcePort, f.daddr, tcpDestinationPort)...)
	return append(rule, &expr.Counter{}, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
}

// untrackProbeRule is, for the IPv4 family (IPv6 alike):
//
//	tcp flags == ack ip daddr . tcp dport . ip saddr . tcp sport @cut-ipv4 counter notrack
//
// It matches only the probes Probe sends: a bare ACK that the node itself sends from a cut
// flow's front to its client (the set's tuple, reversed). Untracked, a probe creates no
// conntrack entry, so the client's answer finds none either and meets the reset rule.
func (f guardFamily) untrackProbeRule(set *nftables.Set) []expr.Any {
	rule := f.tcp()
	rule = append(rule,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{tcpACK}},
	)
	rule = append(rule, f.lookup(set, f.daddr, tcpDestinationPort, f.saddr, tcpSourcePort)...)
	return append(rule, &expr.Counter{}, &expr.Notrack{})
}

// The offsets of the ports in the TCP header.
const tcpSourcePort, tcpDestinationPort = 0, 2

// tcp matches the family's TCP packets.
func (f guardFamily) tcp() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

// lookup matches a packet whose address at firstAddr (in the network header) . port at
// firstPort (in the TCP header) . address . port is in set. The concatenated key is loaded
// into consecutive 32-bit registers, each field padded to 4 bytes, as nft does.
func (f guardFamily) lookup(set *nftables.Set, firstAddr, firstPort, secondAddr, secondPort uint32) []expr.Any {
	addrRegs := f.addrLen / 4
	port1 := uint32(unix.NFT_REG32_00) + addrRegs
	addr2 := port1 + 1
	port2 := addr2 + addrRegs
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: firstAddr, Len: f.addrLen},
		&expr.Payload{DestRegister: port1, Base: expr.PayloadBaseTransportHeader, Offset: firstPort, Len: 2},
		&expr.Payload{DestRegister: addr2, Base: expr.PayloadBaseNetworkHeader, Offset: secondAddr, Len: f.addrLen},
		&expr.Payload{DestRegister: port2, Base: expr.PayloadBaseTransportHeader, Offset: secondPort, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
}

// Arm adds each flow's client and destination to the guard, for the Guard's ttl. Re-arming a
// tuple that is armed already is no error, and renews its timeout on kernels that update set
// elements (6.18 does). The tuples go in batches of up to 512, one transaction each. When a
// set is full, Arm arms what fits and says how many flows it did not arm.
func (g *Guard) Arm(flows []Flow) error {
	tuples := make([][]nftables.SetElement, len(guardFamilies))
	seen := make(map[[2]netip.AddrPort]bool, len(flows))
	malformed := 0
	for _, flow := range flows {
		client, destination := canonical(flow.Client), canonical(flow.Destination)
		if !client.Addr().IsValid() || !destination.Addr().IsValid() || client.Addr().Is4() != destination.Addr().Is4() {
			malformed++
			continue
		}
		if seen[[2]netip.AddrPort{client, destination}] {
			continue
		}
		seen[[2]netip.AddrPort{client, destination}] = true
		family := 0
		if client.Addr().Is6() {
			family = 1
		}
		tuples[family] = append(tuples[family], nftables.SetElement{Key: tupleKey(client, destination), Timeout: g.ttl})
	}
	var errs []error
	if malformed > 0 {
		errs = append(errs, fmt.Errorf("flows: %d flows not armed: client and destination are not addresses of one family", malformed))
	}
	conn, err := g.conn()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for i, family := range guardFamilies {
		if err := armSet(conn, family.set, tuples[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func armSet(conn *nftables.Conn, setName string, tuples []nftables.SetElement) error {
	set := &nftables.Set{Table: guardTable(), Name: setName, HasTimeout: true}
	for start := 0; start < len(tuples); start += armBatch {
		batch := tuples[start:min(start+armBatch, len(tuples))]
		err := addTuples(conn, set, batch)
		if errors.Is(err, unix.ENFILE) {
			notArmed := len(tuples) - start - armWhatFits(conn, set, batch)
			return fmt.Errorf("flows: reset guard set %s is full (%d tuples): %d of %d flows not armed", setName, GuardSetSize, notArmed, len(tuples))
		}
		if err != nil {
			return fmt.Errorf("flows: arm reset guard set %s: %d of %d flows not armed: %w", setName, len(tuples)-start, len(tuples), err)
		}
	}
	return nil
}

// armWhatFits arms as many of batch as the full set has room for, and returns how many. A
// failed batch is rolled back whole, so without it one full batch would leave up to armBatch-1
// free places unused.
func armWhatFits(conn *nftables.Conn, set *nftables.Set, batch []nftables.SetElement) int {
	armed, err := conn.GetSetElements(set)
	if err != nil {
		return 0
	}
	// Tuples that expired but are not collected yet still take room in the kernel, and are not
	// listed: with them the room looks larger than it is, and the smaller batch may fail too.
	room := GuardSetSize - len(armed)
	if room <= 0 || room >= len(batch) || addTuples(conn, set, batch[:room]) != nil {
		return 0
	}
	return room
}

func addTuples(conn *nftables.Conn, set *nftables.Set, tuples []nftables.SetElement) error {
	if err := conn.SetAddElements(set, tuples); err != nil {
		return err
	}
	return conn.Flush()
}

// tupleKey is the set key of client . destination: address, port, address, port, each port
// padded to 4 bytes as nftables pads the fields of a concatenation.
func tupleKey(client, destination netip.AddrPort) []byte {
	key := client.Addr().AsSlice()
	key = append(key, byte(client.Port()>>8), byte(client.Port()), 0, 0)
	key = append(key, destination.Addr().AsSlice()...)
	return append(key, byte(destination.Port()>>8), byte(destination.Port()), 0, 0)
}

// Remove deletes the guard's table, with its tuples; removing a table that is gone is no
// error. The agent does not call it: see the package documentation.
func (g *Guard) Remove() error {
	conn, err := g.conn()
	if err != nil {
		return err
	}
	conn.DelTable(guardTable())
	if err := conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("flows: delete nftables table inet %s: %w", GuardTableName, err)
	}
	return nil
}

// Close releases the Guard's handle on its network namespace and its probe sockets; the
// table stays.
func (g *Guard) Close() error {
	for i, fd := range g.probes {
		if fd >= 0 {
			_ = unix.Close(fd)
			g.probes[i] = -1
		}
	}
	if err := g.netns.Close(); err != nil {
		return fmt.Errorf("flows: close the reset guard's network namespace handle: %w", err)
	}
	return nil
}
