package confirm

import (
	"slices"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func obs(name, zone string) Observer { return Observer{Name: name, Zone: zone} }

// ballots builds ballots from a script: "F" failing, "H" healthy, "-" silent, and a
// trailing "d" for a degraded observer ("Fd"). Observers are named b, c, d, ...
func ballots(script ...string) []Ballot {
	out := make([]Ballot, len(script))
	for i, s := range script {
		b := Ballot{Observer: obs(string(rune('b'+i)), "")}
		switch s[0] {
		case 'F':
			b.Verdict = Failing
		case 'H':
			b.Verdict = Healthy
		default:
			b.Verdict = Silent
		}
		b.Degraded = len(s) > 1 && s[1] == 'd'
		out[i] = b
	}
	return out
}

func TestTally(t *testing.T) {
	leader := Ballot{Observer: obs("a", "")}
	sick := Ballot{Observer: obs("a", ""), Degraded: true}
	for _, tc := range []struct {
		name    string
		leader  Ballot
		ballots []Ballot
		final   bool
		want    Outcome
	}{
		{"no observers to ask: the single-observer rule", leader, nil, false, Unconfirmed},
		{"no observers to ask, final", leader, nil, true, Unconfirmed},
		{"nobody answered yet", leader, ballots("-", "-"), false, Pending},
		{"nobody answered by the deadline", leader, ballots("-", "-"), true, Unconfirmed},
		{"one agrees: 2 of at most 3 is a majority at once", leader, ballots("F", "-"), false, Confirmed},
		{"one disagrees: the other decides", leader, ballots("H", "-"), false, Pending},
		{"both disagree: held", leader, ballots("H", "H"), false, Refuted},
		{"one disagrees, the other silent at the deadline: a tie holds", leader, ballots("H", "-"), true, Refuted},
		{"one agrees, one disagrees", leader, ballots("F", "H"), true, Confirmed},
		{"the only observer agrees", leader, ballots("F"), false, Confirmed},
		{"the only observer disagrees", leader, ballots("H"), false, Refuted},
		{"a degraded leader is outvoted by one sound observer", sick, ballots("H"), false, Refuted},
		{"a degraded leader and one agreeing observer outvote one", sick, ballots("F", "H"), true, Confirmed},
		{"a degraded observer's agreement still counts: 1.5 against 1", leader, ballots("H", "Fd"), true, Confirmed},
		{"a degraded leader with a degraded agreeing observer loses to one sound", sick, ballots("Fd", "H"), true, Refuted},
		{"a degraded dissenter cannot hold alone against two", leader, ballots("Hd", "F"), false, Confirmed},
		{"early: a degraded silent observer cannot outweigh two failing", leader, ballots("F", "-d", "H"), false, Confirmed},
		{"three of five healthy is certain", leader, ballots("H", "H", "H", "-", "-"), false, Refuted},
		{"two of five healthy is not yet", leader, ballots("H", "H", "-", "-", "F"), false, Pending},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Tally(tc.leader, tc.ballots, tc.final); got.Outcome != tc.want {
				t.Fatalf("Tally = %s (failing %v, healthy %v), want %s", got.Outcome, got.Failing, got.Healthy, tc.want)
			}
		})
	}
}

func TestTallyCountsTheLeaderAsFailing(t *testing.T) {
	r := Tally(Ballot{Observer: obs("a", ""), Verdict: Healthy}, ballots("H"), true)
	if r.Leader.Verdict != Failing || r.Failing != 1 || r.Healthy != 1 {
		t.Fatalf("leader %s, failing %v, healthy %v: the leader's probes saw the failure", r.Leader.Verdict, r.Failing, r.Healthy)
	}
}

