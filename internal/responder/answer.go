package responder

import (
	"strconv"
	"strings"
	"time"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// unknownMessage is the answer for a request that names no known breaker: an address the
// responder cannot map (a ClusterIP, say), or a breaker it has not heard of yet.
const unknownMessage = "service unavailable: circuit breaker open"

// Answer is what the responder says to one request, whatever the protocol.
type Answer struct {
	// Breaker is the breaker's "namespace/name", or empty when the request names no known
	// breaker.
	Breaker string
	// RetryAfter is the Retry-After header in seconds; 0 leaves the header out.
	RetryAfter int64
	// PushbackMillis is the grpc-retry-pushback-ms trailer; 0 leaves it out.
	PushbackMillis int64
	// Message says why: the grpc-message (before percent-encoding) and the start of the HTTP
	// body.
	Message string
	// Holding says the breaker is Open or HalfOpen, so a connection that carries its answers
	// may carry more for a while; a breaker that has closed, or one the responder does not
	// know, sends its clients away at once.
	Holding bool
}

// Decide computes the answer for a request that reached breaker b (known is false when it
// reached none) at now. While b is Open with a known openUntil, clients are told to come back
// then, rounded up to the second for Retry-After and to the millisecond for gRPC; otherwise
// (HalfOpen, openUntil past or unknown, or a breaker that closed a moment ago and whose
// clients' kube-proxy has not caught up yet) in one second, when a new connection may well
// reach the target. An unknown breaker gives no time at all: the responder has no idea.
func Decide(b Breaker, known bool, now time.Time) Answer {
	if !known {
		return Answer{Message: unknownMessage}
	}
	a := Answer{Breaker: b.Namespace + "/" + b.Name, RetryAfter: 1, PushbackMillis: 1000}
	if b.State == tripswitchv1alpha1.StateOpen && b.OpenUntil.After(now) {
		left := b.OpenUntil.Sub(now)
		a.RetryAfter = int64((left + time.Second - 1) / time.Second)
		a.PushbackMillis = int64((left + time.Millisecond - 1) / time.Millisecond)
	}
	switch b.State {
	case tripswitchv1alpha1.StateOpen:
		a.Message, a.Holding = "circuit breaker "+a.Breaker+" is open", true
	case tripswitchv1alpha1.StateHalfOpen:
		a.Message, a.Holding = "circuit breaker "+a.Breaker+" is half-open", true
	case tripswitchv1alpha1.StateClosed:
		a.Message = "circuit breaker " + a.Breaker + " has just closed"
	default: // a breaker the manager has not reconciled yet
		a.Message = "circuit breaker " + a.Breaker + " has no state yet"
	}
	return a
}

// Body is the HTTP body: the message, and when to retry if that is known.
func (a Answer) Body() string {
	return string(a.appendBody(nil))
}

func (a Answer) appendBody(dst []byte) []byte {
	dst = append(dst, a.Message...)
	if a.RetryAfter > 0 {
		dst = append(dst, "; retry in "...)
		dst = strconv.AppendInt(dst, a.RetryAfter, 10)
		dst = append(dst, 's')
	}
	return append(dst, '\n')
}

// encodeGRPCMessage percent-encodes a grpc-message value as the gRPC HTTP/2 protocol asks:
// every byte outside printable ASCII, and '%' itself.
func encodeGRPCMessage(msg string) string {
	plain := func(c byte) bool { return c >= ' ' && c <= '~' && c != '%' }
	i := 0
	for i < len(msg) && plain(msg[i]) {
		i++
	}
	if i == len(msg) {
		return msg // the usual case: names are ASCII, and nothing is copied
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(msg) + 16)
	b.WriteString(msg[:i])
	for ; i < len(msg); i++ {
		if c := msg[i]; plain(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		}
	}
	return b.String()
}
