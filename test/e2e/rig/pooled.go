package rig

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2" //nolint:revive
	. "github.com/onsi/gomega"    //nolint:revive
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The pooled modes keep connections open and carry many attempts on each, as real callers
// do. kube-proxy steers only new connections, so what they see when a Service's endpoints
// change is not what fresh connections see: a connection it once sent to a backend stays
// there until one side ends it.
const (
	// HTTPKeepAlive sends each GET through one http.Client per client whose Transport is a
	// clone of http.DefaultTransport: HTTP/1.1 with Go's keep-alive pool (2 idle connections,
	// 90 s idle timeout) and its automatic retry of idempotent requests on a reused connection
	// that fails.
	HTTPKeepAlive LoadMode = "http-keepalive"
	// H2C sends each GET through one http.Client per client that speaks only HTTP/2 with
	// prior knowledge: one multiplexed connection.
	H2C LoadMode = "h2c"
	// GRPC calls EchoService's Call (EchoCallMethod) through one grpc.ClientConn per client
	// with gRPC's default settings.
	GRPC LoadMode = "grpc"
	// TCPStream sends "ping <n>" lines on one raw TCP connection per client, one call at a
	// time, as a database connection carries queries; a connection that fails is dropped and
	// the next call opens a new one.
	TCPStream LoadMode = "tcp-stream"
)

// Pooled says whether the mode carries attempts on a client's pool of connections (HTTPKeepAlive,
// H2C, GRPC, TCPStream) rather than on a new connection each (HTTPGet, TCPConnect).
func (m LoadMode) Pooled() bool {
	switch m {
	case HTTPKeepAlive, H2C, GRPC, TCPStream:
		return true
	default:
		return false
	}
}

// ConnEnd is how a pooled connection ended, as its client saw it.
type ConnEnd string

// The ends of a pooled connection.
const (
	// ConnOpen: the connection was open when the load stopped (Stop then closed it), or is
	// open still.
	ConnOpen ConnEnd = "open"
	// ConnReset: a read or write failed with ECONNRESET or EPIPE.
	ConnReset ConnEnd = "reset"
	// ConnClosedByPeer: a read found the peer's FIN (EOF).
	ConnClosedByPeer ConnEnd = "closed-by-peer"
	// ConnClosed: the client closed it, such as after a "Connection: close" answer or a GOAWAY,
	// or because its pool had more idle connections than it keeps.
	ConnClosed ConnEnd = "closed"
	// ConnTimeout: the client gave up on it: a call's timeout ended it (HTTP/1.1 closes the
	// connection of a request it abandons; TCPStream drops it), or the kernel's did
	// (ETIMEDOUT).
	ConnTimeout ConnEnd = "timeout"
	// ConnFailed: another read or write error; see ConnRecord.Err.
	ConnFailed ConnEnd = "error"
)

// ResponderBackend is ConnRecord.Backend for a connection whose first answer came from
// tripswitch's responder (it carried BreakerHeader).
const ResponderBackend = "responder"

// ConnRecord is the life of one pooled connection.
type ConnRecord struct {
	// Client is the index of the client that opened it.
	Client int
	// Conn numbers it among its client's connections (1, 2, ... in the order they were opened),
	// as Attempt.Conn does.
	Conn int
	// Backend is who answered on it first: the first BackendHeader it carried,
	// ResponderBackend if that answer carried BreakerHeader, "" if nothing answered on it.
	Backend string
	// Calls counts the attempts it carried.
	Calls int
	// Opened is when its handshake ended.
	Opened time.Time
	// Ended is when it ended (End); zero while ConnOpen.
	Ended time.Time
	// End is how it ended.
	End ConnEnd
	// Err is the read or write error that ended it, for ConnReset, ConnClosedByPeer,
	// ConnFailed and a kernel's ConnTimeout.
	Err error
}

