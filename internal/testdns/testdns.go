// Package testdns is a DNS server for tests only: it answers on 127.0.0.1, over UDP and TCP on
// one random port, from records a test sets, and can be told to fail, hang or truncate, so that
// DNS clients can be tried against a real server without touching the network.
package testdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// maxChase bounds how far the server follows a CNAME chain into one answer, so that a loop set
// up on purpose ends.
const maxChase = 16

// shutdownTimeout bounds the wait for in-flight queries when a test ends.
const shutdownTimeout = 5 * time.Second

// Record is one resource record of a name, made by A, AAAA or CNAME.
type Record struct {
	qtype  uint16
	addr   netip.Addr
	target string
	ttl    uint32
}

// A is an IPv4 address record. It panics on an ip that is not IPv4, which is a mistake in the
// test.
func A(ip string, ttl time.Duration) Record {
	addr, err := netip.ParseAddr(ip)
	if err != nil || !addr.Is4() {
		panic(fmt.Sprintf("testdns.A: %q is not an IPv4 address", ip))
	}
	return Record{qtype: dns.TypeA, addr: addr, ttl: seconds(ttl)}
}

// AAAA is an IPv6 address record. It panics on an ip that is not IPv6 (an IPv4-mapped IPv6
// address such as ::ffff:10.0.0.1 is allowed, as the wire allows it), which is a mistake in
// the test.
func AAAA(ip string, ttl time.Duration) Record {
	addr, err := netip.ParseAddr(ip)
	if err != nil || !addr.Is6() {
		panic(fmt.Sprintf("testdns.AAAA: %q is not an IPv6 address", ip))
	}
	return Record{qtype: dns.TypeAAAA, addr: addr, ttl: seconds(ttl)}
}

// CNAME is an alias to target, with or without the trailing dot.
func CNAME(target string, ttl time.Duration) Record {
	return Record{qtype: dns.TypeCNAME, target: dns.Fqdn(target), ttl: seconds(ttl)}
}

// seconds is a TTL on the wire; DNS counts whole seconds.
func seconds(ttl time.Duration) uint32 {
	if ttl < 0 {
		panic(fmt.Sprintf("testdns: negative TTL %s", ttl))
	}
	return uint32(ttl / time.Second)
}

// rr is the record as the owner name's resource record.
func (r Record) rr(owner string) dns.RR {
	hdr := dns.RR_Header{Name: owner, Rrtype: r.qtype, Class: dns.ClassINET, Ttl: r.ttl}
	switch r.qtype {
	case dns.TypeA:
		return &dns.A{Hdr: hdr, A: r.addr.AsSlice()}
	case dns.TypeAAAA:
		return &dns.AAAA{Hdr: hdr, AAAA: r.addr.AsSlice()}
	default:
		return &dns.CNAME{Hdr: hdr, Target: r.target}
	}
}

// entry is a name's records, under the spelling Set was given, so that answers carry that case
// and show whether a client compares names case-insensitively.
type entry struct {
	owner   string
	records []Record
}

// typeKey is a name (canonical: lower case, fully qualified) and a query type.
type typeKey struct {
	name  string
	qtype uint16
}

// Server is a DNS server on loopback. Its methods are safe for concurrent use, also while
// queries are being answered.
type Server struct {
	addr string
	udp  *dns.Server
	tcp  *dns.Server

	mu           sync.Mutex
	names        map[string]*entry
	fails        map[string]int
	typeFails    map[typeKey]int
	hangs        map[string]bool
	queries      map[typeKey]int
	truncate     bool
	followCNAMEs bool
	onQuery      func(name string, qtype uint16)
}

// T is what Start needs of a test: testing.TB, or Ginkgo's GinkgoT().
type T interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// Start starts a server on 127.0.0.1 with no names (every query gets NXDOMAIN) and stops it
// when the test ends. It fails the test if the server cannot start.
func Start(t T) *Server {
	t.Helper()
	s := &Server{
		names:        map[string]*entry{},
		fails:        map[string]int{},
		typeFails:    map[typeKey]int{},
		hangs:        map[string]bool{},
		queries:      map[typeKey]int{},
		followCNAMEs: true,
	}
	packetConn, listener, err := listenBoth()
	if err != nil {
		t.Fatalf("testdns: %v", err)
	}
	s.addr = packetConn.LocalAddr().String()
	handler := dns.HandlerFunc(s.serve)
	s.udp = &dns.Server{PacketConn: packetConn, Handler: handler}
	s.tcp = &dns.Server{Listener: listener, Handler: handler}

	var served sync.WaitGroup
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started := make(chan struct{})
		failed := make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		served.Go(func() {
			if err := srv.ActivateAndServe(); err != nil {
				failed <- err
			}
		})
		// Shutdown refuses a server that has not started yet, so Start returns only once both
		// serve.
		select {
		case <-started:
		case err := <-failed:
			_ = packetConn.Close()
			_ = listener.Close()
			served.Wait()
			t.Fatalf("testdns: serving on %s: %v", s.addr, err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		for _, srv := range []*dns.Server{s.udp, s.tcp} {
			if err := srv.ShutdownContext(ctx); err != nil {
				t.Errorf("testdns: stopping the server on %s: %v", s.addr, err)
			}
		}
		served.Wait()
	})
	return s
}

// listenBoth binds UDP and TCP on one random loopback port. The port the kernel picks for UDP
// may be taken for TCP, so it tries a few times.
func listenBoth() (net.PacketConn, net.Listener, error) {
	var errs []error
	for range 10 {
		packetConn, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, fmt.Errorf("listening on UDP: %w", err)
		}
		listener, err := net.Listen("tcp", packetConn.LocalAddr().String())
		if err == nil {
			return packetConn, listener, nil
		}
		_ = packetConn.Close()
		errs = append(errs, err)
	}
	return nil, nil, fmt.Errorf("no port free for both UDP and TCP: %w", errors.Join(errs...))
}

