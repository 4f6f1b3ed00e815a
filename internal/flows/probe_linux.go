//go:build linux

package flows

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// openProbes opens the raw sockets Probe sends with, in the calling thread's network namespace
// (sockets stay where they were made). A family the namespace does not have is left out.
func (g *Guard) openProbes() error {
	for i, family := range []int{unix.AF_INET, unix.AF_INET6} {
		fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		switch {
		case err == nil:
			g.probes[i] = fd
		case family == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT):
		default:
			return fmt.Errorf("flows: open a raw socket for the reset guard's probes (it needs CAP_NET_RAW): %w", err)
		}
	}
	return nil
}

// Probe makes the client of each cut flow send a packet now, so that the reset rule answers
// it at once: a client that waits for an answer on its connection, such as a call in flight
// to a backend that hangs or a database client waiting for a query, sends nothing by itself
// until its own timeout, and an idle pooled connection nothing until its next use.
//
// The probe is a bare ACK from the flow's destination (the front as the client dialled it) to
// the client, with a random sequence number: the client's kernel finds it outside its window
// and answers with an ACK carrying its own sequence numbers (RFC 793; RFC 5961 challenge ACKs
// alike). That answer matches no conntrack entry (the cut deleted the flow's, and the probe,
// untracked by the guard's probes chain, made none), so the reset rule refuses it with a reset
// whose sequence number is the one the client expects. A connection the client has closed
// already answers the probe with a reset of its own, which ends nothing. Probe needs the
// flows armed first; it sends one probe per flow and returns the first error with how many
// were not sent.
func (g *Guard) Probe(flows []Flow) error {
	var failed int
	var first error
	var random [8]byte
	for _, f := range flows {
		client, front := canonical(f.Client), canonical(f.Destination)
		family := 0
		if client.Addr().Is6() {
			family = 1
		}
		if !client.Addr().IsValid() || client.Addr().Is4() != front.Addr().Is4() || g.probes[family] < 0 {
			failed++
			continue
		}
		if _, err := rand.Read(random[:]); err != nil {
			return fmt.Errorf("flows: probe: %w", err)
		}
		seq, ack := binary.BigEndian.Uint32(random[:4]), binary.BigEndian.Uint32(random[4:])
		packet, to := probePacket(front, client, seq, ack)
		if err := unix.Sendto(g.probes[family], packet, 0, to); err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("flows: %d of %d probes not sent: %w", failed, len(flows), errors.Join(first))
	}
	return nil
}

// probePacket is a bare ACK from src to dst with an IP header (raw sockets of IPPROTO_RAW take
// the whole packet; the kernel fills in the IPv4 header's checksum and length), and the
// address to send it to.
func probePacket(src, dst netip.AddrPort, seq, ack uint32) ([]byte, unix.Sockaddr) {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = 5 << 4 // data offset: 5 words, no options
	tcp[13] = tcpACK
	binary.BigEndian.PutUint16(tcp[14:], 0) // a zero window: the probe asks for nothing
	if src.Addr().Is4() {
		ip := make([]byte, 20)
		ip[0] = 0x45 // version 4, 5 words
		binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(tcp)))
		ip[8] = 64 // TTL
		ip[9] = unix.IPPROTO_TCP
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(tcp[16:], checksum(pseudoHeader(s[:], d[:], len(tcp)), tcp))
		return append(ip, tcp...), &unix.SockaddrInet4{Addr: d}
	}
	ip := make([]byte, 40)
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:], uint16(len(tcp)))
	ip[6] = unix.IPPROTO_TCP
	ip[7] = 64 // hop limit
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	binary.BigEndian.PutUint16(tcp[16:], checksum(pseudoHeader(s[:], d[:], len(tcp)), tcp))
	return append(ip, tcp...), &unix.SockaddrInet6{Addr: d}
}

// pseudoHeader is what the TCP checksum covers besides the segment: the addresses, the
// protocol and the segment's length (RFC 793; RFC 8200 for IPv6, whose layout differs but
// whose one's-complement sum is the same).
func pseudoHeader(src, dst []byte, length int) []byte {
	p := append(append([]byte{}, src...), dst...)
	return append(p, 0, unix.IPPROTO_TCP, byte(length>>8), byte(length))
}

// checksum is the Internet checksum (RFC 1071) of the parts, one after another; every part but
// the last has an even length.
func checksum(parts ...[]byte) uint16 {
	var sum uint32
	for _, p := range parts {
		for i := 0; i+1 < len(p); i += 2 {
			sum += uint32(p[i])<<8 | uint32(p[i+1])
		}
		if len(p)%2 == 1 {
			sum += uint32(p[len(p)-1]) << 8
		}
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
