package external

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/miekg/dns"
)

const (
	// defaultDNSTimeout is the wait for one server's answer when NewDNSClient is given none.
	defaultDNSTimeout = 2 * time.Second
	// ednsBufferSize is the UDP payload size of DNS Flag Day 2020: large enough for most
	// answers, small enough not to be fragmented on any path.
	ednsBufferSize = 1232
	// maxCNAMEHops bounds a CNAME chain, as recursive resolvers do, so that a long chain cannot
	// keep a lookup going.
	maxCNAMEHops = 8
	// noRcode is LookupError.Rcode when no server answered.
	noRcode = -1
)

// Answer is one resolution of a host.
type Answer struct {
	// Addresses are the A and AAAA addresses, unmapped, deduplicated, sorted (netip.Addr.Compare).
	Addresses []netip.Addr
	// TTL is the smallest TTL of the records that led to the addresses (the CNAME chain included).
	TTL time.Duration
	// Incomplete, when not nil, says that one family could not be resolved (e.g. AAAA got
	// SERVFAIL or timed out) while the other answered; Answered then says which answered. It is
	// a *LookupError.
	Incomplete error
	// Answered lists the families that answered NOERROR (with or without data): 4, 6 or both.
	Answered []int
	// Server is the server (host:port) that gave the addresses; the one that answered the A
	// query when both families have addresses, as the two may come from different servers.
	Server string
}

// Resolver resolves host names. DNSClient implements it; tests may fake it.
type Resolver interface {
	Lookup(ctx context.Context, host string) (Answer, error)
}

// ErrorKind says why a lookup found no addresses.
type ErrorKind int

const (
	// NotFound is NXDOMAIN: the host, or a name its CNAME chain leads to, does not exist.
	NotFound ErrorKind = iota + 1
	// NoAddresses is NOERROR without an A or AAAA record (NODATA), or a CNAME chain that loops
	// or has more than 8 aliases.
	NoAddresses
	// ServerFailure is SERVFAIL, REFUSED or another error rcode from every server that answered.
	ServerFailure
	// Timeout is no answer from any server in time (or at all, such as a refused connection).
	Timeout
)

// String is the kind's name.
func (k ErrorKind) String() string {
	switch k {
	case NotFound:
		return "NotFound"
	case NoAddresses:
		return "NoAddresses"
	case ServerFailure:
		return "ServerFailure"
	case Timeout:
		return "Timeout"
	}
	return "ErrorKind(" + strconv.Itoa(int(k)) + ")"
}

// LookupError is a lookup's failure as DNS reported it. Errors that are not about DNS (an
// invalid host name, the caller's context ending) are not LookupErrors.
type LookupError struct {
	// Host is the host as Lookup was given it.
	Host string
	// Kind says what went wrong.
	Kind ErrorKind
	// Rcode is the response code behind the error: dns.RcodeNameError for NotFound,
	// dns.RcodeSuccess for NoAddresses, the last answering server's for ServerFailure, and -1
	// for Timeout, when no server answered.
	Rcode int
	// Err says what each server answered, or why the chain was refused; it is never nil.
	Err error
}

// Error reads like "resolving api.example.test: NXDOMAIN from 10.0.0.2:53".
func (e *LookupError) Error() string {
	return "resolving " + e.Host + ": " + e.Err.Error()
}

// Unwrap exposes the network errors of servers that did not answer.
func (e *LookupError) Unwrap() error { return e.Err }

// DNSClient resolves hosts by asking DNS servers itself, so that the answer's TTL is known and
// the servers are the ones configured, not whatever the process's resolver uses. It holds no
// connections or cache: every Lookup asks afresh. It is safe for concurrent use.
type DNSClient struct {
	servers []string
	timeout time.Duration
}

var _ Resolver = (*DNSClient)(nil)

// NewDNSClient asks servers, in order, each host:port; a server given without a port gets :53
// (an IPv6 literal may be given bare or in brackets). timeout bounds the wait for one server's
// answer to one query (over UDP, and again over TCP when the UDP answer is truncated); zero or
// less means 2s.
func NewDNSClient(servers []string, timeout time.Duration) *DNSClient {
	c := &DNSClient{timeout: timeout}
	if c.timeout <= 0 {
		c.timeout = defaultDNSTimeout
	}
	for _, server := range servers {
		if server = strings.TrimSpace(server); server != "" {
			c.servers = append(c.servers, withDNSPort(server))
		}
	}
	return c
}

