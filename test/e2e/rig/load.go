package rig

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2" //nolint:revive
	. "github.com/onsi/gomega"    //nolint:revive
)

// Client is a pod that only calls: a pod network namespace without a Pod object.
type Client struct {
	// Index is the client's place in its Clients, recorded in its attempts.
	Index int
	Net   *PodNet
}

// Clients are pods that generate load together.
type Clients []*Client

// NewClients creates n client pods, removed in the current Ginkgo node's cleanup.
func NewClients(n int) Clients {
	GinkgoHelper()
	cs := make(Clients, n)
	for i := range cs {
		cs[i] = &Client{Index: i, Net: NewPodNet(fmt.Sprintf("client%d", i))}
	}
	return cs
}

// LoadMode is how each attempt reaches Target: on a new connection of its own (HTTPGet,
// TCPConnect), or as a call on the client's pool of connections (HTTPKeepAlive, H2C, GRPC,
// TCPStream; see Pooled).
type LoadMode string

// The fresh-connection load modes (the pooled ones are HTTPKeepAlive, H2C, GRPC and TCPStream).
const (
	// HTTPGet sends one GET per connection and reads the response (the default).
	HTTPGet LoadMode = "http"
	// TCPConnect only connects: the attempt succeeds when the handshake does.
	TCPConnect LoadMode = "tcp"
)

// Outcome is how an attempt ended.
type Outcome string

// The outcomes of an attempt.
const (
	// Responded: an HTTP response came (see Attempt.Status). For GRPC, a gRPC status that
	// the server sent: OK is 200, UNAVAILABLE 503; for TCPStream, "pong" is 200, "error" 503.
	Responded Outcome = "responded"
	// Connected: the handshake succeeded (TCPConnect mode).
	Connected Outcome = "connected"
	// Refused: connect failed with ECONNREFUSED, from a TCP reset or an ICMP port
	// unreachable (kube-proxy's REJECT).
	Refused Outcome = "refused"
	// Reset: the connection was reset, or closed, after the handshake and before a response.
	Reset Outcome = "reset"
	// ConnectTimeout: no handshake and no refusal within the timeout, such as when the
	// kernel's ICMP rate limit swallowed kube-proxy's REJECT answers.
	ConnectTimeout Outcome = "connect-timeout"
	// ResponseTimeout: connected, but no response within the timeout (a hanging backend).
	ResponseTimeout Outcome = "response-timeout"
	// Unreachable: connect failed with EHOSTUNREACH or ENETUNREACH.
	Unreachable Outcome = "unreachable"
	// OtherError: anything else; see Attempt.Err.
	OtherError Outcome = "error"
)

// LoadSpec describes a load: every client makes Rate attempts a second to Target, each on a
// new connection or, in the pooled modes, on the client's pool.
type LoadSpec struct {
	// Target is ip:port, such as a Service's ClusterIP and port (Rig.ServiceAddress).
	Target string
	// Rate is attempts a second, per client: new connections in the fresh modes, calls on
	// the client's pool in the pooled ones. Default 10.
	Rate int
	// Duration is how long the load runs; 0 runs until Stop.
	Duration time.Duration
	// Timeout bounds each attempt, connect and response together (in the pooled modes,
	// waiting for a connection too), and each dial of a pool. Default 2s.
	Timeout time.Duration
	// Mode is HTTPGet (default), TCPConnect, or a pooled mode: HTTPKeepAlive, H2C, GRPC or
	// TCPStream.
	Mode LoadMode
	// Path is the GET's path. Default "/".
	Path string
	// Host is the GET's Host header (GRPC: the :authority), such as the Service's DNS name that
	// a real client would call (the rig has no DNS: Target is where it connects). Default
	// Target.
	Host string
	// UserAgent is the GET's User-Agent. Default "tripswitch-e2e-client".
	UserAgent string
	// Headers are the response headers (GRPC: header or trailer metadata) each attempt
	// records. Default BackendHeader, and BreakerHeader too in the pooled modes.
	Headers []string
}