// Addr is the server's address, "127.0.0.1:port", for UDP and TCP alike.
func (s *Server) Addr() string { return s.addr }

// Set replaces the records of a name (case-insensitive, with or without the trailing dot) and
// clears any Fail, FailType or Hang of it. With no records, the name exists and every type gets
// NODATA.
func (s *Server) Set(name string, records ...Record) {
	key := dns.CanonicalName(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names[key] = &entry{owner: dns.Fqdn(name), records: append([]Record(nil), records...)}
	delete(s.fails, key)
	delete(s.hangs, key)
	for k := range s.typeFails {
		if k.name == key {
			delete(s.typeFails, k)
		}
	}
}

// Fail makes the server answer every query for the name with rcode (for example
// dns.RcodeServerFailure, dns.RcodeRefused or dns.RcodeNameError) and no records, until Set.
func (s *Server) Fail(name string, rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fails[dns.CanonicalName(name)] = rcode
}

// FailType is Fail for queries of one type only (for example dns.TypeAAAA); it wins over Fail.
func (s *Server) FailType(name string, qtype uint16, rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.typeFails[typeKey{dns.CanonicalName(name), qtype}] = rcode
}

// Hang makes the server never answer queries for the name, over UDP or TCP, so that clients
// time out; until Set.
func (s *Server) Hang(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hangs[dns.CanonicalName(name)] = true
}

// Queries is how many queries of type qtype for the name have arrived, over UDP and TCP
// together, answered or not.
func (s *Server) Queries(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[typeKey{dns.CanonicalName(name), qtype}]
}

// Truncate, when on, makes every UDP answer come back empty with the TC bit set, as from a
// server whose answer does not fit, so that clients must ask again over TCP. When off (the
// default), UDP answers are truncated only when they do not fit the size the query advertised
// (512 bytes without EDNS0).
func (s *Server) Truncate(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.truncate = on
}

// FollowCNAMEs says whether an answer that reaches a CNAME goes on with the records of its
// target, as a recursive resolver's answers do. It is on by default; off, the answer stops at
// the CNAME, so that a client has to query the target itself.
//
// Fail, FailType and Hang apply to queries for the name itself, not to chains that pass through
// it; a chain that reaches a name the server does not know ends in NXDOMAIN.
func (s *Server) FollowCNAMEs(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.followCNAMEs = on
}

// OnQuery calls f with the name (as asked) and type of every query as it arrives, before it is
// answered, on the server's goroutine; nil removes it. Tests use it to act at the moment a
// query is in flight, without sleeping.
func (s *Server) OnQuery(f func(name string, qtype uint16)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onQuery = f
}

// serve answers one query. The library's default accept function has already refused
// (FORMERR) any message without exactly one question.
func (s *Server) serve(w dns.ResponseWriter, query *dns.Msg) {
	question := query.Question[0]
	key := dns.CanonicalName(question.Name)
	_, overUDP := w.RemoteAddr().(*net.UDPAddr)

	s.mu.Lock()
	s.queries[typeKey{key, question.Qtype}]++
	onQuery, hang, truncate := s.onQuery, s.hangs[key], s.truncate
	reply := new(dns.Msg).SetReply(query)
	reply.RecursionAvailable = true
	if rcode, failing := s.failure(key, question.Qtype); failing {
		reply.Rcode = rcode
	} else {
		reply.Answer, reply.Rcode = s.answer(question.Name, question.Qtype)
	}
	s.mu.Unlock()

	if onQuery != nil {
		onQuery(question.Name, question.Qtype)
	}
	if hang {
		return
	}
	size := dns.MinMsgSize
	if opt := query.IsEdns0(); opt != nil {
		reply.SetEdns0(opt.UDPSize(), false)
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
	}
	if overUDP {
		if truncate {
			reply.Answer, reply.Ns = nil, nil
			reply.Truncated = true
		} else {
			reply.Truncate(size)
		}
	}
	// A client that went away has nobody left to tell.
	_ = w.WriteMsg(reply)
}

// failure is the rcode set by FailType or Fail for the name and type. s.mu is held.
func (s *Server) failure(key string, qtype uint16) (int, bool) {
	if rcode, ok := s.typeFails[typeKey{key, qtype}]; ok {
		return rcode, true
	}
	rcode, ok := s.fails[key]
	return rcode, ok
}

// answer is the answer section and rcode for a query: the records of the type, or the name's
// CNAME and (when following) whatever its target answers. s.mu is held.
func (s *Server) answer(qname string, qtype uint16) ([]dns.RR, int) {
	var answer []dns.RR
	seen := map[string]bool{}
	current := qname
	for range maxChase {
		key := dns.CanonicalName(current)
		e, ok := s.names[key]
		if !ok {
			return answer, dns.RcodeNameError
		}
		seen[key] = true
		var matched []dns.RR
		var cname *Record
		for i, r := range e.records {
			switch r.qtype {
			case qtype:
				matched = append(matched, r.rr(e.owner))
			case dns.TypeCNAME:
				cname = &e.records[i]
			}
		}
		if len(matched) > 0 || cname == nil {
			return append(answer, matched...), dns.RcodeSuccess
		}
		answer = append(answer, cname.rr(e.owner))
		if !s.followCNAMEs || seen[dns.CanonicalName(cname.target)] {
			return answer, dns.RcodeSuccess
		}
		current = cname.target
	}
	return answer, dns.RcodeSuccess
}