// withDNSPort adds port 53 to a server given without a port.
func withDNSPort(server string) string {
	if _, _, err := net.SplitHostPort(server); err == nil {
		return server
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(server, "["), "]"), "53")
}

// Servers are the servers the client asks, in order, as host:port.
func (c *DNSClient) Servers() []string { return slices.Clone(c.servers) }

// ServersFromResolvConf reads the nameserver lines of a resolv.conf file, as host:53, in order.
// A file without any is an error, as there would be nobody to ask.
func ServersFromResolvConf(path string) ([]string, error) {
	conf, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading nameservers: %w", err)
	}
	if len(conf.Servers) == 0 {
		return nil, fmt.Errorf("reading nameservers: no nameserver line in %s", path)
	}
	servers := make([]string, 0, len(conf.Servers))
	for _, server := range conf.Servers {
		servers = append(servers, net.JoinHostPort(server, conf.Port))
	}
	return servers, nil
}

// Lookup resolves host, fully qualified (no search domains), asking for A and AAAA at once.
// It fails with a *LookupError when neither family has addresses; when one family has and the
// other failed, the answer holds the addresses and says so in Incomplete. An invalid host name,
// a client without servers and the end of ctx give other errors (the last wraps ctx.Err()).
func (c *DNSClient) Lookup(ctx context.Context, host string) (Answer, error) {
	name, err := queryName(host)
	if err != nil {
		return Answer{}, err
	}
	if len(c.servers) == 0 {
		return Answer{}, fmt.Errorf("resolving %s: no DNS server configured", host)
	}
	var v4, v6 familyResult
	var wg sync.WaitGroup
	wg.Go(func() { v4 = c.resolveFamily(ctx, host, name, dns.TypeA) })
	wg.Go(func() { v6 = c.resolveFamily(ctx, host, name, dns.TypeAAAA) })
	wg.Wait()
	if v4.stopped != nil {
		return Answer{}, fmt.Errorf("resolving %s: %w", host, v4.stopped)
	}
	if v6.stopped != nil {
		return Answer{}, fmt.Errorf("resolving %s: %w", host, v6.stopped)
	}
	return combine(host, v4, v6)
}

// queryName checks that host is a host name and returns it fully qualified, in lower case.
// dns.IsDomainName alone accepts nearly any bytes (spaces, escapes such as "a\.b"), which
// would name something other than what the user wrote; a host name is letters, digits,
// hyphens, underscores and dots.
func queryName(host string) (string, error) {
	invalid := func(why string) error { return fmt.Errorf("invalid host name %q: %s", host, why) }
	if host == "" || host == "." {
		return "", invalid("empty")
	}
	if i := strings.IndexFunc(host, func(r rune) bool { return !isHostNameRune(r) }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(host[i:])
		return "", invalid(fmt.Sprintf("%q is not a letter, digit, hyphen, underscore or dot", r))
	}
	if _, ok := dns.IsDomainName(host); !ok {
		return "", invalid("an empty label, a label longer than 63 bytes or a name longer than 255")
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return "", invalid("an IP address, not a name")
	}
	return dns.CanonicalName(host), nil
}

// isHostNameRune says whether r may appear in a host name (in ASCII; IDNs are given in their
// xn-- form).
func isHostNameRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
}

// familyResult is the resolution of one address family.
type familyResult struct {
	family int
	qtype  uint16
	addrs  []netip.Addr
	// ttl is the smallest TTL of the chain and the addresses, when there are addresses.
	ttl uint32
	// server answered the last query, NOERROR.
	server string
	// err is why the family has no answer.
	err *LookupError
	// stopped is the context's error when the caller gave up.
	stopped error
}

