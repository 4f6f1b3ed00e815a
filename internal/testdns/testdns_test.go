package testdns

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

// TestMain checks that a server leaves nothing running once its test ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ask sends one query over network ("udp" or "tcp") with an EDNS0 buffer of bufsize (none when
// 0) and returns the reply.
func ask(t *testing.T, s *Server, network, name string, qtype uint16, bufsize uint16) *dns.Msg {
	t.Helper()
	reply, err := exchange(s, network, name, qtype, bufsize, time.Second)
	if err != nil {
		t.Fatalf("%s query %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return reply
}

func exchange(s *Server, network, name string, qtype uint16, bufsize uint16, timeout time.Duration) (*dns.Msg, error) {
	msg := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	if bufsize > 0 {
		msg.SetEdns0(bufsize, false)
	}
	client := &dns.Client{Net: network, Timeout: timeout}
	reply, _, err := client.Exchange(msg, s.Addr())
	return reply, err
}

// summary is the reply's rcode and answer records, one per line without the TTL column's
// spacing, for comparing.
func summary(reply *dns.Msg) string {
	lines := []string{dns.RcodeToString[reply.Rcode]}
	for _, rr := range reply.Answer {
		lines = append(lines, strings.Join(strings.Fields(rr.String()), " "))
	}
	return strings.Join(lines, "\n")
}

func TestAnswers(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr() = %q, want 127.0.0.1:port", s.Addr())
	}
	s.Set("Web.Example.Test",
		A("192.0.2.1", 30*time.Second), A("192.0.2.2", 30*time.Second), AAAA("2001:db8::1", time.Minute))
	s.Set("alias.example.test.", CNAME("web.example.test", 10*time.Second))
	s.Set("loop-a.example.test", CNAME("loop-b.example.test", time.Second))
	s.Set("loop-b.example.test", CNAME("loop-a.example.test", time.Second))
	s.Set("dangling.example.test", CNAME("nowhere.example.test", time.Second))
	s.Set("empty.example.test")

	tests := []struct {
		name  string
		qtype uint16
		want  string
	}{
		{"web.example.test", dns.TypeA, "NOERROR\nWeb.Example.Test. 30 IN A 192.0.2.1\nWeb.Example.Test. 30 IN A 192.0.2.2"},
		{"WEB.EXAMPLE.TEST.", dns.TypeAAAA, "NOERROR\nWeb.Example.Test. 60 IN AAAA 2001:db8::1"},
		{"web.example.test", dns.TypeMX, "NOERROR"},
		{"alias.example.test", dns.TypeA, "NOERROR\nalias.example.test. 10 IN CNAME web.example.test.\nWeb.Example.Test. 30 IN A 192.0.2.1\nWeb.Example.Test. 30 IN A 192.0.2.2"},
		{"alias.example.test", dns.TypeCNAME, "NOERROR\nalias.example.test. 10 IN CNAME web.example.test."},
		{"loop-a.example.test", dns.TypeA, "NOERROR\nloop-a.example.test. 1 IN CNAME loop-b.example.test.\nloop-b.example.test. 1 IN CNAME loop-a.example.test."},
		{"dangling.example.test", dns.TypeA, "NXDOMAIN\ndangling.example.test. 1 IN CNAME nowhere.example.test."},
		{"empty.example.test", dns.TypeA, "NOERROR"},
		{"unknown.example.test", dns.TypeA, "NXDOMAIN"},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			if got := summary(ask(t, s, network, tt.name, tt.qtype, 1232)); got != tt.want {
				t.Errorf("%s %s %s:\n%s\nwant\n%s", network, tt.name, dns.TypeToString[tt.qtype], got, tt.want)
			}
		}
	}
	if got := s.Queries("Web.Example.Test.", dns.TypeA); got != 2 {
		t.Errorf("Queries(web A) = %d, want 2 (one over UDP, one over TCP)", got)
	}

	s.FollowCNAMEs(false)
	if got, want := summary(ask(t, s, "udp", "alias.example.test", dns.TypeA, 1232)), "NOERROR\nalias.example.test. 10 IN CNAME web.example.test."; got != want {
		t.Errorf("not following CNAMEs:\n%s\nwant\n%s", got, want)
	}
}

