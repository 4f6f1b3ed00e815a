package responder

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// testNow is the responders' clock in these tests: payments opened until 7 s later.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const paymentsHost = "payments.shop.svc.cluster.local:8080"

// running is a responder on loopback, with its registry and the server's connection states.
type running struct {
	*Responder
	reg *prometheus.Registry
	// opened and closed count the connections net/http served, as it sees them; the fast
	// path's connections are not among them.
	opened, closed atomic.Int32
}

// ended counts the HTTP connections the server has finished with: answered and closed on
// the fast path, or closed by net/http.
func (run *running) ended() int64 {
	n := int64(run.closed.Load())
	if run.fast != nil {
		n += run.fast.answered.Load()
	}
	return n
}

// startResponder runs a responder on loopback with shop/payments Open for 7 more seconds,
// and stops it when the test ends.
func startResponder(t *testing.T) *running {
	t.Helper()
	return startResponderWith(t, Options{})
}

func startResponderWith(t *testing.T, o Options) *running {
	t.Helper()
	run, stop, err := launch(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Start returned %v", err)
		}
	})
	NewWithT(t).Eventually(run.Serving).Should(Succeed())
	return run
}

// launch starts a responder on loopback with shop/payments Open for 7 more seconds; stop
// stops it and returns what Start returned.
func launch(o Options) (run *running, stop func() error, err error) {
	index := NewIndex()
	index.Set(Entry{Breaker: Breaker{Namespace: "shop", Name: "payments", State: tripswitchv1alpha1.StateOpen,
		OpenUntil: testNow.Add(7 * time.Second)}, Front: "payments"})
	run = &running{reg: prometheus.NewRegistry()}
	o.HTTPAddr, o.ResetAddr, o.Registerer = "127.0.0.1:0", "127.0.0.1:0", run.reg
	if o.Now == nil {
		o.Now = func() time.Time { return testNow }
	}
	if run.Responder, err = New(index, o); err != nil {
		return nil, nil, err
	}
	run.server.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			run.opened.Add(1)
		case http.StateClosed:
			run.closed.Add(1)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run.Start(ctx) }()
	return run, func() error { cancel(); return <-done }, nil
}

// answers reads the counter's value for one kind and breaker label.
func (run *running) answers(t *testing.T, kind, breaker string) float64 {
	t.Helper()
	families, err := run.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != AnswersName {
			continue
		}
		for _, m := range f.GetMetric() {
			if labels(m) == kind+","+breaker {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no series %s{kind=%q,breaker=%q}", AnswersName, kind, breaker)
	return 0
}

func labels(m *dto.Metric) string {
	var kind, breaker string
	for _, l := range m.GetLabel() {
		switch l.GetName() {
		case "kind":
			kind = l.GetValue()
		case "breaker":
			breaker = l.GetValue()
		}
	}
	return kind + "," + breaker
}

// watchedConn records when its connection ended: the server closed it (a read saw EOF or an
// error) or the client did.
type watchedConn struct {
	net.Conn
	ended chan struct{}
	once  sync.Once
}

func (c *watchedConn) end() { c.once.Do(func() { close(c.ended) }) }

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.end()
	}
	return n, err
}

func (c *watchedConn) Close() error { c.end(); return c.Conn.Close() }

// dialRecorder dials loopback and keeps every connection it made.
type dialRecorder struct {
	mu    sync.Mutex
	conns []*watchedConn
}

func (d *dialRecorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	w := &watchedConn{Conn: c, ended: make(chan struct{})}
	d.mu.Lock()
	d.conns = append(d.conns, w)
	d.mu.Unlock()
	return w, nil
}

func (d *dialRecorder) ended(i int) func() bool {
	return func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		select {
		case <-d.conns[i].ended:
			return true
		default:
			return false
		}
	}
}

func (d *dialRecorder) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns)
}

