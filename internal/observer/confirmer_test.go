package observer_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/confirm"
	"github.com/tripswitch/tripswitch/internal/controller"
	"github.com/tripswitch/tripswitch/internal/observer"
	"github.com/tripswitch/tripswitch/internal/probe"
	"github.com/tripswitch/tripswitch/internal/runner"
)

// peers is a Directory that never changes.
type peers struct {
	leader confirm.Observer
	list   []observer.Peer
}

func (p peers) Peers(context.Context) (confirm.Observer, []observer.Peer, error) {
	return p.leader, p.list, nil
}

// sickNetwork is a dialer whose every connection fails, as from a node whose routes are
// broken.
func sickNetwork(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("connect: no route to host")
}

// panel starts an observer server per node on loopback; nodes whose name is in sick probe
// through sickNetwork. Every breaker of namespace shop publishes eps.
func panel(t *testing.T, eps []netip.AddrPort, sick map[string]bool, nodes ...string) []observer.Peer {
	t.Helper()
	published := map[netip.AddrPort]bool{}
	for _, ep := range eps {
		published[ep] = true
	}
	var out []observer.Peer
	for _, node := range nodes {
		var dial probe.DialFunc
		if sick[node] {
			dial = sickNetwork
		}
		srv := &observer.Server{Node: node, Auth: tokens{"good": manager}, Allowed: manager,
			Breakers: anyBreaker{published},
			Compile: func(cb *tripswitchv1alpha1.CircuitBreaker) (probe.Spec, error) {
				spec := cb.Resolve()
				r, err := controller.Compile(&spec)
				return r.Probe, err
			},
			NewProber: probe.NewFactory(dial, clock.RealClock{}).New}
		hs := httptest.NewServer(srv)
		t.Cleanup(hs.Close)
		out = append(out, observer.Peer{Observer: confirm.Observer{Name: node}, URL: hs.URL})
	}
	return out
}

// anyBreaker is every breaker of namespace shop, probing / with a 300 ms timeout, all
// publishing the same endpoints.
type anyBreaker struct{ published map[netip.AddrPort]bool }

func (a anyBreaker) Get(_ context.Context, key types.NamespacedName) (*tripswitchv1alpha1.CircuitBreaker, error) {
	return &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
		Spec: tripswitchv1alpha1.CircuitBreakerSpec{Probe: tripswitchv1alpha1.ProbeSpec{
			Timeout: &metav1.Duration{Duration: 300 * time.Millisecond}}}}, nil
}

func (a anyBreaker) Published(context.Context, *tripswitchv1alpha1.CircuitBreaker) (map[netip.AddrPort]bool, error) {
	return a.published, nil
}

func suspicion(name string, eps ...netip.AddrPort) runner.Suspicion {
	return runner.Suspicion{Key: types.NamespacedName{Namespace: "shop", Name: name}, Reason: breaker.ConsecutiveFailures,
		Endpoints: eps, Observers: 2, Zones: confirm.ZonesPrefer}
}

func newConfirmer(dir observer.Directory) *observer.Confirmer {
	client := &observer.Client{HTTP: &http.Client{}, Token: func() (string, error) { return "good", nil }}
	return observer.NewConfirmer(client, dir, clock.RealClock{}, confirm.DefaultHealth)
}

// within asks with the budget the runner gives: one probe timeout and 100 ms.
func within(c *observer.Confirmer, q runner.Suspicion) (confirm.Result, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := c.Confirm(ctx, q)
	return r, time.Since(start)
}

func TestConfirmerHoldsWhatOnlyTheLeaderSeesFailing(t *testing.T) {
	g := NewWithT(t)
	healthy, _ := target(t, http.StatusOK)
	c := newConfirmer(peers{leader: confirm.Observer{Name: "node-a"}, list: panel(t, []netip.AddrPort{healthy}, nil, "node-b", "node-c")})
	r, _ := within(c, suspicion("payments", healthy))
	g.Expect(r.Outcome).To(Equal(confirm.Refuted))
	g.Expect(r.Message("shop/payments")).To(Equal("held: 2 of 3 observers see shop/payments healthy (node-b, node-c); node-a sees it failing"))

	// The leader alone sees three unrelated targets failing: it is degraded, and its vote
	// weighs half.
	for _, name := range []string{"orders", "billing"} {
		r, _ := within(c, suspicion(name, healthy))
		g.Expect(r.Outcome).To(Equal(confirm.Refuted))
	}
	g.Expect(c.Degraded()).To(Equal(map[string][]string{"node-a": {"shop/billing", "shop/orders", "shop/payments"}}))
	r, _ = within(c, suspicion("catalog", healthy))
	g.Expect(r.Leader.Degraded).To(BeTrue())
	g.Expect(r.Failing).To(Equal(confirm.DegradedWeight))
}

