// Package release makes front Services safe to leave without a manager, for an uninstall that
// keeps the CircuitBreakers (helm uninstall runs it from a pre-delete hook). It stops the
// manager, waits until no replica leads, and then replaces every breaker's EndpointSlices on
// its fronts with a last copy of the target's endpoints, mirrored as if Closed, labelled
// managed-by tripswitch.io-released and owned by the front Service: the copy a deleted
// breaker leaves when nobody can take its front over, and which a manager that starts again
// adopts and replaces. Fronts stay selectorless and claimed, so a reinstall gates them again
// at once; until then they serve the target's endpoints as they were at the uninstall.
package release

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/controller"
	"github.com/tripswitch/tripswitch/internal/gate"
)

// Options say which manager to stop and how long to wait for it.
type Options struct {
	// Manager is the manager's Deployment; it is scaled to zero first. A Deployment that is
	// not there is skipped.
	Manager types.NamespacedName
	// Lease is the manager's leader election Lease, in Manager's namespace: nobody may hold it
	// before fronts are released, or the leader would gate them again.
	Lease string
	// Timeout bounds the wait for the manager to stop; Poll is how often it looks.
	Timeout, Poll time.Duration
	Clock         clock.PassiveClock
}

// FieldOwner is the field manager of the manager Deployment's replicas while they are
// scaled down; restore gives the field up again, so that Helm's server-side apply does not
// conflict with it later.
const FieldOwner = "tripswitch-release"

// ReplicasAnnotation, on the manager's Deployment, holds its replicas from before Run scaled
// it to zero, so that a Run that is retried (the hook Job's second pod) still knows them.
const ReplicasAnnotation = "tripswitch.io/replicas-before-release"

// Run stops the manager and releases every front. When the manager does not stop in time,
// or releasing fails, it scales the manager back to what it was and returns the error, so
// that the uninstall stops with the manager gating as before.
func Run(ctx context.Context, c client.Client, o Options) (err error) {
	logger := log.FromContext(ctx)
	found, err := stop(ctx, c, o.Manager)
	if err != nil {
		return err
	}
	defer func() {
		if err == nil || !found {
			return
		}
		// A fresh context: the one given may be what ran out.
		restoreCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rerr := restore(restoreCtx, c, o.Manager); rerr != nil {
			err = errors.Join(err, fmt.Errorf("scaling the manager back: %w", rerr))
			return
		}
		logger.Info("Scaled the manager back; nothing was uninstalled")
	}()
	if err := waitStopped(ctx, c, o); err != nil {
		return err
	}
	released, err := Fronts(ctx, c)
	if err != nil {
		return err
	}
	logger.Info("Every front Service serves a copy of its target's endpoints", "fronts", released)
	return nil
}

// stop scales the manager's Deployment to zero, noting its replicas in ReplicasAnnotation
// unless an earlier run did, and says whether there is a Deployment.
func stop(ctx context.Context, c client.Client, key types.NamespacedName) (bool, error) {
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, key, d); apierrors.IsNotFound(err) {
		log.FromContext(ctx).Info("The manager's Deployment is not there; nothing to scale", "deployment", key)
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("getting the manager's Deployment: %w", err)
	}
	patch := client.MergeFrom(d.DeepCopy())
	if _, noted := d.Annotations[ReplicasAnnotation]; !noted {
		metav1.SetMetaDataAnnotation(&d.ObjectMeta, ReplicasAnnotation, strconv.Itoa(int(ptr.Deref(d.Spec.Replicas, 1))))
	}
	d.Spec.Replicas = ptr.To[int32](0)
	if err := c.Patch(ctx, d, patch, client.FieldOwner(FieldOwner)); err != nil {
		return false, fmt.Errorf("scaling the manager's Deployment to zero: %w", err)
	}
	log.FromContext(ctx).Info("Scaled the manager's Deployment to zero", "deployment", key, "replicas", d.Annotations[ReplicasAnnotation])
	return true, nil
}

// restore scales the manager's Deployment back to the replicas that stop noted, and gives up
// the fields it wrote: the replicas were Helm's (server-side apply), and would otherwise be
// FieldOwner's, so that the next helm upgrade that changes them would fail with a conflict.
func restore(ctx context.Context, c client.Client, key types.NamespacedName) error {
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, key, d); err != nil {
		return err
	}
	replicas, err := strconv.ParseInt(d.Annotations[ReplicasAnnotation], 10, 32)
	if err != nil {
		return fmt.Errorf("reading %s: %w", ReplicasAnnotation, err)
	}
	patch := client.MergeFrom(d.DeepCopy())
	delete(d.Annotations, ReplicasAnnotation)
	d.Spec.Replicas = ptr.To(int32(replicas))
	if err := c.Patch(ctx, d, patch, client.FieldOwner(FieldOwner)); err != nil {
		return err
	}
	kept := slices.DeleteFunc(slices.Clone(d.ManagedFields), func(e metav1.ManagedFieldsEntry) bool { return e.Manager == FieldOwner })
	if len(kept) == len(d.ManagedFields) || len(kept) == 0 {
		return nil // nothing to give up, or nobody else to leave the fields to
	}
	// Writing managedFields replaces them: the replicas are left with no owner, and the next
	// apply that sets them takes them over.
	disown := client.MergeFrom(d.DeepCopy())
	d.ManagedFields = kept
	if err := c.Patch(ctx, d, disown, client.FieldOwner(FieldOwner)); err != nil {
		return fmt.Errorf("giving up the replicas field: %w", err)
	}
	return nil
}

