// Package apiwrites counts the write requests a client sends to the API server, by verb and
// resource, for the benchmarks that measure the manager's API economy.
package apiwrites

import (
	"net/http"
	"strings"
	"sync"
)

// Counter counts the requests other than GET that pass through the transports it wraps.
type Counter struct {
	mu sync.Mutex
	by map[string]int
}

// New returns a Counter with nothing counted.
func New() *Counter { return &Counter{by: map[string]int{}} }

// Wrap counts next's write requests as "VERB resource[/subresource]"; pass it to
// rest.Config.Wrap.
func (c *Counter) Wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if req.Method != http.MethodGet {
			c.mu.Lock()
			c.by[req.Method+" "+Resource(req.URL.Path)]++
			c.mu.Unlock()
		}
		return next.RoundTrip(req)
	})
}

// Take returns what was counted since the last Take, and its total, and starts again.
func (c *Counter) Take() (map[string]int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out, total := c.by, 0
	for _, n := range out {
		total += n
	}
	c.by = map[string]int{}
	return out, total
}

// Resource is the resource, and subresource if any, of a namespaced API path.
func Resource(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i, p := range parts {
		if p == "namespaces" && i+2 < len(parts) {
			res := parts[i+2]
			if len(parts) > i+4 {
				res += "/" + parts[i+4]
			}
			return res
		}
	}
	return path
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
