package probe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

// dialErr wraps errno the way net.Dialer does when connect(2) fails.
func dialErr(errno syscall.Errno) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9},
		Err: os.NewSyscallError("connect", errno)}
}

func TestLocalReason(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancelExpired := context.WithDeadline(context.Background(), time.Unix(1, 0))
	defer cancelExpired()

	for _, tt := range []struct {
		name   string
		parent context.Context
		err    error
		want   string // "" when the error is the target's
	}{
		{"EMFILE from connect", live, dialErr(syscall.EMFILE), LocalFileDescriptors},
		{"ENFILE from connect", live, dialErr(syscall.ENFILE), LocalFileDescriptors},
		{"EMFILE from socket", live, &net.OpError{Op: "dial", Err: os.NewSyscallError("socket", syscall.EMFILE)}, LocalFileDescriptors},
		{"ENOBUFS", live, dialErr(syscall.ENOBUFS), LocalBuffers},
		{"ENOMEM", live, dialErr(syscall.ENOMEM), LocalBuffers},
		{"EADDRNOTAVAIL from connect", live, dialErr(syscall.EADDRNOTAVAIL), LocalEphemeralPorts},
		{"a bare EADDRNOTAVAIL", live, syscall.EADDRNOTAVAIL, LocalEphemeralPorts},
		{"EADDRNOTAVAIL from another call is not about ports", live,
			&net.OpError{Op: "dial", Err: os.NewSyscallError("bind", syscall.EADDRNOTAVAIL)}, ""},
		{"inside a url.Error", live, &url.Error{Op: "Get", URL: "http://127.0.0.1:9/", Err: dialErr(syscall.EMFILE)}, LocalFileDescriptors},
		{"inside fmt.Errorf", live, fmt.Errorf("tls: %w", dialErr(syscall.ENOBUFS)), LocalBuffers},
		{"inside a TLS handshake error", live, &tls.CertificateVerificationError{Err: dialErr(syscall.EMFILE)}, LocalFileDescriptors},
		{"connection refused is the target's", live, dialErr(syscall.ECONNREFUSED), ""},
		{"connection reset is the target's", live, dialErr(syscall.ECONNRESET), ""},
		{"no route is the target's", live, dialErr(syscall.EHOSTUNREACH), ""},
		{"the probe's own timeout is the target's", live, context.DeadlineExceeded, ""},
		{"nil", live, nil, ""},
		{"a cancelled parent", cancelled, context.Canceled, LocalCanceled},
		{"a cancelled parent, whatever the connection made of it", cancelled, os.ErrDeadlineExceeded, LocalCanceled},
		{"a cancelled context of the prober's own is not the manager's", live, context.Canceled, ""},
		{"the own deadline wins over a cancelled parent", cancelled, context.DeadlineExceeded, ""},
		{"the own deadline wins over an errno", live, errors.Join(dialErr(syscall.EMFILE), context.DeadlineExceeded), ""},
		{"an errno names its reason even when the parent is cancelled", cancelled, dialErr(syscall.EMFILE), LocalFileDescriptors},
		{"a parent past its deadline is not a cancellation", expired, dialErr(syscall.ECONNREFUSED), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := localReason(tt.parent, tt.err)
			if got != tt.want || ok != (tt.want != "") {
				t.Fatalf("localReason(%v) = %q, %v; want %q", tt.err, got, ok, tt.want)
			}
		})
	}
}

func TestLocalReasonsAreListed(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range LocalReasons {
		if seen[r] || r == "" || strings.ToLower(r) != r || strings.ContainsAny(r, " -.") {
			t.Errorf("reason %q is repeated or not a snake_case label value", r)
		}
		seen[r] = true
	}
	for _, e := range localErrnos {
		if !seen[e.reason] {
			t.Errorf("reason %q of %v is not in LocalReasons", e.reason, e.errno)
		}
	}
	if !seen[LocalStartedLate] {
		t.Errorf("reason %q is not in LocalReasons", LocalStartedLate)
	}
	if seen[LocalCanceled] {
		t.Errorf("reason %q is in LocalReasons, but a cancelled probe is never counted", LocalCanceled)
	}
}

