package rig

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2" //nolint:revive
	. "github.com/onsi/gomega"    //nolint:revive
	"golang.org/x/net/dns/dnsmessage"
)

// EnvCoreDNS names the CoreDNS binary that StartCoreDNS runs. `make coredns` builds it from
// source (hack/coredns, with only the plugins the suite needs) into bin/coredns-v<version>.
const EnvCoreDNS = "E2E_COREDNS"

// DefaultClusterDomain is the cluster's DNS domain when a CoreDNSConfig names none.
const DefaultClusterDomain = "cluster.local"

// CoreDNSConfig is what Corefile renders: one server block that answers the cluster domain
// from the API server (the kubernetes plugin), names that Stanzas rewrite with their Services'
// records, and everything else from Upstream.
type CoreDNSConfig struct {
	// Listen is where CoreDNS answers DNS (UDP and TCP), ip:port. StartCoreDNS's default is
	// port 53 on NodeIP (or on the pod's address in a pod namespace): resolv.conf has no port,
	// so glibc can only ask port 53.
	Listen string
	// Kubeconfig is the kubeconfig file of the kubernetes plugin (its current context);
	// StartCoreDNS's default is the rig's.
	Kubeconfig string
	// ClusterDomain is the cluster's DNS domain; default DefaultClusterDomain.
	ClusterDomain string
	// Stanzas are added to the server block as they are, such as the rewrite stanza a breaker
	// with an external target puts in status.external.dnsRewrite for the cluster admin:
	// the suite pastes exactly that text, as the admin would. CoreDNS runs its plugins in
	// its own order (rewrite, cache, kubernetes), so their place in the block does not
	// matter; a rewrite stanza holds one name rule (a second stops CoreDNS from starting).
	Stanzas []string
	// Upstream is the server (ip:port) for every name outside the cluster domain that no
	// rewrite maps; without it such names are answered SERVFAIL.
	Upstream string
	// Cache, when not zero, adds the cache plugin with this TTL cap (whole seconds), as a
	// cluster's Corefile has (cache 30). It also caches NXDOMAIN, for the SOA's minimum TTL
	// (5 s) at most: a name rewritten to a Service that does not exist yet keeps failing that
	// long after the Service appears.
	Cache time.Duration
	// Health and Ready are the addresses (ip:port) of the health plugin (/health) and the ready
	// plugin (/ready); a plugin is left out when its address is empty. StartCoreDNS sets both.
	Health string
	Ready  string
}

// dnsName is a lowercase DNS name without a trailing dot: labels of letters, digits and
// hyphens (and underscores, which some names carry), 1 to 63 characters each.
var dnsName = regexp.MustCompile(`^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$`)

// normalizeName lowercases name and trims its trailing dot.
func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// Corefile renders the configuration: one server block for every name on Listen's port (bound
// to Listen's address unless it is unspecified), with the plugins errors, log, health, ready,
// the Stanzas, cache, kubernetes (pods insecure; reverse zones fall through)
// and forward. It fails on an invalid address, name or path.
func (c CoreDNSConfig) Corefile() (string, error) {
	listen, err := netip.ParseAddrPort(c.Listen)
	if err != nil {
		return "", fmt.Errorf("CoreDNS Listen %q: %w", c.Listen, err)
	}
	domain := normalizeName(c.ClusterDomain)
	if domain == "" {
		domain = DefaultClusterDomain
	}
	if !dnsName.MatchString(domain) {
		return "", fmt.Errorf("CoreDNS ClusterDomain %q is not a DNS name", c.ClusterDomain)
	}
	if c.Kubeconfig == "" || strings.ContainsAny(c.Kubeconfig, " \t\n\"'{}#") {
		return "", fmt.Errorf("CoreDNS Kubeconfig %q: want a path without blanks, quotes, braces or #", c.Kubeconfig)
	}
	var b strings.Builder
	fmt.Fprintf(&b, ".:%d {\n", listen.Port())
	if !listen.Addr().IsUnspecified() {
		fmt.Fprintf(&b, "    bind %s\n", listen.Addr())
	}
	b.WriteString("    errors\n    log\n")
	for _, plugin := range []struct{ name, addr string }{{"health", c.Health}, {"ready", c.Ready}} {
		if plugin.addr == "" {
			continue
		}
		if _, err := netip.ParseAddrPort(plugin.addr); err != nil {
			return "", fmt.Errorf("CoreDNS %s address %q: %w", plugin.name, plugin.addr, err)
		}
		fmt.Fprintf(&b, "    %s %s\n", plugin.name, plugin.addr)
	}
	for _, stanza := range c.Stanzas {
		if strings.Count(stanza, "{") != strings.Count(stanza, "}") {
			return "", fmt.Errorf("CoreDNS stanza with unbalanced braces:\n%s", stanza)
		}
		b.WriteString("    " + strings.ReplaceAll(strings.TrimSuffix(stanza, "\n"), "\n", "\n    ") + "\n")
	}
	if c.Cache > 0 {
		fmt.Fprintf(&b, "    cache %d\n", max(1, int(c.Cache/time.Second)))
	}
	fmt.Fprintf(&b, "    kubernetes %s in-addr.arpa ip6.arpa {\n        kubeconfig %s\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n    }\n",
		domain, c.Kubeconfig)
	if c.Upstream != "" {
		if _, err := netip.ParseAddrPort(c.Upstream); err != nil {
			return "", fmt.Errorf("CoreDNS Upstream %q: %w", c.Upstream, err)
		}
		fmt.Fprintf(&b, "    forward . %s\n", c.Upstream)
	}
	b.WriteString("}\n")
	return b.String(), nil
}

