package envtest_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

var _ = Describe("The installer, dist/install.yaml", func() {
	It("is accepted by the API server, object by object, in a server-side dry run", func(ctx SpecContext) {
		data, err := os.ReadFile(filepath.Join(repoRoot, "dist", "install.yaml"))
		Expect(err).NotTo(HaveOccurred(), "run `make build-installer` (make test does) to write dist/install.yaml")
		decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		kinds := map[string]int{}
		var names, images []string
		for {
			obj := &unstructured.Unstructured{}
			if err := decoder.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else {
				Expect(err).NotTo(HaveOccurred())
			}
			if len(obj.Object) == 0 {
				continue
			}
			kinds[obj.GetKind()]++
			if obj.GetKind() == "Deployment" || obj.GetKind() == "DaemonSet" {
				containers, _, err := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
				Expect(err).NotTo(HaveOccurred())
				for _, c := range containers {
					images = append(images, c.(map[string]any)["image"].(string))
				}
			}
			names = append(names, obj.GetKind()+"/"+obj.GetNamespace()+"/"+obj.GetName())
			if obj.GetKind() == "Namespace" {
				// A dry run creates nothing, and the namespaced objects need their namespace.
				err := k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: obj.GetName()}})
				Expect(client.IgnoreAlreadyExists(err)).To(Succeed())
			}
			err := k8sClient.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), client.FieldOwner("install-test"),
				client.ForceOwnership, client.DryRunAll)
			Expect(err).NotTo(HaveOccurred(), "%s %s", obj.GetKind(), obj.GetName())
			Expect(apierrors.IsInvalid(err)).To(BeFalse())
		}
		Expect(kinds).To(Equal(map[string]int{"Namespace": 2, "CustomResourceDefinition": 1, "ServiceAccount": 3, "Role": 1,
			"RoleBinding": 1, "ClusterRole": 7, "ClusterRoleBinding": 4, "Service": 2, "Deployment": 2, "DaemonSet": 1,
			"PodDisruptionBudget": 1}))
		// The manager, the responder and the node agent run the one image that make set (IMG),
		// not kustomize's placeholder.
		Expect(images).To(HaveLen(3))
		Expect(images).To(HaveEach(images[0]))
		Expect(images[0]).NotTo(HavePrefix("controller:"))
		// The manager's --responder-service default names the installed responder.
		Expect(names).To(ContainElements("Service/tripswitch-system/tripswitch-responder",
			"Deployment/tripswitch-system/tripswitch-responder", "PodDisruptionBudget/tripswitch-system/tripswitch-responder"))
		// The node agent in a namespace of its own, which admits privileged pods.
		Expect(names).To(ContainElements("Namespace//tripswitch-agent", "DaemonSet/tripswitch-agent/tripswitch-agent",
			"ServiceAccount/tripswitch-agent/tripswitch-agent"))
	})
})
