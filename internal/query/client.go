package query

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
)

// MaxResponseBytes bounds what one query may return: a trip rule needs one number, and a
// query that matches a million series must not fill the manager's memory.
const MaxResponseBytes = 1 << 20

// Client sends instant queries to any server with the Prometheus HTTP API (Prometheus,
// Thanos, Mimir, VictoriaMetrics), through client_golang's API client.
type Client struct {
	api     v1.API
	timeout time.Duration
}

// NewClient returns a client of the server at url. timeout bounds each query, on the
// server (the query's timeout parameter) and on the wire.
func NewClient(url string, timeout time.Duration, transport http.RoundTripper) (*Client, error) {
	if transport == nil {
		transport = http.DefaultTransport
	}
	c, err := api.NewClient(api.Config{Address: url, Client: &http.Client{
		Transport: limitedTransport{next: transport}, Timeout: timeout + time.Second}})
	if err != nil {
		return nil, fmt.Errorf("prometheus client for %q: %w", url, err)
	}
	return &Client{api: v1.NewAPI(c), timeout: timeout}, nil
}

// Query evaluates q at at and reads the result as one number or no data.
func (c *Client) Query(ctx context.Context, q string, at time.Time) (Sample, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	v, _, _, err := c.api.Query(ctx, q, at, v1.WithTimeout(c.timeout))
	if err != nil {
		return Sample{}, err
	}
	return Read(v)
}

// ErrResponseTooLarge is a response over MaxResponseBytes.
var ErrResponseTooLarge = errors.New("the query's response exceeds 1 MiB; aggregate it to one series")

// limitedTransport cuts response bodies at MaxResponseBytes.
type limitedTransport struct{ next http.RoundTripper }

func (t limitedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{ReadCloser: resp.Body, left: MaxResponseBytes}
	return resp, nil
}

type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, ErrResponseTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}