// CoreDNS is a CoreDNS process that StartCoreDNS started.
type CoreDNS struct {
	// Process is the running CoreDNS; its log (one line per query) is part of WriteLogTails.
	*Process
	// Config is the configuration it runs, defaults filled in.
	Config CoreDNSConfig
	// CorefilePath is its Corefile, in the run directory.
	CorefilePath string
}

// StartCoreDNS starts CoreDNS ($E2E_COREDNS) with cfg's Corefile in network namespace netns
// (nil: the node namespace, where the API server is), waits until its ready plugin says ready
// and it answers a query for the cluster domain's SOA, and stops it in the current Ginkgo
// node's cleanup. name names its log (<run dir>/<name>.log) and Corefile. Unset fields of cfg
// get defaults: Listen port 53 on NodeIP (in a pod namespace, on the pod's address),
// Kubeconfig the rig's, Health and Ready a free loopback port each (in a pod namespace,
// 127.0.0.1:8080 and 127.0.0.1:8181 there). The rig's kubeconfig names the API server on
// 127.0.0.1 of the node namespace, which a pod namespace cannot reach: CoreDNS in a pod
// namespace needs a kubeconfig of its own.
//
// Pods reach CoreDNS on NodeIP:53 through their default route; UseIn makes it their
// resolv.conf's nameserver, Resolver and Exchange ask it from Go.
func (r *Rig) StartCoreDNS(name string, netns *PodNet, cfg CoreDNSConfig) *CoreDNS {
	GinkgoHelper()
	bin := os.Getenv(EnvCoreDNS)
	Expect(bin).NotTo(BeEmpty(), "%s is not set: `make coredns` builds CoreDNS into bin/coredns-v<version>; set %s to its path", EnvCoreDNS, EnvCoreDNS)
	// make test builds CoreDNS beside the suite, which starts at once: wait for it.
	Eventually(func() error { _, err := os.Stat(bin); return err }).WithTimeout(20*time.Minute).WithPolling(time.Second).
		Should(Succeed(), "%s=%s: `make coredns` builds it", EnvCoreDNS, bin)

	if cfg.Listen == "" {
		ip := NodeIP
		if netns != nil {
			ip = netns.IP.String()
		}
		cfg.Listen = net.JoinHostPort(ip, "53")
	}
	if cfg.Kubeconfig == "" {
		cfg.Kubeconfig = r.kubeconfig
	}
	if cfg.ClusterDomain = normalizeName(cfg.ClusterDomain); cfg.ClusterDomain == "" {
		cfg.ClusterDomain = DefaultClusterDomain
	}
	// In a pod namespace of its own, CoreDNS's usual ports are free.
	freePort := func(usual string) string {
		if netns != nil {
			return usual
		}
		return FreePort()
	}
	if cfg.Health == "" {
		cfg.Health = freePort("127.0.0.1:8080")
	}
	if cfg.Ready == "" {
		cfg.Ready = freePort("127.0.0.1:8181")
	}
	corefile, err := cfg.Corefile()
	Expect(err).NotTo(HaveOccurred())
	path := filepath.Join(runDir, unsafeNameChars.ReplaceAllString(name, "_")+".Corefile")
	Expect(os.WriteFile(path, []byte(corefile), 0o644)).To(Succeed())

	var p *Process
	if netns == nil {
		p = r.StartProcess(name, bin, "-conf", path)
	} else {
		p = r.StartCommand(name, netns.Command(context.Background(), bin, "-conf", path))
	}
	d := &CoreDNS{Process: p, Config: cfg, CorefilePath: path}

	// The ready plugin says ready as soon as the kubernetes plugin has synced, but CoreDNS
	// opens its DNS sockets only afterwards (about 75 ms later here): a query is the proof.
	httpClient := &http.Client{Timeout: time.Second}
	if netns != nil {
		httpClient = netns.HTTPClient(time.Second)
	}
	Eventually(func(g Gomega) {
		if p.Exited() {
			StopTrying(fmt.Sprintf("CoreDNS exited (%v):\n%s", p.Err(), p.Tail(30))).Now()
		}
		resp, err := httpClient.Get("http://" + cfg.Ready + "/ready")
		g.Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		g.Expect(resp.StatusCode).To(Equal(http.StatusOK), "CoreDNS's ready plugin")
		answer, err := d.Exchange(netns, cfg.ClusterDomain, dnsmessage.TypeSOA)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(answer.RCode).To(Equal(dnsmessage.RCodeSuccess))
	}).WithTimeout(30*time.Second).WithPolling(20*time.Millisecond).Should(Succeed(),
		"CoreDNS did not become ready; see %s and %s", p.LogPath, path)
	return d
}

