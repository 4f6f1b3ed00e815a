package observer_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/breaker"
	"github.com/tripswitch/tripswitch/internal/confirm"
	"github.com/tripswitch/tripswitch/internal/controller"
	"github.com/tripswitch/tripswitch/internal/observer"
	"github.com/tripswitch/tripswitch/internal/probe"
)

const manager = "system:serviceaccount:tripswitch-system:tripswitch-controller-manager"

// tokens is an Authenticator of fixed tokens.
type tokens map[string]string

func (t tokens) Authenticate(_ context.Context, token string) (string, error) {
	if user, ok := t[token]; ok {
		return user, nil
	}
	return "", errors.New("unknown token")
}

// breakers is what the observer's informers would hold.
type breakers struct {
	cbs       map[types.NamespacedName]*tripswitchv1alpha1.CircuitBreaker
	published map[types.NamespacedName]map[netip.AddrPort]bool
}

func (b *breakers) Get(_ context.Context, key types.NamespacedName) (*tripswitchv1alpha1.CircuitBreaker, error) {
	if cb, ok := b.cbs[key]; ok {
		return cb, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Group: "tripswitch.io", Resource: "circuitbreakers"}, key.Name)
}

func (b *breakers) Published(_ context.Context, cb *tripswitchv1alpha1.CircuitBreaker) (map[netip.AddrPort]bool, error) {
	return b.published[types.NamespacedName{Namespace: cb.Namespace, Name: cb.Name}], nil
}

// target is a loopback HTTP server answering status, counting the requests it got.
func target(t *testing.T, status int) (netip.AddrPort, *atomic.Int32) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://")), &hits
}

type rig struct {
	url            string
	client         *observer.Client
	healthy, sick  netip.AddrPort
	unpublished    netip.AddrPort
	unpublishedHit *atomic.Int32
}

func newRig(t *testing.T) *rig {
	healthy, _ := target(t, http.StatusOK)
	sick, _ := target(t, http.StatusServiceUnavailable)
	unpublished, hits := target(t, http.StatusOK)
	cb := &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments"},
		Spec: tripswitchv1alpha1.CircuitBreakerSpec{
			Probe: tripswitchv1alpha1.ProbeSpec{Timeout: &metav1.Duration{Duration: 500 * time.Millisecond}},
		}}
	key := types.NamespacedName{Namespace: "shop", Name: "payments"}
	srv := &observer.Server{
		Node: "node-b", Auth: tokens{"good": manager, "other": "system:serviceaccount:shop:default"}, Allowed: manager,
		Breakers: &breakers{
			cbs:       map[types.NamespacedName]*tripswitchv1alpha1.CircuitBreaker{key: cb},
			published: map[types.NamespacedName]map[netip.AddrPort]bool{key: {healthy: true, sick: true}},
		},
		Compile: func(cb *tripswitchv1alpha1.CircuitBreaker) (probe.Spec, error) {
			spec := cb.Resolve()
			r, err := controller.Compile(&spec)
			return r.Probe, err
		},
		NewProber: probe.NewFactory(nil, clock.RealClock{}).New,
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return &rig{url: hs.URL, healthy: healthy, sick: sick, unpublished: unpublished, unpublishedHit: hits,
		client: &observer.Client{HTTP: hs.Client(), Token: func() (string, error) { return "good", nil }}}
}

func ask(r *rig, req observer.Request) (observer.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.client.Ask(ctx, r.url, req)
}

