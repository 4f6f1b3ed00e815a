// Package promtest runs a real Prometheus server for tests, on loopback: it scrapes the
// targets a test names every second and answers the HTTP API; and it serves an application's
// own request counter, http_requests_total, whose error share a test drives.
package promtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// T is what the helpers need of a test: *testing.T or Ginkgo's GinkgoT().
type T interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
	TempDir() string
}

// Server is a running Prometheus.
type Server struct {
	// URL is where its HTTP API answers, such as http://127.0.0.1:41234.
	URL string

	binary, config, data, address string
	mu                            sync.Mutex
	cmd                           *exec.Cmd
	log                           *os.File
}

// Start runs the Prometheus binary (make prometheus installs it) scraping targets
// (host:port, plain HTTP, /metrics) every second, and waits until it is ready. It is stopped
// when the test ends.
func Start(t T, binary string, targets ...string) *Server {
	t.Helper()
	dir := t.TempDir()
	s := &Server{binary: binary, config: filepath.Join(dir, "prometheus.yml"), data: filepath.Join(dir, "data"),
		address: freeAddress(t)}
	s.URL = "http://" + s.address
	quoted := make([]string, len(targets))
	for i, target := range targets {
		quoted[i] = fmt.Sprintf("%q", target)
	}
	config := fmt.Sprintf("global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}\n"+
		"scrape_configs:\n- job_name: app\n  static_configs: [{targets: [%s]}]\n", strings.Join(quoted, ", "))
	if err := os.WriteFile(s.config, []byte(config), 0o600); err != nil {
		t.Fatalf("writing the Prometheus config: %v", err)
	}
	var err error
	if s.log, err = os.Create(filepath.Join(dir, "prometheus.log")); err != nil {
		t.Fatalf("creating the Prometheus log: %v", err)
	}
	t.Cleanup(func() { s.Stop(); _ = s.log.Close() })
	if err := s.Restart(); err != nil {
		t.Fatalf("%v", err)
	}
	return s
}

// Restart starts Prometheus again after Stop, on the same address and storage, and waits
// until it is ready.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	cmd := exec.Command(s.binary, "--config.file="+s.config, "--storage.tsdb.path="+s.data,
		"--web.listen-address="+s.address, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s (make prometheus installs it): %w", s.binary, err)
	}
	s.cmd = cmd
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/-/ready", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("prometheus did not become ready within 30 s; its log is %s", s.log.Name())
}

// Stop kills Prometheus, as an outage does; Restart brings it back.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// freeAddress is a loopback address with a port nobody listens on now.
func freeAddress(t T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// App is an application's own metrics: http_requests_total{service, code}, fed by a steady
// stream of requests whose share of 500s a test sets.
type App struct {
	// Address is where /metrics answers, for Start's targets.
	Address string
	// errorsPerMille is the share of requests that fail, in thousandths.
	errorsPerMille atomic.Int64
}

// StartApp serves the metrics of an application called service that handles rps requests a
// second, all successful until SetErrorShare says otherwise. It stops when the test ends.
func StartApp(t T, service string, rps int) *App {
	t.Helper()
	return StartNamespacedApp(t, "", service, rps)
}

// StartNamespacedApp is StartApp with every series labelled namespace, as Prometheus'
// Kubernetes service discovery labels the series of a pod; empty leaves the label out.
func StartNamespacedApp(t T, namespace, service string, rps int) *App {
	t.Helper()
	registry := prometheus.NewRegistry()
	var constant prometheus.Labels
	if namespace != "" {
		constant = prometheus.Labels{"namespace": namespace}
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "http_requests_total",
		Help: "Requests handled, by status code.", ConstLabels: constant}, []string{"service", "code"})
	registry.MustRegister(requests)
	ok, failed := requests.WithLabelValues(service, "200"), requests.WithLabelValues(service, "500")
	ok.Add(0)
	failed.Add(0)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(registry, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	app := &App{Address: l.Addr().String()}

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		const tick = 100 * time.Millisecond
		perTick := max(1, rps/10)
		ticker := time.NewTicker(tick)
		defer ticker.Stop()
		var debt int64 // thousandths of a failed request carried to the next tick
		for {
			select {
			case <-stop:
				return
			case <-ticker.C:
			}
			debt += int64(perTick) * app.errorsPerMille.Load()
			bad := debt / 1000
			debt -= bad * 1000
			failed.Add(float64(bad))
			ok.Add(float64(int64(perTick) - bad))
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		_ = srv.Close()
	})
	return app
}

// SetErrorShare sets the share of requests, from 0 to 1, that fail with 500 from now on.
func (a *App) SetErrorShare(share float64) {
	a.errorsPerMille.Store(int64(min(1, max(0, share)) * 1000))
}
