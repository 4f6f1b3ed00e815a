package envtest_test

import (
	"context"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// responderPrefix is where the stories' responder endpoints live: TEST-NET-2, apart from the
// backends' 192.0.2.x. Nothing dials them; envtest has no kube-proxy.
const responderPrefix = "198.51.100."

// writeResponderSlice publishes the responder Service's endpoints as Kubernetes' EndpointSlice
// controller would: ready or not, on the listeners http and reset.
func writeResponderSlice(ctx context.Context, ns string, ready map[string]bool) {
	GinkgoHelper()
	slice := &discoveryv1.EndpointSlice{}
	key := client.ObjectKey{Namespace: ns, Name: "tripswitch-responder-abcde"}
	err := k8sClient.Get(ctx, key, slice)
	exists := err == nil
	if !exists {
		slice = &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: key.Name, Labels: map[string]string{
				discoveryv1.LabelServiceName: "tripswitch-responder", discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{
				{Name: ptr.To("http"), Port: ptr.To[int32](8480), Protocol: ptr.To(corev1.ProtocolTCP)},
				{Name: ptr.To("reset"), Port: ptr.To[int32](8481), Protocol: ptr.To(corev1.ProtocolTCP)},
			},
		}
	}
	slice.Endpoints = nil
	for _, addr := range []string{responderPrefix + "1", responderPrefix + "2"} {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, NodeName: ptr.To("node-" + addr),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready[addr]), Serving: ptr.To(ready[addr])}})
	}
	if exists {
		Expect(k8sClient.Update(ctx, slice)).To(Succeed())
	} else {
		Expect(k8sClient.Create(ctx, slice)).To(Succeed())
	}
}

// published is what a front's slices publish as ready: responder endpoints, on which port
// the front's "http" port reaches them, and the target's.
type published struct {
	Responders, Target int
	ResponderPort      int32
}

func frontPublishes(ctx context.Context, ns, name string) func(Gomega) published {
	return func(g Gomega) published {
		var list discoveryv1.EndpointSliceList
		g.Expect(k8sClient.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: tripswitchv1alpha1.ManagedBy})).To(Succeed())
		var out published
		for _, s := range list.Items {
			for _, e := range s.Endpoints {
				switch {
				case !ptr.Deref(e.Conditions.Ready, true):
				case strings.HasPrefix(e.Addresses[0], responderPrefix):
					out.Responders++
					for _, p := range s.Ports {
						if ptr.Deref(p.Name, "") == "http" {
							out.ResponderPort = ptr.Deref(p.Port, 0)
						}
					}
				default:
					out.Target++
				}
			}
		}
		return out
	}
}

func responderCondition(ctx context.Context, ns, name string) func(Gomega) *metav1.Condition {
	return func(g Gomega) *metav1.Condition {
		return meta.FindStatusCondition(status(ctx, ns, name)(g).Conditions, tripswitchv1alpha1.ConditionResponder)
	}
}

