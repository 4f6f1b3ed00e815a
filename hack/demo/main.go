// Command demo shows tripswitch at work without a cluster: it starts a local control plane
// from the source-built etcd and kube-apiserver, installs the CRDs, runs the manager, serves a
// backend on loopback, applies config/samples/, then kills and restores the backend and prints
// the payments breaker's transitions as they happen. `make demo` runs it.
//
// With DEMO_KEEP=1 it leaves everything running, prints the KUBECONFIG to use with kubectl,
// and waits for Ctrl-C; the backend's health can then be switched with
// curl -X POST http://<backend>/fail and /heal.
package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// options are the demo's settings; the test shortens the waits.
type options struct {
	manager  string // the manager binary
	dir      string // where the kubeconfig and logs go
	keep     bool
	timeout  time.Duration // for each step of the story
	openTime time.Duration // the payments breaker's open duration, shortened for the demo
	out      io.Writer
}

func main() {
	o := options{out: os.Stdout, keep: os.Getenv("DEMO_KEEP") == "1"}
	flag.StringVar(&o.manager, "manager", "bin/manager", "the manager binary (make build)")
	flag.StringVar(&o.dir, "dir", "bin/demo", "where the kubeconfig and the manager's log go")
	flag.DurationVar(&o.timeout, "step-timeout", 90*time.Second, "how long each step of the story may take")
	flag.DurationVar(&o.openTime, "open-duration", 5*time.Second, "the payments breaker's open duration in the demo")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// backend is the demo's payments backend: an HTTP server on loopback that can be killed
// (its listener closed, so connections are refused) and restored on the same address.
type backend struct {
	addr    string
	failing atomic.Bool
	srv     *http.Server
}

func (b *backend) start() error {
	l, err := net.Listen("tcp", b.addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if b.failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("POST /fail", func(http.ResponseWriter, *http.Request) { b.failing.Store(true) })
	mux.HandleFunc("POST /heal", func(http.ResponseWriter, *http.Request) { b.failing.Store(false) })
	b.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = b.srv.Serve(l) }()
	return nil
}

func (b *backend) kill() { _ = b.srv.Close() }

func run(ctx context.Context, o options) error {
	ctrl.SetLogger(logr.Discard())
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(o.out, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return err
	}

	say("Starting etcd and kube-apiserver on loopback (KUBEBUILDER_ASSETS=%s)", os.Getenv("KUBEBUILDER_ASSETS"))
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting the control plane (run `make demo`, which builds it): %w", err)
	}
	defer func() { _ = env.Stop() }()
	user, err := env.AddUser(envtest.User{Name: "demo", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kubeconfigData, err := user.KubeConfig()
	if err != nil {
		return err
	}
	kubeconfig, _ := filepath.Abs(filepath.Join(o.dir, "kubeconfig"))
	if err := os.WriteFile(kubeconfig, kubeconfigData, 0o600); err != nil {
		return err
	}
	say("Control plane up; CRDs installed; kubeconfig at %s", kubeconfig)

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(scheme))
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}

	// The manager, as a process of its own, dialling 192.0.2.N at 127.0.0.N.
	logPath := filepath.Join(o.dir, "manager.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	mgr := exec.CommandContext(ctx, o.manager, "--probe-address-map=192.0.2.0/24=127.0.0.0/24",
		"--metrics-bind-address=0", "--health-probe-bind-address=0", "--status-sync-period=2s")
	mgr.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	mgr.Stdout, mgr.Stderr = logFile, logFile
	if err := mgr.Start(); err != nil {
		return fmt.Errorf("starting the manager %s (run `make build`): %w", o.manager, err)
	}
	defer func() {
		_ = mgr.Process.Signal(syscall.SIGTERM)
		_ = mgr.Wait()
	}()
	say("Manager running (pid %d); its log is %s", mgr.Process.Pid, logPath)

	// The backend behind the payments breaker, and its Service and EndpointSlice: envtest runs
	// no EndpointSlice controller, and slices can't hold loopback addresses, so the slice says
	// 192.0.2.10 and the manager's address map dials 127.0.0.10.
	pay := &backend{addr: "127.0.0.10:18080"}
	if err := pay.start(); err != nil {
		return fmt.Errorf("starting the demo backend: %w", err)
	}
	defer pay.kill()
	ns := "default"
	if err := createTarget(ctx, c, ns, "payments-backend", "192.0.2.10", 18080); err != nil {
		return err
	}
	if err := applySamples(ctx, c, ns, o.openTime); err != nil {
		return err
	}
	say("Backend payments-backend serves on 127.0.0.10:18080 (192.0.2.10 in its EndpointSlice); applied config/samples/")
	say("The payments breaker probes GET /healthz every 1s, opens after 5 failures, and stays open %s (shortened for the demo)", o.openTime)

	w, err := c.Watch(ctx, &tripswitchv1alpha1.CircuitBreakerList{}, client.InNamespace(ns))
	if err != nil {
		return err
	}
	defer w.Stop()
	fmt.Fprintf(o.out, "\n%-9s %-9s %-9s %-18s %-9s %-6s %-10s %s\n", "TIME", "NAME", "STATE", "TARGET", "FRONT", "TRIPS", "PUBLISHED", "REASON")
	var last string
	wait := func(what string, done func(*tripswitchv1alpha1.CircuitBreaker) bool) error {
		deadline := time.After(o.timeout)
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-deadline:
				return fmt.Errorf("timed out after %s waiting for %s", o.timeout, what)
			case ev, ok := <-w.ResultChan():
				if !ok {
					return errors.New("the watch on CircuitBreakers ended")
				}
				cb, isCB := ev.Object.(*tripswitchv1alpha1.CircuitBreaker)
				if !isCB || cb.Name != "payments" {
					continue
				}
				st := cb.Status
				published := int32(0)
				if st.Endpoints != nil {
					published = st.Endpoints.Published
				}
				row := fmt.Sprintf("%-9s %-9s %-18s %-9s %-6d %-10d %s", cb.Name, st.State, cmp.Or(st.Target, cb.Spec.Target.Service), st.FrontService,
					st.Trips, published, st.Reason)
				if row != last && st.State != "" {
					fmt.Fprintf(o.out, "%-9s %s\n", fmt.Sprintf("%.1fs", time.Since(start).Seconds()), row)
					last = row
				}
				if done(cb) {
					return nil
				}
			}
		}
	}
	isState := func(s tripswitchv1alpha1.State, published int32) func(*tripswitchv1alpha1.CircuitBreaker) bool {
		return func(cb *tripswitchv1alpha1.CircuitBreaker) bool {
			return cb.Status.State == s && cb.Status.Endpoints != nil && cb.Status.Endpoints.Published == published
		}
	}
	if err := wait("payments to be Closed with its endpoint published", isState(tripswitchv1alpha1.StateClosed, 1)); err != nil {
		return err
	}
	fmt.Fprintln(o.out)
	say("Killing the backend: connections to it are refused from now on")
	pay.kill()
	killed := time.Now()
	if err := wait("payments to open", isState(tripswitchv1alpha1.StateOpen, 0)); err != nil {
		return err
	}
	say("Open %.1fs after the backend died: the front Service 'payments' publishes no ready endpoint, so kube-proxy rejects at once",
		time.Since(killed).Seconds())
	say("Restoring the backend")
	if err := pay.start(); err != nil {
		return err
	}
	restored := time.Now()
	if err := wait("payments to close again", isState(tripswitchv1alpha1.StateClosed, 1)); err != nil {
		return err
	}
	say("Closed %.1fs after the backend came back: a HalfOpen trial succeeded and the endpoint is published again",
		time.Since(restored).Seconds())

	if o.keep {
		fmt.Fprintf(o.out, "\nEverything keeps running. In another terminal:\n  export KUBECONFIG=%s\n  kubectl get cb -o wide\n"+
			"  curl -X POST http://127.0.0.10:18080/fail   # or /heal\nPress Ctrl-C to stop.\n", kubeconfig)
		<-ctx.Done()
	}
	say("Done; stopping the manager and the control plane")
	return nil
}

func createTarget(ctx context.Context, c client.Client, ns, name, address string, port int32) error {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(port)}}}}
	if err := c.Create(ctx, svc); err != nil {
		return err
	}
	return c.Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-demo",
			Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{address},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)}}},
	})
}

// applySamples creates every breaker in config/samples/, giving payments a short open
// duration and no backoff jitter so the story fits in a minute.
func applySamples(ctx context.Context, c client.Client, ns string, openDuration time.Duration) error {
	files, err := filepath.Glob(filepath.Join("config", "samples", "*.yaml"))
	if err != nil {
		return err
	}
	for _, file := range files {
		if filepath.Base(file) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			obj := &unstructured.Unstructured{}
			if err := decoder.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if len(obj.Object) == 0 {
				continue
			}
			obj.SetNamespace(ns)
			if obj.GetName() == "payments" {
				if err := unstructured.SetNestedField(obj.Object, openDuration.String(), "spec", "recovery", "openDuration"); err != nil {
					return err
				}
				unstructured.RemoveNestedField(obj.Object, "spec", "recovery", "backoff")
			}
			if err := c.Create(ctx, obj); err != nil {
				return fmt.Errorf("%s: %w", strings.TrimSpace(file), err)
			}
		}
	}
	return nil
}
