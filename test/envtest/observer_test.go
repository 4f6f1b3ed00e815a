package envtest_test

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/observer"
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
