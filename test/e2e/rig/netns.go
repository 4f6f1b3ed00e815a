package rig

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2" //nolint:revive // the rig is Ginkgo-aware by design
	. "github.com/onsi/gomega"    //nolint:revive
	"golang.org/x/sys/unix"
)

// The addresses of the rig's network. They exist only inside the run's namespaces.
const (
	// NodeIP is the node namespace's address (on its loopback device), the Node object's
	// InternalIP and every pod's gateway.
	NodeIP = "10.250.0.1"
	// PodCIDR holds every pod namespace's address; kube-proxy's --cluster-cidr.
	PodCIDR = "10.244.0.0/16"
	// ServiceCIDR is the API server's --service-cluster-ip-range.
	ServiceCIDR = "10.96.0.0/24"
	// upstreamIP stands for the node's default gateway, for ServiceCIDR only.
	upstreamIP = "10.250.0.2"
)

// PodNet is a network namespace of its own, as a pod has: one address from PodCIDR on its
// eth0, a veth pair to the node namespace, a /32 route to it there and a default route through
// the node. Traffic between pods and to ClusterIPs is routed (not bridged) through the node
// namespace, so kube-proxy's rules and the kernel's ICMP rate limits apply as on a real node.
type PodNet struct {
	// Name is the network namespace's name: `ip netns exec <Name> ...` runs a command there.
	Name string
	// IP is the pod's address.
	IP netip.Addr

	work   chan func()
	mu     sync.RWMutex // held for reading while Do runs, for writing by Close
	closed bool
}

var podIndex atomic.Int32

var unsafeNameChars = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// NewPodNet creates a pod network namespace; label only helps to recognise it in `ip netns
// list`. The namespace is deleted when the current Ginkgo node's cleanup runs (or by Close).
func NewPodNet(label string) *PodNet {
	GinkgoHelper()
	return newNet(label, nil, func(n int) netip.Addr {
		Expect(n).To(BeNumerically("<", 250*250), "the rig has addresses for at most 62,500 pods")
		return netip.AddrFrom4([4]byte{10, 244, byte(n / 250), byte(n%250 + 2)})
	})
}

// NewHostNet creates a network namespace with address addr, outside the cluster's networks:
// a host on the internet, such as one address of a third-party API. The node routes addr to
// it as it routes a pod's address; it is deleted as NewPodNet's are.
func NewHostNet(label string, addr netip.Addr) *PodNet {
	GinkgoHelper()
	Expect(netip.MustParsePrefix(PodCIDR).Contains(addr) || netip.MustParsePrefix(ServiceCIDR).Contains(addr)).To(BeFalse(),
		"a host outside the cluster needs an address outside PodCIDR and ServiceCIDR")
	return newNet(label, nil, func(int) netip.Addr { return addr })
}

// newNet makes a pod's namespace, routed through host (the first node's namespace when nil).
func newNet(label string, host *Node, address func(n int) netip.Addr) *PodNet {
	GinkgoHelper()
	Expect(inNode).To(BeTrue(), "the rig runs only in the node namespace: the suite's TestMain must call rig.Main")
	n := int(podIndex.Add(1))
	addr := address(n)
	p := &PodNet{
		Name: fmt.Sprintf("%sp%d-%s", nsPrefix, n, unsafeNameChars.ReplaceAllString(label, "_")),
		IP:   addr,
		work: make(chan func()),
	}
	hostVeth := "tsv" + strconv.Itoa(n)
	Expect(p.create(hostVeth, host)).To(Succeed())
	DeferCleanup(p.Close)
	return p
}

func (p *PodNet) create(hostVeth string, host *Node) error {
	var inHost []string // ip's options that run a command in the host's namespace
	gateway := NodeIP
	if host != nil {
		inHost, gateway = []string{"-n", host.Net.Name}, host.IP.String()
	}
	if err := ip("netns", "add", p.Name); err != nil {
		return err
	}
	if err := ip(append(inHost, "link", "add", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", p.Name)...); err != nil {
		_ = ip("netns", "del", p.Name)
		return err
	}
	node := fmt.Sprintf("link set %[1]s up\nroute add %[2]s/32 dev %[1]s scope link\n", hostVeth, p.IP)
	pod := fmt.Sprintf("link set lo up\naddr add %s/32 dev eth0\nlink set eth0 up\nroute add default via %s dev eth0 onlink\n",
		p.IP, gateway)
	err := ipBatch(node, inHost...)
	if err == nil {
		err = ipBatch(pod, "-n", p.Name)
	}
	if err == nil {
		err = p.startWorker()
	}
	if err != nil {
		_ = ip("netns", "del", p.Name)
	}
	return err
}

// ipBatch runs several ip commands, one a line, in one process.
func ipBatch(commands string, opts ...string) error {
	cmd := exec.Command("ip", append(opts, "-batch", "-")...)
	cmd.Stdin = strings.NewReader(commands)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s -batch: %w: %s\n%s", strings.Join(opts, " "), err, strings.TrimSpace(string(out)), commands)
	}
	return nil
}

