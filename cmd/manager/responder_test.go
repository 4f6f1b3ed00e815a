package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

func TestParseResponderFlags(t *testing.T) {
	g := NewWithT(t)
	parse := func(args ...string) (responderOptions, error) {
		fs := flag.NewFlagSet("manager responder", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		o, err := parseResponderFlags(fs, args)
		if err != nil {
			return responderOptions{}, err
		}
		o.zap = zap.Options{} // zap's own, and full of functions
		return *o, nil
	}
	g.Expect(parse()).To(Equal(responderOptions{httpAddr: ":8480", resetAddr: ":8481", probeAddr: ":8482", metricsAddr: ":8483",
		clusterDomain: "cluster.local", shutdownDelay: 5 * time.Second, fastPath: true}))
	g.Expect(parse("--http-bind-address=127.0.0.1:80", "--reset-bind-address=:81", "--health-probe-bind-address=:82",
		"--metrics-bind-address=0", "--cluster-domain=Corp.Example.", "--shutdown-delay=0s", "--http-fast-path=false",
		"--kubeconfig=/k", "--zap-log-level=debug",
	)).To(Equal(responderOptions{httpAddr: "127.0.0.1:80", resetAddr: ":81", probeAddr: ":82", metricsAddr: "0",
		clusterDomain: "corp.example", kubeconfig: "/k"}))
	for arg, want := range map[string]string{
		"--http-bind-address=8480":      "--http-bind-address must be host:port",
		"--reset-bind-address=":         "--reset-bind-address must be host:port",
		"--health-probe-bind-address=x": "--health-probe-bind-address must be host:port",
		"--metrics-bind-address=8483":   "--metrics-bind-address must be host:port or 0",
		"--reset-bind-address=:8480":    "must differ",
		"--cluster-domain=clu ster":     "--cluster-domain must be a DNS name",
		"--cluster-domain=":             "--cluster-domain must be a DNS name",
		"--shutdown-delay=-1s":          "--shutdown-delay must not be negative",
		"--leader-elect":                "flag provided but not defined",
		"extra":                         "takes no arguments",
	} {
		_, err := parse(arg)
		g.Expect(err).To(MatchError(ContainSubstring(want)), arg)
	}
}

func TestRunResponderRefusesBadFlags(t *testing.T) {
	err := runResponder(context.Background(), []string{"--cluster-domain=-"})
	var usage usageError
	if !errors.As(err, &usage) {
		t.Fatalf("runResponder with a bad flag = %v, want a usage error (exit 2)", err)
	}
}

// TestResponderCommand runs `manager responder` against a real API server: it becomes ready,
// answers for a breaker with the breaker's state and openUntil, follows the breaker's
// changes, counts its answers, and on shutdown goes unready while it goes on answering.
func TestResponderCommand(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("KUBEBUILDER_ASSETS is not set: run the tests with `make test`")
		}
		t.Skip("KUBEBUILDER_ASSETS is not set; `make test` builds the control plane and runs this test")
	}
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(20 * time.Second)
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("..", "..", "config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = env.Stop() })
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(scheme))
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(HaveOccurred())

	// The command reads the API server through a kubeconfig, as it would outside a cluster.
	user, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	contents, err := user.KubeConfig()
	g.Expect(err).NotTo(HaveOccurred())
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	g.Expect(os.WriteFile(kubeconfig, contents, 0o600)).To(Succeed())

	ctx := context.Background()
	g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}})).To(Succeed())
	cb := &tripswitchv1alpha1.CircuitBreaker{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments"},
		Spec: tripswitchv1alpha1.CircuitBreakerSpec{Target: tripswitchv1alpha1.TargetReference{
			Service: "payments-backend", Port: ptr.To(intstr.FromString("http"))}},
	}
	g.Expect(k8s.Create(ctx, cb)).To(Succeed())
	openUntil := metav1.NewTime(time.Now().Add(30 * time.Second).Truncate(time.Second))
	cb.Status = tripswitchv1alpha1.CircuitBreakerStatus{State: tripswitchv1alpha1.StateOpen, GateState: tripswitchv1alpha1.StateOpen,
		OpenUntil: &openUntil}
	g.Expect(k8s.Status().Update(ctx, cb)).To(Succeed())

	httpAddr, resetAddr, probeAddr, metricsAddr := freePort(t), freePort(t), freePort(t), freePort(t)
	args := []string{"--kubeconfig=" + kubeconfig, "--http-bind-address=" + httpAddr, "--reset-bind-address=" + resetAddr,
		"--health-probe-bind-address=" + probeAddr, "--metrics-bind-address=" + metricsAddr, "--shutdown-delay=2s"}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- runResponder(runCtx, args) }()

	readyz := func() int { return get(t, "http://"+probeAddr+"/readyz", "").StatusCode }
	g.Eventually(readyz).Should(Equal(http.StatusOK))

	// A port that is taken fails a second responder at once, instead of leaving it unready.
	err = runResponder(ctx, []string{"--kubeconfig=" + kubeconfig, "--http-bind-address=" + httpAddr, "--reset-bind-address=" + freePort(t),
		"--health-probe-bind-address=" + freePort(t), "--metrics-bind-address=0"})
	g.Expect(err).To(MatchError(ContainSubstring("binding the HTTP listener")))

	answer := func(host string) *http.Response { return get(t, "http://"+httpAddr+"/", host) }
	resp := answer("payments.shop.svc")
	g.Expect(resp.StatusCode).To(Equal(http.StatusServiceUnavailable))
	g.Expect(resp.Header.Get("X-Tripswitch-Breaker")).To(Equal("shop/payments"))
	retryAfter, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(retryAfter).To(BeNumerically("~", time.Until(openUntil.Time).Seconds(), 2))

	cb.Status.State, cb.Status.GateState, cb.Status.OpenUntil = tripswitchv1alpha1.StateHalfOpen, tripswitchv1alpha1.StateHalfOpen, nil
	g.Expect(k8s.Status().Update(ctx, cb)).To(Succeed())
	g.Eventually(func() string { return answer("payments.shop").Header.Get("Retry-After") }).Should(Equal("1"))

	g.Expect(k8s.Delete(ctx, cb)).To(Succeed())
	g.Eventually(func() []string { return answer("payments.shop").Header.Values("X-Tripswitch-Breaker") }).Should(BeEmpty())

	metrics := get(t, "http://"+metricsAddr+"/metrics", "")
	body, _ := io.ReadAll(metrics.Body)
	g.Expect(string(body)).To(MatchRegexp(`tripswitch_responder_answers_total\{breaker="known",kind="http"\} [1-9]`))

	// Stopping: unready at once, answering still, and gone after the delay.
	stop()
	g.Eventually(readyz, 2*time.Second).Should(Equal(http.StatusInternalServerError))
	g.Expect(answer("payments.shop").StatusCode).To(Equal(http.StatusServiceUnavailable))
	g.Eventually(done, 10*time.Second).Should(Receive(BeNil()))
}

// freePort finds a loopback port that nothing listens on now.
func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// get sends a GET with a Host header, on a connection of its own, and reads the answer; a
// failure to connect is a status of 0, so that Eventually can wait for a server to come up.
func get(t *testing.T, url, host string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return &http.Response{Header: http.Header{}, Body: io.NopCloser(strings.NewReader(""))}
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}