// TestManagerErrnosAreNotCounted probes through a dialer that fails the way net.Dialer does
// when the manager, not the target, is short of something. Every kind of probe must come back
// Neutral and name the reason, while the target's own refusal stays a Failure.
func TestManagerErrnosAreNotCounted(t *testing.T) {
	ep := netip.MustParseAddrPort("127.0.0.1:9")
	kinds := map[string]Spec{
		"HTTP":  httpSpec(t),
		"HTTPS": httpSpec(t, func(s *Spec) { s.HTTP.HTTPS = true }),
		"TCP":   {Timeout: time.Second, TCP: true},
		"gRPC":  {Timeout: time.Second, GRPC: &GRPCSpec{}},
	}
	for _, tt := range []struct {
		errno   syscall.Errno
		reason  string
		message string
	}{
		{syscall.EMFILE, LocalFileDescriptors, "manager error: too many open files (not counted)"},
		{syscall.ENFILE, LocalFileDescriptors, "manager error: too many open files in system (not counted)"},
		{syscall.ENOBUFS, LocalBuffers, "manager error: no buffer space available (not counted)"},
		{syscall.ENOMEM, LocalBuffers, "manager error: cannot allocate memory (not counted)"},
		{syscall.EADDRNOTAVAIL, LocalEphemeralPorts, "manager error: out of ephemeral ports, cannot assign requested address (not counted)"},
		{syscall.ECONNREFUSED, "", ""},
	} {
		f := NewFactory(func(context.Context, string, string) (net.Conn, error) { return nil, dialErr(tt.errno) }, clock.RealClock{})
		for kind, spec := range kinds {
			t.Run(kind+" "+tt.errno.Error(), func(t *testing.T) {
				start := time.Now()
				r := probeOnce(t, f, spec, ep)
				if tt.reason == "" {
					if r.Outcome != breaker.Failure || r.Local != "" || !strings.Contains(r.Message, "connection refused") {
						t.Fatalf("the target's refusal must stay a failure: %+v", r)
					}
					return
				}
				if r.Outcome != breaker.Neutral || r.Local != tt.reason || r.Message != tt.message || r.Endpoint != ep {
					t.Fatalf("got %s %q (local %q), want %s %q (local %q)", r.Outcome, r.Message, r.Local, breaker.Neutral, tt.message, tt.reason)
				}
				if time.Since(start) > spec.Timeout/2 {
					t.Fatalf("an errno at dial took %s, it must not wait for the timeout", time.Since(start))
				}
			})
		}
	}
}

// hangingServer accepts connections on loopback and never answers on them.
func hangingServer(t *testing.T) Endpoint {
	t.Helper()
	l := listenOn(t, "127.0.0.1")
	var (
		mu    sync.Mutex
		conns []net.Conn
		done  = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return netip.MustParseAddrPort(l.Addr().String())
}

// fullBacklogServer listens on loopback with an accept queue that it fills and never drains,
// so that the kernel drops further SYNs and a connect hangs there: a TCP probe's equivalent
// of a server that never answers.
func fullBacklogServer(t *testing.T) Endpoint {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Skipf("socket: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Skipf("bind: %v", err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Skipf("listen: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ep := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*syscall.SockaddrInet4).Port))
	for range 16 {
		c, err := net.DialTimeout("tcp", ep.String(), 200*time.Millisecond)
		if err != nil {
			return ep // the queue is full: connects hang now
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	t.Skip("the kernel kept accepting connections into a backlog of 0")
	return ep
}

// TestCancelledProbeIsNotCounted stops probes of servers that never answer in two ways: the
// manager cancels the context it gave Probe, which is Neutral and prompt; or the probe's own
// timeout passes, which is the target's Failure.
func TestCancelledProbeIsNotCounted(t *testing.T) {
	hanging := hangingServer(t)
	for _, tt := range []struct {
		kind string
		spec func(timeout time.Duration) Spec
		ep   func(*testing.T) Endpoint
	}{
		{"HTTP", func(d time.Duration) Spec { return httpSpec(t, func(s *Spec) { s.Timeout = d }) }, func(*testing.T) Endpoint { return hanging }},
		{"HTTPS", func(d time.Duration) Spec {
			return httpSpec(t, func(s *Spec) { s.Timeout, s.HTTP.HTTPS, s.HTTP.InsecureSkipVerify = d, true, true })
		}, func(*testing.T) Endpoint { return hanging }},
		{"gRPC", func(d time.Duration) Spec { return Spec{Timeout: d, GRPC: &GRPCSpec{}} }, func(*testing.T) Endpoint { return hanging }},
		{"TCP", func(d time.Duration) Spec { return Spec{Timeout: d, TCP: true} }, fullBacklogServer},
	} {
		t.Run(tt.kind, func(t *testing.T) {
			ep := tt.ep(t)
			f := NewFactory(nil, clock.RealClock{})

			t.Run("cancelled by the manager", func(t *testing.T) {
				p, err := f.New(tt.spec(time.Minute))
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				ctx, cancel := context.WithCancel(context.Background())
				timer := time.AfterFunc(100*time.Millisecond, cancel)
				defer timer.Stop()
				start := time.Now()
				r := p.Probe(ctx, ep)
				if took := time.Since(start); took > 5*time.Second {
					t.Fatalf("a cancelled probe took %s", took)
				}
				if ctx.Err() == nil {
					t.Fatalf("the probe ended before it was cancelled: %+v", r)
				}
				if r.Outcome != breaker.Neutral || r.Local != LocalCanceled || r.Message != "probe cancelled by the manager (not counted)" {
					t.Fatalf("got %s %q (local %q), want a neutral cancellation", r.Outcome, r.Message, r.Local)
				}
			})

			t.Run("own timeout", func(t *testing.T) {
				p, err := f.New(tt.spec(200 * time.Millisecond))
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				start := time.Now()
				r := p.Probe(context.Background(), ep)
				if took := time.Since(start); took > 5*time.Second {
					t.Fatalf("a probe with a 200ms timeout took %s", took)
				}
				if r.Outcome != breaker.Failure || r.Local != "" || r.Message != "timeout after 200ms" {
					t.Fatalf("got %s %q (local %q), want a failure %q", r.Outcome, r.Message, r.Local, "timeout after 200ms")
				}
			})
		})
	}
}
