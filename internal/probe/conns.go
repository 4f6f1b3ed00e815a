package probe

import (
	"errors"
	"io"
	"sync"
)

var errProberClosed = errors.New("prober is closed")

// connCache keeps connections per endpoint for probers that reuse them. HTTP takes a
// connection for the length of a probe and puts it back (take, put); gRPC shares one per
// endpoint among its probes (acquire, release).
//
// An endpoint can be forgotten while a probe uses its connection: the scheduler removes an
// endpoint whenever the target's slices change, without waiting for its probes. forget then
// leaves the probe alone, and its connection is closed when the probe hands it back, so that
// the probe ends with what the endpoint answered (not an error the manager made by closing
// the connection under it) and no connection stays behind for an endpoint that is gone.
type connCache[C io.Closer] struct {
	// shared: connections are shared by the probes in flight (gRPC); otherwise a probe
	// takes the idle connection for itself (HTTP).
	shared bool

	mu     sync.Mutex
	eps    map[Endpoint]*cached[C]
	closed bool
}

// cached is one endpoint's connection and the probes using it.
type cached[C io.Closer] struct {
	conn C
	has  bool // conn is set: idle (HTTP) or shared (gRPC)
	// users counts the probes between take and put, or between acquire and release.
	users int
	// forgotten: the endpoint was forgotten while users were in flight. The entry has left
	// the map; what its users hand back is closed.
	forgotten bool
}

// lease is a probe's hold on an endpoint's entry, from take or acquire to put or release.
type lease[C io.Closer] struct {
	entry *cached[C]
	conn  C
	// reused says that conn was kept from an earlier probe (take) or is the shared one (acquire).
	reused bool
}

// entry returns the endpoint's entry, creating it. Callers hold c.mu.
func (c *connCache[C]) entry(ep Endpoint) *cached[C] {
	e, ok := c.eps[ep]
	if !ok {
		if c.eps == nil {
			c.eps = map[Endpoint]*cached[C]{}
		}
		e = &cached[C]{}
		c.eps[ep] = e
	}
	return e
}

// take hands the endpoint's idle connection, if any, to one probe, which must end with put.
func (c *connCache[C]) take(ep Endpoint) lease[C] {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entry(ep)
	e.users++
	l := lease[C]{entry: e, conn: e.conn, reused: e.has}
	var zero C
	e.conn, e.has = zero, false
	return l
}

// put ends a probe's lease: conn (when ok) is kept as the endpoint's idle connection if keep
// says it can be reused, the endpoint is still wanted and has none yet (overlapping probes),
// and is closed otherwise.
func (c *connCache[C]) put(ep Endpoint, l lease[C], conn C, ok, keep bool) {
	c.mu.Lock()
	e := l.entry
	e.users--
	keep = ok && keep && !e.forgotten && !e.has && !c.closed
	if keep {
		e.conn, e.has = conn, true
	}
	c.drop(ep, e)
	c.mu.Unlock()
	if ok && !keep {
		_ = conn.Close()
	}
}

// acquire returns the endpoint's shared connection, creating it when there is none. The
// caller must release it.
func (c *connCache[C]) acquire(ep Endpoint, create func() (C, error)) (lease[C], error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return lease[C]{}, errProberClosed
	}
	e := c.entry(ep)
	if !e.has {
		conn, err := create()
		if err != nil {
			c.drop(ep, e)
			return lease[C]{}, err
		}
		e.conn, e.has = conn, true
	}
	e.users++
	return lease[C]{entry: e, conn: e.conn, reused: true}, nil
}

// release ends a lease from acquire; the last user of a forgotten endpoint closes its
// connection.
func (c *connCache[C]) release(ep Endpoint, l lease[C]) {
	c.mu.Lock()
	e := l.entry
	e.users--
	last := e.forgotten && e.users == 0 && e.has
	if last {
		var zero C
		e.has, e.conn = false, zero
	}
	c.drop(ep, e)
	c.mu.Unlock()
	if last {
		_ = l.conn.Close()
	}
}

// drop removes an entry that holds nothing and nobody uses, so that the map does not grow
// with every endpoint ever seen. Callers hold c.mu.
func (c *connCache[C]) drop(ep Endpoint, e *cached[C]) {
	if e.users == 0 && !e.has && c.eps[ep] == e {
		delete(c.eps, ep)
	}
}

// forget closes the endpoint's connection, or, while probes use it (a shared connection, or
// the ones HTTP probes took), has them close it when they are done. A new probe of the same
// endpoint starts afresh.
func (c *connCache[C]) forget(ep Endpoint) {
	c.mu.Lock()
	e, ok := c.eps[ep]
	if !ok {
		c.mu.Unlock()
		return
	}
	delete(c.eps, ep)
	var conn C
	closeNow := e.has && (!c.shared || e.users == 0) // an idle connection is nobody's
	if closeNow {
		conn = e.conn
		var zero C
		e.conn, e.has = zero, false
	}
	e.forgotten = e.users > 0
	c.mu.Unlock()
	if closeNow {
		_ = conn.Close()
	}
}

// close closes every connection and keeps none from now on. The scheduler closes a prober
// only once its probes have returned, so no connection is in use here.
func (c *connCache[C]) close() {
	c.mu.Lock()
	eps := c.eps
	c.eps, c.closed = nil, true
	c.mu.Unlock()
	for _, e := range eps {
		if e.has {
			_ = e.conn.Close()
		}
	}
}
