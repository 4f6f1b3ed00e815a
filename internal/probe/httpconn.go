package probe

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

// httpProber sends one GET per probe over a keep-alive connection per endpoint. Unlike
// net/http.Transport, an idle connection here costs neither goroutines nor buffers: the
// request and response run on the probe's own goroutine, with bufio buffers borrowed from a
// pool for the length of the probe. At thousands of endpoints that is the difference between
// about 1 KiB and over 10 KiB (plus two goroutine stacks) per endpoint. Serialising the
// request and parsing the response are left to net/http (Request.Write, ReadResponse).
type httpProber struct {
	spec      Spec
	http      *HTTPSpec
	clock     clock.PassiveClock
	dial      DialFunc
	tlsConfig *tls.Config // nil for plain HTTP
	idle      connCache[net.Conn]
}

var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 1<<10) }}
)

// errReusedConnClosed marks a failure on a kept-alive connection that the endpoint had
// already closed; the probe retries once on a new connection instead of counting it.
var errReusedConnClosed = errors.New("kept-alive connection was closed by the endpoint")

func (p *httpProber) Probe(parent context.Context, ep Endpoint) Result {
	start := p.clock.Now()
	ctx, cancel := context.WithTimeout(parent, p.spec.Timeout)
	defer cancel()

	status, err := p.roundTrip(ctx, ep, !p.http.FreshConnections)
	if errors.Is(err, errReusedConnClosed) {
		status, err = p.roundTrip(ctx, ep, false)
	}
	if err != nil {
		// A dial or TLS error keeps its errno, so an EMFILE from connect is told apart from
		// the target's trouble. A cancelled parent interrupts the connection through the
		// deadline that roundTrip sets, which reads as a timeout; failed looks at the
		// contexts first, so that it counts as the manager's cancellation instead.
		return failed(parent, ctx, p.spec, p.clock, ep, start, err, describe)
	}

	msg := "HTTP " + strconv.Itoa(status)
	switch {
	case p.http.Neutral.Has(status):
		return finish(p.spec, p.clock, ep, start, breaker.Neutral, msg)
	case p.http.Success.Has(status):
		return finish(p.spec, p.clock, ep, start, breaker.Success, msg)
	}
	return finish(p.spec, p.clock, ep, start, breaker.Failure, msg)
}

// roundTrip sends the GET and returns the status code. The connection goes back to the idle
// map only when the response was read to its end and allows reuse.
func (p *httpProber) roundTrip(ctx context.Context, ep Endpoint, mayReuse bool) (int, error) {
	l := p.idle.take(ep)
	conn, reused := l.conn, l.reused
	if reused && !mayReuse {
		_ = conn.Close()
		reused = false
	}
	if !reused {
		var err error
		if conn, err = p.connect(ctx, ep); err != nil {
			p.idle.put(ep, l, nil, false, false)
			return 0, err
		}
	}
	keep := false
	defer func() {
		if keep {
			_ = conn.SetDeadline(time.Time{})
		}
		p.idle.put(ep, l, conn, true, keep)
	}()

	// The deadline bounds every read and write; cancellation (a removed breaker) interrupts
	// them at once.
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req, err := p.request(ctx, ep)
	if err != nil {
		return 0, err
	}
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writers.Put(bw)
	if err != nil {
		return 0, p.reusedErr(err, reused)
	}

	// The status line and headers are read through a limit; the body is bounded below.
	limited := &headerLimit{r: conn, left: maxResponseHeader}
	br := readers.Get().(*bufio.Reader)
	br.Reset(limited)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	resp, err := http.ReadResponse(br, req)
	if err != nil && limited.err != nil {
		// The parser reports a line that the limit or the deadline cut short as malformed
		// (quoting what the endpoint sent); the read's own error says what happened.
		err = limited.err
	}
	if err != nil {
		return 0, p.reusedErr(err, reused)
	}
	limited.left = math.MaxInt64
	// Drain a bounded amount, so that a small body keeps the connection reusable and a
	// large or endless one costs neither memory nor time: it closes the connection.
	n, _ := io.CopyN(io.Discard, resp.Body, maxBody+1)
	_ = resp.Body.Close()
	keep = n <= maxBody && !resp.Close && br.Buffered() == 0 && stop() && !p.http.FreshConnections
	return resp.StatusCode, nil
}

// errResponseHeaderTooLarge fails a probe whose response's status line and headers exceed
// maxResponseHeader.
var errResponseHeaderTooLarge = errors.New("response status line and headers exceed " +
	strconv.Itoa(maxResponseHeader>>10) + " KiB")

// headerLimit lets left more bytes through and then fails with errResponseHeaderTooLarge.
// Under the bufio.Reader that ReadResponse parses from, it bounds what an endpoint can make
// the manager read, and hold, before the header ends, as net/http.Transport does with
// MaxResponseHeaderBytes.
// It keeps the first read error, too.
type headerLimit struct {
	r    io.Reader
	left int64
	err  error
}

func (l *headerLimit) Read(b []byte) (int, error) {
	if l.left <= 0 {
		l.err = cmp.Or(l.err, errResponseHeaderTooLarge)
		return 0, errResponseHeaderTooLarge
	}
	if int64(len(b)) > l.left {
		b = b[:l.left]
	}
	n, err := l.r.Read(b)
	l.left -= int64(n)
	if err != nil && l.err == nil {
		l.err = err
	}
	return n, err
}

// reusedErr marks an EOF or reset on a reused connection: the endpoint closed it while idle.
func (p *httpProber) reusedErr(err error, reused bool) error {
	if reused && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		isConnReset(err)) {
		return errReusedConnClosed
	}
	return err
}

func (p *httpProber) connect(ctx context.Context, ep Endpoint) (net.Conn, error) {
	conn, err := p.dial(ctx, "tcp", ep.String())
	if err != nil || p.tlsConfig == nil {
		return conn, err
	}
	cfg := p.tlsConfig
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		cfg.ServerName = ep.Addr().String()
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return tc, nil
}

func (p *httpProber) request(ctx context.Context, ep Endpoint) (*http.Request, error) {
	scheme := "http://"
	if p.tlsConfig != nil {
		scheme = "https://"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+ep.String()+p.http.Path, nil)
	if err != nil {
		return nil, err
	}
	for name, values := range p.http.Headers {
		req.Header[name] = values
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "tripswitch-probe")
	}
	if p.http.Host != "" {
		req.Host = p.http.Host
	}
	return req, nil
}

func (p *httpProber) Forget(ep Endpoint) { p.idle.forget(ep) }

func (p *httpProber) Close() { p.idle.close() }