// Addr returns where CoreDNS answers DNS, ip:port.
func (d *CoreDNS) Addr() string { return d.Config.Listen }

// Exchange sends one query (name, qtype, class IN, recursion desired) to CoreDNS over UDP from
// network namespace from (nil: the node namespace) and returns the reply, whatever its RCODE.
// name is taken as fully qualified.
func (d *CoreDNS) Exchange(from *PodNet, name string, qtype dnsmessage.Type) (dnsmessage.Message, error) {
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	qname, err := dnsmessage.NewName(name)
	if err != nil {
		return dnsmessage.Message{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := dialIn(ctx, from, "udp", d.Config.Listen)
	if err != nil {
		return dnsmessage.Message{}, err
	}
	defer func() { _ = conn.Close() }()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	query := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: uint16(rand.Uint32()), RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: qname, Type: qtype, Class: dnsmessage.ClassINET}},
	}
	packet, err := query.Pack()
	if err != nil {
		return dnsmessage.Message{}, err
	}
	if _, err := conn.Write(packet); err != nil {
		return dnsmessage.Message{}, err
	}
	buf := make([]byte, 65535)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return dnsmessage.Message{}, err
		}
		var reply dnsmessage.Message
		if err := reply.Unpack(buf[:n]); err != nil || reply.ID != query.ID || !reply.Response {
			continue // not the reply to this query
		}
		return reply, nil
	}
}

// Resolver returns Go's own resolver asking CoreDNS, its sockets (UDP, and TCP for truncated
// answers) made in network namespace from (nil: the node namespace). It still reads the test
// process's /etc/resolv.conf for the search list, ndots and timeouts (a pod's are not there),
// so ask it for fully qualified names.
func (d *CoreDNS) Resolver(from *PodNet) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dialIn(ctx, from, network, d.Config.Listen)
	}}
}

// dialIn connects to address (ip:port) over network (udp or tcp) from network namespace
// netns, or from the node namespace when netns is nil.
func dialIn(ctx context.Context, netns *PodNet, network, address string) (net.Conn, error) {
	if netns == nil {
		var dialer net.Dialer
		return dialer.DialContext(ctx, network, address)
	}
	switch network {
	case "tcp", "tcp4":
		return netns.DialContext(ctx, "tcp", address)
	case "udp", "udp4":
		// A UDP socket's connect does not block: made on the namespace's thread, it stays
		// in the namespace.
		var conn net.Conn
		var err error
		if e := netns.Do(func() { conn, err = net.Dial("udp4", address) }); e != nil {
			return nil, e
		}
		return conn, err
	default:
		return nil, fmt.Errorf("dial %s %s from %s: only udp and tcp", network, address, netns.Name)
	}
}

// ResolvConf returns the resolv.conf a kubelet writes for a pod of namespace (dnsPolicy
// ClusterFirst) with this CoreDNS as its nameserver: the search list
// <namespace>.svc.<domain> svc.<domain> <domain> and ndots:5.
func (d *CoreDNS) ResolvConf(namespace string) string {
	domain := normalizeName(d.Config.ClusterDomain)
	if domain == "" {
		domain = DefaultClusterDomain
	}
	host, _, _ := net.SplitHostPort(d.Config.Listen)
	return fmt.Sprintf("search %[1]s.svc.%[2]s svc.%[2]s %[2]s\nnameserver %[3]s\noptions ndots:5\n",
		normalizeName(namespace), domain, host)
}

// UseIn makes CoreDNS the resolver of every program started in netns through `ip netns exec`
// (PodNet.Command), glibc's and Go's alike: it writes ResolvConf(namespace) to
// /etc/netns/<name>/resolv.conf, which ip netns exec mounts over /etc/resolv.conf, and removes
// it in the current Ginkgo node's cleanup. CoreDNS must listen on port 53 (resolv.conf has no
// port). Code the test runs in the namespace through PodNet.Do still reads the test process's
// /etc/resolv.conf: give it Resolver(netns).
func (d *CoreDNS) UseIn(netns *PodNet, namespace string) {
	GinkgoHelper()
	_, port, _ := net.SplitHostPort(d.Config.Listen)
	Expect(port).To(Equal("53"), "resolv.conf has no port: glibc asks port 53 only")
	dir := filepath.Join("/etc/netns", netns.Name)
	Expect(os.MkdirAll(dir, 0o755)).To(Succeed())
	DeferCleanup(func() {
		if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(GinkgoWriter, "e2e: removing %s: %v\n", dir, err)
		}
	})
	Expect(os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(d.ResolvConf(namespace)), 0o644)).To(Succeed())
}
