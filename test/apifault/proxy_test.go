package apifault

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

func TestProxyFaults(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path)
	}))
	defer upstream.Close()
	p, err := Start(&rest.Config{Host: upstream.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	base := p.Config().Host
	do := func(ctx context.Context, method, path string) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}

	if code, body, err := do(context.Background(), http.MethodPut, "/apis/discovery.k8s.io/v1/endpointslices/x"); err != nil || code != 200 || !strings.HasPrefix(body, "PUT") {
		t.Fatalf("healthy proxy: %d %q %v", code, body, err)
	}

	p.BreakWrites("endpointslices")
	if code, _, _ := do(context.Background(), http.MethodPut, "/apis/discovery.k8s.io/v1/endpointslices/x"); code != 500 {
		t.Errorf("a slice write while broken: %d, want 500", code)
	}
	if code, _, _ := do(context.Background(), http.MethodGet, "/apis/discovery.k8s.io/v1/endpointslices"); code != 200 {
		t.Errorf("a slice read while writes are broken: %d, want 200", code)
	}
	if code, _, _ := do(context.Background(), http.MethodPut, "/apis/coordination.k8s.io/v1/leases/x"); code != 200 {
		t.Errorf("a lease write while slice writes are broken: %d, want 200", code)
	}
	if p.Refused() != 1 {
		t.Errorf("Refused() = %d, want 1", p.Refused())
	}
	p.Heal()

	p.Blackhole()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, _, err := do(ctx, http.MethodGet, "/api"); err == nil {
		t.Error("a request through a blackholed proxy was answered")
	}
	done := make(chan int, 1)
	go func() {
		code, _, _ := do(context.Background(), http.MethodGet, "/api")
		done <- code
	}()
	select {
	case code := <-done:
		t.Fatalf("a request through a blackholed proxy was answered %d", code)
	case <-time.After(100 * time.Millisecond):
	}
	p.Heal()
	select {
	case code := <-done:
		if code != 200 {
			t.Errorf("the stalled request ended %d after Heal, want 200", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stalled request did not go on after Heal")
	}
}
