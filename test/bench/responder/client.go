//go:build linux

package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// The load generator is one OS thread driving non-blocking sockets through epoll, paced by a
// timerfd, the way wrk and similar tools are built. Why not net.Dial in a goroutine per
// connection: on these 2 cores the client shares the CPU with the responder it measures, and
// Go's dial path costs about twice the kernel's own work per connection (netpoller
// registration, getsockname and getpeername, a read that first finds nothing), which left
// too little CPU to measure the responder at 20,000 connections a second.

// timeout bounds one connection: past it, it is counted as an error and closed.
const timeout = 5 * time.Second

// maxInFlight bounds the connections the client has open at once, across its threads, well
// below the file descriptor limit: past it, a due connection is not started but counted as
// an error, so that a responder that falls behind shows as errors and lateness rather than
// as a client that runs out of file descriptors.
const maxInFlight = 8192

// conn is one connection in flight.
type conn struct {
	i       int // its index in the phase's schedule
	start   time.Time
	written bool
	buf     [512]byte
	n       int
}

// load is one phase's connections: which listener, the schedule, and what was measured.
type load struct {
	http    bool
	target  syscall.SockaddrInet4
	sources []syscall.SockaddrInet4 // empty: the kernel chooses
	request []byte

	latency  []time.Duration // by connection; 0 for one that failed
	lateness []time.Duration // how late each dial started, against its schedule
	errors   map[string]int
	// badAnswer is the first answer that was not what it should be, to show.
	badAnswer string
}

// worker is one client thread: its own epoll set and timer, and every threads-th
// connection of the schedule.
type worker struct {
	*load
	errors    map[string]int
	badAnswer string
}

func (w *worker) fail(kind string) { w.errors[kind]++ }

// drive opens n connections at rate, one every 1/rate, from threads OS threads, and returns
// when all have ended. Each thread's timerfd wakes it every tick; each wake starts the
// connections that are due by then, so arrivals come in groups of rate×tick at most (2 at
// 20,000/s and 100 µs).
func (l *load) drive(n, rate int, tick time.Duration, threads int) (time.Duration, error) {
	l.latency, l.lateness, l.errors, l.badAnswer = make([]time.Duration, n), make([]time.Duration, n), map[string]int{}, ""
	workers := make([]*worker, threads)
	errs := make([]error, threads)
	var wg sync.WaitGroup
	start := time.Now().Add(time.Millisecond) // all threads share the schedule
	for k := range threads {
		workers[k] = &worker{load: l, errors: map[string]int{}}
		wg.Go(func() { errs[k] = workers[k].run(start, k, threads, n, rate, tick) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, w := range workers {
		for kind, count := range w.errors {
			l.errors[kind] += count
		}
		l.badAnswer = cmp.Or(l.badAnswer, w.badAnswer)
	}
	return elapsed, errors.Join(errs...)
}

// run drives connections k, k+threads, k+2×threads, … of the schedule.
func (w *worker) run(start time.Time, k, threads, n, rate int, tick time.Duration) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	defer syscall.Close(ep)
	tfd, err := newTicker(tick)
	if err != nil {
		return err
	}
	defer syscall.Close(tfd)
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, tfd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(tfd)}); err != nil {
		return err
	}

	live := map[int]*conn{} // by file descriptor
	events := make([]syscall.EpollEvent, 512)
	interval := time.Second / time.Duration(rate)
	next, lastSweep := k, time.Now()
	for next < n || len(live) > 0 {
		got, err := syscall.EpollWait(ep, events, 100)
		if err != nil && !errors.Is(err, syscall.EINTR) {
			return err
		}
		now := time.Now()
		for _, ev := range events[:max(got, 0)] {
			fd := int(ev.Fd)
			if fd == tfd {
				var expirations [8]byte
				_, _ = syscall.Read(tfd, expirations[:])
				continue
			}
			if c := live[fd]; c != nil && w.step(fd, c, ev.Events) {
				delete(live, fd)
			}
		}
		// Start what is due. Checked on every wake, not only the timer's, so that a busy
		// loop does not fall behind by a tick.
		for ; next < n && now.Sub(start) >= time.Duration(next)*interval; next += threads {
			if len(live) >= maxInFlight/threads {
				w.fail("client: too many connections in flight, not started")
				continue
			}
			if fd, c := w.open(next, start.Add(time.Duration(next)*interval), ep); c != nil {
				live[fd] = c
			}
		}
		if now.Sub(lastSweep) > 100*time.Millisecond {
			lastSweep = now
			for fd, c := range live {
				if now.Sub(c.start) > timeout {
					w.fail("timeout")
					closeNow(fd)
					delete(live, fd)
				}
			}
		}
	}
	return nil
}