// resolveFamily asks for the host's addresses of one type, following its CNAME chain across as
// many queries as it takes.
func (c *DNSClient) resolveFamily(ctx context.Context, host, name string, qtype uint16) familyResult {
	result := familyResult{family: 4, qtype: qtype, ttl: math.MaxUint32}
	if qtype == dns.TypeAAAA {
		result.family = 6
	}
	fail := func(kind ErrorKind, rcode int, err error) familyResult {
		result.err = &LookupError{Host: host, Kind: kind, Rcode: rcode, Err: err}
		return result
	}
	// chain holds the names from the host to the current end of its CNAME chain.
	chain := map[string]bool{name: true}
	current := name
	for {
		reply, server, err := c.query(ctx, current, qtype)
		if err != nil {
			var lookupErr *LookupError
			if errors.As(err, &lookupErr) {
				lookupErr.Host = host
				result.err = lookupErr
			} else {
				result.stopped = err
			}
			return result
		}
		end, chainErr := followChain(reply.Answer, current, chain, &result.ttl)
		if reply.Rcode == dns.RcodeNameError {
			// NXDOMAIN is about the end of the chain the answer holds.
			var nxdomain error = &serverError{server: server, rcode: reply.Rcode}
			if chainErr == nil && end != name {
				nxdomain = fmt.Errorf("CNAME target %s: %w", strings.TrimSuffix(end, "."), nxdomain)
			}
			return fail(NotFound, reply.Rcode, nxdomain)
		}
		if chainErr != nil {
			return fail(NoAddresses, reply.Rcode, chainErr)
		}
		for _, rr := range reply.Answer {
			if rr.Header().Rrtype != qtype || !chain[dns.CanonicalName(rr.Header().Name)] {
				continue
			}
			var addr netip.Addr
			switch rr := rr.(type) {
			case *dns.A:
				addr, _ = netip.AddrFromSlice(rr.A)
			case *dns.AAAA:
				addr, _ = netip.AddrFromSlice(rr.AAAA)
			}
			if addr.IsValid() {
				result.addrs = append(result.addrs, addr.Unmap())
				result.ttl = min(result.ttl, rr.Header().Ttl)
			}
		}
		// The answer stops at a CNAME whose target it does not answer for (the server does not
		// follow chains, or the target is in another zone): ask for the target.
		if len(result.addrs) == 0 && end != current {
			current = end
			continue
		}
		result.server = server
		return result
	}
}

// followChain follows the CNAME records of answer from start, adding each name to chain and
// lowering ttl to the records' TTL, and returns the chain's end. A CNAME back into the chain is
// a loop, and a chain may hold maxCNAMEHops aliases at most.
func followChain(answer []dns.RR, start string, chain map[string]bool, ttl *uint32) (string, error) {
	aliases := map[string]*dns.CNAME{}
	for _, rr := range answer {
		if cname, ok := rr.(*dns.CNAME); ok {
			aliases[dns.CanonicalName(cname.Hdr.Name)] = cname
		}
	}
	end := start
	for {
		cname, ok := aliases[end]
		if !ok {
			return end, nil
		}
		target := dns.CanonicalName(cname.Target)
		if chain[target] {
			return "", fmt.Errorf("CNAME loop: %s is an alias of %s, which is in its chain",
				strings.TrimSuffix(end, "."), strings.TrimSuffix(target, "."))
		}
		// The host itself is in chain too, so the aliases are one fewer.
		if len(chain) > maxCNAMEHops {
			return "", fmt.Errorf("CNAME chain longer than %d aliases", maxCNAMEHops)
		}
		chain[target] = true
		*ttl = min(*ttl, cname.Hdr.Ttl)
		end = target
	}
}

// query asks the servers in turn until one answers NOERROR or NXDOMAIN. Any other rcode, a
// timeout or a network error moves on to the next server. Its error is a *LookupError without
// Host, or the context's error.
func (c *DNSClient) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, string, error) {
	msg := new(dns.Msg)
	msg.SetQuestion(name, qtype) // with RD set
	msg.SetEdns0(ednsBufferSize, false)
	var failures serverErrors
	lastRcode := noRcode
	for _, server := range c.servers {
		reply, err := c.exchange(ctx, server, msg)
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, "", ctxErr
		}
		if err != nil {
			failures = append(failures, &serverError{server: server, rcode: noRcode, err: err, timeout: c.timeout})
			continue
		}
		if reply.Rcode == dns.RcodeSuccess || reply.Rcode == dns.RcodeNameError {
			return reply, server, nil
		}
		lastRcode = reply.Rcode
		failures = append(failures, &serverError{server: server, rcode: reply.Rcode})
	}
	kind := Timeout
	if lastRcode != noRcode {
		kind = ServerFailure
	}
	return nil, "", &LookupError{Kind: kind, Rcode: lastRcode, Err: failures}
}

