//go:build linux

package flows

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

// waitingCall opens a connection from the client pod through front (sent to backend a) and
// sends a request whose body never ends: a's server waits for the rest, the client for the
// answer, and neither sends anything more, as a call in flight to a backend that hangs.
func waitingCall(t *testing.T, c *cluster, front netip.AddrPort) net.Conn {
	t.Helper()
	c.proxy(t, route{front, c.backends[0].endpoint(front)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.client.dialer(0)(ctx, "tcp", front.String())
	if err != nil {
		t.Fatalf("dial %s: %v", front, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if _, err := fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: front\r\nContent-Length: 100\r\n\r\nhalf"); err != nil {
		t.Fatalf("write: %v", err)
	}
	return conn
}

// readFails reads from conn until it fails or within is over, and returns the error.
func readFails(conn net.Conn, within time.Duration) error {
	_ = conn.SetReadDeadline(time.Now().Add(within))
	_, err := conn.Read(make([]byte, 1))
	return err
}

// TestProbeResetsAClientThatWaits: a client waiting for an answer sends nothing by itself, so
// after the cut it would wait out its own timeout; Probe makes it answer, and the guard
// resets it at once, whatever nf_conntrack_tcp_loose says, over IPv4 and IPv6.
func TestProbeResetsAClientThatWaits(t *testing.T) {
	for _, tt := range []struct {
		loose string
		front netip.AddrPort
	}{{"0", front4}, {"1", front4}, {"0", front6}} {
		t.Run(fmt.Sprintf("loose=%s %s", tt.loose, tt.front), func(t *testing.T) {
			c := newCluster(t, 2)
			c.node.sysctl(t, "net/netfilter/nf_conntrack_tcp_loose", tt.loose)
			table, guard := openTable(t, c.node), newGuard(t, c.node, time.Minute)
			conn := waitingCall(t, c, tt.front)
			flows, err := table.Cut([]Target{{Key: "k", Destinations: []netip.AddrPort{tt.front},
				Backends: []netip.AddrPort{c.backends[0].endpoint(tt.front)}}})
			if err != nil || len(flows) != 1 {
				t.Fatalf("Cut: %v, %v; want the one flow", flows, err)
			}
			if err := guard.Arm(flows); err != nil {
				t.Fatalf("Arm: %v", err)
			}
			if err := readFails(conn, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("before the probe the waiting client got %v, want nothing: it has nothing to send", err)
			}
			start := time.Now()
			if err := guard.Probe(flows); err != nil {
				t.Fatalf("Probe: %v", err)
			}
			err = readFails(conn, 5*time.Second)
			took := time.Since(start)
			t.Logf("the waiting client's read failed %s after the probe: %v", took, err)
			if !errors.Is(err, syscall.ECONNRESET) || took > resetWithin {
				t.Fatalf("after the probe the waiting client got %v after %s, want a reset at once", err, took)
			}
			if n := resets(t, c, guardChainPrerouting, tt.front); n == 0 {
				t.Errorf("the guard's reset rule did not answer the client: the reset came from elsewhere")
			}
			if n := resets(t, c, guardChainProbes, tt.front); n == 0 {
				t.Errorf("the probe was not untracked by the guard's probes rule")
			}
		})
	}
}

// TestProbeToAClosedConnectionEndsNothing: a client that closed its connection answers the
// probe with a reset of its own; Probe reports no error, and a new connection from the client
// through the front works.
func TestProbeToAClosedConnectionEndsNothing(t *testing.T) {
	c := newCluster(t, 2)
	table, guard := openTable(t, c.node), newGuard(t, c.node, time.Minute)
	conn := waitingCall(t, c, front4)
	flows, err := table.Cut([]Target{{Key: "k", Destinations: []netip.AddrPort{front4},
		Backends: []netip.AddrPort{c.backends[0].endpoint(front4)}}})
	if err != nil || len(flows) != 1 {
		t.Fatalf("Cut: %v, %v", flows, err)
	}
	_ = conn.Close()
	if err := guard.Arm(flows); err != nil {
		t.Fatalf("Arm: %v", err)
	}
	if err := guard.Probe(flows); err != nil {
		t.Fatalf("Probe: %v", err)
	}
	mustGet(t, c.client.httpClient(t, 0), front4, "a", false)
}

// The probe's checksum is what the kernel computes: a packet with a wrong one would be dropped
// by the client silently, which TestProbeResetsAClientThatWaits would only show as a timeout.
func TestProbePacketChecksums(t *testing.T) {
	src, dst := netip.MustParseAddrPort("10.96.0.10:80"), netip.MustParseAddrPort("10.244.0.2:43210")
	packet, _ := probePacket(src, dst, 0x01020304, 0x05060708)
	tcp := packet[20:]
	s, d := src.Addr().As4(), dst.Addr().As4()
	if got := checksum(pseudoHeader(s[:], d[:], len(tcp)), tcp); got != 0 {
		t.Errorf("IPv4: the checksum over the segment with its checksum is %#x, want 0", got)
	}
	if !bytes.Equal(packet[12:16], s[:]) || !bytes.Equal(packet[16:20], d[:]) || tcp[13] != tcpACK {
		t.Errorf("IPv4 probe %x: wrong addresses or flags", packet)
	}
	src6, dst6 := netip.MustParseAddrPort("[fd00:96::10]:80"), netip.MustParseAddrPort("[fd00:244::2]:43210")
	packet, _ = probePacket(src6, dst6, 1, 2)
	tcp = packet[40:]
	s6, d6 := src6.Addr().As16(), dst6.Addr().As16()
	if got := checksum(pseudoHeader(s6[:], d6[:], len(tcp)), tcp); got != 0 {
		t.Errorf("IPv6: the checksum over the segment with its checksum is %#x, want 0", got)
	}
}
