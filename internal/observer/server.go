package observer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/probe"
)

// Authenticator says who presented a bearer token: a user name such as
// "system:serviceaccount:tripswitch-system:tripswitch-controller-manager", or an error when
// the token is not good for Audience.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (string, error)
}

// Breakers is what an observer reads of the cluster, from its informers.
type Breakers interface {
	// Get returns the breaker, or an error for which apierrors.IsNotFound holds.
	Get(ctx context.Context, key types.NamespacedName) (*tripswitchv1alpha1.CircuitBreaker, error)
	// Published returns the endpoints ("address:port" of the target's port) that the
	// breaker's front EndpointSlices hold now, ready or not: an ejected endpoint is published
	// not ready.
	Published(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker) (map[netip.AddrPort]bool, error)
}

// Server answers the leader's requests on one observer.
type Server struct {
	// Node names the observer in its answers.
	Node string
	// Auth checks the caller's token; Allowed is the only user it serves (the manager's
	// service account).
	Auth    Authenticator
	Allowed string
	// Breakers reads breakers and their fronts.
	Breakers Breakers
	// Compile turns a breaker into its probe spec, as the manager does.
	Compile func(*tripswitchv1alpha1.CircuitBreaker) (probe.Spec, error)
	// NewProber makes a prober for a spec (probe.Factory.New).
	NewProber func(probe.Spec) (probe.Prober, error)
	// Parallel bounds the probes one request runs at once; 0 means 16.
	Parallel int
}

// ServeHTTP answers POST Path: 401 without a good token, 403 for another caller or an
// endpoint the breaker does not publish, 404 for a breaker the observer cannot see (yet: its
// informer may lag the leader's), 422 for a spec it cannot run, else 200 with a Response.
func (s *Server) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != Path {
		http.NotFound(w, req)
		return
	}
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	token, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		http.Error(w, "a bearer token is required", http.StatusUnauthorized)
		return
	}
	user, err := s.Auth.Authenticate(req.Context(), token)
	if err != nil {
		http.Error(w, "the token is not good for "+Audience, http.StatusUnauthorized)
		return
	}
	if user != s.Allowed {
		http.Error(w, fmt.Sprintf("%s may not ask this observer", user), http.StatusForbidden)
		return
	}
	var r Request
	dec := json.NewDecoder(io.LimitReader(req.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		http.Error(w, "reading the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	eps, err := r.endpoints()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp, status, err := s.observe(req.Context(), r, eps)
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// endpoints parses and bounds the request's endpoints.
func (r Request) endpoints() ([]probe.Endpoint, error) {
	if r.Namespace == "" || r.Name == "" {
		return nil, errors.New("namespace and name are required")
	}
	if len(r.Endpoints) == 0 || len(r.Endpoints) > MaxEndpoints {
		return nil, fmt.Errorf("%d endpoints: want 1 to %d", len(r.Endpoints), MaxEndpoints)
	}
	eps := make([]probe.Endpoint, len(r.Endpoints))
	for i, e := range r.Endpoints {
		ep, err := netip.ParseAddrPort(e)
		if err != nil {
			return nil, fmt.Errorf("endpoint %q: %w", e, err)
		}
		eps[i] = ep
	}
	return eps, nil
}

// observe checks the request against the breaker and probes each endpoint once.
func (s *Server) observe(ctx context.Context, r Request, eps []probe.Endpoint) (Response, int, error) {
	key := types.NamespacedName{Namespace: r.Namespace, Name: r.Name}
	cb, err := s.Breakers.Get(ctx, key)
	switch {
	case apierrors.IsNotFound(err):
		return Response{}, http.StatusNotFound, fmt.Errorf("no CircuitBreaker %s here", key)
	case err != nil:
		return Response{}, http.StatusServiceUnavailable, fmt.Errorf("reading CircuitBreaker %s: %w", key, err)
	}
	published, err := s.Breakers.Published(ctx, cb)
	if err != nil {
		return Response{}, http.StatusServiceUnavailable, fmt.Errorf("reading the front of %s: %w", key, err)
	}
	var foreign []string
	for _, ep := range eps {
		if !published[ep] {
			foreign = append(foreign, ep.String())
		}
	}
	if len(foreign) > 0 {
		return Response{}, http.StatusForbidden, fmt.Errorf("%s does not publish %s: an observer probes only its breakers' endpoints",
			key, strings.Join(foreign, ", "))
	}
	spec, err := s.Compile(cb)
	if err != nil {
		return Response{}, http.StatusUnprocessableEntity, fmt.Errorf("the probe of %s cannot run: %w", key, err)
	}
	prober, err := s.NewProber(spec)
	if err != nil {
		return Response{}, http.StatusUnprocessableEntity, fmt.Errorf("the probe of %s cannot run: %w", key, err)
	}
	defer prober.Close()

	resp := Response{Observer: s.Node, Results: make([]Result, len(eps))}
	parallel := s.Parallel
	if parallel <= 0 {
		parallel = 16
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, ep := range eps {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			resp.Results[i] = resultOf(prober.Probe(ctx, ep))
		})
	}
	wg.Wait()
	return resp, http.StatusOK, nil
}

// Run serves s on addr until ctx is done, then shuts the server down, letting requests in
// flight finish for up to 5 s. A request's probes end with the breaker's probe timeout, so
// the write timeout only bounds a client that does not read.
func (s *Server) Run(ctx context.Context, addr string) error {
	srv := &http.Server{Addr: addr, Handler: s, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 2 * time.Minute, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	errs := make(chan error, 1)
	go func() { errs <- srv.ListenAndServe() }()
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return err
	}
	if err := <-errs; err != http.ErrServerClosed {
		return err
	}
	return nil
}