// String describes the connection in one line.
func (c ConnRecord) String() string {
	s := fmt.Sprintf("client %d conn %d to %q opened %s, %d calls: %s", c.Client, c.Conn, c.Backend,
		c.Opened.Format("15:04:05.000"), c.Calls, c.End)
	if !c.Ended.IsZero() {
		s += " after " + roundDuration(c.Ended.Sub(c.Opened)).String()
	}
	if c.Err != nil {
		s += ": " + c.Err.Error()
	}
	return s
}

// ConnRecords are the connections of pooled clients.
type ConnRecords []ConnRecord

// Where returns the connections for which keep is true.
func (r ConnRecords) Where(keep func(ConnRecord) bool) ConnRecords {
	var out ConnRecords
	for _, c := range r {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

// To returns the connections on which backend answered first (see ConnRecord.Backend).
func (r ConnRecords) To(backend string) ConnRecords {
	return r.Where(func(c ConnRecord) bool { return c.Backend == backend })
}

// Ends counts the connections by how they ended.
func (r ConnRecords) Ends() map[ConnEnd]int {
	m := map[ConnEnd]int{}
	for _, c := range r {
		m[c.End]++
	}
	return m
}

// Backends counts the connections by who answered on them first.
func (r ConnRecords) Backends() map[string]int {
	m := map[string]int{}
	for _, c := range r {
		m[c.Backend]++
	}
	return m
}

// String summarises the connections in one line: how many, how they ended, and to whom.
func (r ConnRecords) String() string {
	calls := 0
	for _, c := range r {
		calls += c.Calls
	}
	return fmt.Sprintf("%d connections carrying %d calls; ends %v; backends %v", len(r), calls, r.Ends(), r.Backends())
}

// Pool is one client's pool of connections of a pooled mode: an http.Client, a
// grpc.ClientConn or a stream connection, whose connections start in the client's pod and are
// recorded (Conns). A Load of a pooled mode has one per client; NewPool makes one for calls
// one at a time.
type Pool struct {
	client *Client
	spec   LoadSpec
	kind   poolKind
	calls  atomic.Int64 // numbers the calls, for the stream's "ping <n>"

	mu      sync.Mutex
	conns   []*pooledConn
	byLocal map[string]*pooledConn // by local address, which is how gRPC names a call's connection
	dialErr error                  // the last dial's error; nil after a dial succeeds
	closed  bool
	dials   sync.WaitGroup // dials in flight, which Close waits for
}

// poolKind is what a pooled mode does with its connections.
type poolKind interface {
	// call makes one attempt, bounded by ctx; it sets everything but Client, Start and Latency.
	call(ctx context.Context, a *Attempt)
	// close releases the pool's client (its connections are closed after).
	close()
}

// NewPool returns a pool of spec.Mode (a pooled mode) for the client, closed in the current
// Ginkgo node's cleanup. Spec's Rate and Duration do not matter.
func (c *Client) NewPool(spec LoadSpec) *Pool {
	GinkgoHelper()
	spec = spec.withDefaults()
	Expect(spec.Target).NotTo(BeEmpty(), "a pool needs a Target")
	Expect(spec.Mode.Pooled()).To(BeTrue(), "mode %q keeps no pool", spec.Mode)
	p, err := c.newPool(spec)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(p.Close)
	return p
}

// newPool makes a pool of spec (with defaults) that nothing closes but Close.
func (c *Client) newPool(spec LoadSpec) (*Pool, error) {
	p := &Pool{client: c, spec: spec, byLocal: map[string]*pooledConn{}}
	switch spec.Mode {
	case HTTPKeepAlive, H2C:
		p.kind = newHTTPPool(p, spec.Mode == H2C)
	case GRPC:
		g, err := newGRPCPool(p)
		if err != nil {
			return nil, err
		}
		p.kind = g
	case TCPStream:
		p.kind = &streamPool{pool: p, turn: make(chan struct{}, 1)}
	default:
		return nil, fmt.Errorf("mode %q keeps no pool", spec.Mode)
	}
	return p, nil
}

// Call makes one attempt through the pool, bounded by the spec's Timeout.
func (p *Pool) Call(ctx context.Context) Attempt {
	a := Attempt{Client: p.client.Index, Start: time.Now()}
	ctx, cancel := context.WithTimeout(ctx, p.spec.Timeout)
	defer cancel()
	p.kind.call(ctx, &a)
	a.Latency = time.Since(a.Start)
	return a
}

// Close closes the pool and every connection it opened; calls still in flight fail.
// Connections open until then stay ConnOpen in Conns.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	p.kind.close()
	p.dials.Wait()
	// Whatever the pool's client still holds, or took from a dial that ended as it closed:
	// closing the sockets ends the goroutines that read them.
	p.mu.Lock()
	conns := slices.Clone(p.conns)
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Conn.Close()
	}
}

