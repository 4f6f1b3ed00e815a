package responder

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// Breaker is what an answer says about the breaker a request reached.
type Breaker struct {
	Namespace, Name string
	// State is the state the breaker's gate applies to traffic (status.gateState).
	State tripswitchv1alpha1.State
	// OpenUntil is when the gate leaves Open; zero when that is not known, as under ForceOpen,
	// which holds the gate open for as long as the mode stays.
	OpenUntil time.Time
}

// Entry is what the Index holds for one breaker.
type Entry struct {
	Breaker
	// Front is the front Service's name, in the breaker's namespace; empty when the breaker
	// has no EndpointSlice gate, so that no host finds it.
	Front string
	// Refused says another breaker gates Front (the breaker is Stalled with reason
	// FrontServiceClaimed); the breaker that owns the front wins a lookup over it.
	Refused bool
}

// EntryOf reads a breaker's entry from the CircuitBreaker.
func EntryOf(cb *tripswitchv1alpha1.CircuitBreaker) Entry {
	spec := cb.Resolve()
	e := Entry{Breaker: Breaker{Namespace: cb.Namespace, Name: cb.Name, State: cmp.Or(cb.Status.GateState, cb.Status.State)}}
	if es := spec.Gate.EndpointSlice; es != nil {
		e.Front = es.Service
	}
	// openUntil is when the state machine tries HalfOpen; it says when the gate leaves Open
	// only when the gate follows the state machine (mode Auto).
	if until := cb.Status.OpenUntil; until != nil && spec.Mode == tripswitchv1alpha1.ModeAuto &&
		e.State == tripswitchv1alpha1.StateOpen && cb.Status.State == tripswitchv1alpha1.StateOpen {
		e.OpenUntil = until.Time
	}
	if c := meta.FindStatusCondition(cb.Status.Conditions, tripswitchv1alpha1.ConditionStalled); c != nil {
		e.Refused = c.Status == metav1.ConditionTrue && c.Reason == tripswitchv1alpha1.ReasonFrontServiceClaimed
	}
	return e
}

// Index maps front Services to their breakers. It is read on every request and written on
// every breaker change, so reads share a lock.
type Index struct {
	mu sync.RWMutex
	// entries holds every breaker the index was told of, gated by a front or not, so that
	// Has can say whether the index has caught up with the cluster.
	entries map[types.NamespacedName]Entry
	// byFront lists the breakers that name each front (namespace and Service): one, but for
	// a breaker whose claim was refused; they are kept in Lookup's order of preference.
	byFront map[types.NamespacedName][]Entry
	// namespaces counts, for each front Service name, the breakers naming it in each
	// namespace, to resolve a Service name without a namespace.
	namespaces map[string]map[string]int
}

// NewIndex returns an empty Index.
func NewIndex() *Index {
	return &Index{
		entries:    map[types.NamespacedName]Entry{},
		byFront:    map[types.NamespacedName][]Entry{},
		namespaces: map[string]map[string]int{},
	}
}

// Set records or replaces a breaker's entry.
func (x *Index) Set(e Entry) {
	key := types.NamespacedName{Namespace: e.Namespace, Name: e.Name}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(key)
	x.entries[key] = e
	if e.Front == "" {
		return
	}
	front := types.NamespacedName{Namespace: e.Namespace, Name: e.Front}
	list := append(x.byFront[front], e)
	slices.SortFunc(list, preferred)
	x.byFront[front] = list
	if x.namespaces[e.Front] == nil {
		x.namespaces[e.Front] = map[string]int{}
	}
	x.namespaces[e.Front][e.Namespace]++
}

// Delete forgets a breaker.
func (x *Index) Delete(breaker types.NamespacedName) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(breaker)
}

func (x *Index) removeLocked(key types.NamespacedName) {
	old, ok := x.entries[key]
	if !ok {
		return
	}
	delete(x.entries, key)
	if old.Front == "" {
		return
	}
	front := types.NamespacedName{Namespace: old.Namespace, Name: old.Front}
	list := slices.DeleteFunc(x.byFront[front], func(e Entry) bool { return e.Name == old.Name })
	if len(list) == 0 {
		delete(x.byFront, front)
	} else {
		x.byFront[front] = list
	}
	if x.namespaces[old.Front][old.Namespace]--; x.namespaces[old.Front][old.Namespace] == 0 {
		delete(x.namespaces[old.Front], old.Namespace)
		if len(x.namespaces[old.Front]) == 0 {
			delete(x.namespaces, old.Front)
		}
	}
}

// preferred orders the breakers that name one front: the one that owns it first, then by
// name, so that a lookup is the same on every replica.
func preferred(a, b Entry) int {
	if a.Refused != b.Refused {
		if a.Refused {
			return 1
		}
		return -1
	}
	return cmp.Compare(a.Name, b.Name)
}

// Has says whether the index holds an entry for the breaker.
func (x *Index) Has(breaker types.NamespacedName) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.entries[breaker]
	return ok
}

// Lookup finds the breaker that gates the front a request addressed. A Service name without
// a namespace finds it only when exactly one namespace has a front of that name: guessing
// among several would name the wrong breaker to some clients.
func (x *Index) Lookup(h Host) (Breaker, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	ns := h.Namespace
	if ns == "" {
		in := x.namespaces[h.Service]
		if len(in) != 1 {
			return Breaker{}, false
		}
		for only := range in {
			ns = only
		}
	}
	list := x.byFront[types.NamespacedName{Namespace: ns, Name: h.Service}]
	if len(list) == 0 {
		return Breaker{}, false
	}
	return list[0].Breaker, true
}