func TestMessage(t *testing.T) {
	leader := Ballot{Observer: obs("node-a", "")}
	named := func(bs []Ballot, names ...string) []Ballot {
		for i := range bs {
			bs[i].Observer.Name = names[i]
		}
		return bs
	}
	for _, tc := range []struct {
		name string
		r    Result
		want string
	}{
		{"held", Tally(leader, named(ballots("H", "H"), "node-b", "node-c"), true),
			"held: 2 of 3 observers see shop/payments healthy (node-b, node-c); node-a sees it failing"},
		{"held with one silent", Tally(leader, named(ballots("H", "-"), "node-b", "node-c"), true),
			"held: 1 of 2 observers see shop/payments healthy (node-b); node-a sees it failing; no answer from node-c"},
		{"confirmed", Tally(leader, named(ballots("F", "H"), "node-b", "node-c"), true),
			"confirmed: 2 of 3 observers see shop/payments failing (node-a, node-b); node-c sees it healthy"},
		{"unconfirmed", Tally(leader, named(ballots("-", "-"), "node-b", "node-c"), true),
			"unconfirmed: no observer answered about shop/payments in time (node-b, node-c); deciding on node-a's probes alone, under the observer guard"},
		{"nobody to ask", Tally(leader, nil, true),
			"unconfirmed: no other observer to ask about shop/payments; deciding on node-a's probes alone, under the observer guard"},
		{"a degraded leader and a sound peer", Tally(Ballot{Observer: obs("node-a", ""), Degraded: true},
			named(ballots("H", "-"), "node-b", "node-c"), true),
			"held: 1 of 2 observers see shop/payments healthy (node-b); node-a sees it failing; no answer from node-c; " +
				"degraded (alone seeing unrelated targets fail), so their votes weigh half: node-a"},
		{"pending", Tally(leader, named(ballots("H", "-"), "node-b", "node-c"), false),
			"asking: 1 of 2 observers answered about shop/payments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.r.Message("shop/payments"); got != tc.want {
				t.Fatalf("Message =\n  %q\nwant\n  %q", got, tc.want)
			}
		})
	}
}

func TestJudge(t *testing.T) {
	S, F, W, N := breaker.Success, breaker.Failure, breaker.Slow, breaker.Neutral
	for _, tc := range []struct {
		name     string
		outcomes []breaker.Outcome
		rule     Rule
		want     Verdict
	}{
		{"nothing probed", nil, Rule{}, Silent},
		{"only the observer's own errors", []breaker.Outcome{N, N}, Rule{}, Silent},
		{"one endpoint failing: an ejection confirmed", []breaker.Outcome{F}, Rule{}, Failing},
		{"one endpoint answering", []breaker.Outcome{S}, Rule{}, Healthy},
		{"two of three failing", []breaker.Outcome{F, F, S}, Rule{}, Failing},
		{"one of two failing is no majority", []breaker.Outcome{F, S}, Rule{}, Healthy},
		{"slow counts only for a slow-rate suspicion", []breaker.Outcome{W, W, S}, Rule{}, Healthy},
		{"slow-rate suspicion", []breaker.Outcome{W, W, S}, Rule{Slow: true}, Failing},
		{"a failure-rate percent of 50 takes one of two", []breaker.Outcome{F, S}, Rule{Percent: 50}, Failing},
		{"a percent of 80 wants four of five", []breaker.Outcome{F, F, F, S, S}, Rule{Percent: 80}, Healthy},
		{"neutral outcomes are not counted", []breaker.Outcome{F, N, N, N}, Rule{}, Failing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Judge(tc.outcomes, tc.rule); got != tc.want {
				t.Fatalf("Judge = %s, want %s", got, tc.want)
			}
		})
	}
}

func names(os []Observer) []string {
	out := make([]string, len(os))
	for i, o := range os {
		out[i] = o.Name
	}
	return out
}