func (s LoadSpec) withDefaults() LoadSpec {
	if s.Rate == 0 {
		s.Rate = 10
	}
	if s.Timeout == 0 {
		s.Timeout = 2 * time.Second
	}
	if s.Mode == "" {
		s.Mode = HTTPGet
	}
	if s.Path == "" {
		s.Path = "/"
	}
	if s.Host == "" {
		s.Host = s.Target
	}
	if s.UserAgent == "" {
		s.UserAgent = "tripswitch-e2e-client"
	}
	if s.Headers == nil {
		s.Headers = []string{BackendHeader}
		if s.Mode.Pooled() {
			s.Headers = append(s.Headers, BreakerHeader)
		}
	}
	return s
}

// Attempt is one attempt of a load: a connection of its own in the fresh modes, a call on a
// pooled connection in the pooled ones.
type Attempt struct {
	Client int
	// Start is when the attempt began (before the socket was made).
	Start time.Time
	// Latency is from Start to the outcome.
	Latency time.Duration
	// Queued is the part of Latency the attempt spent waiting for its client's connection
	// before it could use it: TCPStream carries one call at a time, as a database pool of one
	// connection does, so a call waits out the one before it. 0 in the other modes.
	Queued time.Duration
	// Connect is from Start to the end of the handshake; 0 if there was none. In the pooled
	// modes, from Start to when the attempt had its connection, new or reused (GRPC: when its
	// headers went out on it).
	Connect time.Duration
	// Conn is, in the pooled modes, the number of the client's connection that carried the
	// attempt (1, 2, ... in the order the client's pool opened them; see Load.Conns); 0 when
	// no connection carried it, and in the fresh modes.
	Conn int
	// Reused says that the connection had carried an earlier attempt (pooled modes).
	Reused  bool
	Outcome Outcome
	// Status is the HTTP status, for Responded.
	Status int
	// Headers holds the recorded response headers (canonical names).
	Headers map[string]string
	// Err is the error behind an outcome other than Responded or Connected.
	Err error
}

// Took is Latency without Queued: how long the attempt itself took once it had its
// connection, which is what tells an answer that came at once from one that waited on the
// server, whatever queue formed in the client on a loaded machine.
func (a Attempt) Took() time.Duration { return a.Latency - a.Queued }

// Backend returns the name of the backend that answered (the BackendHeader), or "".
func (a Attempt) Backend() string { return a.Headers[http.CanonicalHeaderKey(BackendHeader)] }

// String describes the attempt in one line.
func (a Attempt) String() string {
	s := fmt.Sprintf("client %d at %s: %s after %s", a.Client, a.Start.Format("15:04:05.000"), a.Outcome, a.Latency.Round(time.Microsecond))
	if a.Outcome == Responded {
		s += fmt.Sprintf(" (%d from %q)", a.Status, a.Backend())
	}
	if a.Conn != 0 {
		s += fmt.Sprintf(" on conn %d", a.Conn)
		if a.Reused {
			s += " (reused)"
		}
	}
	if a.Err != nil {
		s += ": " + a.Err.Error()
	}
	return s
}

// Get makes one HTTP GET attempt from the client to target (ip:port) with the default spec.
func (c *Client) Get(target string) Attempt {
	return c.Attempt(context.Background(), LoadSpec{Target: target})
}

// Attempt makes one attempt as spec describes (Rate and Duration do not matter); in a pooled
// mode, through a pool of its own that it closes after (NewPool keeps one).
func (c *Client) Attempt(ctx context.Context, spec LoadSpec) Attempt {
	spec = spec.withDefaults()
	if spec.Mode.Pooled() {
		p, err := c.newPool(spec)
		if err != nil {
			return Attempt{Client: c.Index, Start: time.Now(), Outcome: OtherError, Err: err}
		}
		defer p.Close()
		return p.Call(ctx)
	}
	a := Attempt{Client: c.Index, Start: time.Now()}
	deadline := a.Start.Add(spec.Timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	conn, err := c.Net.dial(ctx, spec.Target, deadline)
	if err != nil {
		a.Latency, a.Outcome, a.Err = time.Since(a.Start), classify(err, false), err
		return a
	}
	a.Connect = time.Since(a.Start)
	defer closeWithReset(conn)
	if spec.Mode == TCPConnect {
		a.Latency, a.Outcome = a.Connect, Connected
		return a
	}
	_ = conn.SetDeadline(deadline)
	status, headers, err := get(conn, spec)
	a.Latency = time.Since(a.Start)
	if err != nil {
		a.Outcome, a.Err = classify(err, true), err
		return a
	}
	a.Outcome, a.Status, a.Headers = Responded, status, headers
	return a
}

// get sends one GET on conn and reads the response.
func get(conn net.Conn, spec LoadSpec) (int, map[string]string, error) {
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n", spec.Path, spec.Host, spec.UserAgent)
	if _, err := io.WriteString(conn, req); err != nil {
		return 0, nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)); err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, recordHeaders(resp.Header, spec.Headers), nil
}

