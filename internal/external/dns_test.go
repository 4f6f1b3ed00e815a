package external

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/tripswitch/tripswitch/internal/testdns"
)

// hangTimeout is the client's timeout where a test waits one out; long enough for a loopback
// answer under -race on a busy machine, short enough to keep the tests fast.
const hangTimeout = 100 * time.Millisecond

const host = "api.example.test"

func TestLookup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// setup prepares the two servers; the client asks them in order.
		setup func(s0, s1 *testdns.Server)
		// timeout is the client's; the default is long, so that only hanging tests time out.
		timeout time.Duration
		host    string
		// want is the answer, its Server an index into the servers (or -1 for none) and
		// Incomplete compared by text (see wantIncomplete).
		want           Answer
		wantServer     int
		wantIncomplete string
		// wantErr is the error's text, with {0} and {1} standing for the servers' addresses;
		// wantKind and wantRcode are its kind and rcode.
		wantErr   string
		wantKind  ErrorKind
		wantRcode int
		// check looks at the servers afterwards.
		check func(t *testing.T, s0, s1 *testdns.Server)
	}{
		{
			name: "A only",
			setup: func(s0, _ *testdns.Server) {
				s0.Set(host, testdns.A("192.0.2.2", time.Minute), testdns.A("192.0.2.1", 30*time.Second))
			},
			want: Answer{Addresses: addrs("192.0.2.1", "192.0.2.2"), TTL: 30 * time.Second, Answered: []int{4, 6}},
		},
		{
			name:  "AAAA only",
			setup: func(s0, _ *testdns.Server) { s0.Set(host, testdns.AAAA("2001:db8::1", 45*time.Second)) },
			want:  Answer{Addresses: addrs("2001:db8::1"), TTL: 45 * time.Second, Answered: []int{4, 6}},
		},
		{
			name: "both families, deduplicated and unmapped",
			setup: func(s0, _ *testdns.Server) {
				s0.Set(host,
					testdns.A("192.0.2.1", time.Minute), testdns.A("192.0.2.1", time.Minute),
					testdns.AAAA("2001:db8::1", 20*time.Second), testdns.AAAA("::ffff:192.0.2.1", time.Minute))
			},
			want: Answer{Addresses: addrs("192.0.2.1", "2001:db8::1"), TTL: 20 * time.Second, Answered: []int{4, 6}},
		},
		{
			name: "host given fully qualified and in upper case",
			host: "API.Example.Test.",
			setup: func(s0, _ *testdns.Server) {
				s0.Set(host, testdns.A("192.0.2.1", time.Minute))
			},
			want: Answer{Addresses: addrs("192.0.2.1"), TTL: time.Minute, Answered: []int{4, 6}},
		},
		{
			name: "CNAME chain in one answer: the TTL is the chain's smallest",
			setup: func(s0, _ *testdns.Server) {
				// Mixed case: owner names are compared case-insensitively.
				s0.Set(host, testdns.CNAME("Edge.CDN.test", 5*time.Minute))
				s0.Set("EDGE.cdn.test", testdns.CNAME("pop1.cdn.test", 20*time.Second))
				s0.Set("pop1.cdn.test", testdns.A("192.0.2.7", time.Minute), testdns.AAAA("2001:db8::7", time.Hour))
			},
			want: Answer{Addresses: addrs("192.0.2.7", "2001:db8::7"), TTL: 20 * time.Second, Answered: []int{4, 6}},
		},
		{
			name: "CNAME whose target takes a second query",
			setup: func(s0, _ *testdns.Server) {
				s0.FollowCNAMEs(false)
				s0.Set(host, testdns.CNAME("edge.cdn.test", 10*time.Second))
				s0.Set("edge.cdn.test", testdns.A("192.0.2.8", time.Minute))
			},
			want: Answer{Addresses: addrs("192.0.2.8"), TTL: 10 * time.Second, Answered: []int{4, 6}},
			check: func(t *testing.T, s0, _ *testdns.Server) {
				for _, name := range []string{host, "edge.cdn.test"} {
					if got := s0.Queries(name, dns.TypeA); got != 1 {
						t.Errorf("%s A was asked %d times, want once", name, got)
					}
				}
			},
		},
		{
			name: "eight aliases are allowed",
			setup: func(s0, _ *testdns.Server) {
				chain(s0, 8)
			},
			want: Answer{Addresses: addrs("192.0.2.9"), TTL: time.Minute, Answered: []int{4, 6}},
		},
		{
			name:      "nine aliases are too many",
			setup:     func(s0, _ *testdns.Server) { chain(s0, 9) },
			wantErr:   "resolving api.example.test: CNAME chain longer than 8 aliases",
			wantKind:  NoAddresses,
			wantRcode: dns.RcodeSuccess,
		},
		{
			name: "CNAME loop in one answer",
			setup: func(s0, _ *testdns.Server) {
				s0.Set(host, testdns.CNAME("b.example.test", time.Minute))
				s0.Set("b.example.test", testdns.CNAME("api.example.test", time.Minute))
			},
			wantErr:   "resolving api.example.test: CNAME loop: b.example.test is an alias of api.example.test, which is in its chain",
			wantKind:  NoAddresses,
			wantRcode: dns.RcodeSuccess,
		},
		{
			name: "CNAME loop across queries",
			setup: func(s0, _ *testdns.Server) {
				s0.FollowCNAMEs(false)
				s0.Set(host, testdns.CNAME("b.example.test", time.Minute))
				s0.Set("b.example.test", testdns.CNAME("c.example.test", time.Minute))
				s0.Set("c.example.test", testdns.CNAME("b.example.test", time.Minute))
			},
			wantErr:   "resolving api.example.test: CNAME loop: c.example.test is an alias of b.example.test, which is in its chain",
			wantKind:  NoAddresses,
			wantRcode: dns.RcodeSuccess,
		},
		{
			name: "NXDOMAIN is authoritative: the next server is not asked",
			setup: func(_, s1 *testdns.Server) {
				s1.Set(host, testdns.A("192.0.2.1", time.Minute))
			},
			wantErr:   "resolving api.example.test: NXDOMAIN from {0}",
			wantKind:  NotFound,
			wantRcode: dns.RcodeNameError,
			check: func(t *testing.T, _, s1 *testdns.Server) {
				if got := s1.Queries(host, dns.TypeA) + s1.Queries(host, dns.TypeAAAA); got != 0 {
					t.Errorf("the second server was asked %d times", got)
				}
			},
		},
		{
			name:      "CNAME to a name that does not exist",
			setup:     func(s0, _ *testdns.Server) { s0.Set(host, testdns.CNAME("gone.example.test", time.Minute)) },
			wantErr:   "resolving api.example.test: CNAME target gone.example.test: NXDOMAIN from {0}",
			wantKind:  NotFound,
			wantRcode: dns.RcodeNameError,
		},
		{
			name:      "NODATA in both families",
			setup:     func(s0, _ *testdns.Server) { s0.Set(host) },
			wantErr:   "resolving api.example.test: no A or AAAA record (NODATA from {0})",
			wantKind:  NoAddresses,
			wantRcode: dns.RcodeSuccess,
		},
		{
			name: "SERVFAIL from the first server, an answer from the second",
			setup: func(s0, s1 *testdns.Server) {
				s0.Fail(host, dns.RcodeServerFailure)
				s1.Set(host, testdns.A("192.0.2.1", time.Minute))
			},
			want:       Answer{Addresses: addrs("192.0.2.1"), TTL: time.Minute, Answered: []int{4, 6}},
			wantServer: 1,
		},
		{
			name: "REFUSED from the first server, an answer from the second",
			setup: func(s0, s1 *testdns.Server) {
				s0.Fail(host, dns.RcodeRefused)
				s1.Set(host, testdns.A("192.0.2.1", time.Minute))
			},
			want:       Answer{Addresses: addrs("192.0.2.1"), TTL: time.Minute, Answered: []int{4, 6}},
			wantServer: 1,
		},
		{
			name: "every server fails",
			setup: func(s0, s1 *testdns.Server) {
				s0.Fail(host, dns.RcodeServerFailure)
				s1.Fail(host, dns.RcodeRefused)
			},
			wantErr:   "resolving api.example.test: SERVFAIL from {0}; REFUSED from {1}",
			wantKind:  ServerFailure,
			wantRcode: dns.RcodeRefused,
		},
		{
			name: "the first server hangs, the second answers",
			setup: func(s0, s1 *testdns.Server) {
				s0.Hang(host)
				s1.Set(host, testdns.AAAA("2001:db8::1", time.Minute))
			},
			timeout:    hangTimeout,
			want:       Answer{Addresses: addrs("2001:db8::1"), TTL: time.Minute, Answered: []int{4, 6}},
			wantServer: 1,
		},
		{
			name: "every server hangs",
			setup: func(s0, s1 *testdns.Server) {
				s0.Hang(host)
				s1.Hang(host)
			},
			timeout:   hangTimeout,
			wantErr:   "resolving api.example.test: no answer from {0} within 100ms; no answer from {1} within 100ms",
			wantKind:  Timeout,
			wantRcode: -1,
		},
		{
			name: "one server hangs, the other fails",
			setup: func(s0, s1 *testdns.Server) {
				s0.Hang(host)
				s1.Fail(host, dns.RcodeServerFailure)
			},
			timeout:   hangTimeout,
			wantErr:   "resolving api.example.test: no answer from {0} within 100ms; SERVFAIL from {1}",
			wantKind:  ServerFailure,
			wantRcode: dns.RcodeServerFailure,
		},
		{
			name: "truncated UDP answers are asked again over TCP",
			setup: func(s0, _ *testdns.Server) {
				s0.Truncate(true)
				s0.Set(host, testdns.A("192.0.2.1", time.Minute))
			},
			want: Answer{Addresses: addrs("192.0.2.1"), TTL: time.Minute, Answered: []int{4, 6}},
			check: func(t *testing.T, s0, _ *testdns.Server) {
				if got := s0.Queries(host, dns.TypeA); got != 2 {
					t.Errorf("A was asked %d times, want twice (UDP, then TCP)", got)
				}
			},
		},
		{
			name: "an answer too large for the EDNS0 buffer comes whole over TCP",
			setup: func(s0, _ *testdns.Server) {
				var records []testdns.Record
				for i := range 200 {
					records = append(records, testdns.A(fmt.Sprintf("10.0.%d.%d", i/100, i%100), time.Minute))
				}
				s0.Set(host, records...)
			},
			want: Answer{Addresses: manyAddrs(200), TTL: time.Minute, Answered: []int{4, 6}},
		},
		{
			name: "AAAA fails while A answers: incomplete",
			setup: func(s0, s1 *testdns.Server) {
				s0.Set(host, testdns.A("192.0.2.1", time.Minute), testdns.AAAA("2001:db8::1", time.Minute))
				s0.FailType(host, dns.TypeAAAA, dns.RcodeServerFailure)
				s1.Set(host, testdns.A("192.0.2.1", time.Minute), testdns.AAAA("2001:db8::1", time.Minute))
				s1.FailType(host, dns.TypeAAAA, dns.RcodeServerFailure)
			},
			want:           Answer{Addresses: addrs("192.0.2.1"), TTL: time.Minute, Answered: []int{4}},
			wantIncomplete: "resolving api.example.test: AAAA query: SERVFAIL from {0}; SERVFAIL from {1}",
		},
		{
			name: "families answered by different servers: Server is the one with the addresses",
			setup: func(s0, s1 *testdns.Server) {
				s0.Set(host)
				s0.FailType(host, dns.TypeAAAA, dns.RcodeServerFailure)
				s1.Set(host, testdns.AAAA("2001:db8::1", time.Minute))
			},
			want:       Answer{Addresses: addrs("2001:db8::1"), TTL: time.Minute, Answered: []int{4, 6}},
			wantServer: 1,
		},
		{
			name: "A fails while AAAA has no data: the failure",
			setup: func(s0, s1 *testdns.Server) {
				for _, s := range []*testdns.Server{s0, s1} {
					s.Set(host)
					s.FailType(host, dns.TypeA, dns.RcodeServerFailure)
				}
			},
			wantErr:   "resolving api.example.test: SERVFAIL from {0}; SERVFAIL from {1}",
			wantKind:  ServerFailure,
			wantRcode: dns.RcodeServerFailure,
		},
		{
			name: "NXDOMAIN for one family says more than SERVFAIL for the other",
			setup: func(s0, s1 *testdns.Server) {
				s0.FailType(host, dns.TypeA, dns.RcodeServerFailure)
				s1.FailType(host, dns.TypeA, dns.RcodeServerFailure)
			},
			wantErr:   "resolving api.example.test: NXDOMAIN from {0}",
			wantKind:  NotFound,
			wantRcode: dns.RcodeNameError,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			servers := []*testdns.Server{testdns.Start(t), testdns.Start(t)}
			tt.setup(servers[0], servers[1])
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			client := NewDNSClient([]string{servers[0].Addr(), servers[1].Addr()}, timeout)
			name := tt.host
			if name == "" {
				name = host
			}

			got, err := client.Lookup(context.Background(), name)

			expand := strings.NewReplacer("{0}", servers[0].Addr(), "{1}", servers[1].Addr()).Replace
			if tt.wantErr != "" {
				var lookupErr *LookupError
				if !errors.As(err, &lookupErr) {
					t.Fatalf("Lookup() = %+v, %v; want a *LookupError", got, err)
				}
				if err.Error() != expand(tt.wantErr) || lookupErr.Kind != tt.wantKind || lookupErr.Rcode != tt.wantRcode {
					t.Errorf("Lookup() error %q (kind %v, rcode %d)\nwant %q (kind %v, rcode %d)",
						err, lookupErr.Kind, lookupErr.Rcode, expand(tt.wantErr), tt.wantKind, tt.wantRcode)
				}
				if lookupErr.Host != name {
					t.Errorf("LookupError.Host = %q, want %q", lookupErr.Host, name)
				}
			} else {
				if err != nil {
					t.Fatalf("Lookup() error: %v", err)
				}
				incomplete := ""
				if got.Incomplete != nil {
					incomplete = got.Incomplete.Error()
				}
				if incomplete != expand(tt.wantIncomplete) {
					t.Errorf("Incomplete = %q, want %q", incomplete, expand(tt.wantIncomplete))
				}
				want := tt.want
				want.Server = servers[tt.wantServer].Addr()
				got.Incomplete = nil
				if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
					t.Errorf("Lookup() answer (-want +got):\n%s", diff)
				}
			}
			if tt.check != nil {
				tt.check(t, servers[0], servers[1])
			}
		})
	}
}