// Conns returns the records of every connection the pool opened, in the order it opened them.
func (p *Pool) Conns() ConnRecords {
	p.mu.Lock()
	conns := slices.Clone(p.conns)
	p.mu.Unlock()
	records := make(ConnRecords, len(conns))
	for i, c := range conns {
		records[i] = c.record()
	}
	return records
}

func (p *Pool) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// errPoolClosed answers dials after Close.
var errPoolClosed = errors.New("the pool is closed")

// dial opens a connection from the client's pod for the pool's client, bounded by the spec's
// Timeout as a fresh attempt's connect is (net/http goes on dialing after the request that
// asked gave up), and records it.
func (p *Pool) dial(ctx context.Context, network, address string) (net.Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	p.dials.Add(1)
	p.mu.Unlock()
	defer p.dials.Done()
	ctx, cancel := context.WithTimeout(ctx, p.spec.Timeout)
	defer cancel()
	conn, err := p.client.Net.DialContext(ctx, network, address)
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err != nil:
		p.dialErr = err
		return nil, err
	case p.closed:
		_ = conn.Close()
		return nil, errPoolClosed
	}
	p.dialErr = nil
	c := &pooledConn{Conn: conn, pool: p, num: len(p.conns) + 1, opened: time.Now()}
	p.conns = append(p.conns, c)
	p.byLocal[conn.LocalAddr().String()] = c
	return c, nil
}

// connAt returns the pool's latest connection from local address addr, or nil.
func (p *Pool) connAt(addr net.Addr) *pooledConn {
	if addr == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byLocal[addr.String()]
}

// lastDialError returns the last dial's error, nil if it succeeded.
func (p *Pool) lastDialError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dialErr
}

// pooledConn is a pool's connection, which records its life: the first read or write error,
// or Close, ends it.
type pooledConn struct {
	net.Conn
	pool   *Pool
	num    int
	opened time.Time
	calls  atomic.Int64

	mu       sync.Mutex
	backend  string
	answered bool
	end      ConnEnd // "" while open
	ended    time.Time
	err      error
	carrying []context.Context // the contexts of HTTP calls on it, to tell a give-up from a close
}

func (c *pooledConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.failed(err)
	}
	return n, err
}

func (c *pooledConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil {
		c.failed(err)
	}
	return n, err
}

// Close records ConnClosed, or ConnTimeout when a call on the connection has timed out:
// net/http closes the connection of an HTTP/1.1 request it abandons.
func (c *pooledConn) Close() error {
	end := ConnClosed
	c.mu.Lock()
	for _, ctx := range c.carrying {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			end = ConnTimeout
		}
	}
	c.mu.Unlock()
	c.ending(end, nil)
	return c.Conn.Close()
}

// failed records the end that a read or write error means.
func (c *pooledConn) failed(err error) {
	switch {
	case errors.Is(err, net.ErrClosed):
		// Closed on this side: Close has recorded why.
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		c.ending(ConnReset, err)
	case errors.Is(err, io.EOF):
		c.ending(ConnClosedByPeer, err)
	case classify(err, true) == ResponseTimeout:
		c.ending(ConnTimeout, err)
	default:
		c.ending(ConnFailed, err)
	}
}

