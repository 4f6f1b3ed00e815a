package responder

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// benchIndex holds n breakers, shop-i/payments-i, all Open for another 7 seconds.
func benchIndex(n int) *Index {
	x := NewIndex()
	for i := range n {
		x.Set(Entry{Breaker: Breaker{Namespace: fmt.Sprintf("shop-%d", i), Name: fmt.Sprintf("payments-%d", i),
			State: tripswitchv1alpha1.StateOpen, OpenUntil: testNow.Add(7 * time.Second)}, Front: fmt.Sprintf("payments-%d", i)})
	}
	return x
}

// discardWriter is the least a ResponseWriter can be, so that the benchmark measures the
// handler and not a recorder.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}

// BenchmarkAnswer is the answer path of one request, from its headers to the answer's, among
// 1,000 breakers: parsing the Host, the index lookup, Decide and the headers.
func BenchmarkAnswer(b *testing.B) {
	a, err := newAnswers(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	h := &handler{index: benchIndex(1000), clusterDomain: DefaultClusterDomain, now: func() time.Time { return testNow },
		answers: a, unknown: &sometimes{log: logr.Discard(), period: time.Minute}}
	for _, tt := range []struct{ name, host, contentType string }{
		{"http/known", "payments-500.shop-500.svc.cluster.local:8080", ""},
		{"http/unknown", "10.96.0.10:8080", ""},
		{"grpc/known", "payments-500.shop-500.svc.cluster.local:8080", "application/grpc"},
	} {
		b.Run(tt.name, func(b *testing.B) {
			req, _ := http.NewRequest(http.MethodPost, "http://"+tt.host+"/", nil)
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, req)
			}
		})
	}
}

// BenchmarkFastPath is the fast path's answer: reading the request head, the lookup,
// Decide and the answer's bytes.
func BenchmarkFastPath(b *testing.B) {
	a, err := newAnswers(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	s := &fastHTTP{h: &handler{index: benchIndex(1000), clusterDomain: DefaultClusterDomain, now: func() time.Time { return testNow },
		answers: a, unknown: &sometimes{log: logr.Discard(), period: time.Minute}}}
	raw := []byte("GET /charge HTTP/1.1\r\nHost: payments-500.shop-500.svc.cluster.local:8080\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		req, ok := parseSimpleRequest(raw)
		if !ok {
			b.Fatal("not taken")
		}
		s.respond(req, testNow)
	}
}

func BenchmarkParseHost(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_, _ = ParseHost("payments.shop.svc.cluster.local:8080", DefaultClusterDomain)
	}
}

// BenchmarkNewConnection is one whole answer over loopback, from dial to the server's close,
// client and server in one process; test/bench/responder measures the same at a steady rate
// with the server in a process of its own.
func BenchmarkNewConnection(b *testing.B) {
	r, err := New(benchIndex(1000), Options{HTTPAddr: "127.0.0.1:0", ResetAddr: "127.0.0.1:0",
		Registerer: prometheus.NewRegistry(), Now: func() time.Time { return testNow }})
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = r.Start(b.Context()) }()
	request := []byte("GET / HTTP/1.1\r\nHost: payments-500.shop-500.svc.cluster.local:8080\r\n\r\n")
	for _, tt := range []struct {
		name string
		addr net.Addr
		send []byte
	}{{"http", r.HTTPAddr(), request}, {"reset", r.ResetAddr(), nil}} {
		b.Run(tt.name, func(b *testing.B) {
			buf := make([]byte, 512)
			for b.Loop() {
				c, err := net.DialTCP("tcp", nil, tt.addr.(*net.TCPAddr))
				if err != nil {
					if tt.send == nil && errors.Is(err, syscall.ECONNRESET) {
						continue // reset before connect returned
					}
					b.Fatal(err)
				}
				if tt.send != nil {
					if _, err := c.Write(tt.send); err != nil {
						b.Fatal(err)
					}
				}
				for err == nil {
					_, err = c.Read(buf)
				}
				if err != io.EOF && tt.send != nil {
					b.Fatal(err)
				}
				_ = c.SetLinger(0) // no TIME_WAIT: b.N connections must not run out of ports
				_ = c.Close()
			}
		})
	}
}