func TestConfirmerConfirmsARealFailureAtTheFirstAgreeingAnswer(t *testing.T) {
	g := NewWithT(t)
	failing, _ := target(t, http.StatusServiceUnavailable)
	// node-c's network is sick too, and sees the failure for its own reasons: it still
	// agrees, and two votes of three are enough.
	c := newConfirmer(peers{leader: confirm.Observer{Name: "node-a"},
		list: panel(t, []netip.AddrPort{failing}, map[string]bool{"node-c": true}, "node-b", "node-c")})
	r, took := within(c, suspicion("payments", failing))
	g.Expect(r.Outcome).To(Equal(confirm.Confirmed))
	g.Expect(took).To(BeNumerically("<", 400*time.Millisecond), "decided before the deadline")
	g.Expect(r.Voters(confirm.Failing)).To(ContainElement("node-a"))
	for _, b := range r.Ballots {
		if b.Verdict == confirm.Failing && b.Observer.Name == "node-b" {
			g.Expect(b.Detail).To(Equal("HTTP 503 from " + failing.String()))
		}
	}
}

func TestConfirmerFallsBackWhenNoObserverAnswers(t *testing.T) {
	g := NewWithT(t)
	ep, _ := target(t, http.StatusServiceUnavailable)

	// A closed port refuses at once; a server that never answers lets the deadline pass.
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	hang := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		// Read the question first: the server notices that the client went away (and ends
		// r's context) only once the body is read, so Close would wait for this handler.
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}))
	t.Cleanup(hang.Close)
	c := newConfirmer(peers{leader: confirm.Observer{Name: "node-a"}, list: []observer.Peer{
		{Observer: confirm.Observer{Name: "node-b"}, URL: closed.URL},
		{Observer: confirm.Observer{Name: "node-c"}, URL: hang.URL},
	}})
	r, took := within(c, suspicion("payments", ep))
	g.Expect(r.Outcome).To(Equal(confirm.Unconfirmed))
	g.Expect(took).To(BeNumerically("<", time.Second), "bounded by the budget, not by the hung observer")
	g.Expect(r.Message("shop/payments")).To(HavePrefix("unconfirmed: no observer answered about shop/payments in time"))

	r, _ = within(newConfirmer(peers{leader: confirm.Observer{Name: "node-a"}}), suspicion("payments", ep))
	g.Expect(r.Outcome).To(Equal(confirm.Unconfirmed), "a single-node cluster has nobody to ask")
	g.Expect(strings.Contains(r.Message("shop/payments"), "no other observer")).To(BeTrue())
}

func TestConfirmerAsksAboutAtMostMaxEndpoints(t *testing.T) {
	g := NewWithT(t)
	var asked atomic.Int64
	// An observer that sees every endpoint it is asked about failing, and says how many.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req observer.Request
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Endpoints) > observer.MaxEndpoints {
			http.Error(w, "too many", http.StatusRequestEntityTooLarge)
			return
		}
		asked.Store(int64(len(req.Endpoints)))
		resp := observer.Response{Observer: "node-b"}
		for _, ep := range req.Endpoints {
			resp.Results = append(resp.Results, observer.Result{Endpoint: ep, Outcome: breaker.Failure.String()})
		}
		_ = json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(srv.Close)
	var eps []netip.AddrPort
	for i := range 300 {
		eps = append(eps, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(i%250 + 1)}), 8080))
	}
	c := newConfirmer(peers{leader: confirm.Observer{Name: "node-a"}, list: []observer.Peer{
		{Observer: confirm.Observer{Name: "node-b"}, URL: srv.URL}}})
	q := suspicion("payments", eps...)
	q.Observers = 1
	r, _ := within(c, q)
	g.Expect(r.Outcome).To(Equal(confirm.Confirmed), "a question about 300 endpoints is answered, not refused")
	g.Expect(asked.Load()).To(BeEquivalentTo(observer.MaxEndpoints))
}
