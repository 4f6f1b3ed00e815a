package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The backends run in a child process, so that their CPU, memory and file descriptors (one
// per keep-alive connection of the probes) are not the manager's. Every backend answers on
// the same ports: 127.0.0.2.. (one address per endpoint of a breaker) × a few ports, and
// tells breakers apart by the probe's path, /b/<index>. A control endpoint turns breakers'
// backends to 503 and reports when each first answered 503.

// backends is the bench's side of the child.
type backends struct {
	cmd     *exec.Cmd
	stdin   io.Closer
	control string
	ports   []int32
}

// serveBackends is the child: it serves until its stdin closes.
func serveBackends(breakers, endpoints, ports int) error {
	failing := make([]atomic.Bool, breakers)
	failedAt := make([]atomic.Int64, breakers)
	var served atomic.Uint64
	probes := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		i, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/b/"))
		if err != nil || i < 0 || i >= breakers {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		if failing[i].Load() {
			failedAt[i].CompareAndSwap(0, time.Now().UnixNano())
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	control := http.NewServeMux()
	control.HandleFunc("POST /fail", func(w http.ResponseWriter, r *http.Request) {
		for _, s := range strings.Split(r.URL.Query().Get("ids"), ",") {
			if i, err := strconv.Atoi(s); err == nil && i >= 0 && i < breakers {
				failing[i].Store(true)
			}
		}
	})
	control.HandleFunc("GET /failed", func(w http.ResponseWriter, _ *http.Request) {
		out := bufio.NewWriter(w)
		for i := range failedAt {
			if at := failedAt[i].Load(); at != 0 {
				fmt.Fprintf(out, "%d %d\n", i, at)
			}
		}
		_ = out.Flush()
	})
	control.HandleFunc("GET /served", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, served.Load()) })

	out := bufio.NewWriter(os.Stdout)
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = (&http.Server{Handler: control, ReadHeaderTimeout: 10 * time.Second}).Serve(cl) }()
	fmt.Fprintln(out, "control", cl.Addr().String())
	srv := &http.Server{Handler: probes, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Hour}
	for range ports {
		port, err := listenOnAll(srv, endpoints)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, "port", port)
	}
	if err := out.Flush(); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// listenOnAll serves srv on one port of 127.0.0.2 .. 127.0.0.(1+endpoints), trying ports until
// one is free on every address.
func listenOnAll(srv *http.Server, endpoints int) (int, error) {
	for range 100 {
		first, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			return 0, err
		}
		port := first.Addr().(*net.TCPAddr).Port
		ls := []net.Listener{first}
		for e := 1; e < endpoints; e++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", 2+e, port))
			if err != nil {
				break
			}
			ls = append(ls, l)
		}
		if len(ls) == endpoints {
			for _, l := range ls {
				go func() { _ = srv.Serve(l) }()
			}
			return port, nil
		}
		for _, l := range ls {
			_ = l.Close()
		}
	}
	return 0, fmt.Errorf("no port free on all of 127.0.0.2..%d", 1+endpoints)
}

// startBackends starts the child and reads its control address and ports.
func startBackends(breakers, endpoints, ports int) (*backends, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-serve-backends", fmt.Sprintf("%d,%d,%d", breakers, endpoints, ports))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b := &backends{cmd: cmd, stdin: stdin}
	sc := bufio.NewScanner(stdout)
	for len(b.ports) < ports && sc.Scan() {
		kind, value, _ := strings.Cut(sc.Text(), " ")
		switch kind {
		case "control":
			b.control = value
		case "port":
			p, err := strconv.Atoi(value)
			if err != nil {
				b.stop()
				return nil, err
			}
			b.ports = append(b.ports, int32(p))
		}
	}
	if b.control == "" || len(b.ports) < ports {
		b.stop()
		return nil, fmt.Errorf("the backends gave %d of %d ports", len(b.ports), ports)
	}
	return b, nil
}

func (b *backends) stop() { _ = b.stdin.Close(); _ = b.cmd.Wait() }

// fail turns the given breakers' backends to 503.
func (b *backends) fail(ids []int) error {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	resp, err := http.Post("http://"+b.control+"/fail?ids="+strings.Join(s, ","), "text/plain", nil)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// failedAt is when each failing breaker's backend first answered 503.
func (b *backends) failedAt() (map[int]time.Time, error) {
	resp, err := http.Get("http://" + b.control + "/failed")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[int]time.Time{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var id int
		var at int64
		if _, err := fmt.Sscanf(sc.Text(), "%d %d", &id, &at); err == nil {
			out[id] = time.Unix(0, at)
		}
	}
	return out, sc.Err()
}

// served is how many probes the backends answered so far.
func (b *backends) served() (uint64, error) {
	resp, err := http.Get("http://" + b.control + "/served")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var n uint64
	_, err = fmt.Fscan(resp.Body, &n)
	return n, err
}
