// Command probe measures the probe scheduler at scale: N breakers × E endpoints on loopback
// HTTP at one interval, against a bare loop that sends the same requests through one shared
// http.Client. The HTTP servers run in a child process, so that their CPU and memory are not
// counted. It reports achieved against scheduled probes per second, CPU seconds per 1,000
// probes, heap per breaker and the p99 lateness of probe starts.
//
//	go run ./test/bench/probe -breakers 1000 -endpoints 3 -interval 1s -duration 30s
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/probe"
	"github.com/tripswitch/tripswitch/internal/runner"
)

func main() {
	serve := flag.Int("serve", 0, "internal: serve this many endpoints and print their addresses")
	breakers := flag.Int("breakers", 1000, "breakers to register")
	endpointsPer := flag.Int("endpoints", 3, "endpoints per breaker")
	interval := flag.Duration("interval", time.Second, "probe interval")
	duration := flag.Duration("duration", 30*time.Second, "measured time for each side")
	concurrency := flag.Int("max-concurrent-probes", 256, "the scheduler's concurrency bound")
	flag.StringVar(&memProfile, "memprofile", "", "write a heap profile of the scheduler side here")
	flag.Parse()
	// The scheduler logs through controller-runtime's logger (a probe cancelled when the bench
	// stops it is one of the manager's own errors); the bench prints only its figures.
	ctrllog.SetLogger(logr.Discard())
	if *serve > 0 {
		serveEndpoints(*serve)
		return
	}
	if err := run(*breakers, *endpointsPer, *interval, *duration, *concurrency); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// serveEndpoints listens on n loopback ports, prints them, and serves 200s until stdin closes.
func serveEndpoints(n int) {
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), ReadHeaderTimeout: 10 * time.Second}
	out := bufio.NewWriter(os.Stdout)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go func() { _ = srv.Serve(l) }()
		fmt.Fprintln(out, l.Addr().String())
	}
	_ = out.Flush()
	_, _ = io.Copy(io.Discard, os.Stdin)
}