// newTicker is a timerfd that fires every tick.
func newTicker(tick time.Duration) (int, error) {
	fd, _, errno := syscall.Syscall(syscall.SYS_TIMERFD_CREATE, uintptr(1 /* CLOCK_MONOTONIC */), uintptr(syscall.O_NONBLOCK|syscall.O_CLOEXEC), 0)
	if errno != 0 {
		return 0, errno
	}
	spec := [4]int64{0, int64(tick), 0, int64(tick)} // it_interval, it_value as {sec, nsec}
	if _, _, errno := syscall.Syscall6(syscall.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0); errno != 0 {
		syscall.Close(int(fd))
		return 0, errno
	}
	return int(fd), nil
}

// open starts connection i: a non-blocking connect, watched for its answer.
func (w *worker) open(i int, due time.Time, ep int) (int, *conn) {
	c := &conn{i: i, start: time.Now()}
	w.lateness[i] = c.start.Sub(due)
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		w.fail("socket: " + errKind(err))
		return 0, nil
	}
	if len(w.sources) > 0 {
		// Let connect choose the port: one bound here would have to be free for every
		// destination, which runs out sooner.
		const ipBindAddressNoPort = 24
		_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
		src := w.sources[i%len(w.sources)]
		if err := syscall.Bind(fd, &src); err != nil {
			w.fail("bind: " + errKind(err))
			closeNow(fd)
			return 0, nil
		}
	}
	if err := syscall.Connect(fd, &w.target); err != nil && !errors.Is(err, syscall.EINPROGRESS) {
		if !w.http && errors.Is(err, syscall.ECONNRESET) {
			w.latency[i] = time.Since(c.start)
		} else {
			w.fail("connect: " + errKind(err))
		}
		closeNow(fd)
		return 0, nil
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | uint32(1<<31) /* EPOLLET */, Fd: int32(fd)}
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		w.fail("epoll: " + errKind(err))
		closeNow(fd)
		return 0, nil
	}
	return fd, c
}

// step moves a connection on after an event, and says whether it has ended (and was closed).
func (w *worker) step(fd int, c *conn, events uint32) bool {
	if w.http && !c.written && events&syscall.EPOLLOUT != 0 {
		c.written = true
		if _, err := syscall.Write(fd, w.request); err != nil {
			w.fail("write: " + errKind(err))
			closeNow(fd)
			return true
		}
	}
	if events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) == 0 {
		return false
	}
	for {
		k, err := syscall.Read(fd, c.buf[c.n:])
		if err == nil && k > 0 && c.n+k < len(c.buf) {
			c.n += k
			if events&syscall.EPOLLRDHUP == 0 {
				continue
			}
			// The peer's FIN had come, after all its data, and this read left room: that
			// was all of it, and another read would only say EOF.
			k = 0
		}
		switch {
		case errors.Is(err, syscall.EAGAIN):
			return false
		case !w.http && errors.Is(err, syscall.ECONNRESET):
			w.latency[c.i] = time.Since(c.start)
		case err != nil:
			w.fail("read: " + errKind(err))
		case k > 0:
			w.fail("answer longer than expected")
		case !w.http:
			w.fail("read: a clean close, not a reset")
		case !bytes.HasPrefix(c.buf[:c.n], []byte("HTTP/1.1 503 ")) || !bytes.Contains(c.buf[:c.n], []byte("\r\nRetry-After: ")):
			w.fail("not a 503 with Retry-After")
			if w.badAnswer == "" {
				w.badAnswer = fmt.Sprintf("%q", c.buf[:c.n])
			}
		default: // EOF after the answer: the server closed, as it must
			w.latency[c.i] = time.Since(c.start)
		}
		closeNow(fd)
		return true
	}
}

// closeNow closes with SO_LINGER 0: a reset, so that no TIME_WAIT holds the port.
func closeNow(fd int) {
	_ = syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
	_ = syscall.Close(fd)
}

func sockaddr(a *net.TCPAddr) syscall.SockaddrInet4 {
	s := syscall.SockaddrInet4{Port: a.Port}
	copy(s.Addr[:], a.IP.To4())
	return s
}
