package e2e_test

import (
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tripswitch/tripswitch/test/e2e/rig"
)

// The smoke specs prove the rig itself, in each kube-proxy mode: Kubernetes' controllers run,
// kube-proxy routes pods' connections, and pods see its REJECT as a real pod would.
var _ = Describe("The data-plane rig", func() {
	for _, mode := range rig.ProxyModes {
		Context(fmt.Sprintf("with kube-proxy in %s mode", mode), Ordered, func() {
			var ns string

			BeforeAll(func() {
				cluster.SetProxyMode(mode)
				ns = cluster.NewNamespace("smoke-" + string(mode))
			})

			It("routes pods through a ClusterIP to every backend the EndpointSlice controller publishes", func(ctx SpecContext) {
				c := cluster.Client()
				labels := map[string]string{"app": "web"}
				names := []string{"web-0", "web-1", "web-2"}
				for _, name := range names {
					cluster.NewBackend(ns, name, labels)
				}
				Expect(c.Create(ctx, service(ns, "web", labels))).To(Succeed())

				By("Kubernetes' EndpointSlice controller publishing the three ready pods")
				Eventually(func(g Gomega) {
					g.Expect(readyAddresses(ctx, g, ns, "web", "endpointslice-controller.k8s.io")).To(HaveLen(3))
				}).Should(Succeed())

				By("kube-proxy sending pods' connections to each of them")
				target := cluster.ServiceAddress(ns, "web")
				clients := rig.NewClients(20)
				seen := map[string]bool{}
				Eventually(func() map[string]bool {
					for _, cl := range clients {
						seen[cl.Get(target).Backend()] = true
					}
					return seen
				}).Should(SatisfyAll(HaveKey("web-0"), HaveKey("web-1"), HaveKey("web-2")))

				results := clients.Run(rig.LoadSpec{Target: target, Rate: 10, Duration: 2 * time.Second})
				AddReportEntry(fmt.Sprintf("%s: 20 pods x 10 connections/s to 3 ready backends", mode), results.String())
				Expect(results.Count(rig.Responded)).To(Equal(len(results)), "%s", results)
				Expect(results.Statuses()).To(HaveKeyWithValue(200, len(results)))
				Expect(results.Backends()).To(SatisfyAll(HaveLen(3), HaveKey("web-0"), HaveKey("web-1"), HaveKey("web-2")))
			})

			It("refuses pods when a selectorless Service has no ready endpoint, and shows what the ICMP rate limit does to that", func(ctx SpecContext) {
				c := cluster.Client()
				Expect(c.Create(ctx, service(ns, "closed", nil))).To(Succeed())
				Expect(c.Create(ctx, slice(ns, "closed", "10.244.255.254", false))).To(Succeed())
				target := cluster.ServiceAddress(ns, "closed")

				By("kube-proxy rejecting connections to the ClusterIP")
				// A client of its own, so that waiting spends none of the measured clients' ICMP budget.
				waiter := rig.NewClients(1)[0]
				Eventually(func() rig.Outcome { return waiter.Get(target).Outcome }).Should(Equal(rig.Refused))

				for _, rate := range []int{50, 5} {
					By(fmt.Sprintf("20 fresh pods opening %d connections a second each", rate))
					results := rig.NewClients(20).Run(rig.LoadSpec{Target: target, Rate: rate, Duration: 3 * time.Second, Mode: rig.TCPConnect})
					AddReportEntry(fmt.Sprintf("%s: 20 pods x %d connections/s to a Service without ready endpoints", mode, rate),
						fmt.Sprintf("%.1f%% waited out the 2s timeout (the ICMP rate limit); %s", 100*results.Share(rig.ConnectTimeout), results))
					Expect(results.Count(rig.Connected)).To(BeZero(), "%s", results)
					Expect(results.Count(rig.Refused)).To(BeNumerically(">", 0), "%s", results)
					Expect(results.Count(rig.Refused, rig.ConnectTimeout)).To(Equal(len(results)), "%s", results)
				}
			})

			It("has the garbage collector delete an EndpointSlice whose owning Service is deleted", func(ctx SpecContext) {
				c := cluster.Client()
				svc := service(ns, "owner", nil)
				Expect(c.Create(ctx, svc)).To(Succeed())
				owned := slice(ns, "owner", "10.244.255.253", true)
				owned.OwnerReferences = []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID,
					Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
				}}
				Expect(c.Create(ctx, owned)).To(Succeed())

				Expect(c.Delete(ctx, svc)).To(Succeed())
				Eventually(func() error {
					return c.Get(ctx, client.ObjectKeyFromObject(owned), &discoveryv1.EndpointSlice{})
				}).Should(Satisfy(apierrors.IsNotFound))
			})
		})
	}
})

// service returns a Service with port 80 to the pods' "http" port; with a nil selector it is
// selectorless.
func service(ns, name string, selector map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Selector: selector,
			Ports: []corev1.ServicePort{{
				Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http"),
			}},
		},
	}
}

// slice returns a hand-made EndpointSlice for Service svc with one endpoint.
func slice(ns, svc, address string, ready bool) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: svc + "-e2e",
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc,
				discoveryv1.LabelManagedBy:   "e2e.tripswitch.io",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses: []string{address},
			Conditions: discoveryv1.EndpointConditions{
				Ready: ptr.To(ready), Serving: ptr.To(ready), Terminating: ptr.To(false),
			},
			NodeName: ptr.To(rig.NodeName),
		}},
		Ports: []discoveryv1.EndpointPort{{
			Name: ptr.To("http"), Port: ptr.To(int32(rig.BackendHTTPPort)), Protocol: ptr.To(corev1.ProtocolTCP),
		}},
	}
}

// readyAddresses returns the ready endpoint addresses of Service svc's EndpointSlices managed
// by managedBy.
func readyAddresses(ctx SpecContext, g Gomega, ns, svc, managedBy string) []string {
	var slices discoveryv1.EndpointSliceList
	g.Expect(cluster.Client().List(ctx, &slices, client.InNamespace(ns), client.MatchingLabels{
		discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: managedBy,
	})).To(Succeed())
	var addresses []string
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if ptr.Deref(e.Conditions.Ready, false) {
				addresses = append(addresses, e.Addresses...)
			}
		}
	}
	return addresses
}
