package envtest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/confirm"
	"github.com/tripswitch/tripswitch/internal/controller"
	"github.com/tripswitch/tripswitch/internal/observer"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// serviceAccountToken creates the service account (once) and returns a token of it for the
// audience, as a projected token volume would hold.
func serviceAccountToken(ctx context.Context, ns, name, audience string) string {
	GinkgoHelper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, sa); err != nil {
		Expect(k8sClient.Create(ctx, sa)).To(Succeed())
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience},
		ExpirationSeconds: ptrTo(int64(600))}}
	Expect(k8sClient.SubResource("token").Create(ctx, sa, tr)).To(Succeed())
	return tr.Status.Token
}

func ptrTo[T any](v T) *T { return &v }

var _ = Describe("An observer", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("knows the manager by its service-account token for the observer audience, and nobody else", func(ctx SpecContext) {
		reviewer := &observer.TokenReviewer{Client: k8sClient, Clock: clock.RealClock{}, Good: time.Minute, Bad: 10 * time.Second}
		manager := serviceAccountToken(ctx, ns, "tripswitch-controller-manager", observer.Audience)
		user, err := reviewer.Authenticate(ctx, manager)
		Expect(err).NotTo(HaveOccurred())
		Expect(user).To(Equal(fmt.Sprintf("system:serviceaccount:%s:tripswitch-controller-manager", ns)))

		By("refusing the manager's token for another audience, the API server's own")
		_, err = reviewer.Authenticate(ctx, serviceAccountToken(ctx, ns, "tripswitch-controller-manager", "https://kubernetes.default.svc"))
		Expect(err).To(HaveOccurred())

		By("telling another service account's token apart, and refusing a made-up one")
		user, err = reviewer.Authenticate(ctx, serviceAccountToken(ctx, ns, "default", observer.Audience))
		Expect(err).NotTo(HaveOccurred())
		Expect(user).To(Equal(fmt.Sprintf("system:serviceaccount:%s:default", ns)))
		_, err = reviewer.Authenticate(ctx, "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl")
		Expect(err).To(HaveOccurred())
	})

	It("reads the endpoints a breaker's front publishes, and only those", func(ctx SpecContext) {
		startManager(managerOptions{})
		bs := newBackends(2)
		createTarget(ctx, ns, "payments-backend", bs[0].port, bs...)
		createBreaker(ctx, ns, "payments", `{target: {service: payments-backend, port: http}, probe: {interval: 200ms, timeout: 150ms}}`)
		Eventually(front(ctx, ns, "payments")).Should(HaveField("Ready", 2))

		breakers := observer.ClusterBreakers{Reader: k8sClient}
		cb, err := breakers.Get(ctx, types.NamespacedName{Namespace: ns, Name: "payments"})
		Expect(err).NotTo(HaveOccurred())
		published, err := breakers.Published(ctx, cb)
		Expect(err).NotTo(HaveOccurred())
		want := map[netip.AddrPort]bool{}
		for _, b := range bs {
			want[netip.AddrPortFrom(netip.MustParseAddr(b.address()), uint16(b.port))] = true
		}
		Expect(published).To(Equal(want), "the front's slices, not the target's: what tripswitch publishes")
	})
})

// observerNodes starts an observer server per node on loopback, as the agents on those nodes
// would serve: the API server reviews the manager's token, the breaker and its front are read
// from the API server, and probes reach the 192.0.2.N backends through the suite's map.
// It returns the manager's Confirmer, asking them from node-a.
func observerNodes(ctx context.Context, ns string, nodes ...string) *observer.Confirmer {
	GinkgoHelper()
	const sa = "tripswitch-controller-manager"
	tokenFile := filepath.Join(GinkgoT().TempDir(), "token")
	Expect(os.WriteFile(tokenFile, []byte(serviceAccountToken(ctx, ns, sa, observer.Audience)), 0o600)).To(Succeed())
	addressMap, err := probe.ParseAddressMap("192.0.2.0/24=127.0.0.0/24")
	Expect(err).NotTo(HaveOccurred())
	var peers []observer.Peer
	for _, node := range nodes {
		srv := &observer.Server{Node: node, Allowed: "system:serviceaccount:" + ns + ":" + sa,
			Auth:     &observer.TokenReviewer{Client: k8sClient, Clock: clock.RealClock{}, Good: time.Minute, Bad: time.Second},
			Breakers: observer.ClusterBreakers{Reader: k8sClient},
			Compile: func(cb *tripswitchv1alpha1.CircuitBreaker) (probe.Spec, error) {
				spec := cb.Resolve()
				run, err := controller.Compile(&spec)
				return run.Probe, err
			},
			NewProber: probe.NewFactory(addressMap.Dialer(probe.LoopbackOnly((&net.Dialer{}).DialContext)), clock.RealClock{}).New}
		hs := httptest.NewServer(srv)
		DeferCleanup(hs.Close)
		peers = append(peers, observer.Peer{Observer: confirm.Observer{Name: node}, URL: hs.URL})
	}
	client := &observer.Client{HTTP: &http.Client{}, Token: observer.TokenFile(tokenFile)}
	return observer.NewConfirmer(client, staticPeers{leader: confirm.Observer{Name: "node-a"}, peers: peers}, clock.RealClock{}, confirm.DefaultHealth)
}

