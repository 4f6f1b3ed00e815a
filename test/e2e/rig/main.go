package rig

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Environment variables the rig reads. The first three are set by Main for the copy of the
// test binary it runs inside the node namespace.
const (
	envNode   = "TRIPSWITCH_E2E_NODE"    // the node namespace's name; set: this is the inner run
	envPrefix = "TRIPSWITCH_E2E_PREFIX"  // the prefix of every namespace this run creates
	envRunDir = "TRIPSWITCH_E2E_RUN_DIR" // logs, kubeconfig and built binaries of this run
	// EnvAssets names the folder holding kube-proxy and kube-controller-manager; it defaults
	// to KUBEBUILDER_ASSETS (the folder holding kube-apiserver and etcd).
	EnvAssets = "E2E_ASSETS"
	// EnvKeep, set to 1, keeps the run directory even when the suite passes.
	EnvKeep = "E2E_KEEP"
)

// parentGone is the signal the inner process gets when the outer one dies.
const parentGone = syscall.SIGUSR1

// netnsPrefix starts the name of every network namespace the rig creates, followed by the
// outer test process's pid, so that a later run can tell a crashed run's namespaces apart
// from a concurrent run's.
const netnsPrefix = "tse2e-"

var (
	// skipReason says why the suite cannot run here; Require turns it into a skip or, under
	// CI=true, a failure.
	skipReason string
	// inNode is true in the copy of the test binary that runs inside the node namespace.
	inNode bool
	// nsPrefix is this run's namespace prefix, such as "tse2e-1234-".
	nsPrefix string
	runDir   string
)

// Main is the suite's TestMain. As root, with `ip netns` working and every binary present,
// it creates this run's node namespace, runs the test binary again inside it (so that every
// process and socket the tests make is in the node namespace unless told otherwise), passes
// signals on to it, and afterwards kills whatever is left in the run's namespaces and deletes
// them. It also deletes namespaces that crashed runs left behind. Otherwise it runs the tests
// here, where Require skips them (or fails them under CI=true).
func Main(m *testing.M) {
	if node := os.Getenv(envNode); node != "" {
		os.Exit(runInner(m))
	}
	if skipReason = unavailable(); skipReason != "" {
		os.Exit(m.Run())
	}
	os.Exit(runOuter())
}

// Require skips the test when Main found that the suite cannot run here, with one line that
// says why; under CI=true it fails instead, so that CI never passes without the suite.
func Require(t *testing.T) {
	t.Helper()
	switch {
	case skipReason != "" && os.Getenv("CI") == "true":
		t.Fatalf("e2e: the data-plane suite cannot run, and CI=true forbids skipping it: %s", skipReason)
	case skipReason != "":
		t.Skipf("e2e: skipped: %s", skipReason)
	case !inNode:
		t.Fatal("e2e: the suite's TestMain must call rig.Main(m)")
	}
}

