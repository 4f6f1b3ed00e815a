package probe

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

// rawServer accepts connections on a loopback address and hands each to answer after the
// request's header has been read, as a hostile or broken HTTP server would.
func rawServer(t *testing.T, answer func(net.Conn)) Endpoint {
	t.Helper()
	l := listenOn(t, "127.0.0.1")
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				answer(c)
			}()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}

// countingDial counts the bytes that probes read from their connections.
func countingDial(read *atomic.Int64) DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, address)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, read: read}, nil
	}
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	return n, err
}

// endless writes chunk to c as fast as the client takes it, until the client goes.
func endless(head, chunk string) func(net.Conn) {
	return func(c net.Conn) {
		if _, err := c.Write([]byte(head)); err != nil {
			return
		}
		buf := []byte(strings.Repeat(chunk, 64))
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
}

// A pod that answers 200 OK and then sends headers forever must cost the manager a bounded
// amount of memory and end in a Failure at once, not grow the leader until it is killed.
func TestHTTPProbeBoundsTheResponseHeader(t *testing.T) {
	for _, tt := range []struct {
		name   string
		answer func(net.Conn)
	}{
		{"endless headers", endless("HTTP/1.1 200 OK\r\n", "X-Bomb: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")},
		{"an endless header line", endless("HTTP/1.1 200 OK\r\nX-Bomb: ", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")},
		{"an endless status line", endless("HTTP/1.1 200 ", "OKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOKOK")},
		{"endless one-byte headers", endless("HTTP/1.1 200 OK\r\n", "a:\r\n")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			ep := rawServer(t, tt.answer)
			var read atomic.Int64
			p, err := NewFactory(countingDial(&read), clock.RealClock{}).New(httpSpec(t, func(s *Spec) { s.Timeout = 3 * time.Second }))
			g.Expect(err).NotTo(HaveOccurred())
			defer p.Close()

			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			r := p.Probe(context.Background(), ep)
			runtime.ReadMemStats(&after)
			t.Logf("%s: read %d bytes, allocated %d bytes, in %s", r.Message, read.Load(), after.TotalAlloc-before.TotalAlloc, r.Latency)

			g.Expect(r.Outcome).To(Equal(breaker.Failure))
			g.Expect(r.Message).To(Equal("response status line and headers exceed 32 KiB"))
			// The limit, plus at most one read of the 4 KiB buffer that found it exceeded.
			g.Expect(read.Load()).To(BeNumerically("<=", maxResponseHeader+4<<10))
			// Parsing allocates several times what it reads (a string and a map entry per
			// header line); unbounded, it allocates gigabytes within the timeout.
			g.Expect(after.TotalAlloc - before.TotalAlloc).To(BeNumerically("<", 4<<20))
			g.Expect(r.Latency).To(BeNumerically("<", time.Second), "the probe must end as soon as the limit is reached")
		})
	}
}

// A server that sends its answer one byte a second holds a probe only until its timeout.
func TestHTTPProbeEndsASlowLorisAtItsTimeout(t *testing.T) {
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	// trickle sends fast at once and then slow, one byte a second.
	trickle := func(fast, slow string) func(net.Conn) {
		return func(c net.Conn) {
			if _, err := c.Write([]byte(fast)); err != nil {
				return
			}
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for i := 0; i < len(slow); i++ {
				if _, err := c.Write([]byte{slow[i]}); err != nil {
					return
				}
				select {
				case <-tick.C:
				case <-stop:
					return
				}
			}
		}
	}
	for _, tt := range []struct {
		name, fast, slow string
		outcome          breaker.Outcome
		message          string
	}{
		{"status line", "", "HTTP/1.1 200 OK\r\n\r\n", breaker.Failure, "timeout after 1.5s"},
		{"headers", "HTTP/1.1 200 OK\r\n", "X-Slow: 1\r\n\r\n", breaker.Failure, "timeout after 1.5s"},
		// The status is known, so it counts; draining the body for reuse gives up at the
		// deadline and the connection is not kept.
		{"body", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", strings.Repeat("x", 100), breaker.Success, "HTTP 200"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			ep := rawServer(t, trickle(tt.fast, tt.slow))
			timeout := 1500 * time.Millisecond
			p, err := NewFactory(nil, clock.RealClock{}).New(httpSpec(t, func(s *Spec) { s.Timeout = timeout }))
			g.Expect(err).NotTo(HaveOccurred())
			defer p.Close()
			r := p.Probe(context.Background(), ep)
			g.Expect(r.Outcome).To(Equal(tt.outcome), "%+v", r)
			g.Expect(r.Message).To(Equal(tt.message))
			g.Expect(r.Latency).To(And(BeNumerically(">=", timeout), BeNumerically("<", timeout+time.Second)))
		})
	}
}
