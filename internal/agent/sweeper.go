package agent

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/flows"
)

// Table is the node's connection-tracking table as the sweeper uses it (*flows.Table): it
// cuts the targets' flows, handing them to each in batches as it goes.
type Table interface {
	CutEach(targets []flows.Target, each func([]flows.Flow)) ([]flows.Flow, error)
}

// Guard makes a cut flow's next packet draw a reset, and makes its client send one now
// (*flows.Guard).
type Guard interface {
	Arm(cut []flows.Flow) error
	Probe(cut []flows.Flow) error
}

// ProxySync tells whether kube-proxy has applied what the agent saw by since (*KubeProxySync).
type ProxySync interface {
	SyncedSince(ctx context.Context, since time.Time, families []corev1.IPFamily) (bool, error)
}

// Resweeps are when a cut is swept again after its first sweep. A client whose flow was cut
// redials at once; if kube-proxy had not applied the change yet (the agent could not read
// its sync time, or read it a moment early), the new connection reaches the endpoint that was
// cut and would keep it. Resweeps catch those, for endpoints the front still withholds. They
// cover kube-proxy's default --iptables-min-sync-period of 1 s with room to spare.
var Resweeps = []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, time.Second, 3 * time.Second}

// proxyPoll is how often the sweeper reads kube-proxy's sync time while it waits.
const proxyPoll = 5 * time.Millisecond

// Sweeper carries out cuts: it waits until kube-proxy has applied the change (at most
// ProxyWait), cuts the flows in one pass over the conntrack table for every cut due, arms the
// reset guard for them, and sweeps each cut again at Resweeps. It is the only user of the
// table, so sweeps never overlap.
type Sweeper struct {
	Fronts  *Fronts
	Table   Table
	Guard   Guard     // nil: no reset guard on this node
	Proxy   ProxySync // nil: do not wait for kube-proxy
	Clock   clock.Clock
	Metrics *Metrics
	// ProxyWait is the longest wait for kube-proxy's sync; then the cut happens anyway.
	ProxyWait time.Duration

	mu      sync.Mutex
	pending []Cut
	wake    chan struct{}
}

// active is a cut that has been swept once and has resweeps to go.
type active struct {
	cut  Cut
	next time.Time
	done int
}

// Add queues cuts for the next sweep; it never blocks (informers call it).
func (s *Sweeper) Add(cuts []Cut) {
	if len(cuts) == 0 {
		return
	}
	s.mu.Lock()
	s.pending = append(s.pending, cuts...)
	wake := s.wakeChan()
	s.mu.Unlock()
	select {
	case wake <- struct{}{}:
	default:
	}
}

func (s *Sweeper) wakeChan() chan struct{} {
	if s.wake == nil {
		s.wake = make(chan struct{}, 1)
	}
	return s.wake
}

func (s *Sweeper) take() []Cut {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.pending
	s.pending = nil
	return out
}

// Run sweeps until ctx is done.
func (s *Sweeper) Run(ctx context.Context) {
	log := logr.FromContextOrDiscard(ctx)
	s.mu.Lock()
	wake := s.wakeChan()
	s.mu.Unlock()
	var resweeps []*active
	for {
		fresh := s.take()
		now := s.Clock.Now()
		var due []*active
		var later []*active
		for _, a := range resweeps {
			if !a.next.After(now) {
				due = append(due, a)
			} else {
				later = append(later, a)
			}
		}
		if len(fresh) == 0 && len(due) == 0 {
			var timer clock.Timer
			var fire <-chan time.Time
			if len(later) > 0 {
				next := later[0].next
				for _, a := range later[1:] {
					if a.next.Before(next) {
						next = a.next
					}
				}
				timer = s.Clock.NewTimer(next.Sub(now))
				fire = timer.C()
			}
			select {
			case <-ctx.Done():
			case <-wake:
			case <-fire:
			}
			if timer != nil {
				timer.Stop()
			}
			if ctx.Err() != nil {
				return
			}
			resweeps = later
			continue
		}
		var waited time.Duration
		if len(fresh) > 0 {
			waited = s.waitForKubeProxy(ctx, fresh)
			if ctx.Err() != nil {
				return
			}
		}
		s.sweep(log, fresh, due, waited)
		swept := s.Clock.Now()
		for _, c := range fresh {
			later = append(later, &active{cut: c, next: swept.Add(Resweeps[0])})
		}
		for _, a := range due {
			a.done++
			if a.done < len(Resweeps) {
				// Offsets count from the first sweep, which was Resweeps[done-1] before this one.
				a.next = a.next.Add(Resweeps[a.done] - Resweeps[a.done-1])
				later = append(later, a)
			}
		}
		resweeps = later
	}
}