func TestChoose(t *testing.T) {
	leader := obs("a1", "a")
	nodes := []Observer{obs("a1", "a"), obs("a2", "a"), obs("a3", "a"), obs("b1", "b"), obs("b2", "b"), obs("c1", "c"), obs("x", "")}
	zoneOf := map[string]string{}
	for _, n := range nodes {
		zoneOf[n.Name] = n.Zone
	}
	zones := func(os []Observer) []string {
		out := make([]string, len(os))
		for i, o := range os {
			out[i] = zoneOf[o.Name]
		}
		return out
	}
	none := func(string) bool { return false }

	t.Run("never the leader, never twice, at most k", func(t *testing.T) {
		got := Choose(10, ZonesIgnore, leader, append(slices.Clone(nodes), obs("b1", "b"), obs("", "b")), none, "shop/payments")
		if len(got) != 6 || slices.Contains(names(got), "a1") {
			t.Fatalf("Choose = %v, want the 6 other nodes", names(got))
		}
	})
	t.Run("Prefer: two other zones before the leader's", func(t *testing.T) {
		if got := zones(Choose(2, ZonesPrefer, leader, nodes, none, "shop/payments")); !slices.Equal(got, []string{"b", "c"}) &&
			!slices.Equal(got, []string{"c", "b"}) {
			t.Fatalf("zones %v, want b and c", got)
		}
	})
	t.Run("Prefer: then the leader's zone and unknown zones", func(t *testing.T) {
		got := Choose(5, ZonesPrefer, leader, nodes, none, "shop/payments")
		z := zones(got)
		if len(got) != 5 || slices.Contains(z[:3], "a") || slices.Contains(z[:3], "") {
			t.Fatalf("zones %v: b, b, c first", z)
		}
	})
	t.Run("Require: other zones only", func(t *testing.T) {
		got := Choose(5, ZonesRequire, leader, nodes, none, "shop/payments")
		if z := zones(got); len(got) != 3 || slices.Contains(z, "a") || slices.Contains(z, "") {
			t.Fatalf("zones %v, want b, b, c only", z)
		}
		if got := Choose(2, ZonesRequire, obs("x", ""), nodes, none, "k"); len(got) != 0 {
			t.Fatalf("a leader of unknown zone cannot know another zone, got %v", names(got))
		}
	})
	t.Run("degraded observers last", func(t *testing.T) {
		sick := func(n string) bool { return n == "b1" || n == "b2" }
		got := Choose(2, ZonesPrefer, leader, nodes, sick, "shop/payments")
		if n := names(got); n[0] != "c1" || zoneOf[n[1]] != "a" && n[1] != "x" {
			t.Fatalf("Choose = %v: c1, then a sound node rather than a degraded one in zone b", n)
		}
		got = Choose(2, ZonesRequire, leader, nodes, sick, "shop/payments")
		if n := names(got); n[0] != "c1" || zoneOf[n[1]] != "b" {
			t.Fatalf("Choose = %v: under Require a degraded observer elsewhere beats none", n)
		}
	})
	t.Run("stable for a key, spread over keys", func(t *testing.T) {
		first := map[string]int{}
		for i := range 200 {
			key := "ns/breaker-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			a := Choose(1, ZonesIgnore, leader, nodes, none, key)
			reversed := slices.Clone(nodes)
			slices.Reverse(reversed)
			b := Choose(1, ZonesIgnore, leader, reversed, none, key)
			if !slices.Equal(names(a), names(b)) {
				t.Fatalf("%s: %v then %v: the order of candidates must not matter", key, names(a), names(b))
			}
			first[a[0].Name]++
		}
		if len(first) < 5 {
			t.Fatalf("200 keys went to %v: they should spread over the observers", first)
		}
	})
	t.Run("k of 0 asks nobody", func(t *testing.T) {
		if got := Choose(0, ZonesPrefer, leader, nodes, none, "k"); got != nil {
			t.Fatalf("Choose = %v", names(got))
		}
	})
}

