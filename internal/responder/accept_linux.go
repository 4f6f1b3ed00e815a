//go:build linux

package responder

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// On Linux the responder accepts connections itself, with accept4 on the listening socket,
// rather than through Go's network poller: a connection that is answered with one read, one
// write and a close, or reset at once, never needs the poller, and registering it there (and
// a goroutine to wait on it) costs more than the answer. Elsewhere, accept_other.go serves
// the same answers the portable way.

// listenControl sets TCP_DEFER_ACCEPT on the HTTP listener: the kernel hands it a
// connection only once the client's first bytes have arrived. HTTP clients speak first, so
// the fast path's single read finds the request, and a client that connects and says
// nothing holds no file descriptor or goroutine here, only a kernel entry. Not on the reset
// listener: a client of a server-speaks-first protocol would wait there for its reset.
func listenControl(deferAccept bool) func(network, address string, c syscall.RawConn) error {
	if !deferAccept {
		return nil
	}
	return func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) {
			err = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, int(readHeaderTimeout/time.Second))
		}); cerr != nil {
			return cerr
		}
		return err
	}
}

// acceptRaw takes l's socket over and accepts its connections with accept4 until stop is
// closed, handing each to handle as a file descriptor that handle owns. The descriptor is in
// blocking mode: what the fast path does with it never waits (MSG_DONTWAIT), and a
// connection handed to net/http is made non-blocking there without first passing through
// the poller.
func acceptRaw(stop <-chan struct{}, l *net.TCPListener, errorLog *sometimes, handle func(fd int)) error {
	// A listener's own RawConn cannot wait for readability; a duplicate of its socket as an
	// *os.File can, through the poller, which is all it is used for.
	f, err := l.File()
	_ = l.Close()
	if err != nil {
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return err
	}
	go func() { <-stop; _ = f.Close() }() // wakes the Read below
	var delay time.Duration
	for {
		var acceptErr error
		err := rc.Read(func(lfd uintptr) bool {
			for {
				fd, _, err := syscall.Accept4(int(lfd), syscall.SOCK_CLOEXEC)
				switch err {
				case nil:
					delay = 0
					handle(fd)
				case syscall.EAGAIN:
					return false // none left: wait for the next
				case syscall.EINTR, syscall.ECONNABORTED:
				default:
					acceptErr = err
					return true
				}
			}
		})
		if err != nil {
			select {
			case <-stop:
				return nil // f was closed to stop
			default:
				return err
			}
		}
		// Out of file descriptors, say: back off as net/http does, rather than spin.
		delay = min(max(2*delay, 5*time.Millisecond), time.Second)
		errorLog.Info(time.Now(), "Accepting a connection failed; retrying", "listener", l.Addr().String(),
			"error", acceptErr.Error(), "in", delay)
		select {
		case <-time.After(delay):
		case <-stop:
		}
	}
}

// serveReset resets every connection to l at once: SO_LINGER 0 makes close send a RST
// instead of a FIN, so the client's connect or first read fails with ECONNRESET, with no ICMP
// to be rate-limited. Three system calls a connection, in one goroutine: it keeps up with
// whatever the node's network delivers.
func serveReset(stop <-chan struct{}, l *net.TCPListener, answers *answers, errorLog *sometimes) error {
	return acceptRaw(stop, l, errorLog, func(fd int) {
		answers.reset.Inc()
		resetFD(fd)
	})
}

func resetFD(fd int) {
	_ = syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
	_ = syscall.Close(fd)
}

// serveHTTP answers the connections to l: on the fast path what it can, and through srv,
// which serves the handoff listener, the rest; without a fast path, all through srv. It
// returns once stop is closed and srv has shut down.
func serveHTTP(stop <-chan struct{}, srv *http.Server, l *net.TCPListener, fast *fastHTTP, errorLog *sometimes) error {
	if fast == nil {
		return serveNetHTTP(stop, srv, l)
	}
	slow := newHandoff(l.Addr(), errorLog)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(slow) }()
	err := acceptRaw(stop, l, errorLog, func(fd int) { fast.serve(fd, slow) })
	shutdown(srv)
	if serr := <-served; err == nil && serr != http.ErrServerClosed {
		err = serr
	}
	return err
}

