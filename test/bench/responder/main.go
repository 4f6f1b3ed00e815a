//go:build linux

// Command responder measures the open responder under a storm of new connections: a client
// opens -rate new connections a second over loopback, one request each, first to the HTTP
// listener and then to the reset listener, while the responder's listeners run in a child
// process (all cores), so that client and server do not share a Go runtime. It reports
// achieved against scheduled connections per second, the time from dial start to the
// complete answer (for HTTP the whole 503 and the server's close; for a reset the
// ECONNRESET), how late the client started its dials, errors by kind, and CPU seconds per
// 1,000 answers: the child's, the client's, and what other processes took of the machine.
//
//	go run ./test/bench/responder -rate 20000 -duration 10s
//	go run ./test/bench/responder -rate 10000 -listeners http -net-http-only   # without the fast path
//
// On loopback both ends' kernel work lands on the same cores: on 2 cores, opening, answering
// and closing one connection costs the kernel alone 65–100 µs in all (measured with bare
// blocking system calls), which at 20,000 a second is most of the machine. Read the
// latencies with the machine's business in view.
//
// Why the client closes with SO_LINGER 0: at 20,000 connections a second, TIME_WAIT would
// hold the ~28,000 ephemeral ports of one source address for 60 s each.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/responder"
)

// config is the command line.
type config struct {
	rate                   int
	duration, warmup, tick time.Duration
	threads, sources       int
	listeners              []string
	breakers               int
	cpuProfile             string
	netHTTPOnly            bool
}

func main() {
	var c config
	var listeners string
	serve := flag.Bool("serve", false, "internal: run the responder's listeners, print their addresses, answer `cpu` on stdin")
	flag.IntVar(&c.rate, "rate", 20000, "new connections per second")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "measured time for each listener")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured time at the same rate before each measurement")
	flag.StringVar(&listeners, "listeners", "http,reset", "which listeners to measure, in order")
	flag.IntVar(&c.sources, "sources", 1, "loopback source addresses to connect from (127.0.0.1 to 127.0.0.N); 1 lets the kernel choose")
	flag.DurationVar(&c.tick, "tick", 0, "how often each client thread starts the connections that are due; 0: once per connection, "+
		"but not more often than every 50µs")
	flag.IntVar(&c.threads, "client-threads", runtime.NumCPU(), "client threads, each with its share of the schedule")
	flag.IntVar(&c.breakers, "breakers", 1000, "breakers in the responder's index")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "write the responder's (the child's) CPU profile here")
	flag.BoolVar(&c.netHTTPOnly, "net-http-only", false, "turn the responder's HTTP fast path off, to measure net/http alone")
	flag.Parse()
	c.listeners = strings.Split(listeners, ",")
	ctrllog.SetLogger(logr.Discard())
	run := run
	if *serve {
		run = serveChild
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// benchHost is the Host of every request: a breaker in the middle of the index.
func benchHost(breakers int) string {
	i := breakers / 2
	return fmt.Sprintf("payments-%d.shop-%d.svc.cluster.local:8080", i, i)
}

// serveChild runs the responder's listeners with an index of Open breakers until stdin
// closes. It prints the two addresses, then answers every `cpu` line with its CPU time so far
// in nanoseconds.
func serveChild(c config) error {
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	index := responder.NewIndex()
	for i := range c.breakers {
		index.Set(responder.Entry{Breaker: responder.Breaker{Namespace: fmt.Sprintf("shop-%d", i), Name: fmt.Sprintf("payments-%d", i),
			State: tripswitchv1alpha1.StateOpen, OpenUntil: time.Now().Add(time.Hour)}, Front: fmt.Sprintf("payments-%d", i)})
	}
	r, err := responder.New(index, responder.Options{HTTPAddr: "127.0.0.1:0", ResetAddr: "127.0.0.1:0",
		Registerer: prometheus.NewRegistry(), NetHTTPOnly: c.netHTTPOnly})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Start(ctx) }()
	fmt.Printf("%s %s\n", r.HTTPAddr(), r.ResetAddr())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "cpu" {
			fmt.Println(int64(cpuTime()))
		}
	}
	cancel()
	return <-done
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// child is the responder's process, and a way to ask it for its CPU time.
type child struct {
	cmd        *exec.Cmd
	in         io.WriteCloser
	out        *bufio.Scanner
	http, rst  *net.TCPAddr
	stopOnce   sync.Once
	stopResult error
}

func startChild(c config) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-serve", "-breakers", strconv.Itoa(c.breakers), "-cpuprofile", c.cpuProfile,
		"-net-http-only="+strconv.FormatBool(c.netHTTPOnly))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := &child{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	if !ch.out.Scan() {
		_ = ch.stop()
		return nil, errors.New("the responder printed no addresses")
	}
	addrs := strings.Fields(ch.out.Text())
	if len(addrs) != 2 {
		_ = ch.stop()
		return nil, fmt.Errorf("the responder printed %q", ch.out.Text())
	}
	if ch.http, err = net.ResolveTCPAddr("tcp", addrs[0]); err == nil {
		ch.rst, err = net.ResolveTCPAddr("tcp", addrs[1])
	}
	if err != nil {
		_ = ch.stop()
		return nil, err
	}
	return ch, nil
}

func (c *child) cpu() (time.Duration, error) {
	if _, err := io.WriteString(c.in, "cpu\n"); err != nil {
		return 0, err
	}
	if !c.out.Scan() {
		return 0, errors.New("the responder did not answer")
	}
	ns, err := strconv.ParseInt(c.out.Text(), 10, 64)
	return time.Duration(ns), err
}