// waitStopped waits until no pod of the manager's Deployment is left and nobody holds its
// Lease: a replica that still ran could gate the fronts again after they are released.
func waitStopped(ctx context.Context, c client.Client, o Options) error {
	var why string
	err := wait.PollUntilContextTimeout(ctx, o.Poll, o.Timeout, true, func(ctx context.Context) (bool, error) {
		var err error
		why, err = running(ctx, c, o)
		return why == "", err
	})
	if err != nil {
		return fmt.Errorf("the manager did not stop within %s (%s): %w", o.Timeout, why, err)
	}
	return nil
}

// running says what shows that the manager still runs, or "".
func running(ctx context.Context, c client.Client, o Options) (string, error) {
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, o.Manager, d); client.IgnoreNotFound(err) != nil {
		return "", fmt.Errorf("getting the manager's Deployment: %w", err)
	} else if err == nil && d.Spec.Selector != nil && len(d.Spec.Selector.MatchLabels) > 0 {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(o.Manager.Namespace), client.MatchingLabels(d.Spec.Selector.MatchLabels)); err != nil {
			return "", fmt.Errorf("listing the manager's pods: %w", err)
		}
		if n := len(pods.Items); n > 0 {
			return fmt.Sprintf("%d of its pods are left", n), nil
		}
	}
	lease := &coordinationv1.Lease{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: o.Manager.Namespace, Name: o.Lease}, lease); apierrors.IsNotFound(err) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("getting the leader election Lease: %w", err)
	}
	if holder := Holder(lease, o.Clock.Now()); holder != "" {
		return fmt.Sprintf("%s leads", holder), nil
	}
	return "", nil
}

// Holder is who holds a Lease at now: nobody ("") when it names no holder, or when the
// holder has not renewed it within its duration.
func Holder(l *coordinationv1.Lease, now time.Time) string {
	holder := ptr.Deref(l.Spec.HolderIdentity, "")
	if holder == "" {
		return ""
	}
	if l.Spec.RenewTime != nil && l.Spec.LeaseDurationSeconds != nil &&
		now.After(l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second)) {
		return ""
	}
	return holder
}

// Fronts replaces every breaker's slices on its fronts with a last copy of the target's
// endpoints, as if Closed, and returns how many fronts it released. It does not stop the
// manager: Run does, first.
func Fronts(ctx context.Context, c client.Client) (int, error) {
	var breakers tripswitchv1alpha1.CircuitBreakerList
	if err := c.List(ctx, &breakers); meta.IsNoMatchError(err) || apierrors.IsNotFound(err) {
		// No CRD, so no breakers: nothing gates a front, and the uninstall must not be held up.
		log.FromContext(ctx).Info("The CircuitBreaker CRD is not installed; no front to release")
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("listing CircuitBreakers: %w", err)
	}
	released := 0
	for i := range breakers.Items {
		cb := &breakers.Items[i]
		var list discoveryv1.EndpointSliceList
		if err := c.List(ctx, &list, client.InNamespace(cb.Namespace), client.MatchingLabels{
			discoveryv1.LabelManagedBy: tripswitchv1alpha1.ManagedBy, gate.BreakerLabel: gate.BreakerLabelValue(cb.Name)}); err != nil {
			return released, fmt.Errorf("listing the EndpointSlices of breaker %s/%s: %w", cb.Namespace, cb.Name, err)
		}
		byFront := map[string][]discoveryv1.EndpointSlice{}
		for _, s := range list.Items {
			front := s.Labels[discoveryv1.LabelServiceName]
			byFront[front] = append(byFront[front], s)
		}
		fronts := slices.Sorted(maps.Keys(byFront))
		for _, front := range fronts {
			if err := releaseFront(ctx, c, cb, front, byFront[front]); err != nil {
				return released, fmt.Errorf("releasing front Service %s/%s of breaker %s: %w", cb.Namespace, front, cb.Name, err)
			}
			released++
		}
	}
	return released, nil
}

// releaseFront turns the breaker's slices of one front into the last copy, in the order the
// manager writes slices, so that ready endpoints move rather than vanish.
func releaseFront(ctx context.Context, c client.Client, cb *tripswitchv1alpha1.CircuitBreaker, name string,
	ours []discoveryv1.EndpointSlice) error {
	front := &corev1.Service{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: cb.Namespace, Name: name}, front); apierrors.IsNotFound(err) {
		return nil // its slices go with it
	} else if err != nil {
		return err
	}
	var target discoveryv1.EndpointSliceList
	if cb.Spec.Target.External != nil {
		target.Items = controller.ExternalTargetSlices(cb)
	} else if err := c.List(ctx, &target, client.InNamespace(cb.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: cb.Spec.Target.Service}); err != nil {
		return fmt.Errorf("listing the target's EndpointSlices: %w", err)
	}
	// A copy left by an earlier run that stopped half way is taken over, not created twice.
	var earlier discoveryv1.EndpointSliceList
	if err := c.List(ctx, &earlier, client.InNamespace(cb.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: gate.ReleasedManagedBy}); err != nil {
		return fmt.Errorf("listing the front's released EndpointSlices: %w", err)
	}
	if err := controller.WriteLastCopy(ctx, c, cb, front, target.Items, append(ours, earlier.Items...)); err != nil {
		return err
	}
	log.FromContext(ctx).Info("Released front Service: a copy of the target's endpoints, as if Closed", "breaker", cb.Name,
		"namespace", cb.Namespace, "front", name, "state", cb.Status.State)
	return nil
}
