package responder

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"

	. "github.com/onsi/gomega"
)

func TestParseSimpleRequest(t *testing.T) {
	for _, tt := range []struct {
		raw  string
		want simpleRequest
		ok   bool
	}{
		{"GET / HTTP/1.1\r\nHost: payments.shop:8080\r\n\r\n", simpleRequest{host: "payments.shop:8080", http11: true}, true},
		{"GET /a/b?c=d&e=f HTTP/1.1\r\nhost:  Payments.Shop \r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n",
			simpleRequest{host: "Payments.Shop", http11: true}, true},
		{"HEAD / HTTP/1.1\r\nHOST: p\r\n\r\n", simpleRequest{host: "p", http11: true, head: true}, true},
		{"GET / HTTP/1.0\r\n\r\n", simpleRequest{}, true},
		{"POST /charge HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\nContent-Type: application/json\r\n\r\n",
			simpleRequest{host: "p", http11: true}, true},
		{"DELETE /x HTTP/1.1\r\nHost: [fd00::1]:80\r\n\r\n", simpleRequest{host: "[fd00::1]:80", http11: true}, true},
		{"GET / HTTP/1.1\r\nHost:\r\n\r\n", simpleRequest{http11: true}, true}, // empty, which net/http accepts

		{"GET / HTTP/1.1\r\n\r\n", simpleRequest{}, false},                                  // HTTP/1.1 without Host: 400
		{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", simpleRequest{}, false},            // two Hosts: 400
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n", simpleRequest{}, false}, // pipelined
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", simpleRequest{}, false},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n", simpleRequest{}, false}, // a body to come
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", simpleRequest{}, false},
		{"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n", simpleRequest{}, false},
		{"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", simpleRequest{}, false},
		{"POST /x.Y/Z HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc-web+proto\r\n\r\n", simpleRequest{}, false},
		{"GET / HTTP/1.1\r\nHost: a\r\n", simpleRequest{}, false}, // not all there yet
		{"GET / HTTP/1.1\nHost: a\n\n", simpleRequest{}, false},   // bare LF
		{"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", simpleRequest{}, false},
		{"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", simpleRequest{}, false},
		{"GET / HTTP/2.0\r\nHost: a\r\n\r\n", simpleRequest{}, false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", simpleRequest{}, false},
		{"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", simpleRequest{}, false},
		{"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", simpleRequest{}, false},
		{"get / HTTP/1.1\r\nHost: a\r\n\r\n", simpleRequest{}, false},
		{"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n", simpleRequest{}, false}, // absolute form: the Host is a's
		{"GET * HTTP/1.1\r\nHost: a\r\n\r\n", simpleRequest{}, false},
		{"GET /%41 HTTP/1.1\r\nHost: a\r\n\r\n", simpleRequest{}, false},
		{"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", simpleRequest{}, false},
		{"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", simpleRequest{}, false},
		{"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", simpleRequest{}, false},
		{"GET / HTTP/1.1\r\n Host: a\r\n\r\n", simpleRequest{}, false}, // folded or malformed
		{"GET / HTTP/1.1\r\nHost : a\r\n\r\n", simpleRequest{}, false}, // space before the colon
		{"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n", simpleRequest{}, false},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n", simpleRequest{}, false},
		{"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", simpleRequest{}, false},
		{"GET / HTTP/1.1\r\nHost: a\r\n: empty name\r\n\r\n", simpleRequest{}, false},
		{"", simpleRequest{}, false},
		{"\r\n\r\n", simpleRequest{}, false},
	} {
		got, ok := parseSimpleRequest([]byte(tt.raw))
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("parseSimpleRequest(%q) = %+v, %v; want %+v, %v", tt.raw, got, ok, tt.want, tt.ok)
		}
	}
}

// FuzzParseSimpleRequest holds the fast path's parser to net/http's: whatever it takes,
// net/http reads as one complete request with the same Host, version and method, nothing
// after it, and no body; and the h2c preface is never taken.
func FuzzParseSimpleRequest(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: payments.shop:8080\r\n\r\n",
		"HEAD /x?y HTTP/1.0\r\nhost: a\r\nContent-Length: 0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [fd00::1]:8080\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: _a-b.c:\r\n\r\n",
		"DELETE /a;b=c/@:d HTTP/1.0\r\nX-A:\tb \r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, ok := parseSimpleRequest(raw)
		if !ok {
			return
		}
		if bytes.HasPrefix(raw, []byte("PRI ")) {
			t.Fatalf("the fast path took an HTTP/2 preface: %q", raw)
		}
		in := bufio.NewReader(bytes.NewReader(raw))
		req, err := http.ReadRequest(in)
		if err != nil {
			t.Fatalf("the fast path took %q, which net/http refuses: %v", raw, err)
		}
		if req.Host != got.host || req.ProtoAtLeast(1, 1) != got.http11 || (req.Method == http.MethodHead) != got.head {
			t.Fatalf("for %q the fast path read %+v, net/http host %q %s %s", raw, got, req.Host, req.Proto, req.Method)
		}
		if req.ContentLength != 0 || len(req.TransferEncoding) > 0 || req.Header.Get("Expect") != "" {
			t.Fatalf("the fast path took %q, which has a body", raw)
		}
		if rest, _ := io.ReadAll(in); len(rest) > 0 {
			t.Fatalf("the fast path took %q, which has %q after its head", raw, rest)
		}
		// Whether net/http's server would take the Host header (one, valid) is not
		// ReadRequest's to say: ask the servers, with and without the fast path.
		pair := fuzzPair()
		if got, want := exchange(t, pair[0], string(raw)), exchange(t, pair[1], string(raw)); !reflect.DeepEqual(got, want) {
			t.Fatalf("for %q the fast path answered\n%+v\nnet/http\n%+v", raw, got, want)
		}
	})
}

