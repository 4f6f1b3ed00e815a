// Package rig is the data-plane test rig: a one-node Kubernetes cluster on this machine with
// the real kube-proxy (iptables or nftables mode) and the real kube-controller-manager, pods
// as network namespaces of their own, and clients that see what a pod sees. It exists because
// kube-proxy's REJECT answers with ICMP, which the kernel rate-limits per destination address,
// and loopback and node-local clients are exempt from that limit: only a client with an
// address of its own shows what pods see when a Service has no ready endpoints.
//
// The rig is Ginkgo-aware: its functions fail the current spec through Gomega, and register
// their cleanup with DeferCleanup in the Ginkgo node that calls them (BeforeSuite, BeforeAll,
// BeforeEach or It).
//
// # The machine
//
// The suite needs root, `ip netns`, Debian's iptables and nftables, and kube-apiserver, etcd,
// kube-proxy and kube-controller-manager built from source (`make e2e-packages e2e-binaries
// envtest`; `make test-e2e` does all of it). Main is the suite's TestMain:
//
//	func TestMain(m *testing.M) { rig.Main(m) }
//
//	func TestE2E(t *testing.T) {
//		rig.Require(t) // skips with one line when the suite cannot run; fails under CI=true
//		RegisterFailHandler(Fail)
//		RunSpecs(t, "...")
//	}
//
// Main creates the run's "node" network namespace (tse2e-<pid>-node) and runs the test
// binary again inside it, so that everything the tests start or open is in the node
// namespace unless it is made in a pod's. It passes signals on (one Ctrl-C lets Ginkgo clean
// up), deletes the run's namespaces and kills what is left in them when the tests end, and
// first deletes what crashed runs left behind. If the outer process dies, the inner one is
// interrupted and cleans up by itself.
//
// # The network
//
//   - The node namespace: NodeIP (10.250.0.1) on its loopback, IP forwarding on, a /32 route
//     per pod, and no default route: nothing leaves the machine. ServiceCIDR (10.96.0.0/24)
//     is routed to an "upstream" namespace that drops silently, as a node's default route
//     would take packets that kube-proxy neither rewrites nor rejects.
//   - Pods (PodNet): namespaces tse2e-<pid>-p<n>-<label>, each with one address from
//     PodCIDR (10.244.0.0/16) on eth0, a veth pair to the node and a default route through
//     NodeIP, routed point to point as Calico does (no bridge, so every packet crosses the
//     node's netfilter hooks).
//   - Code enters a pod with PodNet.Do, which runs a function on an OS thread inside the pod's
//     namespace; sockets stay in the namespace they were made in. PodNet.Listen and
//     PodNet.DialContext are built on it, and PodNet.HTTPClient and PodNet.Command (`ip netns
//     exec`) too.
//
// # The cluster
//
// Start (in BeforeSuite) starts etcd and kube-apiserver through envtest
// (--service-cluster-ip-range=ServiceCIDR, --advertise-address=NodeIP,
// --endpoint-reconciler-type=none), installs Options.CRDDirectoryPaths, writes an admin
// kubeconfig, creates the Node NodeName ("node1") with its addresses and Ready, and starts
// kube-controller-manager (endpointslice, endpointslice-mirroring and garbage-collector
// controllers) and kube-proxy:
//
//	cluster := rig.Start(rig.Options{CRDDirectoryPaths: []string{"../../config/crd/bases"}})
//	cluster.SetProxyMode(rig.NFTables) // restart kube-proxy in another mode; rules cleaned in between
//	cluster.SetProxyMode(rig.IPTables, "--conntrack-tcp-be-liberal") // or with other extra flags
//	cluster.KubeProxyMetricsURL()      // its metrics, as a node agent reads them
//	cluster.ProxyMode()                // the mode kube-proxy runs in
//	cluster.ProxySyncedAt()            // when kube-proxy last synced its rules (its metrics)
//	cluster.KubeProxy(), cluster.ControllerManager() // their *Process (logs, Kill)
//	cluster.Client()                   // controller-runtime client: Kubernetes, apiextensions and tripswitch types
//	cluster.Config(), cluster.Scheme()
//	cluster.Kubeconfig()               // path, for child processes and kubectl
//	cluster.RunDir()                   // logs, kubeconfig, built binaries; kept when the run fails (or E2E_KEEP=1)
//	cluster.NewNamespace("story")      // a Kubernetes namespace, deleted in cleanup
//	cluster.ServiceAddress(ns, "svc")  // "clusterIP:port" of the Service's first port
//	cluster.WriteLogTails(w, 30)       // for failures: the end of every log
//	cluster.WriteNetworkState(w)       // for failures: iptables, nftables, routes, ICMP counters
//
// To run specs in both proxy modes, use an Ordered container per mode whose BeforeAll calls
// SetProxyMode (see smoke_test.go).
//
// # More nodes
//
// AddNode adds a node to the cluster: a network namespace of its own (its host network
// namespace) with its address (10.250.k.1) on its loopback, its own kube-proxy, a Node object
// with the labels given (such as topology.kubernetes.io/zone) and pods of its own, from
// 10.244.(200+k).0/24. It is routed to the first node over a veth pair, and through it to the
// other nodes, as a flat routed network would carry it. Everything goes in the current Ginkgo
// node's cleanup:
//
//	node2 := cluster.AddNode("node2", map[string]string{corev1.LabelTopologyZone: "zone-b"}, rig.NFTables)
//	b := node2.NewBackend(ns, "payments-0", labels)       // a backend on node2
//	pod := node2.NewHostPod(ns, "agent-node2", labels, ports) // a hostNetwork Pod (a DaemonSet's)
//	cmd := node2.Net.Command(ctx, bin, args...)           // a program in node2's host namespace
//	node2.Net.HTTPClient(time.Second)                     // calls from node2
//	node2.KubeProxyMetricsURL(), node2.KubeProxy()
//	heal := cluster.Partition(node2) // drop the first node's own traffic to and from node2 (not what it forwards)
//	cluster.ForwardAPI()             // a kubeconfig that reaches the API server from pods and other nodes
//
// # Pods and backends
//
// NewPod plays a kubelet for a pod that runs something of the test's: a pod namespace and a
// Pod object (nodeName node1, the labels and container ports) whose status says Running
// with the namespace's address, not Ready until SetReady or ProbeReadiness says so:
//
//	pod := cluster.NewPod(ns, "responder-0", labels, []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}})
//	cluster.StartCommand("responder-0", pod.Net.Command(ctx, bin, args...)) // a program inside the pod
//	pod.ProbeReadiness("http://" + pod.IP() + ":8081/readyz")              // Ready follows a GET every 200ms (3 failures: not Ready)
//	pod.SetReady(true)                                                      // or set it by hand
//
// NewBackend is a Ready Pod (container ports "http", "grpc" and "stream") that serves
// HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on BackendHTTPPort, the gRPC health service
// and EchoService on BackendGRPCPort, and a line protocol on BackendStreamPort, so Kubernetes'
// EndpointSlice controller publishes it for Services that select it; its answers are
// switchable:
//
//	b := cluster.NewBackend(ns, "payments-0", map[string]string{"app": "payments"})
//	b.SetBehavior(rig.Unavailable)  // rig.OK (200) | rig.Unavailable (503) | rig.Hang | rig.Refuse
//	b.SetProbeBehavior(rig.Hang)    // what probes (User-Agent tripswitch-probe, gRPC health) see; "" follows SetBehavior
//	b.SetReady(false)               // the Pod's Ready condition
//	b.Requests()                    // rig.Requests{Probes: ..., Clients: ...}
//	b.ResetRequests()
//	b.IP(), b.Addr()                // the pod's address; ip:8080
//	b.GRPCAddr(), b.StreamAddr()    // ip:9090; ip:7070
//
// Every HTTP answer names the backend in the BackendHeader (X-Backend) response header.
// EchoService ("tripswitch.e2e.Echo", written without generated code: call EchoCallMethod
// with grpc.ClientConn.Invoke and wrapperspb.StringValue) sends it as the header metadata
// x-backend, and answers OK with a reply and Unavailable with status UNAVAILABLE. The stream
// server answers each line "ping <n>" with "pong <n> <backend>" (OK) or "error <n> <backend>"
// (Unavailable), and not at all when it hangs. Every behaviour applies to all three ports;
// Refuse closes every listener and connection.
//
// # Clients and load
//
//	clients := rig.NewClients(20)                       // 20 pod namespaces, no Pod objects
//	a := clients[0].Get(target)                         // one GET: an Attempt
//	a = clients[0].Attempt(ctx, rig.LoadSpec{...})      // one attempt as a spec says
//	results := clients.Run(rig.LoadSpec{                // blocks for Duration, then waits for attempts in flight
//		Target:   cluster.ServiceAddress(ns, "payments"),
//		Rate:     50,              // new connections a second, per client
//		Duration: 3 * time.Second,
//		Timeout:  2 * time.Second, // per attempt (the default)
//		Mode:     rig.HTTPGet,     // or rig.TCPConnect
//	})
//	load := clients.Start(spec)                         // in the background
//	load.Snapshot()                                     // what has ended so far
//	results = load.Stop()                               // stop and wait
//
// In these modes each connection makes one attempt; each Attempt records its Start, Latency, Connect time,
// Outcome (rig.Responded with Status and the Headers asked for, rig.Connected,
// rig.Refused, rig.Reset, rig.ConnectTimeout, rig.ResponseTimeout, rig.Unreachable,
// rig.OtherError with Err) and the backend that answered (Attempt.Backend). Clients close
// with a reset, so a thousand connections a second leave no TIME_WAIT sockets. Results have
// helpers: Count, Share, Outcomes, Statuses, Backends, Percentile, Between (a time window),
// With (outcomes), Where, First, and String for a one-line summary.
//
// kube-proxy steers only new connections, and real callers pool theirs. The pooled modes
// give every client one pool, opened through its pod, that carries Rate calls a second
// (each in a goroutine of its own, so a hanging backend makes the pool open more
// connections, as it would in production), and the same Results:
//
//	load := clients.Start(rig.LoadSpec{Target: clusterIP + ":9090", Host: "payments." + ns, Mode: rig.GRPC})
//	// rig.HTTPKeepAlive: http.DefaultTransport's clone (HTTP/1.1 keep-alive, Go's retries)
//	// rig.H2C:           one multiplexed HTTP/2 connection with prior knowledge
//	// rig.GRPC:          a grpc.ClientConn with default settings calling EchoService
//	// rig.TCPStream:     one stream connection ("ping <n>"), one call at a time, like a database's
//	results := load.Stop()           // waits for calls in flight, then closes every pool
//	conns := load.Conns()            // rig.ConnRecords: one per connection the pools opened
//	conns.To("payments-0").Ends()    // map[rig.ConnEnd]int: how they ended
//	pool := clients[0].NewPool(spec) // or one client's pool, for calls made by hand:
//	a = pool.Call(ctx)               // one call; pool.Conns(), pool.Close() (else in cleanup)
//
// A pooled Attempt also records which of its client's connections carried it (Conn, 1, 2, ...;
// 0 for none) and whether that one had carried an earlier call (Reused). GRPC maps status OK
// to Responded 200, an UNAVAILABLE that a server sent to Responded 503 (its metadata
// x-backend and x-tripswitch-breaker recorded as the X-Backend and X-Tripswitch-Breaker
// headers), DEADLINE_EXCEEDED to a timeout, and an UNAVAILABLE of gRPC's own (the connection
// failed) to what failed: Refused, Reset and so on. TCPStream maps "pong" to 200 and "error"
// to 503. A ConnRecord tells the client, the connection's number, who answered on it first
// (Backend: a backend's name, rig.ResponderBackend if the answer carried
// X-Tripswitch-Breaker, "" if nothing answered), how many calls it carried, when it opened,
// and when and how it ended, as its client saw it: rig.ConnReset (ECONNRESET or EPIPE),
// rig.ConnClosedByPeer (EOF), rig.ConnClosed (the client closed it: Connection: close,
// GOAWAY, a surplus idle connection), rig.ConnTimeout (a call gave up on it), rig.ConnFailed
// (another error, in Err), or rig.ConnOpen (open when the load stopped).
//
// # Processes
//
// StartProcess runs a program in the node namespace with KUBECONFIG set to the rig's
// kubeconfig and its output in <run dir>/<name>.log, and stops it in cleanup; the tripswitch
// manager is built with GoBuild:
//
//	mgr := cluster.StartProcess("manager", cluster.GoBuild("./cmd/manager"), "--health-probe-bind-address=127.0.0.1:0")
//	mgr.Kill()      // SIGKILL, and wait
//	mgr.Stop()      // SIGTERM, then SIGKILL after 10 s
//	mgr.Signal(syscall.SIGSTOP)
//	mgr.Exited(), mgr.Done(), mgr.Err(), mgr.Log(), mgr.Tail(20), mgr.LogPath
//
// StartCommand does the same for a prepared *exec.Cmd (its Env, Dir). A process that exits
// when nobody stopped it is reported in the spec's output with the end of its log. Children
// are killed if the test process dies (Pdeathsig).
package rig