func TestObserverProbesTheBreakersEndpointsWithItsSpec(t *testing.T) {
	g := NewWithT(t)
	r := newRig(t)
	resp, err := ask(r, observer.Request{Namespace: "shop", Name: "payments", Endpoints: []string{r.healthy.String(), r.sick.String()}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(resp.Observer).To(Equal("node-b"))
	g.Expect(resp.Outcomes()).To(Equal([]breaker.Outcome{breaker.Success, breaker.Failure}))
	g.Expect(resp.Detail()).To(Equal("HTTP 503 from " + r.sick.String()))
	g.Expect(confirm.Judge(resp.Outcomes(), confirm.Rule{})).To(Equal(confirm.Healthy), "one of two failing is no majority")

	resp, err = ask(r, observer.Request{Namespace: "shop", Name: "payments", Endpoints: []string{r.sick.String()}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(confirm.Judge(resp.Outcomes(), confirm.Rule{})).To(Equal(confirm.Failing), "the ejection of the sick endpoint is confirmed")
}

func TestObserverIsNotARelay(t *testing.T) {
	g := NewWithT(t)
	r := newRig(t)
	_, err := ask(r, observer.Request{Namespace: "shop", Name: "payments", Endpoints: []string{r.healthy.String(), r.unpublished.String()}})
	g.Expect(err).To(MatchError(And(ContainSubstring("403"), ContainSubstring("does not publish "+r.unpublished.String()))))
	g.Expect(r.unpublishedHit.Load()).To(BeZero(), "an address the breaker does not publish is never probed")

	_, err = ask(r, observer.Request{Namespace: "shop", Name: "orders", Endpoints: []string{r.healthy.String()}})
	g.Expect(err).To(MatchError(ContainSubstring("404")), "a breaker the observer cannot see")
}

func TestObserverServesOnlyTheManager(t *testing.T) {
	r := newRig(t)
	body := `{"namespace":"shop","name":"payments","endpoints":["` + r.healthy.String() + `"]}`
	for _, tc := range []struct {
		name, method, auth string
		want               int
	}{
		{"no token", http.MethodPost, "", http.StatusUnauthorized},
		{"not a bearer token", http.MethodPost, "Basic Zm9vOmJhcg==", http.StatusUnauthorized},
		{"a token the API server does not know", http.MethodPost, "Bearer forged", http.StatusUnauthorized},
		{"another service account", http.MethodPost, "Bearer other", http.StatusForbidden},
		{"the manager", http.MethodPost, "Bearer good", http.StatusOK},
		{"GET", http.MethodGet, "Bearer good", http.StatusMethodNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, r.url+observer.Path, strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = res.Body.Close()
			if res.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", res.StatusCode, tc.want)
			}
		})
	}
}

func TestObserverRefusesMalformedRequests(t *testing.T) {
	r := newRig(t)
	many := make([]string, observer.MaxEndpoints+1)
	for i := range many {
		many[i] = r.healthy.String()
	}
	for _, tc := range []struct {
		name string
		req  observer.Request
		want string
	}{
		{"no endpoints", observer.Request{Namespace: "shop", Name: "payments"}, "0 endpoints"},
		{"too many endpoints", observer.Request{Namespace: "shop", Name: "payments", Endpoints: many}, "257 endpoints"},
		{"a host name", observer.Request{Namespace: "shop", Name: "payments", Endpoints: []string{"example.com:80"}}, "400"},
		{"no name", observer.Request{Namespace: "shop", Endpoints: []string{r.healthy.String()}}, "required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ask(r, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
}

// A hostile or broken observer's answer that does not match the question is an error, so
// the leader counts it as silent rather than as a vote.
func TestClientRejectsAnswersThatDoNotMatch(t *testing.T) {
	for _, tc := range []struct{ name, body string }{
		{"fewer results", `{"observer":"x","results":[]}`},
		{"another endpoint", `{"observer":"x","results":[{"endpoint":"10.0.0.9:80","outcome":"Success"}]}`},
		{"not JSON", `healthy!`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(tc.body)) }))
			defer hs.Close()
			c := &observer.Client{HTTP: hs.Client(), Token: func() (string, error) { return "good", nil }}
			if _, err := c.Ask(context.Background(), hs.URL, observer.Request{Namespace: "shop", Name: "payments", Endpoints: []string{"10.0.0.1:80"}}); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}
