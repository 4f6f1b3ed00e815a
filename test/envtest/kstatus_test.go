package envtest_test

import (
	"time"

	kstatuspkg "github.com/fluxcd/cli-utils/pkg/kstatus/status"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// kstatus computes the status Flux and kstatus-based tools see for a breaker, with its state.
func kstatus(ctx SpecContext, ns, name string) func(Gomega) string {
	return func(g Gomega) string {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(tripswitchv1alpha1.GroupVersion.WithKind("CircuitBreaker"))
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, u)).To(Succeed())
		res, err := kstatuspkg.Compute(u)
		g.Expect(err).NotTo(HaveOccurred())
		state, _, _ := unstructured.NestedString(u.Object, "status", "state")
		return state + "/" + res.Status.String()
	}
}

var _ = Describe("kstatus, as Flux computes it", func() {
	It("is Current for Closed, Open and HalfOpen breakers, InProgress for an unobserved generation or a missing target", func(ctx SpecContext) {
		ns := newNamespace()
		stop := startManager(managerOptions{})
		b := newBackend()
		createTarget(ctx, ns, "kstat-backend", b.port, b)
		// One endpoint and two trials keep HalfOpen for about one interval: long enough to see.
		createBreaker(ctx, ns, "kstat", `{target: {service: kstat-backend, port: http},
			probe: {interval: 1s, timeout: 200ms}, trip: {consecutiveFailures: 1},
			recovery: {openDuration: 2s, halfOpen: {trialProbes: 2, successThreshold: 2}}}`)
		Eventually(kstatus(ctx, ns, "kstat")).Should(Equal("Closed/Current"))
		b.failing.Store(true)
		Eventually(kstatus(ctx, ns, "kstat"), 5*time.Second).Should(Equal("Open/Current"), "an Open breaker is healthy and reconciled")
		b.failing.Store(false)
		Eventually(kstatus(ctx, ns, "kstat"), 10*time.Second, 20*time.Millisecond).Should(Equal("HalfOpen/Current"))
		Eventually(kstatus(ctx, ns, "kstat"), 10*time.Second).Should(Equal("Closed/Current"))

		createBreaker(ctx, ns, "kstat-missing", `{target: {service: nowhere, port: http}}`)
		Eventually(kstatus(ctx, ns, "kstat-missing")).Should(Equal("Closed/InProgress"), "a breaker without its target is not Current")

		stop()
		patchBreaker(ctx, ns, "kstat", func(cb *tripswitchv1alpha1.CircuitBreaker) { cb.Spec.Mode = tripswitchv1alpha1.ModeObserve })
		Expect(kstatus(ctx, ns, "kstat")(Default)).To(Equal("Closed/InProgress"), "a generation the manager has not seen")
		startManager(managerOptions{})
		Eventually(kstatus(ctx, ns, "kstat")).Should(Equal("Closed/Current"))
	})
})