// chain sets host as the first of n aliases of each other, the last of which has one address.
func chain(s *testdns.Server, n int) {
	name := host
	for i := range n {
		next := fmt.Sprintf("alias%d.example.test", i)
		s.Set(name, testdns.CNAME(next, time.Minute))
		name = next
	}
	s.Set(name, testdns.A("192.0.2.9", time.Minute))
}

func addrs(ips ...string) []netip.Addr {
	out := make([]netip.Addr, len(ips))
	for i, ip := range ips {
		out[i] = netip.MustParseAddr(ip)
	}
	return out
}

// manyAddrs are the n addresses 10.0.0.0, 10.0.0.1, …, 10.0.0.99, 10.0.1.0, … sorted.
func manyAddrs(n int) []netip.Addr {
	out := make([]netip.Addr, 0, n)
	for i := range n {
		out = append(out, netip.AddrFrom4([4]byte{10, 0, byte(i / 100), byte(i % 100)}))
	}
	return out
}

// TestLookupIgnoresRecordsOutsideTheChain answers with addresses of names the query did not
// lead to, as a poisoned or broken server could; only the chain's addresses count.
func TestLookupIgnoresRecordsOutsideTheChain(t *testing.T) {
	t.Parallel()
	answer := []dns.RR{
		mustRR(t, "elsewhere.test. 60 IN A 203.0.113.66"),
		mustRR(t, "API.example.test. 300 IN CNAME edge.cdn.test."),
		mustRR(t, "other.cdn.test. 1 IN A 203.0.113.67"),
		mustRR(t, "edge.cdn.test. 30 IN A 192.0.2.1"),
		mustRR(t, "edge.cdn.test. 30 IN AAAA 2001:db8::66"),
	}
	addr := serveFunc(t, func(w dns.ResponseWriter, query *dns.Msg) {
		reply := new(dns.Msg).SetReply(query)
		if query.Question[0].Qtype == dns.TypeA {
			reply.Answer = answer
		}
		_ = w.WriteMsg(reply)
	})

	got, err := NewDNSClient([]string{addr}, 5*time.Second).Lookup(context.Background(), host)
	if err != nil {
		t.Fatal(err)
	}
	want := Answer{Addresses: addrs("192.0.2.1"), TTL: 30 * time.Second, Answered: []int{4, 6}, Server: addr}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Lookup() answer (-want +got):\n%s", diff)
	}
}

