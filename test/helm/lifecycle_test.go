package helm_test

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"helm.sh/helm/v4/pkg/action"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	chartloader "helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/kube"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/gate"
)

const (
	releaseName      = "tripswitch"
	releaseNamespace = "tripswitch-system"
	hookJob          = "tripswitch-release-fronts"
	managerName      = "tripswitch-controller-manager"
	agentName        = "tripswitch-agent"
)

func loadChart() *chart.Chart {
	GinkgoHelper()
	c, err := chartloader.Load(chartDir)
	Expect(err).NotTo(HaveOccurred())
	return c
}

var _ = Describe("The chart on a real API server", func() {
	It("is accepted object by object in a server-side dry run, CRDs and hooks included", func(ctx SpecContext) {
		rel := render(GinkgoT(), "tripswitch", "tripswitch-dryrun", map[string]any{"grafanaDashboard": map[string]any{"enabled": true},
			"coreDNSCustom": map[string]any{"enabled": true, "hosts": coreDNSHosts}})
		manifests := []string{rel.Manifest}
		for _, h := range rel.Hooks {
			manifests = append(manifests, h.Manifest)
		}
		Expect(client.IgnoreAlreadyExists(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tripswitch-dryrun"}}))).To(Succeed())
		kinds := map[string]int{}
		for _, m := range manifests {
			for _, o := range decode(GinkgoT(), m) {
				obj := &unstructured.Unstructured{Object: o}
				kinds[obj.GetKind()]++
				Expect(k8sClient.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), client.FieldOwner("helm-test"),
					client.ForceOwnership, client.DryRunAll)).To(Succeed(), "%s %s", obj.GetKind(), obj.GetName())
			}
		}
		// config/default's objects (but the Namespaces), the node agent's included, the
		// dashboard, kube-system/coredns-custom, and the hook's ServiceAccount, roles, bindings
		// and Job.
		Expect(kinds).To(Equal(map[string]int{"CustomResourceDefinition": 1, "ServiceAccount": 4, "Role": 2,
			"RoleBinding": 2, "ClusterRole": 8, "ClusterRoleBinding": 5, "Service": 2, "Deployment": 2, "DaemonSet": 1,
			"PodDisruptionBudget": 1, "ConfigMap": 2, "Job": 1}))
	})
})