// exchange asks one server over UDP, and over TCP when the UDP answer was truncated.
func (c *DNSClient) exchange(ctx context.Context, server string, msg *dns.Msg) (*dns.Msg, error) {
	reply, err := c.exchangeOver(ctx, "udp", server, msg)
	if err == nil && reply.Truncated {
		reply, err = c.exchangeOver(ctx, "tcp", server, msg)
	}
	return reply, err
}

// exchangeOver sends msg to server over network and waits at most the client's timeout for
// the answer.
func (c *DNSClient) exchangeOver(ctx context.Context, network, server string, msg *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	client := &dns.Client{Net: network, Timeout: c.timeout}
	conn, err := client.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// The library heeds a context's deadline (as the socket's) but not its cancellation, so the
	// context's end closes the connection instead; a closed connection cannot be revived by
	// the deadlines the library sets afterwards, as a deadline in the past could. The library
	// is not given the deadline: the socket's timer could fire before the context is done, and
	// a caller's deadline would pass for this server's timeout.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	reply, _, err := client.ExchangeWithConnContext(context.WithoutCancel(ctx), msg, conn)
	if err != nil && ctx.Err() != nil {
		// "use of closed network connection" would hide that the time ran out.
		return nil, ctx.Err()
	}
	return reply, err
}

// serverError is one server's answer that was no answer: an error rcode, or none at all.
type serverError struct {
	server string
	// rcode is the server's rcode, or noRcode when it did not answer.
	rcode int
	// err is why the server did not answer.
	err error
	// timeout is how long the client waited.
	timeout time.Duration
}

func (e *serverError) Error() string {
	switch {
	case e.err == nil:
		return rcodeName(e.rcode) + " from " + e.server
	case isTimeout(e.err):
		return "no answer from " + e.server + " within " + e.timeout.String()
	}
	return "no answer from " + e.server + ": " + e.err.Error()
}

func (e *serverError) Unwrap() error { return e.err }

// isTimeout tells a wait that ran out from other network errors.
func isTimeout(err error) bool {
	var netErr net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout()
}

// rcodeName is the rcode's mnemonic, such as SERVFAIL.
func rcodeName(rcode int) string {
	if name, ok := dns.RcodeToString[rcode]; ok {
		return name
	}
	return "RCODE" + strconv.Itoa(rcode)
}

// serverErrors are the servers' failures to answer one query, in the order asked.
type serverErrors []error

func (e serverErrors) Error() string {
	texts := make([]string, len(e))
	for i, err := range e {
		texts[i] = err.Error()
	}
	return strings.Join(texts, "; ")
}

func (e serverErrors) Unwrap() []error { return e }

// combine makes one answer of the two families' results.
func combine(host string, v4, v6 familyResult) (Answer, error) {
	var answer Answer
	ttl := uint32(math.MaxUint32)
	var failed []familyResult
	for _, r := range []familyResult{v4, v6} {
		if r.err != nil {
			failed = append(failed, r)
			continue
		}
		answer.Answered = append(answer.Answered, r.family)
		if len(r.addrs) > 0 {
			if answer.Server == "" {
				answer.Server = r.server
			}
			answer.Addresses = append(answer.Addresses, r.addrs...)
			ttl = min(ttl, r.ttl)
		}
	}
	if len(answer.Addresses) == 0 {
		switch len(failed) {
		case 0:
			return Answer{}, &LookupError{Host: host, Kind: NoAddresses, Rcode: dns.RcodeSuccess,
				Err: fmt.Errorf("no A or AAAA record (NODATA from %s)", v4.server)}
		case 1:
			// The other family has no data, so the failure is all there is to say.
			return Answer{}, failed[0].err
		}
		return Answer{}, decisive(failed[0].err, failed[1].err)
	}
	if len(failed) == 1 {
		incomplete := *failed[0].err
		incomplete.Err = fmt.Errorf("%s query: %w", dns.TypeToString[failed[0].qtype], incomplete.Err)
		answer.Incomplete = &incomplete
	}
	slices.SortFunc(answer.Addresses, netip.Addr.Compare)
	answer.Addresses = slices.Compact(answer.Addresses)
	answer.TTL = time.Duration(ttl) * time.Second
	return answer, nil
}

// decisive is the error that says more about the host when both families failed: that the name
// does not exist, over that it has no addresses, over that servers failed, over that none
// answered.
func decisive(a, b *LookupError) *LookupError {
	if b.Kind < a.Kind {
		return b
	}
	return a
}