// serve answers one connection on the fast path, or hands it to net/http.
func (s *fastHTTP) serve(fd int, slow *handoff) {
	n, _, err := syscall.Recvfrom(fd, s.in[:], syscall.MSG_DONTWAIT)
	switch {
	case err == syscall.EAGAIN:
		n = 0 // nothing yet: net/http waits for it
	case err != nil || n == 0:
		_ = syscall.Close(fd) // the client left before it asked
		return
	}
	if n > 0 && n < len(s.in) {
		if req, ok := parseSimpleRequest(s.in[:n]); ok {
			s.answer(fd, req)
			return
		}
	}
	slow.hand(fd, s.in[:n])
}

// answer writes the answer and closes the connection. The request was read to its last
// byte, so the close is a FIN, not a reset that could destroy the answer before the client
// reads it.
func (s *fastHTTP) answer(fd int, req simpleRequest) {
	out, known := s.respond(req, time.Now())
	if n, err := syscall.SendmsgN(fd, out, nil, nil, syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL); err != nil || n != len(out) {
		// A fresh connection's send buffer takes a few hundred bytes; this is a client that
		// is gone already.
		resetFD(fd)
		return
	}
	// Counted before the close, which the client waits for: whoever has seen the answer
	// whole sees it counted.
	s.h.answers.count(false, known)
	s.answered.Add(1)
	_ = syscall.Close(fd)
}

// handoff is the listener net/http serves: the connections the fast path leaves to it. They
// come as file descriptors; Accept, in net/http's accept goroutine, makes net.Conns of them,
// so that the fast path spends no time on it.
type handoff struct {
	addr     net.Addr
	pending  chan pendingConn
	done     chan struct{}
	once     sync.Once
	errorLog *sometimes
}

// pendingConn is a connection for net/http, and what the fast path read of it already.
type pendingConn struct {
	fd   int
	read []byte
}

func newHandoff(addr net.Addr, errorLog *sometimes) *handoff {
	return &handoff{addr: addr, pending: make(chan pendingConn, 64), done: make(chan struct{}), errorLog: errorLog}
}

// hand gives net/http a connection, with what was read of it already.
func (l *handoff) hand(fd int, read []byte) {
	select {
	case l.pending <- pendingConn{fd: fd, read: bytes.Clone(read)}:
	case <-l.done:
		_ = syscall.Close(fd)
	}
}

func (l *handoff) Accept() (net.Conn, error) {
	for {
		select {
		case p := <-l.pending:
			f := os.NewFile(uintptr(p.fd), "")
			c, err := net.FileConn(f) // a duplicate, non-blocking and registered with the poller
			_ = f.Close()
			if err != nil {
				// Out of file descriptors, say. An error here would stop net/http's Serve,
				// so the connection is dropped instead.
				l.errorLog.Info(time.Now(), "Handing a connection to net/http failed; dropped it", "error", err.Error())
				continue
			}
			return &prefixConn{Conn: c, prefix: p.read}, nil
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
}

// Close stops Accept and closes the connections that were handed off but not accepted. The
// fast path must have stopped handing off.
func (l *handoff) Close() error {
	l.once.Do(func() {
		close(l.done)
		for {
			select {
			case p := <-l.pending:
				_ = syscall.Close(p.fd)
			default:
				return
			}
		}
	})
	return nil
}

func (l *handoff) Addr() net.Addr { return l.addr }

// prefixConn is a connection whose first bytes were read already: Read returns them first.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite lets net/http half-close, as it does on a *net.TCPConn, before it lingers over a
// request body it did not read.
func (c *prefixConn) CloseWrite() error {
	return c.Conn.(*net.TCPConn).CloseWrite()
}