var _ = Describe("helm install, upgrade, uninstall and install again", Ordered, func() {
	var (
		ns          string
		alive, dead *backend
		stopManager func()
	)

	BeforeAll(func(ctx SpecContext) {
		ns = "shop"
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		alive, dead = newBackend(), newBackend()
		dead.failing.Store(true)
		createTarget(ctx, ns, "alive-backend", alive)
		createTarget(ctx, ns, "dead-backend", dead)
	})
	AfterAll(func() {
		if stopManager != nil {
			stopManager()
		}
	})

	It("installs the CRD, RBAC, the Deployments and the agent's DaemonSet; the manager gates both fronts", func(ctx SpecContext) {
		helmInstall(ctx, releaseName, releaseNamespace, nil)
		crd := &apiextensionsv1.CustomResourceDefinition{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "circuitbreakers.tripswitch.io"}, crd)).To(Succeed())
		Expect(deployment(ctx, managerName)(Default)).NotTo(BeNil())
		Expect(daemonSet(ctx, agentName)(Default).Spec.Template.Spec.HostNetwork).To(BeTrue())
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: crd.Name}, crd)).To(Succeed())
			established := false
			for _, c := range crd.Status.Conditions {
				established = established || (c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue)
			}
			g.Expect(established).To(BeTrue())
		}).Should(Succeed())

		stopManager = startManager(releaseNamespace)
		for _, name := range []string{"alive", "dead"} {
			cb := &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
			Expect(yaml.Unmarshal([]byte(`{target: {service: `+name+`-backend, port: http},
				probe: {interval: 200ms, timeout: 100ms}, trip: {consecutiveFailures: 1}, recovery: {openDuration: 30m}}`), &cb.Spec)).To(Succeed())
			Expect(k8sClient.Create(ctx, cb)).To(Succeed())
		}
		Eventually(breakerState(ctx, ns, "alive")).Should(Equal("Closed trips=0"))
		Eventually(breakerState(ctx, ns, "dead")).Should(Equal("Open trips=1"))
		Eventually(front(ctx, ns, "alive")).Should(Equal(frontView{Ready: 1, Managers: []string{tripswitchv1alpha1.ManagedBy}}))
		// Open, and no responder runs (no kubelet): the front rejects.
		Eventually(front(ctx, ns, "dead")).Should(Equal(frontView{Ready: 0, Managers: []string{tripswitchv1alpha1.ManagedBy}}))
	})

	It("upgrades the Deployment and the DaemonSet from changed values, without touching the breakers or running the hook", func(ctx SpecContext) {
		helmUpgrade(ctx, releaseName, releaseNamespace, map[string]any{
			"manager": map[string]any{"replicas": 3, "flags": map[string]any{"status-sync-period": "5s"}},
			"agent":   map[string]any{"flags": map[string]any{"reset-guard-ttl": "30m"}}})
		d := deployment(ctx, managerName)(Default)
		Expect(d.Spec.Replicas).To(Equal(ptr.To[int32](3)))
		Expect(d.Spec.Template.Spec.Containers[0].Args).To(ContainElement("--status-sync-period=5s"))
		Expect(daemonSet(ctx, agentName)(Default).Spec.Template.Spec.Containers[0].Args).To(ContainElement("--reset-guard-ttl=30m"))
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: releaseNamespace, Name: hookJob}, &batchv1.Job{})).
			To(Satisfy(apierrors.IsNotFound))
		Consistently(breakerState(ctx, ns, "dead"), time.Second).Should(Equal("Open trips=1"))
		Expect(front(ctx, ns, "alive")(Default)).To(Equal(frontView{Ready: 1, Managers: []string{tripswitchv1alpha1.ManagedBy}}))
	})

	It("uninstalls: the hook stops the manager and every front keeps ready endpoints; every breaker stays", func(ctx SpecContext) {
		// An agent's pod that never stops (no kubelet): the agent holds no state, so neither
		// the hook nor Helm waits for it.
		ds := daemonSet(ctx, agentName)(Default)
		agentPod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: releaseNamespace, Name: agentName + "-node1", Labels: ds.Spec.Template.Labels},
			Spec:       *ds.Spec.Template.Spec.DeepCopy(),
		}
		agentPod.Spec.NodeName = "node1"
		Expect(k8sClient.Create(ctx, agentPod)).To(Succeed())
		DeferCleanup(func(ctx SpecContext) {
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, agentPod, client.GracePeriodSeconds(0)))).To(Succeed())
		})
		bg, cancel := context.WithCancel(context.Background())
		defer cancel()
		// What the cluster would do: the Deployment controller and the kubelet stop the
		// manager's pods once it is scaled to zero, and the Job controller runs the hook.
		go emulateDeploymentController(bg, stopManager)
		hookDone := make(chan error, 1)
		go func() { hookDone <- emulateJobController(bg) }()

		Expect(helmUninstall(releaseName, releaseNamespace)).To(Succeed())

		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: releaseNamespace, Name: managerName}, &appsv1.Deployment{})).
			To(Satisfy(apierrors.IsNotFound), "Helm removed the manager")
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: releaseNamespace, Name: agentName}, &appsv1.DaemonSet{})).
			To(Satisfy(apierrors.IsNotFound), "Helm removed the agent")
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: releaseNamespace, Name: hookJob}, &batchv1.Job{})).
			To(Satisfy(apierrors.IsNotFound), "the hook is deleted once it succeeded")
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "circuitbreakers.tripswitch.io"}, &apiextensionsv1.CustomResourceDefinition{})).To(Succeed())
		Expect(breakerState(ctx, ns, "alive")(Default)).To(Equal("Closed trips=0"))
		Expect(breakerState(ctx, ns, "dead")(Default)).To(Equal("Open trips=1"))
		released := frontView{Ready: 1, Managers: []string{gate.ReleasedManagedBy}}
		// The Open breaker's front included: it serves its target, as Kubernetes would.
		Expect(front(ctx, ns, "dead")(Default)).To(Equal(released))
		Expect(front(ctx, ns, "alive")(Default)).To(Equal(released))
		// Nothing runs that could change them.
		Consistently(front(ctx, ns, "dead")).Should(Equal(released))
		Consistently(front(ctx, ns, "alive")).Should(Equal(released))
		for _, name := range []string{"alive", "dead"} {
			svc := &corev1.Service{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, svc)).To(Succeed())
			Expect(svc.Spec.Selector).To(BeEmpty(), "the front stays selectorless, so a reinstall can gate it again")
		}
		Eventually(hookDone).Should(Receive(Succeed()), "the hook ran manager release")
	})

	It("installs again: the manager takes the fronts back, the Open breaker still Open", func(ctx SpecContext) {
		helmInstall(ctx, releaseName, releaseNamespace, nil)
		stopManager = startManager(releaseNamespace)
		Eventually(front(ctx, ns, "dead")).Should(Equal(frontView{Ready: 0, Managers: []string{tripswitchv1alpha1.ManagedBy}}))
		Eventually(front(ctx, ns, "alive")).Should(Equal(frontView{Ready: 1, Managers: []string{tripswitchv1alpha1.ManagedBy}}))
		Expect(breakerState(ctx, ns, "dead")(Default)).To(Equal("Open trips=1"))
		Expect(breakerState(ctx, ns, "alive")(Default)).To(Equal("Closed trips=0"))
	})

	It("fails the uninstall and scales the manager back when it does not stop, removing nothing", func(ctx SpecContext) {
		helmUpgrade(ctx, releaseName, releaseNamespace, map[string]any{"uninstall": map[string]any{"timeout": "2s"}})
		bg, cancel := context.WithCancel(context.Background())
		defer cancel()
		// No Deployment controller: the manager keeps running and leading.
		hookDone := make(chan error, 1)
		go func() { hookDone <- emulateJobController(bg) }()

		Expect(helmUninstall(releaseName, releaseNamespace)).NotTo(Succeed())
		Eventually(hookDone).Should(Receive(MatchError(ContainSubstring("did not stop"))))
		d := deployment(ctx, managerName)(Default)
		Expect(d.Spec.Replicas).To(Equal(ptr.To[int32](2)), "scaled back to the replicas it had")
		Expect(d.Annotations).NotTo(HaveKey("tripswitch.io/replicas-before-release"))
		Consistently(front(ctx, ns, "dead")).Should(Equal(frontView{Ready: 0, Managers: []string{tripswitchv1alpha1.ManagedBy}}))
		Expect(front(ctx, ns, "alive")(Default)).To(Equal(frontView{Ready: 1, Managers: []string{tripswitchv1alpha1.ManagedBy}}))

		By("rolling back (Helm leaves the release uninstalling), then upgrading: a new replica count applies without a conflict")
		rollback := action.NewRollback(helmConfig(releaseNamespace))
		rollback.WaitStrategy, rollback.Timeout = kube.HookOnlyStrategy, time.Minute
		Expect(rollback.Run(releaseName)).To(Succeed())
		helmUpgrade(ctx, releaseName, releaseNamespace, map[string]any{"manager": map[string]any{"replicas": 3}})
		Expect(deployment(ctx, managerName)(Default).Spec.Replicas).To(Equal(ptr.To[int32](3)))
	})
})

