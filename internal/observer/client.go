package observer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

// Client asks observers on the leader's behalf.
type Client struct {
	// HTTP carries the requests; the caller's context bounds each.
	HTTP *http.Client
	// Token returns the bearer token to present: a service-account token for Audience.
	Token func() (string, error)
}

// TokenFile returns a Token that reads a projected service-account token from path on every
// call: the kubelet rotates the file, and reading a small file costs less than a stale token.
func TokenFile(path string) func() (string, error) {
	return func() (string, error) {
		b, err := os.ReadFile(path) //nolint:gosec // G304: the path is the manager's own setting, not a request's
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
}

// Ask sends r to the observer at base (such as "http://10.0.0.2:8493") and returns its
// answer. Any failure, including the observer's refusal, is an error: the leader counts that
// observer as silent.
func (c *Client) Ask(ctx context.Context, base string, r Request) (Response, error) {
	token, err := c.Token()
	if err != nil {
		return Response{}, fmt.Errorf("reading the token: %w", err)
	}
	body, err := json.Marshal(r)
	if err != nil {
		return Response{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+Path, bytes.NewReader(body))
	if err != nil {
		return Response{}, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	res, err := c.HTTP.Do(req)
	if err != nil {
		return Response{}, err
	}
	defer func() { _ = res.Body.Close() }()
	limited := io.LimitReader(res.Body, maxBody)
	if res.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(limited, 512))
		return Response{}, fmt.Errorf("observer %s: %s: %s", base, res.Status, strings.TrimSpace(string(msg)))
	}
	var resp Response
	if err := json.NewDecoder(limited).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("observer %s: reading its answer: %w", base, err)
	}
	if len(resp.Results) != len(r.Endpoints) {
		return Response{}, fmt.Errorf("observer %s answered %d results for %d endpoints", base, len(resp.Results), len(r.Endpoints))
	}
	for i, res := range resp.Results {
		if res.Endpoint != r.Endpoints[i] {
			return Response{}, fmt.Errorf("observer %s answered for %s where %s was asked", base, res.Endpoint, r.Endpoints[i])
		}
	}
	return resp, nil
}