// clients are the two ways an HTTP client reaches the listener: HTTP/1.1, and HTTP/2 with
// prior knowledge. Both keep connections alive if they may.
func clients(d *dialRecorder) map[string]*http.Client {
	h1 := &http.Transport{DialContext: d.dial}
	h2c := &http.Transport{DialContext: d.dial, Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	return map[string]*http.Client{"HTTP/1.1": {Transport: h1}, "HTTP/2.0": {Transport: h2c}}
}

// TestHTTPAnswersAndKeepsNoConnectionLong: HTTP/1.1 connections end with their one answer;
// an HTTP/2 connection carries an Open breaker's answers (maxConnectionAge is not reached on
// the test's fixed clock), and ends with the answer for an address the responder cannot map.
func TestHTTPAnswersAndKeepsNoConnectionLong(t *testing.T) {
	for proto := range clients(nil) {
		t.Run(proto, func(t *testing.T) {
			t.Parallel()
			g := NewWithT(t)
			run := startResponder(t)
			d := &dialRecorder{}
			client := clients(d)[proto]
			url := "http://" + run.HTTPAddr().String() + "/charge"

			for i, tt := range []struct {
				host, retryAfter, breaker, body string
			}{
				{paymentsHost, "7", "shop/payments", "circuit breaker shop/payments is open; retry in 7s\n"},
				{"payments", "7", "shop/payments", "circuit breaker shop/payments is open; retry in 7s\n"},
				{"10.96.0.10:8080", "", "", "service unavailable: circuit breaker open\n"},
				{"orders.shop", "", "", "service unavailable: circuit breaker open\n"},
			} {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Host = tt.host
				resp, err := client.Do(req)
				g.Expect(err).NotTo(HaveOccurred())
				body, err := io.ReadAll(resp.Body)
				g.Expect(err).NotTo(HaveOccurred())
				_ = resp.Body.Close()
				g.Expect(resp.Proto).To(Equal(proto))
				g.Expect(resp.StatusCode).To(Equal(http.StatusServiceUnavailable))
				g.Expect(string(body)).To(Equal(tt.body))
				g.Expect(resp.Header.Values("Retry-After")).To(Equal(nonEmpty(tt.retryAfter)), "Retry-After for %s", tt.host)
				g.Expect(resp.Header.Values("X-Tripswitch-Breaker")).To(Equal(nonEmpty(tt.breaker)), "breaker for %s", tt.host)
				g.Expect(resp.Header.Get("Content-Type")).To(Equal("text/plain; charset=utf-8"))
				g.Expect(resp.Header.Get("Cache-Control")).To(Equal("no-store"))

				if proto == "HTTP/1.1" {
					// The connection ends after this one answer, from the server's side too,
					// and the next request needs a new one.
					g.Expect(d.count()).To(Equal(i+1), "every request came on a new connection")
					g.Eventually(d.ended(i)).Should(BeTrue(), "the connection ends after one answer")
					g.Eventually(run.ended).Should(BeEquivalentTo(i+1), "the server closed the connection")
					continue
				}
				// HTTP/2: the two answers for the Open breaker share one connection; the first
				// answer naming no breaker ends it, and the last comes on a connection of its own.
				g.Expect(d.count()).To(Equal(map[int]int{0: 1, 1: 1, 2: 1, 3: 2}[i]), "connections after request %d", i)
				if i >= 2 {
					g.Eventually(d.ended(i-2)).Should(BeTrue(), "an answer naming no breaker ends the connection")
				}
			}
			g.Expect(run.answers(t, KindHTTP, "known")).To(Equal(2.0))
			g.Expect(run.answers(t, KindHTTP, "unknown")).To(Equal(2.0))
			g.Expect(run.answers(t, KindGRPC, "known")).To(BeZero())
		})
	}
}

func nonEmpty(v string) []string {
	if v == "" {
		return nil
	}
	return []string{v}
}

// TestHTTP1AnswerOnTheWire reads the HTTP/1.1 answer off the wire: the headers a client sees,
// and the server closing the connection although the client asked to keep it.
func TestHTTP1AnswerOnTheWire(t *testing.T) {
	t.Parallel()
	g := NewWithT(t)
	got := exchange(t, startResponder(t), "GET / HTTP/1.1\r\nHost: "+paymentsHost+"\r\nConnection: keep-alive\r\n\r\n")
	body := "circuit breaker shop/payments is open; retry in 7s\n"
	g.Expect(got).To(Equal(exchanged{Status: "503 Service Unavailable", Proto: "HTTP/1.1", Close: true, Body: body, Header: http.Header{
		"Cache-Control": {"no-store"}, "Content-Length": {strconv.Itoa(len(body))},
		"Content-Type": {"text/plain; charset=utf-8"}, "Retry-After": {"7"}, "X-Tripswitch-Breaker": {"shop/payments"},
	}}))
}

// dialRaw connects to the HTTP listener and sends raw bytes, for tests that speak the wire
// protocol themselves. The connection closes when the test ends.
func dialRaw(t *testing.T, run *running, send string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", run.HTTPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, send); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGRPCAnswersUnavailable(t *testing.T) {
	t.Parallel()
	run := startResponder(t)
	for _, tt := range []struct {
		authority, message, breaker, pushback string
	}{
		{paymentsHost, "circuit breaker shop/payments is open", "shop/payments", "7000"},
		{"payments.shop", "circuit breaker shop/payments is open", "shop/payments", "7000"},
		{"10.96.0.10:9090", "service unavailable: circuit breaker open", "", ""},
	} {
		t.Run(tt.authority, func(t *testing.T) {
			g := NewWithT(t)
			conn, err := grpc.NewClient("passthrough:///"+run.HTTPAddr().String(),
				grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(tt.authority))
			g.Expect(err).NotTo(HaveOccurred())
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()

			var header, trailer metadata.MD
			err = conn.Invoke(ctx, "/shop.Payments/Charge", &emptypb.Empty{}, &emptypb.Empty{},
				grpc.Header(&header), grpc.Trailer(&trailer))
			st := status.Convert(err)
			g.Expect(st.Code()).To(Equal(codes.Unavailable), "%v", err)
			g.Expect(st.Message()).To(Equal(tt.message))
			g.Expect(trailer.Get("x-tripswitch-breaker")).To(Equal(nonEmpty(tt.breaker)))
			g.Expect(trailer.Get("grpc-retry-pushback-ms")).To(Equal(nonEmpty(tt.pushback)))

			_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "shop.Payments"})
			st = status.Convert(err)
			g.Expect(st.Code()).To(Equal(codes.Unavailable), "%v", err)
			g.Expect(st.Message()).To(Equal(tt.message))
		})
	}
	g := NewWithT(t)
	g.Expect(run.answers(t, KindGRPC, "known")).To(Equal(4.0))
	g.Expect(run.answers(t, KindGRPC, "unknown")).To(Equal(2.0))
	// Each client's two calls for the Open breaker share a connection; an answer naming no
	// breaker ends its connection, so the unknown address's second call came on another.
	g.Expect(run.opened.Load()).To(BeEquivalentTo(4))
}