type staticPeers struct {
	leader confirm.Observer
	peers  []observer.Peer
}

func (s staticPeers) Peers(context.Context) (confirm.Observer, []observer.Peer, error) {
	return s.leader, s.peers, nil
}

// sickManagerNetwork breaks every probe the manager sends, as a bad route from its node
// would, while the targets and every other node are fine.
func sickManagerNetwork(probe.DialFunc) probe.DialFunc {
	return func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("connect: no route to host")
	}
}

// tripWhenBothFail creates the breaker payments with spec on two backends, waits until its
// front publishes both, makes both fail, and returns its status once it is Open.
func tripWhenBothFail(ctx context.Context, ns, spec string) tripswitchv1alpha1.CircuitBreakerStatus {
	GinkgoHelper()
	bs := newBackends(2)
	createTarget(ctx, ns, "payments-backend", bs[0].port, bs...)
	createBreaker(ctx, ns, "payments", spec)
	Eventually(front(ctx, ns, "payments")).Should(HaveField("Ready", 2))
	for _, b := range bs {
		b.failing.Store(true)
	}
	Eventually(status(ctx, ns, "payments"), 10*time.Second).Should(HaveField("State", tripswitchv1alpha1.StateOpen))
	return status(ctx, ns, "payments")(Default)
}

func confirmationOf(st tripswitchv1alpha1.CircuitBreakerStatus) *metav1.Condition {
	return meta.FindStatusCondition(st.Conditions, tripswitchv1alpha1.ConditionConfirmation)
}

func eventsWithReason(ctx context.Context, ns, reason string) func(Gomega) []eventsv1.Event {
	return func(g Gomega) []eventsv1.Event {
		var events eventsv1.EventList
		g.Expect(k8sClient.List(ctx, &events, client.InNamespace(ns))).To(Succeed())
		return slices.DeleteFunc(events.Items, func(e eventsv1.Event) bool { return e.Reason != reason })
	}
}

