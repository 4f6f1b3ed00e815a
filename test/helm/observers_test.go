package helm_test

import (
	"slices"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

var _ = Describe("config/observers, the opt-in second opinion", func() {
	It("makes the agents observers the manager finds and may ask, and a real API server accepts it", func(ctx SpecContext) {
		// An install as the README says: config/default with the component.
		objects := kustomizeBuildObservers(GinkgoT())

		var manager appsv1.Deployment
		var agent appsv1.DaemonSet
		var service corev1.Service
		var binding rbacv1.ClusterRoleBinding
		var role rbacv1.ClusterRole
		for _, o := range objects {
			meta := o["metadata"].(object)
			var into any
			switch {
			case o["kind"] == "Deployment" && meta["name"] == "tripswitch-controller-manager":
				into = &manager
			case o["kind"] == "DaemonSet":
				into = &agent
			case o["kind"] == "Service" && meta["name"] == "tripswitch-agent":
				into = &service
			case o["kind"] == "ClusterRoleBinding" && meta["name"] == "tripswitch-agent-observer":
				into = &binding
			case o["kind"] == "ClusterRole" && meta["name"] == "tripswitch-agent-observer":
				into = &role
			default:
				continue
			}
			Expect(runtime.DefaultUnstructuredConverter.FromUnstructured(o, into)).To(Succeed())
		}

		By("the manager finds the agents through their Service, and is told its node and its token")
		m := manager.Spec.Template.Spec.Containers[0]
		Expect(m.Args).To(ContainElement("--observer-service=" + service.Namespace + "/" + service.Name))
		Expect(service.Spec.Ports).To(ContainElement(HaveField("Name", "observer")))
		Expect(service.Spec.Selector).To(Equal(agent.Spec.Selector.MatchLabels))
		Expect(m.Env).To(ContainElement(HaveField("ValueFrom.FieldRef.FieldPath", "spec.nodeName")))
		var token *corev1.Volume
		for i, v := range manager.Spec.Template.Spec.Volumes {
			if v.Projected != nil {
				token = &manager.Spec.Template.Spec.Volumes[i]
			}
		}
		Expect(token).NotTo(BeNil())
		Expect(token.Projected.Sources[0].ServiceAccountToken).To(HaveField("Audience", "tripswitch-observer"))
		Expect(m.VolumeMounts).To(ContainElement(And(HaveField("Name", token.Name),
			HaveField("MountPath", "/var/run/secrets/tripswitch.io/observer"))))

		By("the agents answer the manager's own service account only, on the Service's port")
		a := agent.Spec.Template.Spec.Containers[0]
		Expect(a.Args).To(ContainElement("--manager-service-account=" + manager.Namespace + "/" + manager.Spec.Template.Spec.ServiceAccountName))
		Expect(a.Ports).To(ContainElement(And(HaveField("Name", "observer"), HaveField("ContainerPort", int32(8493)))))
		Expect(binding.Subjects).To(ConsistOf(rbacv1.Subject{Kind: "ServiceAccount", Name: agent.Spec.Template.Spec.ServiceAccountName,
			Namespace: agent.Namespace}))
		Expect(role.Rules).To(ContainElement(HaveField("Resources", []string{"tokenreviews"})))
		Expect(slices.ContainsFunc(role.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Verbs, "delete") })).To(BeFalse())

		By("a real API server accepts the component's objects and the patched workloads")
		for _, ns := range []string{"observers-" + manager.Namespace, "observers-" + agent.Namespace} {
			Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		}
		for _, obj := range []client.Object{&manager, &agent, &service} {
			obj.SetNamespace("observers-" + obj.GetNamespace())
		}
		for _, obj := range []client.Object{&manager, &agent, &service, &role, &binding} {
			obj.SetResourceVersion("")
			Expect(k8sClient.Create(ctx, obj, client.DryRunAll)).To(Succeed(), "%T %s", obj, obj.GetName())
		}
	})
})