// ending records the connection's end, unless it has one or its pool is closing: what Close
// finds open stays ConnOpen.
func (c *pooledConn) ending(end ConnEnd, err error) {
	if c.pool.isClosed() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.end == "" {
		c.end, c.ended, c.err = end, time.Now(), err
	}
}

// carried counts a call on the connection and says whether an earlier one came on it.
func (c *pooledConn) carried() (reused bool) { return c.calls.Add(1) > 1 }

// answer notes who answered a call on the connection; only the first answer names it.
func (c *pooledConn) answer(backend, breaker string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.answered {
		return
	}
	c.answered = true
	if breaker != "" {
		c.backend = ResponderBackend
	} else {
		c.backend = backend
	}
}

// failure returns what a call that failed on the connection without an outcome of its own
// saw: Reset if the connection has ended that way, ResponseTimeout if it timed out, otherwise
// fallback.
func (c *pooledConn) failure(fallback Outcome) Outcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.end {
	case ConnReset, ConnClosedByPeer:
		return Reset
	case ConnTimeout:
		return ResponseTimeout
	default:
		return fallback
	}
}

func (c *pooledConn) record() ConnRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := ConnRecord{
		Client: c.pool.client.Index, Conn: c.num, Backend: c.backend, Calls: int(c.calls.Load()),
		Opened: c.opened, Ended: c.ended, End: c.end, Err: c.err,
	}
	if r.End == "" {
		r.End = ConnOpen
	}
	return r
}

// httpPool is HTTPKeepAlive's and H2C's: one http.Client.
type httpPool struct {
	pool      *Pool
	transport *http.Transport
	client    *http.Client
	url       string
}

func newHTTPPool(p *Pool, h2c bool) *httpPool {
	t := http.DefaultTransport.(*http.Transport).Clone()
	// A pod in the rig has no proxy, whatever this machine's environment says.
	t.Proxy = nil
	t.DialContext = p.dial
	if h2c {
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return &httpPool{pool: p, transport: t, client: &http.Client{Transport: t}, url: "http://" + p.spec.Target + p.spec.Path}
}

func (h *httpPool) call(ctx context.Context, a *Attempt) {
	spec := h.pool.spec
	var (
		mu      sync.Mutex
		ended   bool          // the call has returned: net/http may still be busy with it
		conn    *pooledConn   // the last connection the call got
		reused  bool          // and whether an earlier call came on it
		gotAt   time.Time     // and when
		carried []*pooledConn // every connection it got, when net/http retried on another
	)
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		c, ok := info.Conn.(*pooledConn)
		mu.Lock()
		defer mu.Unlock()
		if !ok || ended {
			return
		}
		c.mu.Lock()
		c.carrying = append(c.carrying, ctx)
		c.mu.Unlock()
		conn, reused, gotAt = c, c.carried(), time.Now()
		carried = append(carried, c)
	}}
	finish := func() {
		mu.Lock()
		defer mu.Unlock()
		ended = true
		for _, c := range carried {
			c.mu.Lock()
			c.carrying = slices.DeleteFunc(c.carrying, func(x context.Context) bool { return x == ctx })
			c.mu.Unlock()
		}
		if conn != nil {
			a.Conn, a.Reused, a.Connect = conn.num, reused, gotAt.Sub(a.Start)
		}
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, h.url, nil)
	if err != nil {
		a.Outcome, a.Err = OtherError, err
		return
	}
	req.Host = spec.Host
	req.Header.Set("User-Agent", spec.UserAgent)
	resp, err := h.client.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		_ = resp.Body.Close()
	}
	// After the body is closed: net/http closes the connection of a request that timed out
	// before it returns, while the call is still carried, so Close can tell.
	finish()
	if err != nil {
		a.Outcome, a.Err = classify(err, conn != nil), err
		if a.Outcome == OtherError && conn != nil {
			a.Outcome = conn.failure(OtherError)
		}
		return
	}
	a.Outcome, a.Status, a.Headers = Responded, resp.StatusCode, recordHeaders(resp.Header, spec.Headers)
	if conn != nil {
		conn.answer(resp.Header.Get(BackendHeader), resp.Header.Get(BreakerHeader))
	}
}