// TestHTTP2GoAwayEvenIfTheClientStays speaks HTTP/2 frames by hand, as a client that ignores
// GOAWAY would: once the connection is maxConnectionAge old, the server says GOAWAY with the
// next answer and closes the connection.
func TestHTTP2GoAwayEvenIfTheClientStays(t *testing.T) {
	t.Parallel()
	g := NewWithT(t)
	// The connection is accepted at testNow and is maxConnectionAge old when it asks.
	var clock atomic.Int64
	clock.Store(testNow.UnixNano())
	run := startResponderWith(t, Options{Now: func() time.Time { return time.Unix(0, clock.Add(int64(maxConnectionAge))) }})

	const (
		frameHeaders, frameSettings, frameGoAway = 0x1, 0x4, 0x7
		endStream, endHeaders, ack               = 0x1, 0x4, 0x1
	)
	frame := func(typ, flags byte, stream uint32, payload []byte) []byte {
		f := make([]byte, 9, 9+len(payload))
		f[0], f[1], f[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
		f[3], f[4] = typ, flags
		binary.BigEndian.PutUint32(f[5:], stream)
		return append(f, payload...)
	}
	// HPACK: :method GET, :scheme http, :path / from the static table (indexes 2, 6 and 4),
	// then :authority (index 1) as a literal without indexing.
	block := append([]byte{0x82, 0x86, 0x84, 0x01, byte(len(paymentsHost))}, paymentsHost...)
	out := []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	out = append(out, frame(frameSettings, 0, 0, nil)...)
	out = append(out, frame(frameHeaders, endStream|endHeaders, 1, block)...)
	c := dialRaw(t, run, string(out))

	var seen []byte
	start := time.Now()
	in := bufio.NewReader(c)
	for {
		var h [9]byte
		if _, err := io.ReadFull(in, h[:]); err != nil {
			g.Expect(err).To(MatchError(io.EOF), "the server closes the connection cleanly")
			break
		}
		payload := make([]byte, int(h[0])<<16|int(h[1])<<8|int(h[2]))
		_, err := io.ReadFull(in, payload)
		g.Expect(err).NotTo(HaveOccurred())
		seen = append(seen, h[3])
		if h[3] == frameSettings && h[4]&ack == 0 {
			_, err := c.Write(frame(frameSettings, ack, 0, nil))
			g.Expect(err).NotTo(HaveOccurred())
		}
		if h[3] == frameGoAway {
			g.Expect(time.Since(start)).To(BeNumerically("<", idleTimeout/2), "GOAWAY comes with the answer, not when idle")
			g.Expect(binary.BigEndian.Uint32(payload[0:4])&0x7fffffff).To(BeEquivalentTo(1), "GOAWAY lets stream 1 finish")
			g.Expect(binary.BigEndian.Uint32(payload[4:8])).To(BeZero(), "GOAWAY with NO_ERROR")
		}
	}
	g.Expect(seen).To(ContainElements(byte(frameHeaders), byte(frameGoAway)))
	g.Expect(time.Since(start)).To(BeNumerically("<", 3*time.Second), "closed within net/http's GOAWAY grace (1 s)")
	g.Expect(run.answers(t, KindHTTP, "known")).To(Equal(1.0))
}

// TestSlowAndHostileClientsAreCut checks what a client can hold: headers that never end,
// an HTTP/2 connection that never asks, a body that never comes, headers too large.
func TestSlowAndHostileClientsAreCut(t *testing.T) {
	t.Parallel()
	run := startResponder(t)
	dial := func(t *testing.T, send string) (net.Conn, *bufio.Reader) {
		c := dialRaw(t, run, send)
		return c, bufio.NewReader(c)
	}
	// closedWithin reads (and drops) whatever the server sends until it closes the connection.
	closedWithin := func(t *testing.T, in *bufio.Reader, within time.Duration) {
		start := time.Now()
		_, err := io.Copy(io.Discard, in)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("reading until the server closes: %v", err)
		}
		if took := time.Since(start); took > within {
			t.Errorf("the server held the connection %s, more than %s", took, within)
		}
	}

	t.Run("slow loris headers", func(t *testing.T) {
		t.Parallel()
		_, in := dial(t, "GET / HTTP/1.1\r\nHost: "+paymentsHost+"\r\nX-Slow: ")
		closedWithin(t, in, readHeaderTimeout+time.Second)
	})
	t.Run("HTTP/2 preface, then nothing", func(t *testing.T) {
		t.Parallel()
		_, in := dial(t, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
		// Idle, the server says GOAWAY, then closes after net/http's GOAWAY grace of 1 s.
		closedWithin(t, in, idleTimeout+time.Second+500*time.Millisecond)
	})
	t.Run("a body that never comes is not waited for", func(t *testing.T) {
		t.Parallel()
		g := NewWithT(t)
		_, in := dial(t, "POST /charge HTTP/1.1\r\nHost: "+paymentsHost+"\r\nContent-Length: 100000\r\n\r\nsome")
		start := time.Now()
		resp, err := http.ReadResponse(in, nil)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(resp.StatusCode).To(Equal(http.StatusServiceUnavailable))
		g.Expect(time.Since(start)).To(BeNumerically("<", time.Second), "answered without the body")
		closedWithin(t, in, readTimeout+time.Second)
	})
	t.Run("Expect: 100-continue gets the answer, not a 100", func(t *testing.T) {
		t.Parallel()
		g := NewWithT(t)
		_, in := dial(t, "PUT / HTTP/1.1\r\nHost: "+paymentsHost+"\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
		resp, err := http.ReadResponse(in, nil)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(resp.StatusCode).To(Equal(http.StatusServiceUnavailable))
	})
	t.Run("headers too large", func(t *testing.T) {
		t.Parallel()
		g := NewWithT(t)
		_, in := dial(t, "GET / HTTP/1.1\r\nHost: "+paymentsHost+"\r\nX-Big: "+strings.Repeat("a", 16<<10)+"\r\n\r\n")
		resp, err := http.ReadResponse(in, nil)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(resp.StatusCode).To(Equal(http.StatusRequestHeaderFieldsTooLarge))
	})
}

func TestResetListenerResetsAtOnce(t *testing.T) {
	t.Parallel()
	g := NewWithT(t)
	run := startResponder(t)
	for i := range 3 {
		start := time.Now()
		c, err := net.Dial("tcp", run.ResetAddr().String())
		if err != nil {
			// The reset can come before connect returns; that is a reset too.
			g.Expect(err).To(MatchError(syscall.ECONNRESET))
		} else {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			_ = c.Close()
			g.Expect(err).To(MatchError(syscall.ECONNRESET), "a reset, not a clean close or a timeout")
		}
		g.Expect(time.Since(start)).To(BeNumerically("<", 500*time.Millisecond), "connection %d", i)
	}
	g.Eventually(func() float64 { return run.answers(t, KindReset, "unknown") }).Should(Equal(3.0))
}

// TestMultiplexingClientsAreAnsweredAtOnceUnderConcurrency: an HTTP/2 client with calls in
// flight together sends them as streams of one connection. A GOAWAY after every answer refused
// the others over and over, and Go's HTTP/2 transport retries a refused request at once, then
// after 1 s, then 2 s: calls to an Open front timed out (26% of h2c calls at 20 pods x 50/s in
// the data-plane suite). While the breaker is Open the connection carries every answer.
func TestMultiplexingClientsAreAnsweredAtOnceUnderConcurrency(t *testing.T) {
	t.Parallel()
	run := startResponder(t)
	url := "http://" + run.HTTPAddr().String() + "/charge"
	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: h2c, Timeout: 5 * time.Second}
	grpcConn, err := grpc.NewClient("passthrough:///"+run.HTTPAddr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(paymentsHost))
	if err != nil {
		t.Fatal(err)
	}
	defer grpcConn.Close()

	const callers, calls = 40, 10
	var slow, failed atomic.Int32
	var wg sync.WaitGroup
	for range callers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range calls {
				start := time.Now()
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Host = paymentsHost
				resp, err := client.Do(req)
				if err != nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Tripswitch-Breaker") != "shop/payments" {
					failed.Add(1)
				}
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
				if time.Since(start) > 500*time.Millisecond {
					slow.Add(1)
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range calls {
				start := time.Now()
				var trailer metadata.MD
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := grpcConn.Invoke(ctx, "/shop.Payments/Charge", &emptypb.Empty{}, &emptypb.Empty{}, grpc.Trailer(&trailer))
				cancel()
				if status.Code(err) != codes.Unavailable || len(trailer.Get("x-tripswitch-breaker")) == 0 {
					failed.Add(1)
				}
				if time.Since(start) > 500*time.Millisecond {
					slow.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	g := NewWithT(t)
	g.Expect(failed.Load()).To(BeZero(), "every call gets the responder's answer naming the breaker")
	g.Expect(slow.Load()).To(BeZero(), "no call waits for a retry's backoff")
}