// waitForKubeProxy waits until kube-proxy reports a sync of every family the cuts touch that
// ended after the last of them was seen, or until ProxyWait has passed, or kube-proxy's
// metrics cannot be read (then there is nothing to wait for). It returns how long it waited.
func (s *Sweeper) waitForKubeProxy(ctx context.Context, cuts []Cut) time.Duration {
	start := s.Clock.Now()
	if s.Proxy == nil {
		return 0
	}
	var since time.Time
	families := map[corev1.IPFamily]bool{}
	for _, c := range cuts {
		if c.SeenAt.After(since) {
			since = c.SeenAt
		}
		for _, ep := range c.Endpoints {
			if ep.Addr.Is4() {
				families[corev1.IPv4Protocol] = true
			} else {
				families[corev1.IPv6Protocol] = true
			}
		}
	}
	list := make([]corev1.IPFamily, 0, len(families))
	for f := range families {
		list = append(list, f)
	}
	for {
		synced, err := s.Proxy.SyncedSince(ctx, since, list)
		if err != nil {
			s.Metrics.failed(OpKubeProxy)
			logr.FromContextOrDiscard(ctx).V(1).Info("Could not read kube-proxy's sync time; cutting without waiting", "error", err.Error())
			return s.Clock.Since(start)
		}
		if synced || s.Clock.Since(start) >= s.ProxyWait {
			return s.Clock.Since(start)
		}
		select {
		case <-ctx.Done():
			return s.Clock.Since(start)
		case <-s.Clock.After(proxyPoll):
		}
	}
}

// sweep cuts, in one pass over the table, the flows of fresh cuts and of resweeps due, arms
// the reset guard for them, and accounts for it: one log line per sweep that cut something
// or carried a fresh cut.
func (s *Sweeper) sweep(log logr.Logger, fresh []Cut, due []*active, waited time.Duration) {
	cuts := append([]Cut(nil), fresh...)
	for _, a := range due {
		cuts = append(cuts, a.cut)
	}
	start := s.Clock.Now()
	armed := 0
	var guardErr, probeErr error
	// Each batch of deleted flows is armed and probed at once, while the table is still being
	// swept: on a busy node deleting hundreds of entries takes a while, and the first clients
	// need not wait for the last deletion.
	guard := func(batch []flows.Flow) {
		if s.Guard == nil {
			return
		}
		if err := s.Guard.Arm(batch); err != nil {
			guardErr = err
			return
		}
		armed += len(batch)
		// Clients waiting for an answer (a call in flight to a backend that hangs) would send
		// nothing until their own timeout: probed, they answer, and are reset now.
		if err := s.Guard.Probe(batch); err != nil {
			probeErr = err
		}
	}
	cut, err := s.Table.CutEach(s.Fronts.Targets(cuts), guard)
	if err != nil {
		s.Metrics.failed(OpConntrack)
		log.Error(err, "Cutting flows failed; the next sweep tries again")
	}
	if guardErr != nil {
		s.Metrics.failed(OpGuard)
		log.Error(guardErr, "Arming the reset guard failed: cut clients on nodes with nf_conntrack_tcp_loose=0 wait for their own timeouts")
	}
	if probeErr != nil {
		s.Metrics.failed(OpGuard)
		log.Error(probeErr, "Probing cut clients failed: those waiting for an answer are reset only at their next packet")
	}
	end := s.Clock.Now()
	s.Metrics.observeSweep(end.Sub(start))
	byKey := map[string]int{}
	for _, f := range cut {
		byKey[f.Key]++
	}
	for _, c := range cuts {
		key := TargetKey(c.Front.Namespace, c.Breaker, c.Reason)
		if n := byKey[key]; n > 0 {
			s.Metrics.cut(c.Front.Namespace, c.Breaker, c.Reason, n)
			delete(byKey, key) // a breaker's cut may be listed twice (fresh and due)
		}
	}
	for _, c := range fresh {
		s.Metrics.observeLatency(end.Sub(c.SeenAt))
	}
	if len(cut) == 0 && len(fresh) == 0 {
		return
	}
	var breakers []string
	seen := map[types.NamespacedName]bool{}
	endpoints := 0
	for _, c := range cuts {
		endpoints += len(c.Endpoints)
		k := types.NamespacedName{Namespace: c.Front.Namespace, Name: c.Breaker + " (" + string(c.Reason) + ")"}
		if !seen[k] {
			seen[k] = true
			breakers = append(breakers, k.String())
		}
	}
	sort.Strings(breakers)
	kv := []any{"breakers", breakers, "endpoints", endpoints, "flows", len(cut), "armed", armed,
		"sweep", end.Sub(start).String(), "resweep", len(fresh) == 0}
	if len(fresh) > 0 {
		kv = append(kv, "sinceChange", end.Sub(earliest(fresh)).String(), "waitedForKubeProxy", waited.String())
	}
	log.Info("Cut flows", kv...)
}

func earliest(cuts []Cut) time.Time {
	t := cuts[0].SeenAt
	for _, c := range cuts[1:] {
		if c.SeenAt.Before(t) {
			t = c.SeenAt
		}
	}
	return t
}
