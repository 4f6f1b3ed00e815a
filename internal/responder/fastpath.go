package responder

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The fast path answers the common HTTP/1.x request straight from the accept loop, without
// the goroutine, network-poller registration, wake-ups and buffers that net/http spends on
// every connection: read once, write once, close. Measured with test/bench/responder on 2
// cores at 10,000 new connections a second, net/http took 0.086 CPU seconds per 1,000
// answers and the fast path 0.04–0.05; a responder exists to take storms of them.
//
// It is deliberately narrow. It answers only a request head that arrived whole in the first
// read, with nothing after it (no body, nothing pipelined), of a form it can read without
// doubt and that net/http would answer the same way; anything else (HTTP/2 and so gRPC,
// bodies, Expect, Upgrade, odd characters, partial heads, slow clients) goes to net/http with
// the bytes already read. TestFastPathAnswersAsNetHTTP and FuzzParseSimpleRequest hold it to
// that.

// fastReadSize is what the fast path reads of a request: heads up to this size, less one
// byte (a full buffer may have more behind it), are answered here.
const fastReadSize = 4 << 10

// simpleRequest is what the fast path reads from a request head.
type simpleRequest struct {
	host   string
	http11 bool // HTTP/1.1, or else HTTP/1.0
	head   bool // a HEAD request, whose answer has no body
}

// fastMethods are the methods the fast path answers; others (CONNECT, PRI, extensions) go
// to net/http.
var fastMethods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}

// parseSimpleRequest reads b as exactly one HTTP/1.x request head without a body:
//
//	METHOD SP /origin-form SP HTTP/1.x CRLF *(name ":" OWS value OWS CRLF) CRLF
//
// ok is false for anything it does not answer itself: other framing, a body or the promise
// of one (Content-Length other than 0, Transfer-Encoding, Expect), Upgrade, gRPC, characters
// outside a conservative set, two Host headers or none on HTTP/1.1.
func parseSimpleRequest(b []byte) (req simpleRequest, ok bool) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 || end+4 != len(b) {
		return req, false
	}
	line, rest, _ := bytes.Cut(b[:end+2], []byte("\r\n"))
	method, line, _ := bytes.Cut(line, []byte(" "))
	target, proto, _ := bytes.Cut(line, []byte(" "))
	if !knownMethod(method) || !originForm(target) {
		return req, false
	}
	switch string(proto) {
	case "HTTP/1.1":
		req.http11 = true
	case "HTTP/1.0":
	default:
		return req, false
	}
	req.head = string(method) == "HEAD"
	hosts := 0
	for len(rest) > 0 {
		var field []byte
		field, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, found := bytes.Cut(field, []byte(":"))
		if !found || !isToken(name) || !fieldValue(value) {
			return req, false
		}
		value = bytes.Trim(value, " \t")
		switch {
		case equalFold(name, "host"):
			if hosts++; hosts > 1 || !hostChars(value) {
				return req, false
			}
			req.host = string(value)
		case equalFold(name, "content-length"):
			if string(value) != "0" {
				return req, false
			}
		case equalFold(name, "content-type"):
			if _, grpc := grpcContentType(string(value)); grpc {
				return req, false
			}
		case equalFold(name, "transfer-encoding"), equalFold(name, "expect"), equalFold(name, "upgrade"):
			return req, false
		}
	}
	if req.http11 && hosts == 0 {
		return req, false // net/http refuses it with 400
	}
	return req, true
}

func knownMethod(m []byte) bool {
	for _, known := range fastMethods {
		if string(m) == known {
			return true
		}
	}
	return false
}

// originForm says whether t is a path (and query) of characters that need no escaping and
// no interpretation: letters, digits and -._~!$&'()*+,;=:@/?. A '%' escape, a '#', spaces
// or anything else goes to net/http, which knows what to make of it.
func originForm(t []byte) bool {
	return len(t) > 0 && t[0] == '/' && alnumOr(t, "-._~!$&'()*+,;=:@/?")
}

// isToken says whether b is an HTTP token, as header names are.
func isToken(b []byte) bool {
	return len(b) > 0 && alnumOr(b, "!#$%&'*+-.^_`|~")
}

// alnumOr says whether every byte of b is an ASCII letter or digit, or one of others.
func alnumOr(b []byte, others string) bool {
	for _, c := range b {
		if !isAlnum(c) && strings.IndexByte(others, c) < 0 {
			return false
		}
	}
	return true
}

// fieldValue says whether b holds only visible ASCII, spaces and tabs.
func fieldValue(b []byte) bool {
	for _, c := range b {
		if (c < ' ' && c != '\t') || c > '~' {
			return false
		}
	}
	return true
}

// hostChars says whether b is made of the characters of host names, IP literals and ports.
func hostChars(b []byte) bool {
	return alnumOr(b, ".-:[]_")
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// equalFold compares a header name with a lower-case one, ignoring ASCII case.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// appendHTTP1Answer appends the answer as net/http sends the handler's: the same status,
// headers and body. body is a.appendBody's, which the caller keeps a buffer for.
func appendHTTP1Answer(dst []byte, a Answer, req simpleRequest, date, body []byte) []byte {
	if req.http11 {
		dst = append(dst, "HTTP/1.1 503 Service Unavailable\r\n"...)
	} else {
		dst = append(dst, "HTTP/1.0 503 Service Unavailable\r\n"...)
	}
	dst = append(dst, "Cache-Control: no-store\r\nConnection: close\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\r\nContent-Type: text/plain; charset=utf-8\r\nDate: "...)
	dst = append(dst, date...)
	if a.RetryAfter > 0 {
		dst = append(dst, "\r\nRetry-After: "...)
		dst = strconv.AppendInt(dst, a.RetryAfter, 10)
	}
	if a.Breaker != "" {
		dst = append(dst, "\r\nX-Tripswitch-Breaker: "...)
		dst = append(dst, a.Breaker...)
	}
	dst = append(dst, "\r\n\r\n"...)
	if !req.head {
		dst = append(dst, body...)
	}
	return dst
}

// dateCache formats the Date header once a second.
type dateCache struct {
	sec int64
	val []byte
}

func (d *dateCache) at(now time.Time) []byte {
	if s := now.Unix(); s != d.sec || d.val == nil {
		d.sec = s
		d.val = now.UTC().AppendFormat(d.val[:0], http.TimeFormat)
	}
	return d.val
}

// fastHTTP is the fast path's state. The accept loop is its only user, so it needs no lock.
type fastHTTP struct {
	h         *handler
	in        [fastReadSize]byte
	out, body []byte
	date      dateCache
	// answered counts the answers it gave, so that tests can tell it ran.
	answered atomic.Int64
}

// respond is the answer to req, in s.out.
func (s *fastHTTP) respond(req simpleRequest, now time.Time) (answer []byte, known bool) {
	a, known := s.h.decide(req.host)
	s.body = a.appendBody(s.body[:0])
	s.out = appendHTTP1Answer(s.out[:0], a, req, s.date.at(now), s.body)
	return s.out, known
}