// recordHeaders returns the headers named in names that h has, under their canonical names.
func recordHeaders(h http.Header, names []string) map[string]string {
	headers := map[string]string{}
	for _, name := range names {
		if v := h.Get(name); v != "" {
			headers[http.CanonicalHeaderKey(name)] = v
		}
	}
	return headers
}

// closeWithReset closes with a reset instead of a FIN, so that a thousand connections a second
// leave no TIME_WAIT sockets behind to run out of ports.
func closeWithReset(conn net.Conn) {
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}

func classify(err error, connected bool) Outcome {
	var netErr net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &netErr) && netErr.Timeout():
		if connected {
			return ResponseTimeout
		}
		return ConnectTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return Reset
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return Unreachable
	default:
		return OtherError
	}
}

// Load is a running load.
type Load struct {
	spec    LoadSpec
	clients Clients
	pools   []*Pool // the clients' pools, in clients' order; nil in the fresh modes
	stop    chan struct{}
	once    sync.Once
	issuing sync.WaitGroup // the clients' schedulers
	flying  sync.WaitGroup // attempts in flight
	mu      sync.Mutex
	results Results
}

// Start starts a load from every client, spread evenly over each second, and stops it when
// the current Ginkgo node's cleanup runs (if Stop or Wait has not). In a pooled mode every
// client gets a pool of its own, which Stop closes.
func (cs Clients) Start(spec LoadSpec) *Load {
	GinkgoHelper()
	spec = spec.withDefaults()
	Expect(cs).NotTo(BeEmpty())
	Expect(spec.Target).NotTo(BeEmpty(), "a load needs a Target")
	l := &Load{spec: spec, clients: cs, stop: make(chan struct{})}
	if spec.Mode.Pooled() {
		for _, c := range cs {
			p, err := c.newPool(spec)
			Expect(err).NotTo(HaveOccurred())
			l.pools = append(l.pools, p)
		}
	}
	start := time.Now()
	period := time.Second / time.Duration(spec.Rate)
	for i, c := range cs {
		first := start.Add(period * time.Duration(c.Index) / time.Duration(len(cs)))
		attempt := func() Attempt { return c.Attempt(context.Background(), l.spec) }
		if l.pools != nil {
			attempt = func() Attempt { return l.pools[i].Call(context.Background()) }
		}
		l.issuing.Add(1)
		go l.run(attempt, first, period)
	}
	if spec.Duration > 0 {
		time.AfterFunc(spec.Duration, l.halt)
	}
	DeferCleanup(l.Stop)
	return l
}

// Run runs a load for spec.Duration and returns its attempts.
func (cs Clients) Run(spec LoadSpec) Results {
	GinkgoHelper()
	Expect(spec.Duration).To(BeNumerically(">", 0), "Run needs a Duration")
	return cs.Start(spec).Wait()
}

// run makes attempts every period from next on, each in a goroutine of its own, so that a
// hanging attempt delays none: a pool then opens more connections, as a real client's does.
func (l *Load) run(attempt func() Attempt, next time.Time, period time.Duration) {
	defer l.issuing.Done()
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-timer.C:
		}
		l.flying.Add(1)
		go func() {
			defer l.flying.Done()
			a := attempt()
			l.mu.Lock()
			l.results = append(l.results, a)
			l.mu.Unlock()
		}()
		next = next.Add(period)
		timer.Reset(time.Until(next))
	}
}

func (l *Load) halt() { l.once.Do(func() { close(l.stop) }) }

// Stop stops starting attempts, waits for those in flight (at most the timeout), closes the
// pools of a pooled load and returns every attempt, in the order of their start.
func (l *Load) Stop() Results {
	l.halt()
	return l.Wait()
}