var _ = Describe("A second opinion", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	const spec = `{target: {service: payments-backend, port: http}, probe: {interval: 200ms, timeout: 150ms},
		trip: {consecutiveFailures: 3, confirm: {observers: 2}}, recovery: {openDuration: 1m}}`

	It("holds a trip that only the manager's node sees, keeps every endpoint published, and says who sees the target healthy", func(ctx SpecContext) {
		startManager(managerOptions{confirmer: observerNodes(ctx, ns, "node-b", "node-c"), dial: sickManagerNetwork})
		bs := newBackends(2)
		createTarget(ctx, ns, "payments-backend", bs[0].port, bs...)
		createBreaker(ctx, ns, "payments", spec)

		Eventually(status(ctx, ns, "payments"), 10*time.Second).Should(HaveField("Confirmation",
			And(Not(BeNil()), HaveField("Outcome", "Refuted"))))
		st := status(ctx, ns, "payments")(Default)
		Expect(st.Confirmation.Message).To(Equal("held: 2 of 3 observers see payments healthy (node-b, node-c); node-a sees it failing"))
		Expect(st.Confirmation.Rule).To(Equal("ConsecutiveFailures"))
		Expect(st.Confirmation.Votes).To(HaveLen(3))
		Expect(st.Confirmation.Votes[0]).To(And(HaveField("Observer", "node-a"), HaveField("Verdict", "Failing")))
		Expect(st.Confirmation.HeldUntil).NotTo(BeNil())
		Expect(confirmationOf(st)).To(And(HaveField("Status", metav1.ConditionFalse), HaveField("Reason", tripswitchv1alpha1.ReasonTripRefuted)))
		Eventually(eventsWithReason(ctx, ns, tripswitchv1alpha1.ReasonTripRefuted)).ShouldNot(BeEmpty())

		Consistently(status(ctx, ns, "payments"), 2*time.Second).Should(HaveField("State", tripswitchv1alpha1.StateClosed),
			"nothing is taken away while the observers reach the target")
		Expect(front(ctx, ns, "payments")(Default)).To(HaveField("Ready", 2))
	})

	It("trips on a real failure once an observer agrees, and the transition says who voted", func(ctx SpecContext) {
		startManager(managerOptions{confirmer: observerNodes(ctx, ns, "node-b", "node-c")})
		st := tripWhenBothFail(ctx, ns, spec)
		Expect(st.TransitionMessage).To(ContainSubstring("confirmed: "))
		Expect(st.Confirmation.Outcome).To(Equal("Confirmed"))
		Expect(confirmationOf(st)).To(HaveField("Reason", tripswitchv1alpha1.ReasonTripConfirmed))
	})

	It("keeps publishing an endpoint that only the manager's node cannot reach", func(ctx SpecContext) {
		bs := newBackends(3)
		unreachable := bs[1].address()
		startManager(managerOptions{confirmer: observerNodes(ctx, ns, "node-b", "node-c"),
			// A bad route from the manager's node to one pod's node.
			dial: func(next probe.DialFunc) probe.DialFunc {
				return func(ctx context.Context, network, address string) (net.Conn, error) {
					if host, _, _ := net.SplitHostPort(address); host == unreachable {
						return nil, errors.New("connect: no route to host")
					}
					return next(ctx, network, address)
				}
			}})
		createTarget(ctx, ns, "payments-backend", bs[0].port, bs...)
		createBreaker(ctx, ns, "payments", `{target: {service: payments-backend, port: http},
			probe: {interval: 200ms, timeout: 150ms}, trip: {consecutiveFailures: 3, confirm: {observers: 2}},
			ejection: {consecutiveFailures: 2}, recovery: {openDuration: 1m}}`)

		Eventually(status(ctx, ns, "payments"), 10*time.Second).Should(HaveField("Confirmation",
			And(Not(BeNil()), HaveField("Outcome", "Refuted"))))
		st := status(ctx, ns, "payments")(Default)
		endpoint := net.JoinHostPort(unreachable, strconv.Itoa(int(bs[1].port)))
		Expect(st.Confirmation).To(And(HaveField("Endpoint", endpoint), HaveField("Rule", "ConsecutiveFailures"),
			HaveField("Message", "held: 2 of 3 observers see endpoint "+endpoint+" of payments healthy (node-b, node-c); node-a sees it failing")))
		Consistently(front(ctx, ns, "payments"), 2*time.Second).Should(HaveField("Ready", 3),
			"the endpoint stays published while other nodes reach it")
		Expect(status(ctx, ns, "payments")(Default).State).To(Equal(tripswitchv1alpha1.StateClosed))
	})

	It("falls back to the manager's own probes when no observer answers, and says so", func(ctx SpecContext) {
		closed := httptest.NewServer(http.NotFoundHandler())
		closed.Close()
		gone := observer.NewConfirmer(&observer.Client{HTTP: &http.Client{}, Token: func() (string, error) { return "unused", nil }},
			staticPeers{leader: confirm.Observer{Name: "node-a"}, peers: []observer.Peer{
				{Observer: confirm.Observer{Name: "node-b"}, URL: closed.URL},
				{Observer: confirm.Observer{Name: "node-c"}, URL: closed.URL},
			}}, clock.RealClock{}, confirm.DefaultHealth)
		startManager(managerOptions{confirmer: gone})
		st := tripWhenBothFail(ctx, ns, spec)
		Expect(confirmationOf(st)).To(And(HaveField("Status", metav1.ConditionUnknown), HaveField("Reason", tripswitchv1alpha1.ReasonUnconfirmed),
			HaveField("Message", ContainSubstring("deciding on node-a's probes alone, under the observer guard"))))
		Eventually(eventsWithReason(ctx, ns, tripswitchv1alpha1.ReasonUnconfirmed)).ShouldNot(BeEmpty())
	})
})
