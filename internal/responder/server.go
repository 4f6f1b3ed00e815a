package responder

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The HTTP listener's limits. Every request is answered from its headers alone, so nothing
// here needs to wait for a client; each bound is about what a slow or hostile one can hold.
const (
	// maxHeaderBytes bounds a request's headers; net/http answers 431 past it (it reads up to
	// 4 KiB more, so the exact limit is 12 KiB on HTTP/1.1). HTTP/2 advertises it as
	// SETTINGS_MAX_HEADER_LIST_SIZE and answers 431 too.
	maxHeaderBytes = 8 << 10
	// readHeaderTimeout bounds how long a client may take to send its headers (slow loris).
	readHeaderTimeout = 2 * time.Second
	// readTimeout bounds the whole request on HTTP/1.1: the handler never reads a body, but
	// net/http drains up to 256 KiB of an unread one after the answer, so that the client
	// reads the answer rather than a reset, and it waits for it no longer than this.
	readTimeout = 3 * time.Second
	// writeTimeout bounds writing the answer to a client that does not read it.
	writeTimeout = 3 * time.Second
	// idleTimeout closes an HTTP/2 connection that carries no request, after its preface or
	// between requests. HTTP/1.1 connections never idle: every answer closes them.
	idleTimeout = time.Second
	// maxConnectionAge is how long an HTTP/2 connection (gRPC's too) may carry answers for a
	// breaker that is Open or HalfOpen: the first answer after it says GOAWAY. A client kept
	// here longer would miss the breaker's half-open share and its closing (kube-proxy steers
	// only new connections); GOAWAY after every answer instead made multiplexing clients
	// refuse their concurrent streams over and over, which Go's HTTP/2 transport retries after
	// 1 s, then 2 s (see TestMultiplexingClientsAreAnsweredAtOnceUnderConcurrency).
	maxConnectionAge = time.Second
	// maxConcurrentStreams bounds an HTTP/2 connection's streams: each is answered at once,
	// so a client needs few in flight.
	maxConcurrentStreams = 100
)

// connStartKey is the context key of when an HTTP connection was accepted.
type connStartKey struct{}

// handler answers every request from its Host or :authority header. It never reads the
// body: the answer does not depend on it, and a client that sends a large one slowly must not
// hold the responder.
type handler struct {
	index         *Index
	clusterDomain string
	now           func() time.Time
	answers       *answers
	unknown       *sometimes
}

// decide answers a request for host, the Host or :authority header; known says whether it
// names a breaker the index holds.
func (h *handler) decide(host string) (a Answer, known bool) {
	now := h.now()
	var b Breaker
	front, known := ParseHost(host, h.clusterDomain)
	if known {
		b, known = h.index.Lookup(front)
	}
	if !known {
		h.unknown.Info(now, "Answered a request that names no known breaker, without Retry-After; clients that call "+
			"a front Service by its address (not its name) get such answers", "host", truncate(host, 256))
	}
	return Decide(b, known, now), known
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, known := h.decide(r.Host)
	hdr := w.Header()
	// kube-proxy steers only new connections: one kept alive here would go on reaching the
	// responder after the breaker closes. On HTTP/1.1 net/http closes the connection after
	// this answer; on HTTP/2 it sends GOAWAY and closes it once its streams are done (net/http
	// turns a handler's "Connection: close" into a graceful shutdown of the connection). An
	// HTTP/2 connection carries a client's concurrent calls: it stays while the breaker is
	// Open or HalfOpen, up to maxConnectionAge.
	if r.ProtoMajor < 2 || !a.Holding || h.now().Sub(connStart(r.Context())) >= maxConnectionAge {
		hdr["Connection"] = []string{"close"}
	}
	if a.Breaker != "" {
		hdr["X-Tripswitch-Breaker"] = []string{a.Breaker}
	}
	if ct, ok := grpcContentType(r.Header.Get("Content-Type")); ok {
		// Trailers-only: the status travels in the response headers, with no body, which
		// net/http sends as one HEADERS frame that ends the stream.
		hdr["Content-Type"] = []string{ct}
		hdr["Grpc-Status"] = []string{grpcUnavailable}
		hdr["Grpc-Message"] = []string{encodeGRPCMessage(a.Message)}
		if a.PushbackMillis > 0 {
			hdr["Grpc-Retry-Pushback-Ms"] = []string{strconv.FormatInt(a.PushbackMillis, 10)}
		}
		w.WriteHeader(http.StatusOK)
		h.answers.count(true, known)
		return
	}
	body := a.Body()
	hdr["Content-Type"] = []string{"text/plain; charset=utf-8"}
	hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	hdr["Cache-Control"] = []string{"no-store"}
	if a.RetryAfter > 0 {
		hdr["Retry-After"] = []string{strconv.FormatInt(a.RetryAfter, 10)}
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	// The body is the responder's own text/plain message about a breaker it knows; nothing
	// of the request is echoed.
	_, _ = w.Write([]byte(body)) //nolint:gosec // G705: no request data reaches the body

	h.answers.count(false, known)
}

// grpcUnavailable is codes.Unavailable: the service is down for now, and the call may be
// retried, which is what an Open breaker means.
const grpcUnavailable = "14"

// grpcContentType says whether a request's Content-Type is gRPC's (application/grpc, with a
// +codec suffix or not, or gRPC-Web's), and what the answer's is: the same family, without
// echoing what the client sent.
func grpcContentType(ct string) (string, bool) {
	for _, family := range [...]string{"application/grpc-web-text", "application/grpc-web", "application/grpc"} {
		if len(ct) >= len(family) && strings.EqualFold(ct[:len(family)], family) {
			if rest := ct[len(family):]; rest == "" || rest[0] == '+' || rest[0] == ';' {
				return family, true
			}
		}
	}
	return "", false
}

// newHTTPServer is the HTTP listener's server: HTTP/1.1 and HTTP/2 with prior knowledge on
// one port, bounded as the constants above say.
func newHTTPServer(h *handler, errorLog *sometimes) *http.Server {
	srv := &http.Server{
		Handler: h,
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, connStartKey{}, h.now())
		},
		MaxHeaderBytes:    maxHeaderBytes,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          newStdLogger(errorLog),
		Protocols:         new(http.Protocols),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: maxConcurrentStreams,
			// Request bodies are never read, so the flow-control windows stay at the least
			// net/http allows: a client cannot park much data here.
			MaxReceiveBufferPerConnection: 64 << 10,
			MaxReceiveBufferPerStream:     16 << 10,
			WriteByteTimeout:              writeTimeout,
		},
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return srv
}

// connStart is when the connection that carried a request was accepted; the zero time, so
// that the connection counts as old, where it is unknown.
func connStart(ctx context.Context) time.Time {
	t, _ := ctx.Value(connStartKey{}).(time.Time)
	return t
}

// serveNetHTTP answers the connections to l through srv alone until stop is closed, and
// returns once srv has shut down.
func serveNetHTTP(stop <-chan struct{}, srv *http.Server, l net.Listener) error {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	var err error
	select {
	case <-stop:
	case err = <-served: // it failed before it was asked to stop
	}
	shutdown(srv)
	if err == nil {
		if err = <-served; err == http.ErrServerClosed {
			err = nil
		}
	}
	return err
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