// Wait waits until the load has stopped (after its Duration, or Stop) and its attempts have
// ended, closes the pools of a pooled load, and returns the attempts in the order of their
// start.
func (l *Load) Wait() Results {
	<-l.stop
	l.issuing.Wait()
	l.flying.Wait()
	for _, p := range l.pools {
		p.Close()
	}
	return l.Snapshot()
}

// Snapshot returns the attempts that have ended so far, in the order of their start.
func (l *Load) Snapshot() Results {
	l.mu.Lock()
	r := slices.Clone(l.results)
	l.mu.Unlock()
	sort.SliceStable(r, func(i, j int) bool { return r[i].Start.Before(r[j].Start) })
	return r
}

// Results are a load's attempts.
type Results []Attempt

// Where returns the attempts for which keep is true.
func (r Results) Where(keep func(Attempt) bool) Results {
	var out Results
	for _, a := range r {
		if keep(a) {
			out = append(out, a)
		}
	}
	return out
}

// Between returns the attempts that started in [from, to).
func (r Results) Between(from, to time.Time) Results {
	return r.Where(func(a Attempt) bool { return !a.Start.Before(from) && a.Start.Before(to) })
}

// With returns the attempts with one of the outcomes.
func (r Results) With(outcomes ...Outcome) Results {
	return r.Where(func(a Attempt) bool { return slices.Contains(outcomes, a.Outcome) })
}

// Count returns how many attempts had one of the outcomes.
func (r Results) Count(outcomes ...Outcome) int { return len(r.With(outcomes...)) }

// Share returns the fraction (0 to 1) of attempts that had one of the outcomes; 0 for none.
func (r Results) Share(outcomes ...Outcome) float64 {
	if len(r) == 0 {
		return 0
	}
	return float64(r.Count(outcomes...)) / float64(len(r))
}

// Outcomes counts the attempts by outcome.
func (r Results) Outcomes() map[Outcome]int {
	m := map[Outcome]int{}
	for _, a := range r {
		m[a.Outcome]++
	}
	return m
}

// Statuses counts the responses by HTTP status.
func (r Results) Statuses() map[int]int {
	m := map[int]int{}
	for _, a := range r.With(Responded) {
		m[a.Status]++
	}
	return m
}

// Backends counts the responses by the backend that sent them.
func (r Results) Backends() map[string]int {
	m := map[string]int{}
	for _, a := range r.With(Responded) {
		m[a.Backend()]++
	}
	return m
}

// Percentile returns the q-quantile (0 to 1) of the attempts' latencies; 0 for none.
func (r Results) Percentile(q float64) time.Duration {
	if len(r) == 0 {
		return 0
	}
	l := make([]time.Duration, len(r))
	for i, a := range r {
		l[i] = a.Latency
	}
	slices.Sort(l)
	i := int(q*float64(len(l))+0.5) - 1
	return l[min(max(i, 0), len(l)-1)]
}

// First returns the earliest attempt with one of the outcomes, and whether there is one.
func (r Results) First(outcomes ...Outcome) (Attempt, bool) {
	w := r.With(outcomes...)
	if len(w) == 0 {
		return Attempt{}, false
	}
	first := w[0]
	for _, a := range w[1:] {
		if a.Start.Before(first.Start) {
			first = a
		}
	}
	return first, true
}

// String summarises the results in one line: the attempts by outcome, the HTTP statuses and
// the latency percentiles of each outcome.
func (r Results) String() string {
	counts := r.Outcomes()
	outcomes := make([]Outcome, 0, len(counts))
	for o := range counts {
		outcomes = append(outcomes, o)
	}
	slices.Sort(outcomes)
	parts := make([]string, 0, len(outcomes))
	for _, o := range outcomes {
		w := r.With(o)
		parts = append(parts, fmt.Sprintf("%s %d (%.1f%%, p50 %s, p99 %s)", o, counts[o], 100*r.Share(o),
			roundDuration(w.Percentile(0.5)), roundDuration(w.Percentile(0.99))))
	}
	s := fmt.Sprintf("%d attempts: %s", len(r), strings.Join(parts, ", "))
	if st := r.Statuses(); len(st) > 0 {
		s += fmt.Sprintf("; statuses %v", st)
	}
	return s
}

func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}