func (h *httpPool) close() { h.transport.CloseIdleConnections() }

// grpcPool is GRPC's: one grpc.ClientConn.
type grpcPool struct {
	pool *Pool
	conn *grpc.ClientConn
}

func newGRPCPool(p *Pool) (*grpcPool, error) {
	// passthrough: the target is an address, so no resolver is involved. The stats handler
	// only watches (see grpcCall).
	conn, err := grpc.NewClient("passthrough:///"+p.spec.Target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, address string) (net.Conn, error) {
			return p.dial(ctx, "tcp", address)
		}),
		grpc.WithAuthority(p.spec.Host),
		grpc.WithStatsHandler(grpcWatcher{}))
	if err != nil {
		return nil, err
	}
	return &grpcPool{pool: p, conn: conn}, nil
}

// grpcCall is what grpcWatcher saw of one call: gRPC reports a connection that failed under
// a call with the same UNAVAILABLE status as a server's answer, and only the trailers tell
// them apart.
type grpcCall struct {
	sentAt   atomic.Pointer[time.Time] // when the call's headers went out on a connection
	answered atomic.Bool               // the server ended the call with a status (trailers)
}

type grpcCallKey struct{}

// grpcWatcher is a stats.Handler that fills in the grpcCall in a call's context.
type grpcWatcher struct{}

func (grpcWatcher) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (grpcWatcher) HandleRPC(ctx context.Context, s stats.RPCStats) {
	call, ok := ctx.Value(grpcCallKey{}).(*grpcCall)
	if !ok {
		return
	}
	switch s.(type) {
	case *stats.OutHeader:
		now := time.Now()
		call.sentAt.CompareAndSwap(nil, &now)
	case *stats.InTrailer:
		call.answered.Store(true)
	}
}

func (grpcWatcher) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (grpcWatcher) HandleConn(context.Context, stats.ConnStats) {}

func (g *grpcPool) call(ctx context.Context, a *Attempt) {
	call := &grpcCall{}
	ctx = context.WithValue(ctx, grpcCallKey{}, call)
	var header, trailer metadata.MD
	var on peer.Peer
	err := g.conn.Invoke(ctx, EchoCallMethod, wrapperspb.String(fmt.Sprintf("ping %d", g.pool.calls.Add(1))),
		new(wrapperspb.StringValue), grpc.Header(&header), grpc.Trailer(&trailer), grpc.Peer(&on))
	conn := g.pool.connAt(on.LocalAddr)
	if conn != nil {
		a.Conn, a.Reused = conn.num, conn.carried()
	}
	if sent := call.sentAt.Load(); sent != nil {
		a.Connect = sent.Sub(a.Start)
	}
	// The metadata a server sends, under its HTTP header name: gRPC's trailers-only answers
	// (the responder's) carry it in the trailers.
	md := func(name string) string {
		key := strings.ToLower(name)
		if v := header.Get(key); len(v) > 0 {
			return strings.Join(v, ", ")
		}
		return strings.Join(trailer.Get(key), ", ")
	}
	code := status.Code(err)
	switch {
	case err == nil:
		a.Outcome, a.Status = Responded, http.StatusOK
	case code == codes.Unavailable && call.answered.Load():
		a.Outcome, a.Status = Responded, http.StatusServiceUnavailable
	case code == codes.DeadlineExceeded:
		a.Outcome, a.Err = ConnectTimeout, err
		if conn != nil || call.sentAt.Load() != nil {
			a.Outcome = ResponseTimeout
		}
	case code == codes.Unavailable && conn == nil:
		// No connection carried the call: gRPC failed it with the last dial's error.
		a.Outcome, a.Err = OtherError, err
		if dialErr := g.pool.lastDialError(); dialErr != nil {
			a.Outcome = classify(dialErr, false)
		}
	case code == codes.Unavailable:
		a.Outcome, a.Err = conn.failure(OtherError), err
	default:
		a.Outcome, a.Err = OtherError, err
	}
	if a.Outcome != Responded {
		return
	}
	a.Headers = map[string]string{}
	for _, name := range g.pool.spec.Headers {
		if v := md(name); v != "" {
			a.Headers[http.CanonicalHeaderKey(name)] = v
		}
	}
	if conn != nil {
		conn.answer(md(BackendHeader), md(BreakerHeader))
	}
}