func TestHealth(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	h := NewHealth(HealthConfig{Window: 10 * time.Minute, Targets: 3})
	leader := Ballot{Observer: obs("a", "")}
	held := Tally(leader, ballots("H", "H"), true)      // a alone sees it failing
	confirmed := Tally(leader, ballots("F", "H"), true) // a and b see it failing

	h.Record(held, "shop/payments", clk.Now())
	h.Record(held, "shop/payments", clk.Now())
	h.Record(held, "shop/orders", clk.Now())
	if h.Degraded("a", clk.Now()) {
		t.Fatal("two targets: not yet degraded")
	}
	h.Record(Tally(leader, ballots("-", "-"), true), "shop/billing", clk.Now())
	if h.Degraded("a", clk.Now()) {
		t.Fatal("an unconfirmed tally teaches nothing")
	}
	clk.Step(time.Minute)
	h.Record(held, "shop/billing", clk.Now())
	if !h.Degraded("a", clk.Now()) || !slices.Equal(h.DegradedObservers(clk.Now()), []string{"a"}) {
		t.Fatal("three unrelated targets its peers reach: degraded")
	}
	if h.Degraded("b", clk.Now()) || h.Degraded("c", clk.Now()) {
		t.Fatal("seeing healthy what another sees failing is never held against an observer")
	}
	if got := h.Targets("a", clk.Now()); !slices.Equal(got, []string{"shop/billing", "shop/orders", "shop/payments"}) {
		t.Fatalf("Targets = %v", got)
	}
	if got, want := h.Until("a", clk.Now()), t0.Add(10*time.Minute); !got.Equal(want) {
		t.Fatalf("Until = %v, want %v: when the oldest of the three leaves the window", got, want)
	}
	h.Record(confirmed, "shop/orders", clk.Now())
	if h.Degraded("a", clk.Now()) {
		t.Fatal("a was right about shop/orders: two targets left")
	}
	h.Record(held, "shop/orders", clk.Now())
	clk.SetTime(t0.Add(10 * time.Minute))
	if h.Degraded("a", clk.Now()) {
		t.Fatal("ten minutes on, the first two disagreements left the window: recovered")
	}
	if !h.Until("a", clk.Now()).IsZero() {
		t.Fatal("Until is zero for a sound observer")
	}
	clk.Step(time.Hour)
	h.Prune(clk.Now())
	if len(h.lone) != 0 {
		t.Fatalf("Prune left %v", h.lone)
	}
}

func TestHealthConfigValidate(t *testing.T) {
	if err := DefaultHealth.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []HealthConfig{{Window: 0, Targets: 3}, {Window: time.Minute, Targets: 0}} {
		if c.Validate() == nil {
			t.Fatalf("%+v: want an error", c)
		}
	}
}

// FuzzTally checks what the early decision promises: once Tally decides before the
// deadline, no way the observers still out could answer changes the outcome.
func FuzzTally(f *testing.F) {
	f.Add(uint64(0), uint8(3), false)
	f.Add(uint64(0x1234), uint8(5), true)
	f.Fuzz(func(t *testing.T, seed uint64, n uint8, leaderDegraded bool) {
		n %= 7
		bs := make([]Ballot, n)
		for i := range bs {
			v := (seed >> (3 * i)) & 7
			bs[i] = Ballot{Observer: obs(string(rune('b'+i)), ""), Verdict: []Verdict{Silent, Failing, Healthy}[v%3], Degraded: v >= 5}
		}
		leader := Ballot{Observer: obs("a", ""), Degraded: leaderDegraded}
		early := Tally(leader, bs, false)
		if early.Outcome == Pending {
			return
		}
		var out []int
		for i, b := range bs {
			if b.Verdict == Silent {
				out = append(out, i)
			}
		}
		for mask := range 1 << (2 * len(out)) {
			done := slices.Clone(bs)
			for j, i := range out {
				done[i].Verdict = []Verdict{Silent, Failing, Healthy, Silent}[(mask>>(2*j))&3]
			}
			if final := Tally(leader, done, true); final.Outcome != early.Outcome {
				t.Fatalf("early %s for %+v, but %s once the rest answered %+v", early.Outcome, bs, final.Outcome, done)
			}
		}
	})
}
