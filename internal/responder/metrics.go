package responder

import (
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tripswitch/tripswitch/internal/metrics"
)

// AnswersName is the responder's one metric: answers, by kind and by whether the request
// named a known breaker.
const AnswersName = "tripswitch_responder_answers_total"

// Answer kinds, the kind label's values.
const (
	KindHTTP  = "http"
	KindGRPC  = "grpc"
	KindReset = "reset"
)

// answers holds the counter's series with their labels resolved, so that counting an answer
// costs no label lookup: it is on the path of every connection.
type answers struct {
	http, grpc [2]prometheus.Counter // [unknown, known]
	reset      prometheus.Counter
}

// newAnswers registers the counter with reg. Registering twice with one registry (two
// responders in one process, as tests start) reuses the counter already there.
func newAnswers(reg prometheus.Registerer) (*answers, error) {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: AnswersName,
		Help: "Answers of the open responder, by kind (http: 503, grpc: UNAVAILABLE, reset: a TCP reset) " +
			"and by whether the request named a known breaker (known, unknown; always unknown for a reset)."},
		[]string{"kind", "breaker"})
	vec, err := metrics.Reuse(reg, vec)
	if err != nil {
		return nil, err
	}
	a := &answers{reset: vec.WithLabelValues(KindReset, "unknown")}
	for i, breaker := range []string{"unknown", "known"} {
		a.http[i] = vec.WithLabelValues(KindHTTP, breaker)
		a.grpc[i] = vec.WithLabelValues(KindGRPC, breaker)
	}
	return a, nil
}

func (a *answers) count(grpc, known bool) {
	i := 0
	if known {
		i = 1
	}
	if grpc {
		a.grpc[i].Inc()
	} else {
		a.http[i].Inc()
	}
}

// sometimes lets one log line through per period and counts the ones it holds back. The
// responder must not log per request or per connection: a flood of clients would become a
// flood of log lines, which costs more than the answers.
type sometimes struct {
	log    logr.Logger
	period time.Duration

	mu      sync.Mutex
	next    time.Time
	dropped int
}

// Info logs msg unless a line went out less than period ago.
func (s *sometimes) Info(now time.Time, msg string, kv ...any) {
	s.mu.Lock()
	if now.Before(s.next) {
		s.dropped++
		s.mu.Unlock()
		return
	}
	dropped := s.dropped
	s.next, s.dropped = now.Add(s.period), 0
	s.mu.Unlock()
	s.log.Info(msg, append(kv, "heldBackSinceLast", dropped)...)
}

// Write makes sometimes a writer for the log.Logger that net/http reports connection errors
// to (malformed requests, HTTP/2 protocol errors), one line per period at most.
func (s *sometimes) Write(p []byte) (int, error) {
	msg := string(p)
	if n := len(msg); n > 0 && msg[n-1] == '\n' {
		msg = msg[:n-1]
	}
	s.Info(time.Now(), "The HTTP server reported a client's error", "error", msg)
	return len(p), nil
}