var _ = Describe("The open responder", func() {
	var ns string
	BeforeEach(func() {
		ns = newNamespace()
		startManager(managerOptions{responder: types.NamespacedName{Namespace: ns, Name: "tripswitch-responder"}})
	})

	It("answers for an Open breaker while a responder is ready, and falls back to the reject when none is", func(ctx SpecContext) {
		writeResponderSlice(ctx, ns, map[string]bool{responderPrefix + "1": true, responderPrefix + "2": true})
		bs := newBackends(2)
		createTarget(ctx, ns, "payments-backend", bs[0].port, bs...)
		createBreaker(ctx, ns, "payments", `{target: {service: payments-backend, port: http},
			probe: {interval: 100ms, timeout: 100ms}, trip: {consecutiveFailures: 3}, recovery: {openDuration: 1h}}`)
		Eventually(frontPublishes(ctx, ns, "payments")).Should(Equal(published{Target: 2}), "Closed publishes no responder")
		Expect(responderCondition(ctx, ns, "payments")(Default)).To(BeNil(), "no condition while the gate needs no responder")

		for _, b := range bs {
			b.failing.Store(true)
		}
		Eventually(frontPublishes(ctx, ns, "payments")).Should(Equal(published{Responders: 2, ResponderPort: 8480}),
			"Open publishes both ready responders on the HTTP listener, and the target's endpoints not ready")
		Eventually(status(ctx, ns, "payments")).Should(And(HaveField("State", tripswitchv1alpha1.StateOpen),
			HaveField("Endpoints.Responders", BeEquivalentTo(2)), HaveField("Endpoints.Published", BeZero())))
		Expect(responderCondition(ctx, ns, "payments")(Default)).To(And(
			HaveField("Status", metav1.ConditionTrue), HaveField("Reason", tripswitchv1alpha1.ReasonResponderPublished)))
		Expect(front(ctx, ns, "payments")(Default)).To(HaveField("All", 4), "the target's endpoints stay visible, not ready")

		// A responder's change reaches the breaker through the watch on the responder's
		// slices, well within the status sync period (10 s) that would bring it round anyway.
		By("an unready responder leaves the front at once")
		writeResponderSlice(ctx, ns, map[string]bool{responderPrefix + "2": true})
		Eventually(frontPublishes(ctx, ns, "payments"), 3*time.Second).Should(Equal(published{Responders: 1, ResponderPort: 8480}))

		By("with no ready responder, the front rejects as before and the condition says so")
		writeResponderSlice(ctx, ns, nil)
		Eventually(frontPublishes(ctx, ns, "payments"), 3*time.Second).Should(Equal(published{}))
		Eventually(responderCondition(ctx, ns, "payments")).Should(And(
			HaveField("Status", metav1.ConditionFalse), HaveField("Reason", tripswitchv1alpha1.ReasonNoReadyResponder),
			HaveField("Message", ContainSubstring("no ready endpoint of the responder Service"))))
		Expect(status(ctx, ns, "payments")(Default).Conditions).To(ContainElement(And(
			HaveField("Type", tripswitchv1alpha1.ConditionReady), HaveField("Status", metav1.ConditionTrue))),
			"an Open breaker without a responder is still reconciled")

		By("a responder that becomes ready is published again")
		writeResponderSlice(ctx, ns, map[string]bool{responderPrefix + "1": true})
		Eventually(frontPublishes(ctx, ns, "payments"), 3*time.Second).Should(Equal(published{Responders: 1, ResponderPort: 8480}))

		By("Closed takes the responder out and drops the condition")
		Expect(k8sClient.Patch(ctx, &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "payments"}},
			client.RawPatch(types.MergePatchType, []byte(`{"spec":{"mode":"ForceClosed"}}`)))).To(Succeed())
		Eventually(frontPublishes(ctx, ns, "payments")).Should(Equal(published{Target: 2}))
		Eventually(responderCondition(ctx, ns, "payments")).Should(BeNil())
	})

	It("shares HalfOpen's new connections between the trial endpoint and the responders", func(ctx SpecContext) {
		writeResponderSlice(ctx, ns, map[string]bool{responderPrefix + "1": true, responderPrefix + "2": true})
		bs := createLingeringHalfOpen(ctx, ns, "inventory", 3)
		Eventually(frontPublishes(ctx, ns, "inventory")).Should(Equal(published{Responders: 2, ResponderPort: 8480}))
		for _, b := range bs {
			b.failing.Store(false)
		}
		Eventually(frontPublishes(ctx, ns, "inventory"), 10*time.Second, time.Millisecond).Should(
			Equal(published{Responders: 2, Target: 1, ResponderPort: 8480}), "HalfOpen: one trial endpoint beside two responders")
		Eventually(frontPublishes(ctx, ns, "inventory"), 10*time.Second).Should(Equal(published{Target: 3}))
	})

	It("publishes no responder for whenOpen Reject", func(ctx SpecContext) {
		writeResponderSlice(ctx, ns, map[string]bool{responderPrefix + "1": true})
		b := newBackend()
		createTarget(ctx, ns, "orders-backend", b.port, b)
		createBreaker(ctx, ns, "orders", `{target: {service: orders-backend, port: http},
			gate: {endpointSlice: {whenOpen: Reject}}, mode: ForceOpen}`)
		Eventually(status(ctx, ns, "orders")).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
		Consistently(frontPublishes(ctx, ns, "orders"), time.Second).Should(Equal(published{}))
		Expect(responderCondition(ctx, ns, "orders")(Default)).To(BeNil())
	})

	It("resets a port the responder cannot speak", func(ctx SpecContext) {
		writeResponderSlice(ctx, ns, map[string]bool{responderPrefix + "1": true})
		b := newBackend()
		createTarget(ctx, ns, "db-backend", b.port, b)
		createBreaker(ctx, ns, "db", `{target: {service: db-backend, port: http}, probe: {tcp: {}}, mode: ForceOpen}`)
		// The port is named http, which by the naming convention is HTTP; an appProtocol on
		// the front says otherwise, and wins.
		Eventually(status(ctx, ns, "db")).Should(HaveField("GateState", tripswitchv1alpha1.StateOpen))
		svc := &corev1.Service{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "db"}, svc)).To(Succeed())
		svc.Spec.Ports[0].AppProtocol = ptr.To("postgresql")
		Expect(k8sClient.Update(ctx, svc)).To(Succeed())
		Eventually(frontPublishes(ctx, ns, "db")).Should(Equal(published{Responders: 1, ResponderPort: 8481}))
	})
})
