package observer

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/confirm"
)

// ClusterBreakers reads breakers and their fronts' EndpointSlices through a client.Reader:
// the observer's informer cache.
type ClusterBreakers struct {
	Reader client.Reader
}

// Get reads one breaker.
func (c ClusterBreakers) Get(ctx context.Context, key types.NamespacedName) (*tripswitchv1alpha1.CircuitBreaker, error) {
	var cb tripswitchv1alpha1.CircuitBreaker
	if err := c.Reader.Get(ctx, key, &cb); err != nil {
		return nil, err
	}
	return &cb, nil
}

// Published returns every address and port in the breaker's front EndpointSlices that
// tripswitch manages.
func (c ClusterBreakers) Published(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker) (map[netip.AddrPort]bool, error) {
	var list discoveryv1.EndpointSliceList
	if err := c.Reader.List(ctx, &list, client.InNamespace(cb.Namespace), client.MatchingLabels{
		discoveryv1.LabelServiceName: cb.FrontServiceName(),
		discoveryv1.LabelManagedBy:   tripswitchv1alpha1.ManagedBy,
	}); err != nil {
		return nil, err
	}
	out := map[netip.AddrPort]bool{}
	for _, sl := range list.Items {
		for _, ep := range sl.Endpoints {
			for _, a := range ep.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil {
					continue // an FQDN slice: kube-proxy ignores those, and so does the observer
				}
				for _, p := range sl.Ports {
					if p.Port != nil {
						out[netip.AddrPortFrom(addr, uint16(*p.Port))] = true
					}
				}
			}
		}
	}
	return out, nil
}

// SliceDirectory finds the observers through the EndpointSlices of the node agents'
// Service, which Kubernetes keeps: each ready endpoint is an agent, named by its nodeName and
// placed by its zone (the EndpointSlice controller copies the node's
// topology.kubernetes.io/zone). The agents use the host network, so an endpoint's address is
// its node's. Reading slices needs no access to pods or nodes beyond what the manager has.
type SliceDirectory struct {
	// Slices reads the agents' Service's EndpointSlices.
	Slices func(ctx context.Context) ([]discoveryv1.EndpointSlice, error)
	// PortName is the Service port the observers serve on.
	PortName string
	// Node is the leader's own node (the downward API's spec.nodeName).
	Node string
}

// Peers returns the leader's node, placed by its own agent's endpoint when it has one, and
// every ready agent (its own among them: Choose leaves that one out).
func (d SliceDirectory) Peers(ctx context.Context) (confirm.Observer, []Peer, error) {
	leader := confirm.Observer{Name: d.Node}
	slices, err := d.Slices(ctx)
	if err != nil {
		return leader, nil, err
	}
	var peers []Peer
	for _, sl := range slices {
		port := 0
		for _, p := range sl.Ports {
			if p.Port != nil && p.Name != nil && *p.Name == d.PortName {
				port = int(*p.Port)
			}
		}
		if port == 0 {
			continue
		}
		for _, ep := range sl.Endpoints {
			if ep.NodeName == nil || *ep.NodeName == "" || len(ep.Addresses) == 0 || ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			o := confirm.Observer{Name: *ep.NodeName}
			if ep.Zone != nil {
				o.Zone = *ep.Zone
			}
			if o.Name == d.Node {
				leader.Zone = o.Zone
			}
			peers = append(peers, Peer{Observer: o, URL: "http://" + net.JoinHostPort(ep.Addresses[0], strconv.Itoa(port))})
		}
	}
	return leader, peers, nil
}

// TokenReviewer authenticates bearer tokens with the API server's TokenReview, for Audience
// only, and remembers each answer for a while: the leader presents the same token for its
// whole lifetime, and a confirmation must not wait on the API server each time.
type TokenReviewer struct {
	Client client.Client
	Clock  clock.PassiveClock
	// Good and Bad are how long a successful and a failed review are remembered; a review
	// that could not be made (the API server unreachable) is not remembered.
	Good, Bad time.Duration

	mu      sync.Mutex
	answers map[[sha256.Size]byte]review
}

type review struct {
	user string
	err  error
	at   time.Time
}

// maxRemembered bounds the remembered reviews: the manager's replicas hold a token or two
// each, so more than this means someone is trying tokens.
const maxRemembered = 64

// Authenticate returns the user the token belongs to.
func (t *TokenReviewer) Authenticate(ctx context.Context, token string) (string, error) {
	key := sha256.Sum256([]byte(token))
	now := t.Clock.Now()
	t.mu.Lock()
	if r, ok := t.answers[key]; ok && now.Sub(r.at) < t.keep(r) {
		t.mu.Unlock()
		return r.user, r.err
	}
	t.mu.Unlock()

	tr := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{Audience}}}
	if err := t.Client.Create(ctx, tr); err != nil {
		return "", fmt.Errorf("reviewing the token: %w", err)
	}
	r := review{user: tr.Status.User.Username, at: now}
	switch {
	case !tr.Status.Authenticated:
		r.user, r.err = "", fmt.Errorf("not authenticated: %s", tr.Status.Error)
	case !slices.Contains(tr.Status.Audiences, Audience):
		r.user, r.err = "", errors.New("the token is not for "+Audience)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.answers == nil || len(t.answers) >= maxRemembered {
		t.answers = map[[sha256.Size]byte]review{}
	}
	t.answers[key] = r
	return r.user, r.err
}

func (t *TokenReviewer) keep(r review) time.Duration {
	if r.err != nil {
		return t.Bad
	}
	return t.Good
}
