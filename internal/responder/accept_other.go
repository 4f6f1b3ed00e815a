//go:build !linux

package responder

import (
	"errors"
	"net"
	"net/http"
	"syscall"
	"time"
)

// Outside Linux the responder serves the same answers the portable way: every HTTP
// connection through net/http, and the reset listener through net's Accept. accept_linux.go
// says why Linux does better.

func listenControl(bool) func(network, address string, c syscall.RawConn) error { return nil }

// resetAcceptors accept on the reset listener side by side, so that the queue is drained
// while one of them is descheduled.
const resetAcceptors = 4

// serveReset resets every connection to l at once (SO_LINGER 0), until stop is closed.
func serveReset(stop <-chan struct{}, l *net.TCPListener, answers *answers, errorLog *sometimes) error {
	go func() { <-stop; _ = l.Close() }()
	done := make(chan struct{}, resetAcceptors)
	for range resetAcceptors {
		go func() {
			defer func() { done <- struct{}{} }()
			var delay time.Duration
			for {
				c, err := l.AcceptTCP()
				if errors.Is(err, net.ErrClosed) {
					return
				}
				if err != nil {
					delay = min(max(2*delay, 5*time.Millisecond), time.Second)
					errorLog.Info(time.Now(), "Accepting a connection failed; retrying", "listener", l.Addr().String(),
						"error", err.Error(), "in", delay)
					time.Sleep(delay)
					continue
				}
				delay = 0
				_ = c.SetLinger(0)
				_ = c.Close()
				answers.reset.Inc()
			}
		}()
	}
	for range resetAcceptors {
		<-done
	}
	return nil
}

// serveHTTP answers the connections to l through srv until stop is closed, and returns once
// srv has shut down.
func serveHTTP(stop <-chan struct{}, srv *http.Server, l *net.TCPListener, _ *fastHTTP, _ *sometimes) error {
	return serveNetHTTP(stop, srv, l)
}
