package probe

import (
	"errors"
	"io"
	"sync"
)

var errProberClosed = errors.New("prober is closed")

// connCache keeps connections per endpoint for probers that reuse them. HTTP takes a
// connection for the length of a probe and puts it back; gRPC shares one per endpoint.
type connCache[C io.Closer] struct {
	mu     sync.Mutex
	conns  map[Endpoint]C
	closed bool
}

// take removes and returns the endpoint's connection.
func (c *connCache[C]) take(ep Endpoint) (C, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	conn, ok := c.conns[ep]
	delete(c.conns, ep)
	return conn, ok
}

// put keeps conn for the endpoint, or closes it when the endpoint already has one (from
// overlapping probes) or the cache is closed.
func (c *connCache[C]) put(ep Endpoint, conn C) {
	c.mu.Lock()
	_, taken := c.conns[ep]
	keep := !taken && !c.closed
	if keep {
		if c.conns == nil {
			c.conns = map[Endpoint]C{}
		}
		c.conns[ep] = conn
	}
	c.mu.Unlock()
	if !keep {
		_ = conn.Close()
	}
}

// get returns the endpoint's shared connection, creating it when there is none.
func (c *connCache[C]) get(ep Endpoint, create func() (C, error)) (C, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if conn, ok := c.conns[ep]; ok {
		return conn, nil
	}
	if c.closed {
		var zero C
		return zero, errProberClosed
	}
	conn, err := create()
	if err != nil {
		return conn, err
	}
	if c.conns == nil {
		c.conns = map[Endpoint]C{}
	}
	c.conns[ep] = conn
	return conn, nil
}

// forget closes the endpoint's connection.
func (c *connCache[C]) forget(ep Endpoint) {
	if conn, ok := c.take(ep); ok {
		_ = conn.Close()
	}
}

// close closes every connection and keeps none from now on.
func (c *connCache[C]) close() {
	c.mu.Lock()
	conns := c.conns
	c.conns, c.closed = nil, true
	c.mu.Unlock()
	for _, conn := range conns {
		_ = conn.Close()
	}
}