func startServers(n int) ([]netip.AddrPort, func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(exe, "-serve", fmt.Sprint(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	stop := func() { _ = stdin.Close(); _ = cmd.Wait() }
	var eps []netip.AddrPort
	sc := bufio.NewScanner(stdout)
	for len(eps) < n && sc.Scan() {
		ep, err := netip.ParseAddrPort(strings.TrimSpace(sc.Text()))
		if err != nil {
			stop()
			return nil, nil, err
		}
		eps = append(eps, ep)
	}
	if len(eps) < n {
		stop()
		return nil, nil, fmt.Errorf("servers gave %d of %d addresses", len(eps), n)
	}
	return eps, stop, nil
}

var memProfile string

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func heap() (heapAlloc, stack uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.StackInuse
}

func run(breakers, endpointsPer int, interval, duration time.Duration, concurrency int) error {
	total := breakers * endpointsPer
	eps, stop, err := startServers(total)
	if err != nil {
		return err
	}
	defer stop()
	scheduled := float64(total) / interval.Seconds()
	fmt.Printf("%d breakers × %d endpoints every %s: %.0f probes/s scheduled, %s each side, GOMAXPROCS=%d\n",
		breakers, endpointsPer, interval, scheduled, duration, runtime.GOMAXPROCS(0))

	// The scheduler.
	heap0, stack0 := heap()
	codes, _ := probe.ParseCodes("200-399")
	starts := &startRecord{}
	sched := runner.New(runner.Options{NewProber: probe.NewFactory(nil, clock.RealClock{}).New, MaxConcurrentProbes: concurrency,
		Observers: func(types.NamespacedName) runner.ProbeObserver { return starts }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = sched.Start(ctx) }()
	for b := range breakers {
		err := sched.Upsert(types.NamespacedName{Namespace: "bench", Name: fmt.Sprintf("b%d", b)}, runner.Registration{
			Spec:      probe.Spec{Timeout: interval, HTTP: &probe.HTTPSpec{Path: "/healthz", Success: codes}},
			Interval:  interval,
			Endpoints: eps[b*endpointsPer : (b+1)*endpointsPer],
			Config:    breaker.Config{ConsecutiveFailures: 5, OpenDuration: time.Minute, TrialProbes: 1, SuccessThreshold: 1},
			Seed:      uint64(b),
		})
		if err != nil {
			return err
		}
	}
	// Warm up for two intervals: every connection is open, phases are in their rhythm.
	time.Sleep(2 * interval)
	warm := sched.Stats()
	starts.reset()
	cpu0, t0 := cpuTime(), time.Now()
	time.Sleep(duration)
	cpu1, elapsed, end := cpuTime(), time.Since(t0), sched.Stats()
	heap1, stack1 := heap()
	if memProfile != "" {
		f, err := os.Create(memProfile)
		if err != nil {
			return err
		}
		_ = pprof.WriteHeapProfile(f)
		_ = f.Close()
	}
	cancel()
	<-done

	probes := float64(end.Completed - warm.Completed)
	ourCPU := (cpu1 - cpu0).Seconds() / probes * 1000
	fmt.Printf("scheduler:  %.0f probes/s achieved (%.4f of scheduled), %.3f CPU s per 1,000 probes, p99 lateness %s, p50 %s\n",
		probes/elapsed.Seconds(), probes/elapsed.Seconds()/scheduled, ourCPU, starts.quantile(0.99), starts.quantile(0.5))
	fmt.Printf("            heap %.1f KiB per breaker, goroutine stacks %.1f KiB per breaker (%d keep-alive connections)\n",
		float64(heap1-heap0)/float64(breakers)/1024, float64(int64(stack1)-int64(stack0))/float64(breakers)/1024, total)

	// The reference: the same requests at the same pace, from a bare loop with one shared
	// http.Client: a ticker fires every millisecond and sends the requests that are due.
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 0, MaxIdleConnsPerHost: 2, IdleConnTimeout: 90 * time.Second}}
	urls := make([]string, total)
	for i, ep := range eps {
		urls[i] = "http://" + ep.String() + "/healthz"
	}
	var sent atomic.Uint64
	var wg sync.WaitGroup
	send := func(url string) {
		defer wg.Done()
		resp, err := client.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			sent.Add(1)
		}
	}
	loop := func(d time.Duration) {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		start, next := time.Now(), 0
		for now := range tick.C {
			if now.Sub(start) >= d {
				return
			}
			due := int(float64(now.Sub(start)) / float64(interval) * float64(total))
			for ; next < due; next++ {
				wg.Add(1)
				go send(urls[next%total])
			}
		}
	}
	loop(2 * interval) // warm-up: open the connections
	wg.Wait()
	sent.Store(0)
	cpu0, t0 = cpuTime(), time.Now()
	loop(duration)
	wg.Wait()
	cpu1, elapsed = cpuTime(), time.Since(t0)
	refCPU := (cpu1 - cpu0).Seconds() / float64(sent.Load()) * 1000
	fmt.Printf("bare loop:  %.0f requests/s, %.3f CPU s per 1,000 requests\n", float64(sent.Load())/elapsed.Seconds(), refCPU)
	fmt.Printf("cost ratio: %.2f× the bare loop per probe\n", ourCPU/refCPU)
	return nil
}

// startRecord keeps how late every probe started, exactly, so that quantiles need no buckets.
type startRecord struct {
	mu   sync.Mutex
	late []time.Duration
}

func (r *startRecord) ObserveStart(d time.Duration) {
	r.mu.Lock()
	r.late = append(r.late, d)
	r.mu.Unlock()
}

func (r *startRecord) ObserveProbe(int, time.Duration) {}

func (r *startRecord) reset() {
	r.mu.Lock()
	r.late = r.late[:0]
	r.mu.Unlock()
}

// quantile is the q-quantile of the recorded latenesses (nearest rank), 0 with none.
func (r *startRecord) quantile(q float64) time.Duration {
	r.mu.Lock()
	late := slices.Clone(r.late)
	r.mu.Unlock()
	if len(late) == 0 {
		return 0
	}
	slices.Sort(late)
	return late[min(len(late)-1, int(q*float64(len(late))))]
}
