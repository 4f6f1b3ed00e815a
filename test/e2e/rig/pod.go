package rig

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2" //nolint:revive
	. "github.com/onsi/gomega"    //nolint:revive
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Pod is a pod without a kubelet: a pod network namespace and a Pod object on NodeName whose
// status says Running with the namespace's address, as a kubelet would write it. Its Ready
// condition is what SetReady last set, or what ProbeReadiness finds. Programs run in it with
// Net.Command (and StartCommand), or serve from it with Net.Listen.
type Pod struct {
	Name      string
	Namespace string
	Net       *PodNet

	rig      *Rig
	node     *Node // nil: the first node, NodeName
	image    string
	statusMu sync.Mutex // serialises status writes
}

// NewPod creates a pod network namespace and a Pod object with labels and container ports
// (for Services' named target ports), Running and not Ready, and deletes both in the current
// Ginkgo node's cleanup.
func (r *Rig) NewPod(namespace, name string, labels map[string]string, ports []corev1.ContainerPort) *Pod {
	GinkgoHelper()
	return r.newPod(namespace, name, labels, ports, nil, NewPodNet(namespace+"-"+name))
}

// newPod creates the Pod object of a pod on node (nil: the first) whose network is podNet: its
// own, or the node's for a pod in the host network namespace.
func (r *Rig) newPod(namespace, name string, labels map[string]string, ports []corev1.ContainerPort, node *Node, podNet *PodNet) *Pod {
	GinkgoHelper()
	p := &Pod{Name: name, Namespace: namespace, Net: podNet, rig: r, node: node, image: "tripswitch.io/e2e"}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                     p.NodeName(),
			Containers:                   []corev1.Container{{Name: "main", Image: p.image, Ports: ports}},
			AutomountServiceAccountToken: ptr.To(false),
			HostNetwork:                  node != nil && podNet == node.Net,
		},
	}
	Expect(r.client.Create(context.Background(), pod)).To(Succeed())
	DeferCleanup(func(ctx SpecContext) {
		// No kubelet finishes a graceful deletion: delete at once.
		Expect(client.IgnoreNotFound(r.client.Delete(ctx, pod, client.GracePeriodSeconds(0)))).To(Succeed())
	})
	p.SetReady(false)
	return p
}

// IP returns the pod's address.
func (p *Pod) IP() string { return p.Net.IP.String() }

// NodeName returns the name of the pod's node.
func (p *Pod) NodeName() string {
	if p.node == nil {
		return NodeName
	}
	return p.node.Name
}

// hostIP returns the address of the pod's node.
func (p *Pod) hostIP() string {
	if p.node == nil {
		return NodeIP
	}
	return p.node.IP.String()
}

// SetReady writes the Pod's status as a kubelet would: Running with the pod's address, and
// the Ready and ContainersReady conditions as ready says.
func (p *Pod) SetReady(ready bool) {
	GinkgoHelper()
	Expect(p.setReady(context.Background(), ready)).To(Succeed())
}

func (p *Pod) setReady(ctx context.Context, ready bool) error {
	p.statusMu.Lock()
	defer p.statusMu.Unlock()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod := &corev1.Pod{}
		if err := p.rig.client.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Name}, pod); err != nil {
			return err
		}
		pod.Status = p.status(ready)
		return p.rig.client.Status().Update(ctx, pod)
	})
}

func (p *Pod) status(ready bool) corev1.PodStatus {
	now := metav1.Now()
	readiness := corev1.ConditionFalse
	if ready {
		readiness = corev1.ConditionTrue
	}
	var conditions []corev1.PodCondition
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now}
		if t == corev1.ContainersReady || t == corev1.PodReady {
			c.Status = readiness
		}
		conditions = append(conditions, c)
	}
	return corev1.PodStatus{
		Phase:      corev1.PodRunning,
		Conditions: conditions,
		HostIP:     p.hostIP(),
		HostIPs:    []corev1.HostIP{{IP: p.hostIP()}},
		PodIP:      p.IP(),
		PodIPs:     []corev1.PodIP{{IP: p.IP()}},
		StartTime:  &now,
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "main", Image: p.image, ImageID: p.image + "@sha256:0",
			Ready: ready, Started: ptr.To(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
}

// Readiness probe timing, shorter than a kubelet's defaults so that specs stay short.
const (
	readinessPeriod           = 200 * time.Millisecond
	readinessTimeout          = time.Second
	readinessFailureThreshold = 3
)

// ProbeReadiness makes the Pod's Ready condition follow an HTTP readiness probe, as a kubelet
// does: from the node namespace, a GET of url every 200ms (1s timeout); a 2xx or 3xx answer
// makes it ready, three failures in a row not ready. It stops in the current Ginkgo node's
// cleanup.
func (p *Pod) ProbeReadiness(url string) {
	GinkgoHelper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		httpClient := &http.Client{Timeout: readinessTimeout}
		ready, failures, written := false, 0, false
		ticker := time.NewTicker(readinessPeriod)
		defer ticker.Stop()
		for {
			ok := probeHTTP(ctx, httpClient, url)
			switch {
			case ok:
				failures = 0
			default:
				failures++
			}
			want := ready
			if ok {
				want = true
			} else if failures >= readinessFailureThreshold {
				want = false
			}
			if want != ready || !written {
				if err := p.setReady(ctx, want); err != nil {
					if ctx.Err() == nil {
						fmt.Fprintf(GinkgoWriter, "e2e: pod %s/%s: writing readiness: %v\n", p.Namespace, p.Name, err)
					}
				} else {
					ready, written = want, true
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
		}
	}()
	DeferCleanup(func() {
		cancel()
		<-done
	})
}

func probeHTTP(ctx context.Context, c *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", "kube-probe/e2e")
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}