func (g *grpcPool) close() { _ = g.conn.Close() }

// streamPool is TCPStream's: one connection, one call at a time, as a database connection.
type streamPool struct {
	pool *Pool
	turn chan struct{} // holds a token while a call uses the connection

	// Used only with the turn held.
	conn  *pooledConn
	lines *bufio.Reader
}

func (s *streamPool) call(ctx context.Context, a *Attempt) {
	select {
	case s.turn <- struct{}{}:
	case <-ctx.Done():
		// Another call holds the connection (a hanging backend): the caller times out waiting
		// for its turn, as a database pool's caller waits for a free connection.
		a.Outcome, a.Err = ResponseTimeout, fmt.Errorf("waiting for the stream connection: %w", ctx.Err())
		return
	}
	defer func() { <-s.turn }()
	a.Queued = time.Since(a.Start)
	if s.conn == nil {
		conn, err := s.pool.dial(ctx, "tcp", s.pool.spec.Target)
		if err != nil {
			a.Outcome, a.Err = classify(err, false), err
			return
		}
		s.conn, s.lines = conn.(*pooledConn), bufio.NewReader(conn)
	}
	conn := s.conn
	a.Connect, a.Conn, a.Reused = time.Since(a.Start), conn.num, conn.carried()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	n := strconv.FormatInt(s.pool.calls.Add(1), 10)
	answer, err := s.exchange(conn, n)
	if err != nil {
		// A database pool drops a connection that failed; the next call opens another.
		s.drop()
		a.Outcome, a.Err = classify(err, true), err
		return
	}
	fields := strings.Fields(answer)
	if len(fields) != 3 || fields[1] != n || (fields[0] != "pong" && fields[0] != "error") {
		s.drop()
		a.Outcome, a.Err = OtherError, fmt.Errorf("stream: answer %q to ping %s", answer, n)
		return
	}
	a.Outcome, a.Status = Responded, http.StatusOK
	if fields[0] == "error" {
		a.Status = http.StatusServiceUnavailable
	}
	a.Headers = map[string]string{http.CanonicalHeaderKey(BackendHeader): fields[2]}
	conn.answer(fields[2], "")
}

// exchange sends "ping <n>" and reads one answer line.
func (s *streamPool) exchange(conn net.Conn, n string) (string, error) {
	if _, err := io.WriteString(conn, "ping "+n+"\n"); err != nil {
		return "", err
	}
	line, err := s.lines.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

func (s *streamPool) drop() {
	_ = s.conn.Close()
	s.conn, s.lines = nil, nil
}

// close does nothing: Pool.Close closes the connection, and a call that holds it fails.
func (s *streamPool) close() {}

// Conns returns the records of a pooled load's connections, by client and then in the order
// each client opened them; nil for a fresh-connection load. After Stop, connections it found
// open are ConnOpen.
func (l *Load) Conns() ConnRecords {
	var records ConnRecords
	for _, p := range l.pools {
		records = append(records, p.Conns()...)
	}
	slices.SortStableFunc(records, func(a, b ConnRecord) int { return cmp.Compare(a.Client, b.Client) })
	return records
}