// startWorker starts the goroutine that runs Do's functions on a thread inside the namespace.
func (p *PodNet) startWorker() error {
	errc := make(chan error)
	go func() {
		// Never unlocked: the thread is in the pod's namespace for good, and dies with the
		// goroutine when Close ends the loop.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", p.Name))
		if err == nil {
			err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
			_ = f.Close()
		}
		errc <- err
		if err != nil {
			return
		}
		for fn := range p.work {
			fn()
		}
	}()
	return <-errc
}

// Do runs fn on an OS thread inside the namespace. Sockets belong to the namespace they are
// created in, so a listener or a socket created in fn stays there, and can be used from any
// goroutine afterwards. fn must not block for long: Do runs one function at a time.
func (p *PodNet) Do(fn func()) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return fmt.Errorf("network namespace %s is closed", p.Name)
	}
	done := make(chan struct{})
	p.work <- func() {
		defer close(done)
		fn()
	}
	<-done
	return nil
}

// Listen listens on TCP port on the pod's address.
func (p *PodNet) Listen(port int) (net.Listener, error) {
	var ln net.Listener
	var err error
	if e := p.Do(func() { ln, err = net.Listen("tcp4", netip.AddrPortFrom(p.IP, uint16(port)).String()) }); e != nil {
		return nil, e
	}
	return ln, err
}

// DialContext opens a TCP connection from the pod to address (ip:port), with the context's
// deadline as its connect timeout. Errors wrap the socket's errno (errors.Is(err,
// syscall.ECONNREFUSED)) or, on the deadline, os.ErrDeadlineExceeded.
func (p *PodNet) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" {
		return nil, fmt.Errorf("dial %s %s: only tcp", network, address)
	}
	deadline, _ := ctx.Deadline()
	conn, err := p.dial(ctx, address, deadline)
	return conn, err
}

// dial connects to address from inside the namespace: the socket is made on the namespace's
// thread, the rest (connect, waiting) on the caller's goroutine through Go's poller, so that a
// thousand dials in flight need no thousand threads.
func (p *PodNet) dial(ctx context.Context, address string, deadline time.Time) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("dial %s: want an IPv4 address and port", address)
	}
	fd := -1
	if e := p.Do(func() { fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0) }); e != nil {
		return nil, e
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: socket: %w", address, err)
	}
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	// A non-blocking descriptor makes a pollable *os.File, so the wait below parks the
	// goroutine instead of a thread.
	f := os.NewFile(uintptr(fd), "tcp:"+address)
	defer func() { _ = f.Close() }()
	if !deadline.IsZero() {
		_ = f.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var connErr error
	err = rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = err
			return true
		}
		switch errno := unix.Errno(v); errno {
		case 0:
			// Woken before the handshake ended (or called before any wait): connected only
			// if the socket has a peer.
			_, err := unix.Getpeername(int(fd))
			return err == nil
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		default:
			connErr = errno
			return true
		}
	})
	switch {
	case err != nil && ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		return nil, fmt.Errorf("dial %s: %w", address, ctx.Err())
	case err != nil:
		return nil, fmt.Errorf("dial %s: %w", address, err)
	case connErr != nil:
		return nil, fmt.Errorf("dial %s: %w", address, connErr)
	}
	conn, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// HTTPClient returns an HTTP client whose connections start in the pod, one per request.
func (p *PodNet) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DialContext: p.DialContext, DisableKeepAlives: true},
	}
}

// Command returns a command that runs inside the namespace (through `ip netns exec`).
func (p *PodNet) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.Name, name}, args...)...)
}

// Close stops the namespace's thread and deletes the namespace with its veth pair. Sockets
// still open in it keep it alive (without a name) until they are closed.
func (p *PodNet) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	close(p.work)
	return ip("netns", "del", p.Name)
}
