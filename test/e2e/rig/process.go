package rig

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2" //nolint:revive
	. "github.com/onsi/gomega"    //nolint:revive
)

// Process is a child process of the test, in the node namespace, with its output (stdout and
// stderr) in a log file of the run directory.
type Process struct {
	// Name names the process in messages; its log is <run dir>/<Name>.log (or with a suffix
	// when the name was used before).
	Name    string
	LogPath string

	cmd      *exec.Cmd
	log      *os.File
	done     chan struct{}
	mu       sync.Mutex
	stopping bool
	err      error
}

var (
	logNamesMu sync.Mutex
	logNames   = map[string]int{}
)

// runProcess runs cmd as a Process to its end.
func runProcess(name string, cmd *exec.Cmd) (*Process, error) {
	p, err := newProcess(name, cmd, true)
	if err != nil {
		return nil, err
	}
	<-p.done
	return p, p.Err()
}

// startProcess starts cmd as a Process; its output goes to the log file, and it is killed if
// the test process dies.
func startProcess(name string, cmd *exec.Cmd) (*Process, error) {
	return newProcess(name, cmd, false)
}

// newProcess starts cmd as a Process; ends means it is expected to end by itself.
func newProcess(name string, cmd *exec.Cmd, ends bool) (*Process, error) {
	logNamesMu.Lock()
	logNames[name]++
	logName := name
	if n := logNames[name]; n > 1 {
		logName = fmt.Sprintf("%s.%d", name, n)
	}
	logNamesMu.Unlock()
	p := &Process{Name: name, LogPath: filepath.Join(runDir, logName+".log"), cmd: cmd, done: make(chan struct{}), stopping: ends}
	var err error
	if p.log, err = os.Create(p.LogPath); err != nil {
		return nil, err
	}
	fmt.Fprintf(p.log, "# %s\n", strings.Join(cmd.Args, " "))
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := spawn(cmd); err != nil {
		_ = p.log.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go p.wait()
	return p, nil
}

// spawner runs cmd.Start for every Process on one OS thread that lives as long as the test
// process. Pdeathsig kills a child when the thread that started it ends, not the process, and
// Go ends a thread when a goroutine locked to it returns, as PodNet's do: a child started from
// an ordinary goroutine could die whenever a pod network namespace is closed.
var spawner struct {
	once sync.Once
	jobs chan func()
}

func spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.jobs = make(chan func())
		go func() {
			runtime.LockOSThread() // for good: this goroutine never returns
			for job := range spawner.jobs {
				job()
			}
		}()
	})
	errc := make(chan error)
	spawner.jobs <- func() { errc <- cmd.Start() }
	return <-errc
}

func (p *Process) wait() {
	err := p.cmd.Wait()
	p.mu.Lock()
	p.err = err
	unexpected := !p.stopping
	p.mu.Unlock()
	_ = p.log.Close()
	close(p.done)
	if unexpected {
		fmt.Fprintf(GinkgoWriter, "e2e: process %s exited on its own (%v); the end of %s:\n%s\n", p.Name, err, p.LogPath, p.Tail(20))
	}
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited tells whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err returns how the process ended (nil for exit status 0, or while it runs).
func (p *Process) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Signal sends sig to the process. After SIGTERM, SIGINT, SIGQUIT or SIGKILL, its exit is not
// reported as a crash.
func (p *Process) Signal(sig syscall.Signal) {
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGKILL:
		p.mu.Lock()
		p.stopping = true
		p.mu.Unlock()
	}
	if !p.Exited() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// Kill kills the process with SIGKILL and waits for it to exit.
func (p *Process) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop asks the process to exit with SIGTERM and waits for it, up to 10 seconds before it
// kills it. It is harmless on a process that has exited.
func (p *Process) Stop() {
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Kill()
	}
}

// Log returns the process's output so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Tail returns the last n lines of the process's output.
func (p *Process) Tail(n int) string {
	return tail(p.LogPath, n)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// writeTails writes the last n lines of each log file to w.
func writeTails(w io.Writer, n int, paths ...string) {
	for _, path := range paths {
		fmt.Fprintf(w, "\n----- the end of %s -----\n%s\n", path, tail(path, n))
	}
}

// StartProcess starts a program in the node namespace, with KUBECONFIG set to the rig's
// kubeconfig and its output in <run dir>/<name>.log, and stops it (SIGTERM, then SIGKILL)
// when the current Ginkgo node's cleanup runs. Its log's tail is part of the failure output.
func (r *Rig) StartProcess(name, path string, args ...string) *Process {
	GinkgoHelper()
	return r.StartCommand(name, exec.Command(path, args...))
}

// StartCommand is StartProcess for a prepared command, for its Env or Dir. KUBECONFIG is
// added to the environment unless cmd.Env sets it.
func (r *Rig) StartCommand(name string, cmd *exec.Cmd) *Process {
	GinkgoHelper()
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	if !hasEnv(cmd.Env, "KUBECONFIG") {
		cmd.Env = append(cmd.Env, "KUBECONFIG="+r.kubeconfig)
	}
	p, err := startProcess(name, cmd)
	Expect(err).NotTo(HaveOccurred())
	r.track(p)
	DeferCleanup(p.Stop)
	return p
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	return false
}

// Supervised is a program that is started again whenever it exits, as a kubelet restarts a
// container of a pod with restartPolicy Always (here after 1 s, without a growing backoff).
// The tripswitch manager exits when it loses its lease, and counts on that.
type Supervised struct {
	mu       sync.Mutex
	current  *Process
	restarts int
}

// StartSupervised starts cmd (made afresh by newCmd for every start) as StartCommand does, and
// again whenever it exits, until the current Ginkgo node's cleanup.
func (r *Rig) StartSupervised(name string, newCmd func() *exec.Cmd) *Supervised {
	GinkgoHelper()
	s := &Supervised{}
	start := func() (*Process, error) {
		cmd := newCmd()
		if cmd.Env == nil {
			cmd.Env = os.Environ()
		}
		if !hasEnv(cmd.Env, "KUBECONFIG") {
			cmd.Env = append(cmd.Env, "KUBECONFIG="+r.kubeconfig)
		}
		p, err := startProcess(name, cmd)
		if err == nil {
			r.track(p)
		}
		return p, err
	}
	p, err := start()
	Expect(err).NotTo(HaveOccurred())
	s.current = p
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			s.mu.Lock()
			p := s.current
			s.mu.Unlock()
			select {
			case <-stop:
				return
			case <-p.Done():
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			next, err := start()
			if err != nil {
				fmt.Fprintf(GinkgoWriter, "e2e: restarting %s: %v\n", name, err)
				return
			}
			s.mu.Lock()
			s.current, s.restarts = next, s.restarts+1
			s.mu.Unlock()
		}
	}()
	DeferCleanup(func() {
		close(stop)
		<-done
		s.mu.Lock()
		p := s.current
		s.mu.Unlock()
		p.Stop()
	})
	return s
}

// Current returns the process running now (or the last one, between restarts).
func (s *Supervised) Current() *Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Restarts returns how often the program was started again.
func (s *Supervised) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}