// unavailable returns why the suite cannot run on this machine, or "".
func unavailable() string {
	if os.Geteuid() != 0 {
		return "the data-plane suite needs root for network namespaces and iptables (as root: make test-e2e)"
	}
	for _, tool := range []string{"ip", "iptables", "iptables-save", "iptables-restore", "ip6tables", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s is not installed (make e2e-packages installs iptables, nftables, conntrack and iproute2)", tool)
		}
	}
	for _, bin := range []string{"kube-apiserver", "etcd", "kube-proxy", "kube-controller-manager"} {
		if _, err := binary(bin); err != nil {
			return err.Error()
		}
	}
	probe := fmt.Sprintf("%s%d-check", netnsPrefix, os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return fmt.Sprintf("ip netns does not work here: %s", strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("ip", "netns", "del", probe).CombinedOutput(); err != nil {
		return fmt.Sprintf("ip netns del %s: %s", probe, strings.TrimSpace(string(out)))
	}
	return ""
}

// binary returns the path of one of the Kubernetes binaries: kube-apiserver and etcd from
// KUBEBUILDER_ASSETS, kube-proxy and kube-controller-manager from E2E_ASSETS (or
// KUBEBUILDER_ASSETS).
func binary(name string) (string, error) {
	dir, env, target := os.Getenv("KUBEBUILDER_ASSETS"), "KUBEBUILDER_ASSETS", "envtest"
	if name == "kube-proxy" || name == "kube-controller-manager" {
		target = "e2e-binaries"
		if d := os.Getenv(EnvAssets); d != "" {
			dir, env = d, EnvAssets
		}
	}
	if dir == "" {
		return "", fmt.Errorf("KUBEBUILDER_ASSETS is not set (make test-e2e builds kube-apiserver, etcd, kube-proxy and kube-controller-manager and sets it)")
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s is missing in %s=%s (make %s builds it)", name, env, dir, target)
	}
	return path, nil
}

// runOuter runs the test binary again inside a fresh node namespace and cleans up after it.
func runOuter() int {
	cleanStaleNamespaces()
	prefix := fmt.Sprintf("%s%d-", netnsPrefix, os.Getpid())
	node := prefix + "node"
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("tripswitch-e2e-%d", os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if err := ip("netns", "add", node); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer deleteNamespaces(prefix)

	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)

	started := make(chan *os.Process, 1)
	exited := make(chan int, 1)
	go func() {
		// The child inherits this thread's network namespace. The thread stays locked and
		// alive until the child exits (Pdeathsig is tied to it), then dies with the goroutine.
		runtime.LockOSThread()
		code, err := runInNamespace(node, dir, prefix, started)
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
		}
		exited <- code
	}()
	var code int
	var child *os.Process
	var pending []os.Signal
wait:
	for {
		select {
		case child = <-started:
			for _, sig := range pending {
				_ = child.Signal(sig)
			}
		case sig := <-signals:
			// The child has a process group of its own, so a Ctrl-C in the terminal reaches
			// only this process. Pass each signal on: on the first, Ginkgo runs the cleanup;
			// on a second, it skips it, and the deferred deleteNamespaces still kills what
			// runs in the namespaces and deletes them.
			if child == nil {
				pending = append(pending, sig)
			} else {
				_ = child.Signal(sig)
			}
		case code = <-exited:
			break wait
		}
	}
	if code != 0 || os.Getenv(EnvKeep) == "1" {
		fmt.Fprintf(os.Stderr, "e2e: logs, kubeconfig and binaries of this run are kept in %s\n", dir)
	} else {
		_ = os.RemoveAll(dir)
	}
	return code
}

// runInNamespace starts this test binary inside network namespace node and waits for it.
// It must run on a locked thread, which it moves into the namespace.
func runInNamespace(node, dir, prefix string, started chan<- *os.Process) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 1, err
	}
	f, err := os.Open(filepath.Join("/run/netns", node))
	if err != nil {
		return 1, err
	}
	err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
	_ = f.Close()
	if err != nil {
		return 1, fmt.Errorf("entering network namespace %s: %w", node, err)
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envNode+"="+node, envPrefix+"="+prefix, envRunDir+"="+dir)
	// A process group of its own keeps a terminal's Ctrl-C from reaching it (and its children)
	// directly. If this process dies, Pdeathsig tells it with parentGone, which it turns into
	// one interrupt (Linux sends Pdeathsig again each time the child is handed to another dying
	// thread, and a second interrupt would make Ginkgo skip the cleanup).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: parentGone}
	if err := cmd.Start(); err != nil {
		return 1, err
	}
	started <- cmd.Process
	err = cmd.Wait()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit) && exit.ExitCode() > 0:
		return exit.ExitCode(), nil
	default:
		return 1, fmt.Errorf("the test binary in the node namespace: %w", err)
	}
}