// fuzzPair is a responder with the fast path and one without, started once for all the
// inputs a fuzzing process tries, and left to the process's exit. Their listeners are bound
// when launch returns, so connections wait in the kernel until they answer.
var fuzzPair = sync.OnceValue(func() [2]*running {
	var pair [2]*running
	for i, o := range []Options{{}, {NetHTTPOnly: true}} {
		run, _, err := launch(o)
		if err != nil {
			panic(err)
		}
		pair[i] = run
	}
	return pair
})

// TestFastPathAnswersAsNetHTTP sends every request to a responder with the fast path and to
// one without, and wants the same answers: the same status, headers (but Date) and body, and
// the connection closed after it. It also checks which requests the fast path took, so that
// it cannot pass by never running.
func TestFastPathAnswersAsNetHTTP(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the fast path is Linux's")
	}
	t.Parallel()
	fast, plain := startResponder(t), startResponderWith(t, Options{NetHTTPOnly: true})
	g := NewWithT(t)
	g.Expect(fast.fast).NotTo(BeNil())
	g.Expect(plain.fast).To(BeNil())

	const host = "Host: " + paymentsHost + "\r\n"
	for _, tt := range []struct {
		name, raw string
		fast      bool
	}{
		{"GET", "GET /charge HTTP/1.1\r\n" + host + "User-Agent: x\r\nAccept: */*\r\n\r\n", true},
		{"HEAD", "HEAD / HTTP/1.1\r\n" + host + "\r\n", true},
		{"HTTP/1.0", "GET / HTTP/1.0\r\n" + host + "\r\n", true},
		{"HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", true},
		{"HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\n" + host + "Connection: keep-alive\r\n\r\n", true},
		{"POST without a body", "POST /charge HTTP/1.1\r\n" + host + "Content-Length: 0\r\nContent-Type: text/plain\r\n\r\n", true},
		{"short name", "OPTIONS /x?y=z HTTP/1.1\r\nHost: payments\r\n\r\n", true},
		{"upper case", "GET / HTTP/1.1\r\nHOST: PAYMENTS.SHOP.SVC\r\n\r\n", true},
		{"unknown address", "GET / HTTP/1.1\r\nHost: 10.96.0.10:8080\r\n\r\n", true},
		{"unknown name", "GET / HTTP/1.1\r\nHost: orders.shop\r\n\r\n", true},
		{"empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", true},
		{"odd Host", "GET / HTTP/1.1\r\nHost: ]_[:-.\r\n\r\n", true},
		{"IPv6 Host", "GET / HTTP/1.1\r\nHost: [fd00::10]:8080\r\n\r\n", true},

		{"a body", "POST /charge HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello", false},
		{"chunked", "POST /charge HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", false},
		{"two Hosts", "GET / HTTP/1.1\r\n" + host + host + "\r\n", false},
		{"bare LF", "GET / HTTP/1.1\nHost: payments.shop\n\n", false},
		{"escaped path", "GET /%7Eme HTTP/1.1\r\n" + host + "\r\n", false},
		{"bad escape", "GET /%zz HTTP/1.1\r\n" + host + "\r\n", false},
		{"bad Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", false},
		{"absolute form", "GET http://payments.shop/ HTTP/1.1\r\nHost: other\r\n\r\n", false},
		{"websocket", "GET / HTTP/1.1\r\n" + host + "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n", false},
		{"h2c upgrade", "GET / HTTP/1.1\r\n" + host + "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", false},
		{"gRPC-Web", "POST /shop.Payments/Charge HTTP/1.1\r\n" + host + "Content-Type: application/grpc-web+proto\r\n\r\n", false},
		{"obs-text", "GET / HTTP/1.1\r\n" + host + "X-Name: caf\xc3\xa9\r\n\r\n", false},
		{"pipelined", "GET / HTTP/1.1\r\n" + host + "\r\nGET / HTTP/1.1\r\n" + host + "\r\n", false},
		{"large head", "GET / HTTP/1.1\r\n" + host + "X-Big: " + strings.Repeat("a", fastReadSize) + "\r\n\r\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			before := fast.fast.answered.Load()
			want := exchange(t, plain, tt.raw)
			got := exchange(t, fast, tt.raw)
			g.Expect(got).To(Equal(want))
			if tt.fast {
				g.Expect(fast.fast.answered.Load()).To(Equal(before+1), "the fast path answered")
			} else {
				g.Expect(fast.fast.answered.Load()).To(Equal(before), "net/http answered")
			}
		})
	}
}

// exchanged is what a client saw of one exchange, which ended with the server closing the
// connection: the answer's status line, headers but Date (which two answers may well differ
// in) and Connection (which net/http reads into Close), and body.
type exchanged struct {
	Status, Proto string
	Close         bool
	Header        http.Header
	Body          string
}

func exchange(t *testing.T, run *running, raw string) exchanged {
	t.Helper()
	all, err := io.ReadAll(dialRaw(t, run, raw)) // to EOF: the server closes
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", raw, err)
	}
	in := bufio.NewReader(bytes.NewReader(all))
	method := strings.Fields(raw)[0]
	resp, err := http.ReadResponse(in, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("the answer to %q: %v\n%q", raw, err, all)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Header.Del("Date")
	return exchanged{Status: resp.Status, Proto: resp.Proto, Header: resp.Header, Body: string(body), Close: resp.Close}
}
