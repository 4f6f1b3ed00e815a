package observer

import (
	"context"
	"sync"

	"k8s.io/utils/clock"

	"github.com/tripswitch/tripswitch/internal/confirm"
	"github.com/tripswitch/tripswitch/internal/runner"
)

// Peer is an observer the leader can ask: its node, and where its server listens.
type Peer struct {
	confirm.Observer
	// URL is the base of its server, such as "http://10.0.0.2:8493".
	URL string
}

// Directory says who can observe now: the observers that are ready, and the leader's own
// node among them.
type Directory interface {
	Peers(ctx context.Context) (leader confirm.Observer, peers []Peer, err error)
}

// Confirmer is the leader's side of the second opinion (runner.Confirmer): it chooses
// observers, asks them at once, tallies each answer as it comes, stops as soon as the
// outcome is certain, and keeps every observer's local health.
type Confirmer struct {
	Client    *Client
	Directory Directory
	Clock     clock.PassiveClock

	mu     sync.Mutex
	health *confirm.Health
}

// NewConfirmer returns a Confirmer; cfg must be valid.
func NewConfirmer(client *Client, dir Directory, clk clock.PassiveClock, cfg confirm.HealthConfig) *Confirmer {
	return &Confirmer{Client: client, Directory: dir, Clock: clk, health: confirm.NewHealth(cfg)}
}

var _ runner.Confirmer = (*Confirmer)(nil)

type answer struct {
	i    int
	resp Response
	err  error
}

// Confirm asks about q until ctx is done. An observer that fails, refuses or does not answer
// in time is silent; with no observer to ask, or none answering, the result is Unconfirmed.
func (c *Confirmer) Confirm(ctx context.Context, q runner.Suspicion) confirm.Result {
	leader, peers, err := c.Directory.Peers(ctx)
	if err != nil {
		peers = nil // nobody to ask is Unconfirmed: the single-observer rule, said so
	}
	urls := map[string]string{}
	candidates := make([]confirm.Observer, len(peers))
	for i, p := range peers {
		candidates[i], urls[p.Name] = p.Observer, p.URL
	}
	c.mu.Lock()
	now := c.Clock.Now()
	degraded := func(name string) bool { return c.health.Degraded(name, now) }
	chosen := confirm.Choose(q.Observers, q.Zones, leader, candidates, degraded, q.Key.String())
	me := confirm.Ballot{Observer: leader, Degraded: degraded(leader.Name)}
	ballots := make([]confirm.Ballot, len(chosen))
	for i, o := range chosen {
		ballots[i] = confirm.Ballot{Observer: o, Verdict: confirm.Silent, Degraded: degraded(o.Name)}
	}
	c.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // an early decision stops the questions still out
	answers := make(chan answer, len(chosen))
	// An observer refuses a question about more than MaxEndpoints: ask about the first ones
	// (the runner lists the failing ones, sorted), a sample big enough to judge a rate by.
	eps := q.Endpoints[:min(len(q.Endpoints), MaxEndpoints)]
	req := Request{Namespace: q.Key.Namespace, Name: q.Key.Name, Endpoints: make([]string, len(eps))}
	for i, ep := range eps {
		req.Endpoints[i] = ep.String()
	}
	for i, o := range chosen {
		go func() {
			resp, err := c.Client.Ask(ctx, urls[o.Name], req)
			answers <- answer{i: i, resp: resp, err: err}
		}()
	}
	result := confirm.Tally(me, ballots, len(chosen) == 0)
	for pending := len(chosen); result.Outcome == confirm.Pending; {
		select {
		case a := <-answers:
			pending--
			if a.err == nil {
				ballots[a.i].Verdict = confirm.Judge(a.resp.Outcomes(), q.Rule)
				ballots[a.i].Detail = a.resp.Detail()
			}
			result = confirm.Tally(me, ballots, pending == 0)
		case <-ctx.Done():
			result = confirm.Tally(me, ballots, true)
		}
	}
	c.mu.Lock()
	c.health.Record(result, q.Key.String(), c.Clock.Now())
	c.mu.Unlock()
	return result
}

// Degraded returns the degraded observers now, sorted, with the targets that made each one
// so: for a metric and for the conditions of the breakers they affect.
func (c *Confirmer) Degraded() map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.Clock.Now()
	out := map[string][]string{}
	for _, name := range c.health.DegradedObservers(now) {
		out[name] = c.health.Targets(name, now)
	}
	return out
}
