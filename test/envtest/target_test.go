package envtest_test

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// readyCondition returns the breaker's Ready condition, or nil.
func readyCondition(ctx SpecContext, key client.ObjectKey) func(Gomega) *metav1.Condition {
	return func(g Gomega) *metav1.Condition {
		cb := &tripswitchv1alpha1.CircuitBreaker{}
		g.Expect(k8sClient.Get(ctx, key, cb)).To(Succeed())
		return meta.FindStatusCondition(cb.Status.Conditions, tripswitchv1alpha1.ConditionReady)
	}
}

var _ = Describe("A breaker whose target Service is missing", func() {
	It("reports TargetNotFound, then recovers by itself when the Service appears", func(ctx SpecContext) {
		ns := newNamespace()
		startManager(managerOptions{})

		Expect(k8sClient.Create(ctx, breakerFromYAML(ns, "payments", `{target: {service: payments-backend, port: http}}`))).To(Succeed())
		key := client.ObjectKey{Namespace: ns, Name: "payments"}
		Eventually(readyCondition(ctx, key)).Should(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", tripswitchv1alpha1.ReasonTargetNotFound),
			HaveField("Message", ContainSubstring(`"payments-backend"`)),
		))
		cb := &tripswitchv1alpha1.CircuitBreaker{}
		Expect(k8sClient.Get(ctx, key, cb)).To(Succeed())
		Expect(cb.Status.State).To(Equal(tripswitchv1alpha1.StateClosed), "a new breaker starts Closed")
		Expect(cb.Status.FrontService).To(Equal("payments"))
		Expect(cb.Status.ObservedGeneration).To(Equal(cb.Generation))
		Expect(meta.IsStatusConditionTrue(cb.Status.Conditions, tripswitchv1alpha1.ConditionReconciling)).To(BeTrue(),
			"kstatus must not call a breaker without its target Current")

		// A Service without the named port is still not enough.
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "payments-backend"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "metrics", Port: 9090}}},
		}
		Expect(k8sClient.Create(ctx, svc)).To(Succeed())
		Eventually(readyCondition(ctx, key)).Should(HaveField("Reason", tripswitchv1alpha1.ReasonTargetPortNotFound))

		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)})
		Expect(k8sClient.Update(ctx, svc)).To(Succeed())
		Eventually(readyCondition(ctx, key)).Should(And(
			HaveField("Status", metav1.ConditionTrue),
			HaveField("Reason", tripswitchv1alpha1.ReasonReconciled),
		))
		Expect(k8sClient.Get(ctx, key, cb)).To(Succeed())
		Expect(meta.FindStatusCondition(cb.Status.Conditions, tripswitchv1alpha1.ConditionReconciling)).To(BeNil())
	})
})