// TestLookupAsksTheNextServerWhenOneRefusesConnections covers a server whose port is closed: a
// UDP "connection refused" moves on as a timeout does, without waiting.
func TestLookupAsksTheNextServerWhenOneRefusesConnections(t *testing.T) {
	t.Parallel()
	closed, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.LocalAddr().String()
	_ = closed.Close()
	s := testdns.Start(t)
	s.Set(host, testdns.A("192.0.2.1", time.Minute))

	got, err := NewDNSClient([]string{closedAddr, s.Addr()}, 5*time.Second).Lookup(context.Background(), host)
	if err != nil {
		t.Fatal(err)
	}
	if got.Server != s.Addr() || len(got.Addresses) != 1 {
		t.Errorf("Lookup() = %+v, want the address from %s", got, s.Addr())
	}

	_, err = NewDNSClient([]string{closedAddr}, 5*time.Second).Lookup(context.Background(), host)
	var lookupErr *LookupError
	if !errors.As(err, &lookupErr) || lookupErr.Kind != Timeout || !strings.Contains(err.Error(), "no answer from "+closedAddr+": ") {
		t.Errorf("Lookup() from a closed port: %v, want a Timeout saying why", err)
	}
}

func TestLookupRefusesInvalidHosts(t *testing.T) {
	t.Parallel()
	s := testdns.Start(t)
	client := NewDNSClient([]string{s.Addr()}, 5*time.Second)
	for _, host := range []string{
		"",
		".",
		"a..example.test",
		".example.test",
		"api example.test",
		`api\.example.test`,
		"api.example.test/path",
		"api.example.test:443",
		"bücher.example.test",
		strings.Repeat("a", 64) + ".example.test",
		strings.Repeat("abcdefghi.", 26) + "test",
		"192.0.2.1",
		"2001:db8::1",
	} {
		_, err := client.Lookup(context.Background(), host)
		var lookupErr *LookupError
		if err == nil || errors.As(err, &lookupErr) || !strings.HasPrefix(err.Error(), fmt.Sprintf("invalid host name %q: ", host)) {
			t.Errorf("Lookup(%q) error %v, want an invalid host name", host, err)
		}
	}
	if got := s.Queries(".", dns.TypeA) + s.Queries("a..example.test", dns.TypeA); got != 0 {
		t.Errorf("%d queries reached the server", got)
	}
}