func daemonSet(ctx context.Context, name string) func(Gomega) *appsv1.DaemonSet {
	return func(g Gomega) *appsv1.DaemonSet {
		d := &appsv1.DaemonSet{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: releaseNamespace, Name: name}, d)).To(Succeed())
		return d
	}
}

func deployment(ctx context.Context, name string) func(Gomega) *appsv1.Deployment {
	return func(g Gomega) *appsv1.Deployment {
		d := &appsv1.Deployment{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: releaseNamespace, Name: name}, d)).To(Succeed())
		return d
	}
}

// emulateDeploymentController stops the in-process manager once its Deployment is scaled to
// zero, as the Deployment controller and the kubelet would stop its pods (SIGTERM: the
// manager steps down from its Lease).
func emulateDeploymentController(ctx context.Context, stop func()) {
	defer GinkgoRecover()
	for ctx.Err() == nil {
		d := &appsv1.Deployment{}
		if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: releaseNamespace, Name: managerName}, d); err == nil &&
			ptr.Deref(d.Spec.Replicas, 1) == 0 {
			stop()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// emulateJobController waits for the hook Job, runs its container's command, the real
// manager binary with the Job's args, as the Job's service account, and sets the Job's
// status from its exit, as the Job controller and the kubelet would. It returns the
// command's error and output.
func emulateJobController(ctx context.Context) error {
	defer GinkgoRecover()
	job := &batchv1.Job{}
	for k8sClient.Get(ctx, client.ObjectKey{Namespace: releaseNamespace, Name: hookJob}, job) != nil {
		select {
		case <-ctx.Done():
			return ctx.Err() // no hook ran
		case <-time.After(50 * time.Millisecond):
		}
	}
	pod := job.Spec.Template.Spec
	Expect(pod.Containers).To(HaveLen(1))
	Expect(pod.Containers[0].Args[0]).To(Equal("release"))
	account := "system:serviceaccount:" + releaseNamespace + ":" + pod.ServiceAccountName
	kubeconfig := writeKubeconfig(GinkgoT().TempDir(), envtestUser(account, releaseNamespace))
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, managerBinary, append(pod.Containers[0].Args, "--kubeconfig="+kubeconfig)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	GinkgoWriter.Printf("manager %s:\n%s\n", strings.Join(pod.Containers[0].Args, " "), out.String())

	now := metav1.Now()
	job.Status.StartTime = &now
	if runErr == nil {
		job.Status.CompletionTime = &now
		job.Status.Succeeded = 1
		job.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now},
			{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now}}
	} else {
		job.Status.Failed = 1
		job.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: batchv1.JobReasonBackoffLimitExceeded, LastTransitionTime: now, LastProbeTime: now},
			{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: batchv1.JobReasonBackoffLimitExceeded, LastTransitionTime: now, LastProbeTime: now}}
	}
	Expect(k8sClient.Status().Update(ctx, job)).To(Succeed())
	if runErr != nil {
		return errors.New(runErr.Error() + ": " + out.String())
	}
	return nil
}
