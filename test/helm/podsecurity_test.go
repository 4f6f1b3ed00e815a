package helm_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

var _ = Describe("Pod Security of config/default's namespaces", func() {
	It("admits the manager's and the responder's pods under restricted, and the agent's only in its privileged namespace", func(ctx SpecContext) {
		// config/default's namespaces, with their labels, under names of their own: the chart's
		// release lives in tripswitch-system.
		rename := func(ns string) string { return "podsec-" + ns }
		var workloads []object
		for _, o := range kustomizeBuild(GinkgoT()) {
			meta := o["metadata"].(object)
			switch o["kind"] {
			case "Namespace":
				labels := map[string]string{}
				for k, v := range meta["labels"].(object) {
					labels[k] = v.(string)
				}
				Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
					Name: rename(meta["name"].(string)), Labels: labels}})).To(Succeed())
			case "Deployment", "DaemonSet":
				workloads = append(workloads, o)
			}
		}
		Expect(workloads).To(HaveLen(3))
		// A pod from a workload's template, as its controller would create it, in namespace.
		pod := func(o object, namespace string) *corev1.Pod {
			GinkgoHelper()
			meta := o["metadata"].(object)
			template := o["spec"].(object)["template"].(object)
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: meta["name"].(string) + "-x"}}
			Expect(runtime.DefaultUnstructuredConverter.FromUnstructured(template["spec"].(object), &p.Spec)).To(Succeed())
			// The ServiceAccount admission wants the pod's account to exist.
			Expect(client.IgnoreAlreadyExists(k8sClient.Create(ctx, &corev1.ServiceAccount{
				ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: p.Spec.ServiceAccountName}}))).To(Succeed())
			return p
		}
		var agent object
		for _, o := range workloads {
			meta := o["metadata"].(object)
			Expect(k8sClient.Create(ctx, pod(o, rename(meta["namespace"].(string))), client.DryRunAll)).To(Succeed(),
				"%s %s/%s", o["kind"], meta["namespace"], meta["name"])
			if meta["labels"].(object)["app.kubernetes.io/component"] == "agent" {
				agent = o
			}
		}
		Expect(agent).NotTo(BeNil())
		By("the agent's pod in the manager's namespace is refused: that is why it has its own")
		err := k8sClient.Create(ctx, pod(agent, rename(installNamespace)), client.DryRunAll)
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(And(ContainSubstring(`violates PodSecurity "restricted:latest"`),
			ContainSubstring("host namespaces"), ContainSubstring("NET_ADMIN"), ContainSubstring("NET_RAW")))
	})
})