func TestLookupWithoutServers(t *testing.T) {
	t.Parallel()
	_, err := NewDNSClient(nil, 0).Lookup(context.Background(), host)
	if err == nil || !strings.Contains(err.Error(), "no DNS server") {
		t.Errorf("Lookup() without servers: %v", err)
	}
}

func TestLookupContext(t *testing.T) {
	t.Parallel()
	s := testdns.Start(t)
	s.Hang(host)
	// Long enough that only the context can end the lookups below in time.
	client := NewDNSClient([]string{s.Addr()}, time.Minute)

	t.Run("canceled while waiting", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s.OnQuery(func(string, uint16) { cancel() })
		defer s.OnQuery(nil)
		_, err := client.Lookup(ctx, host)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Lookup() error %v, want context.Canceled", err)
		}
		var lookupErr *LookupError
		if errors.As(err, &lookupErr) {
			t.Errorf("Lookup() error %v is a *LookupError; the caller's cancellation is not DNS's failure", err)
		}
	})
	t.Run("canceled before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		before := s.Queries(host, dns.TypeA)
		if _, err := client.Lookup(ctx, host); !errors.Is(err, context.Canceled) {
			t.Errorf("Lookup() error %v, want context.Canceled", err)
		}
		if got := s.Queries(host, dns.TypeA) - before; got != 0 {
			t.Errorf("%d queries were sent on a canceled context", got)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), hangTimeout)
		defer cancel()
		if _, err := client.Lookup(ctx, host); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Lookup() error %v, want context.DeadlineExceeded", err)
		}
	})
}

