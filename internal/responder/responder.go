package responder

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// Options configure a Responder.
type Options struct {
	// HTTPAddr is the HTTP listener's address, such as ":8480".
	HTTPAddr string
	// ResetAddr is the reset listener's address, such as ":8481".
	ResetAddr string
	// ClusterDomain is the cluster's DNS domain, as in <svc>.<ns>.svc.<ClusterDomain>; empty
	// is DefaultClusterDomain.
	ClusterDomain string
	// ShutdownDelay is how long the listeners go on answering once Start's context is done,
	// while the Responder reports itself not ready: until the manager has taken this replica
	// out of the front Services, new connections keep arriving, and an answer is better than
	// a refused connection.
	ShutdownDelay time.Duration
	// Registerer is where the answers counter goes; nil is prometheus.DefaultRegisterer.
	// The responder command passes controller-runtime's registry, which its manager serves.
	Registerer prometheus.Registerer
	// Now is the clock the answers' retry times are computed with; nil is time.Now.
	Now func() time.Time
	// NetHTTPOnly turns the fast path off: every HTTP request is answered through net/http,
	// at about twice the CPU. It is the way back should a client ever disagree with the fast
	// path, and what the fast path is measured and tested against.
	NetHTTPOnly bool
}

// Responder is the HTTP and reset listeners, bound, and what they answer with.
type Responder struct {
	http, reset *net.TCPListener
	server      *http.Server
	fast        *fastHTTP
	answers     *answers
	// errorLog rate-limits the listeners' own complaints, unknown the requests that name no
	// breaker. They start with a discarding logger and get Start's, from its context.
	errorLog, unknown *sometimes
	shutdownDelay     time.Duration
	serving           atomic.Bool
	stopping          atomic.Bool
	startOnce         sync.Once
}

// New binds both listeners, so that a taken port fails the process at once rather than
// leaving it unready. They answer once Start runs.
func New(index *Index, o Options) (*Responder, error) {
	domain, ok := NormalizeClusterDomain(cmp.Or(o.ClusterDomain, DefaultClusterDomain))
	if !ok {
		return nil, fmt.Errorf("cluster domain %q is not a DNS name", o.ClusterDomain)
	}
	reg := o.Registerer
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	answers, err := newAnswers(reg)
	if err != nil {
		return nil, fmt.Errorf("registering %s: %w", AnswersName, err)
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	r := &Responder{
		answers:       answers,
		errorLog:      &sometimes{log: logr.Discard(), period: 10 * time.Second},
		unknown:       &sometimes{log: logr.Discard(), period: time.Minute},
		shutdownDelay: o.ShutdownDelay,
	}
	h := &handler{index: index, clusterDomain: domain, now: now, answers: answers, unknown: r.unknown}
	r.server = newHTTPServer(h, r.errorLog)
	if !o.NetHTTPOnly {
		r.fast = &fastHTTP{h: h}
	}
	if r.http, err = listen(o.HTTPAddr, true); err != nil {
		return nil, fmt.Errorf("binding the HTTP listener: %w", err)
	}
	if r.reset, err = listen(o.ResetAddr, false); err != nil {
		_ = r.http.Close()
		return nil, fmt.Errorf("binding the reset listener: %w", err)
	}
	return r, nil
}

// listen binds a TCP listener. Keep-alive probes are for connections that last; these last
// a millisecond, and enabling them would cost every accepted connection system calls.
func listen(addr string, http bool) (*net.TCPListener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: listenControl(http)}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	return l.(*net.TCPListener), nil
}

// HTTPAddr is the HTTP listener's address, with the port it got when asked for port 0.
func (r *Responder) HTTPAddr() net.Addr { return r.http.Addr() }

// ResetAddr is the reset listener's address.
func (r *Responder) ResetAddr() net.Addr { return r.reset.Addr() }

// Start answers on both listeners until ctx is done, then, after the shutdown delay, closes
// them and returns. It logs through ctx's logger, at most one line per 10 seconds for the
// listeners' errors and one per minute for requests that name no breaker. A Responder starts
// once.
func (r *Responder) Start(ctx context.Context) error {
	started := false
	r.startOnce.Do(func() { started = true })
	if !started {
		return errors.New("the responder was started already")
	}
	logger := ctrllog.FromContext(ctx).WithName("responder")
	r.errorLog.log, r.unknown.log = logger, logger

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var httpErr, resetErr error
	ended := make(chan struct{}, 2) // a listener stopped serving: on stop, or failing
	wg.Go(func() { httpErr = serveHTTP(stop, r.server, r.http, r.fast, r.errorLog); ended <- struct{}{} })
	wg.Go(func() { resetErr = serveReset(stop, r.reset, r.answers, r.errorLog); ended <- struct{}{} })
	r.serving.Store(true)
	logger.Info("Answering", "http", r.HTTPAddr().String(), "reset", r.ResetAddr().String())

	select {
	case <-ctx.Done():
		r.stopping.Store(true)
		logger.Info("Stopping: answering a while longer, unready, while this replica leaves the front Services", "delay", r.shutdownDelay)
		select {
		case <-time.After(r.shutdownDelay):
		case <-ended:
		}
	case <-ended:
	}
	r.stopping.Store(true)
	close(stop)
	wg.Wait()
	return errors.Join(wrap("serving HTTP", httpErr), wrap("resetting", resetErr))
}

func wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// shutdown stops srv: answers take microseconds, so a connection still open after a second
// is a client that does not read its answer, and is cut.
func shutdown(srv *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if srv.Shutdown(ctx) != nil {
		_ = srv.Close()
	}
}

// NeedLeaderElection is false: every replica answers the connections kube-proxy sends it.
func (r *Responder) NeedLeaderElection() bool { return false }

// Serving says whether both listeners answer: nil once Start runs, until it is stopping.
func (r *Responder) Serving() error {
	switch {
	case r.stopping.Load():
		return errors.New("the responder is stopping")
	case !r.serving.Load():
		return errors.New("the responder's listeners are not serving yet")
	}
	return nil
}

// newStdLogger turns a sometimes into the *log.Logger that net/http reports to.
func newStdLogger(s *sometimes) *log.Logger {
	return log.New(s, "", 0)
}