// runInner runs the tests inside the node namespace, after setting it up.
func runInner(m *testing.M) int {
	inNode = true
	// When the outer process dies, go test stops reading the output: without this, the
	// first write would kill the process before Ginkgo's cleanup (on the SIGTERM that
	// Pdeathsig sends) has stopped its children and removed its namespaces.
	signal.Ignore(syscall.SIGPIPE)
	gone := make(chan os.Signal, 1)
	signal.Notify(gone, parentGone)
	var orphan atomic.Bool
	go func() {
		<-gone
		orphan.Store(true)
		fmt.Fprintln(os.Stderr, "e2e: the outer test process died: interrupting the suite, so that it cleans up")
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}()
	nsPrefix = os.Getenv(envPrefix)
	runDir = os.Getenv(envRunDir)
	if err := setUpNode(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: setting up the node namespace:", err)
		return 1
	}
	code := m.Run()
	if orphan.Load() {
		// The outer process cannot delete the namespaces any more.
		deleteNamespaces(nsPrefix)
	}
	return code
}

// setUpNode gives the node namespace (where this process runs) its loopback, its address,
// routing between pods, and a route for ServiceCIDR to a namespace that silently drops what it
// gets. On a real node, packets to a ClusterIP follow the default route unless kube-proxy
// rewrites (DNAT) or rejects them; without a route the kernel would drop them before
// kube-proxy's REJECT rules in the forward and output hooks see them. The node namespace has
// no default route: nothing leaves the machine.
func setUpNode() error {
	if err := ipBatch(fmt.Sprintf("link set lo up\naddr add %s/32 dev lo\n", NodeIP)); err != nil {
		return err
	}
	upstream := nsPrefix + "upstream"
	if err := ip("netns", "add", upstream); err != nil {
		return err
	}
	if err := ip("link", "add", "tsvup", "type", "veth", "peer", "name", "eth0", "netns", upstream); err != nil {
		return err
	}
	if err := ipBatch(fmt.Sprintf("link set tsvup up\nroute add %s via %s dev tsvup onlink\n", ServiceCIDR, upstreamIP)); err != nil {
		return err
	}
	// Forwarding stays off in the upstream namespace: it drops packets for other addresses
	// without an ICMP answer.
	if err := ipBatch(fmt.Sprintf("link set lo up\naddr add %s/32 dev eth0\nlink set eth0 up\nroute add %s dev eth0 scope link\n",
		upstreamIP, NodeIP), "-n", upstream); err != nil {
		return err
	}
	for key, value := range map[string]string{
		"net/ipv4/ip_forward":              "1",
		"net/ipv4/conf/all/rp_filter":      "0",
		"net/ipv4/conf/default/rp_filter":  "0",
		"net/ipv4/conf/all/forwarding":     "1",
		"net/ipv4/conf/default/forwarding": "1",
	} {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// cleanStaleNamespaces deletes the namespaces of earlier runs whose test process is gone.
func cleanStaleNamespaces() {
	names, _ := namespaces(netnsPrefix)
	done := map[string]bool{}
	for _, name := range names {
		pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(name, netnsPrefix), "-", 2)[0])
		if err != nil || runningTestBinary(pid) {
			continue
		}
		prefix := fmt.Sprintf("%s%d-", netnsPrefix, pid)
		if !done[prefix] {
			done[prefix] = true
			fmt.Fprintf(os.Stderr, "e2e: deleting network namespaces %s* left by an earlier run\n", prefix)
			deleteNamespaces(prefix)
		}
	}
}

// runningTestBinary tells whether pid is a live test binary (a run going on beside this one),
// rather than gone or a reused pid.
func runningTestBinary(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.HasSuffix(strings.TrimSuffix(exe, " (deleted)"), ".test")
}

// namespaces lists the named network namespaces that start with prefix.
func namespaces(prefix string) ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// deleteNamespaces kills every process inside the namespaces that start with prefix and
// deletes them.
func deleteNamespaces(prefix string) {
	names, _ := namespaces(prefix)
	var pids []int
	for _, name := range names {
		out, _ := exec.Command("ip", "netns", "pids", name).Output()
		for _, field := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(field); err == nil && pid != os.Getpid() {
				pids = append(pids, pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, name := range names {
		if err := ip("netns", "del", name); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
		}
	}
}

// ip runs the ip command in this process's network namespace.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