func (c *child) stop() error {
	c.stopOnce.Do(func() { _ = c.in.Close(); c.stopResult = c.cmd.Wait() })
	return c.stopResult
}

func errKind(err error) string {
	for _, e := range []syscall.Errno{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EADDRNOTAVAIL, syscall.EADDRINUSE,
		syscall.EMFILE, syscall.ETIMEDOUT, syscall.EPIPE} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return err.Error()
}

// cpuStat is the whole machine's CPU time from /proc/stat, in ticks: busy and in all. The
// kernel samples busy time at its tick, so at light load, in short bursts between idle
// periods, it reads low; under the loads this command is for, it is close.
type cpuStat struct{ busy, total uint64 }

func machineCPU() cpuStat {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var s cpuStat
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		s.total += v
		if i != 3 && i != 4 { // idle, iowait
			s.busy += v
		}
	}
	return s
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func run(cfg config) error {
	c, err := startChild(cfg)
	if err != nil {
		return err
	}
	defer func() { _ = c.stop() }()
	var srcs []syscall.SockaddrInet4
	if cfg.sources > 1 {
		for i := 1; i <= cfg.sources; i++ {
			srcs = append(srcs, syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, byte(i)}})
		}
	}
	rate, tick, threads := cfg.rate, cfg.tick, cfg.threads
	if tick == 0 {
		// Each wake-up costs the client a few microseconds of the CPU it shares with the
		// responder; one per connection is enough for arrivals to be spread evenly.
		tick = max(50*time.Microsecond, time.Second*time.Duration(threads)/time.Duration(rate))
	}
	fmt.Printf("%d new connections/s for %s per listener (after %s of warm-up), %d client threads ticking every %s, "+
		"%d source address(es), %d CPUs, HTTP fast path %s\n", rate, cfg.duration, cfg.warmup, threads, tick, max(1, cfg.sources),
		runtime.NumCPU(), map[bool]string{false: "on", true: "off (net/http only)"}[cfg.netHTTPOnly])
	for _, name := range cfg.listeners {
		l := &load{sources: srcs}
		switch name {
		case "http":
			l.http, l.target = true, sockaddr(c.http)
			l.request = []byte("GET /charge HTTP/1.1\r\nHost: " + benchHost(cfg.breakers) + "\r\nUser-Agent: bench\r\n\r\n")
		case "reset":
			l.target = sockaddr(c.rst)
		default:
			return fmt.Errorf("no listener %q", name)
		}
		if _, err := l.drive(int(cfg.warmup.Seconds()*float64(rate)), rate, tick, threads); err != nil {
			return err
		}
		n := int(cfg.duration.Seconds() * float64(rate))
		cpu0, err := c.cpu()
		if err != nil {
			return err
		}
		own0, m0 := cpuTime(), machineCPU()
		elapsed, err := l.drive(n, rate, tick, threads)
		if err != nil {
			return err
		}
		own1, m1 := cpuTime(), machineCPU()
		cpu1, err := c.cpu()
		if err != nil {
			return err
		}
		report(name, l, n, rate, elapsed, cpu1-cpu0, own1-own0, m0, m1)
	}
	return c.stop()
}

func report(name string, l *load, n, rate int, elapsed, responderCPU, clientCPU time.Duration, m0, m1 cpuStat) {
	// The phase ends with the last answer, a little less than its schedule after the first
	// dial; a rate over the schedule's length says what was kept up with.
	elapsed = max(elapsed, time.Duration(n)*(time.Second/time.Duration(rate)))
	var ok []time.Duration
	for _, d := range l.latency {
		if d > 0 {
			ok = append(ok, d)
		}
	}
	slices.Sort(ok)
	slices.Sort(l.lateness)
	us := func(d time.Duration) string { return d.Round(time.Microsecond).String() }
	fmt.Printf("%-5s  %.0f of %d scheduled connections/s answered (%d of %d, in %.2fs)\n",
		name, float64(len(ok))/elapsed.Seconds(), rate, len(ok), n, elapsed.Seconds())
	fmt.Printf("       dial start to answer: p50 %s  p99 %s  p99.9 %s  max %s\n",
		us(quantile(ok, 0.5)), us(quantile(ok, 0.99)), us(quantile(ok, 0.999)), us(quantile(ok, 1)))
	fmt.Printf("       dial start behind schedule: p50 %s  p99 %s  max %s\n",
		us(quantile(l.lateness, 0.5)), us(quantile(l.lateness, 0.99)), us(quantile(l.lateness, 1)))
	perK := func(d time.Duration) float64 { return d.Seconds() / float64(max(1, len(ok))) * 1000 }
	busy := float64(m1.busy-m0.busy) / float64(max(1, m1.total-m0.total))
	ours := (responderCPU + clientCPU).Seconds() / elapsed.Seconds()
	fmt.Printf("       CPU s per 1,000 answers: responder %.3f (%.2f cores), client %.3f (%.2f cores); "+
		"machine %.0f%% busy (%.2f cores for other processes)\n",
		perK(responderCPU), responderCPU.Seconds()/elapsed.Seconds(), perK(clientCPU), clientCPU.Seconds()/elapsed.Seconds(),
		100*busy, max(0, busy*float64(runtime.NumCPU())-ours))
	if len(l.errors) == 0 {
		fmt.Println("       errors: none")
	}
	for _, kind := range slices.Sorted(maps.Keys(l.errors)) {
		fmt.Printf("       errors: %d %s\n", l.errors[kind], kind)
	}
	if l.badAnswer != "" {
		fmt.Printf("       the first wrong answer: %s\n", l.badAnswer)
	}
}