// TestLookupLeavesNoGoroutines runs alone (not in parallel), so that whatever runs at its end
// is its own.
func TestLookupLeavesNoGoroutines(t *testing.T) {
	before := goleak.IgnoreCurrent()
	// Registered first, so run last: after the server has stopped.
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	s := testdns.Start(t)
	s.Set(host, testdns.A("192.0.2.1", time.Minute))
	s.Set("hangs.example.test")
	s.Hang("hangs.example.test")
	s.Set("truncated.example.test", testdns.A("192.0.2.1", time.Minute))
	client := NewDNSClient([]string{s.Addr()}, hangTimeout)

	if _, err := client.Lookup(context.Background(), host); err != nil {
		t.Error(err)
	}
	s.Truncate(true)
	if _, err := client.Lookup(context.Background(), "truncated.example.test"); err != nil {
		t.Error(err)
	}
	if _, err := client.Lookup(context.Background(), "hangs.example.test"); err == nil {
		t.Error("a hanging server answered")
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.OnQuery(func(string, uint16) { cancel() })
	if _, err := client.Lookup(ctx, "hangs.example.test"); !errors.Is(err, context.Canceled) {
		t.Errorf("Lookup() error %v, want context.Canceled", err)
	}
}

func TestNewDNSClientAddsPort(t *testing.T) {
	t.Parallel()
	got := NewDNSClient([]string{
		"10.0.0.2", "10.0.0.3:5353", "2001:db8::1", "[2001:db8::2]", "[2001:db8::3]:5353", " 10.0.0.4 ", "",
	}, 0).Servers()
	want := []string{"10.0.0.2:53", "10.0.0.3:5353", "[2001:db8::1]:53", "[2001:db8::2]:53", "[2001:db8::3]:5353", "10.0.0.4:53"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Servers() (-want +got):\n%s", diff)
	}
}

func TestServersFromResolvConf(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}

	got, err := ServersFromResolvConf(write("resolv.conf", `# written by a test
search default.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
nameserver 2001:db8::53
; a comment the other way
nameserver fe80::1%eth0
options ndots:5 timeout:1 attempts:2 rotate
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.96.0.10:53", "[2001:db8::53]:53", "[fe80::1%eth0]:53"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ServersFromResolvConf() (-want +got):\n%s", diff)
	}

	if _, err := ServersFromResolvConf(write("empty.conf", "search cluster.local\noptions ndots:5\n")); err == nil ||
		!strings.Contains(err.Error(), "no nameserver line") {
		t.Errorf("ServersFromResolvConf() of a file without nameservers: %v", err)
	}
	if _, err := ServersFromResolvConf(filepath.Join(dir, "missing.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ServersFromResolvConf() of a missing file: %v, want os.ErrNotExist", err)
	}
}

func TestErrorKindString(t *testing.T) {
	t.Parallel()
	for kind, want := range map[ErrorKind]string{
		NotFound: "NotFound", NoAddresses: "NoAddresses", ServerFailure: "ServerFailure", Timeout: "Timeout", 0: "ErrorKind(0)",
	} {
		if got := kind.String(); got != want {
			t.Errorf("ErrorKind(%d).String() = %q, want %q", int(kind), got, want)
		}
	}
}

// serveFunc serves f over UDP on loopback until the test ends and returns the address.
func serveFunc(t *testing.T, f dns.HandlerFunc) string {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: conn, Handler: f, NotifyStartedFunc: func() { close(started) }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return conn.LocalAddr().String()
}

func mustRR(t *testing.T, s string) dns.RR {
	t.Helper()
	rr, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return rr
}