func TestFailures(t *testing.T) {
	s := Start(t)
	s.Set("host.example.test", A("192.0.2.1", time.Minute), AAAA("2001:db8::1", time.Minute))

	s.FailType("host.example.test", dns.TypeAAAA, dns.RcodeServerFailure)
	if got := ask(t, s, "udp", "host.example.test", dns.TypeA, 0); got.Rcode != dns.RcodeSuccess || len(got.Answer) != 1 {
		t.Errorf("A with AAAA failing:\n%s", summary(got))
	}
	if got := ask(t, s, "udp", "host.example.test", dns.TypeAAAA, 0); summary(got) != "SERVFAIL" {
		t.Errorf("AAAA failing:\n%s", summary(got))
	}

	s.Fail("host.example.test", dns.RcodeRefused)
	if got := ask(t, s, "tcp", "host.example.test", dns.TypeA, 0); summary(got) != "REFUSED" {
		t.Errorf("A after Fail(REFUSED):\n%s", summary(got))
	}
	if got := ask(t, s, "tcp", "host.example.test", dns.TypeAAAA, 0); summary(got) != "SERVFAIL" {
		t.Errorf("FailType should win over Fail:\n%s", summary(got))
	}

	s.Hang("host.example.test")
	for _, network := range []string{"udp", "tcp"} {
		_, err := exchange(s, network, "host.example.test", dns.TypeA, 0, 50*time.Millisecond)
		var netErr net.Error
		if !errors.As(err, &netErr) || !netErr.Timeout() {
			t.Errorf("%s query of a hanging name: %v, want a timeout", network, err)
		}
	}

	s.Set("host.example.test", A("192.0.2.1", time.Minute), AAAA("2001:db8::1", time.Minute))
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		if got := ask(t, s, "udp", "host.example.test", qtype, 0); got.Rcode != dns.RcodeSuccess || len(got.Answer) != 1 {
			t.Errorf("%s after Set cleared the failures:\n%s", dns.TypeToString[qtype], summary(got))
		}
	}
	if got, want := s.Queries("host.example.test", dns.TypeA), 5; got != want {
		t.Errorf("Queries(A) = %d, want %d (the hanging ones too)", got, want)
	}
}

func TestTruncation(t *testing.T) {
	s := Start(t)
	s.Set("small.example.test", A("192.0.2.1", time.Minute))
	var many []Record
	for i := range 100 {
		many = append(many, A(net.IPv4(10, 0, 0, byte(i)).String(), time.Minute))
	}
	s.Set("large.example.test", many...)

	// An answer that does not fit the advertised buffer comes back truncated over UDP, whole
	// over TCP.
	if got := ask(t, s, "udp", "large.example.test", dns.TypeA, 1232); !got.Truncated || len(got.Answer) == 100 {
		t.Errorf("large answer over UDP: truncated %v with %d records, want truncated", got.Truncated, len(got.Answer))
	}
	if got := ask(t, s, "tcp", "large.example.test", dns.TypeA, 1232); got.Truncated || len(got.Answer) != 100 {
		t.Errorf("large answer over TCP: truncated %v with %d records, want 100", got.Truncated, len(got.Answer))
	}

	s.Truncate(true)
	if got := ask(t, s, "udp", "small.example.test", dns.TypeA, 1232); !got.Truncated || len(got.Answer) != 0 {
		t.Errorf("Truncate(true) over UDP: truncated %v with %d records, want truncated and empty", got.Truncated, len(got.Answer))
	}
	if got := ask(t, s, "tcp", "small.example.test", dns.TypeA, 1232); got.Truncated || len(got.Answer) != 1 {
		t.Errorf("Truncate(true) over TCP: truncated %v with %d records, want the answer", got.Truncated, len(got.Answer))
	}
	s.Truncate(false)
	if got := ask(t, s, "udp", "small.example.test", dns.TypeA, 1232); got.Truncated || len(got.Answer) != 1 {
		t.Errorf("Truncate(false) over UDP: truncated %v with %d records, want the answer", got.Truncated, len(got.Answer))
	}
}

func TestOnQuery(t *testing.T) {
	s := Start(t)
	seen := make(chan string, 1)
	s.OnQuery(func(name string, qtype uint16) { seen <- name + " " + dns.TypeToString[qtype] })
	ask(t, s, "udp", "Some.Example.Test", dns.TypeAAAA, 0)
	if got := <-seen; got != "Some.Example.Test. AAAA" {
		t.Errorf("OnQuery saw %q", got)
	}
	s.OnQuery(nil)
	ask(t, s, "udp", "some.example.test", dns.TypeAAAA, 0)
	if got := s.Queries("some.example.test", dns.TypeAAAA); got != 2 {
		t.Errorf("Queries = %d, want 2", got)
	}
}

func TestConstructorsRefuseWrongFamilies(t *testing.T) {
	for _, f := range []func(){
		func() { A("2001:db8::1", 0) },
		func() { A("not an address", 0) },
		func() { AAAA("192.0.2.1", 0) },
		func() { CNAME("x.example.test", -time.Second) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f()
		}()
	}
}
