package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

func TestStatus(t *testing.T) {
	shop(t, "shop")
	other := newFixture(t, "status-billing")
	other.target(t, "ledger-backend", "10.0.3.1")
	other.breaker(t, "ledger", tripswitchv1alpha1.CircuitBreakerSpec{Target: target("ledger-backend")},
		tripswitchv1alpha1.CircuitBreakerStatus{}, nil)
	external := newFixture(t, "status-external")
	external.slice(t, "stripe-abcde", "stripe", tripswitchv1alpha1.ManagedBy, []string{"203.0.113.10", "203.0.113.11"}, nil)
	seen := metav1.NewTime(now.Add(-20 * time.Second))
	external.breaker(t, "stripe", tripswitchv1alpha1.CircuitBreakerSpec{Target: tripswitchv1alpha1.TargetReference{
		External: &tripswitchv1alpha1.ExternalTarget{Host: "api.stripe.com", Port: 443}},
		Probe: tripswitchv1alpha1.ProbeSpec{TCP: &tripswitchv1alpha1.TCPProbe{}}},
		tripswitchv1alpha1.CircuitBreakerStatus{State: tripswitchv1alpha1.StateClosed, GateState: tripswitchv1alpha1.StateClosed,
			FrontService: "stripe", Target: "api.stripe.com:443",
			External: &tripswitchv1alpha1.ExternalStatus{Host: "api.stripe.com", Server: "10.0.0.2:53", LastResolution: &seen,
				Error: "resolving api.stripe.com: SERVFAIL from 10.0.0.2:53",
				Addresses: []tripswitchv1alpha1.ExternalAddress{{Address: "203.0.113.10", LastSeen: seen, TTLSeconds: 60},
					{Address: "203.0.113.11", LastSeen: seen, TTLSeconds: 60}}}}, nil)

	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"status-list", []string{"status", "-n", "shop"}},
		{"status-payments", []string{"status", "payments", "-n", "shop"}},
		{"status-orders", []string{"status", "orders", "-n", "shop"}},
		{"status-search", []string{"status", "search", "-n", "shop", "--max-endpoints", "2"}},
		{"status-unreconciled", []string{"status", "ledger", "-n", "status-billing"}},
		{"status-external", []string{"status", "stripe", "-n", "status-external"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			r := kubectl(t, tc.args...)
			NewWithT(t).Expect(r.code).To(Equal(0), r.errOut.String())
			golden(t, tc.golden, r.out.String())
		})
	}

	t.Run("all namespaces", func(t *testing.T) {
		r := kubectl(t, "status", "-A")
		g := NewWithT(t)
		g.Expect(r.code).To(Equal(0), r.errOut.String())
		g.Expect(r.out.String()).To(MatchRegexp(`(?m)^NAMESPACE\s+NAME\s+STATE`))
		g.Expect(r.out.String()).To(MatchRegexp(`(?m)^status-billing\s+ledger\s+-\s+-\s+-\s+0\s`))
		g.Expect(r.out.String()).To(MatchRegexp(`(?m)^shop\s+payments\s+Open\s+Open\s+Auto\s+4\s+0/3\s+1\s+42s\s+TrialFailed\s+HalfOpen in 18s$`))
	})
	t.Run("an empty namespace", func(t *testing.T) {
		newFixture(t, "status-empty")
		r := kubectl(t, "status", "-n", "status-empty")
		NewWithT(t).Expect(r.code).To(Equal(0))
		NewWithT(t).Expect(r.errOut.String()).To(Equal("No circuit breakers found in namespace status-empty.\n"))
	})
	t.Run("a breaker that does not exist", func(t *testing.T) {
		r := kubectl(t, "status", "nope", "-n", "shop")
		NewWithT(t).Expect(r.code).To(Equal(1))
		NewWithT(t).Expect(r.errOut.String()).To(Equal(
			"error: circuit breaker \"nope\" in namespace \"shop\": circuitbreakers.tripswitch.io \"nope\" not found\n"))
	})
	t.Run("the kubeconfig's namespace when -n is not given", func(t *testing.T) {
		r := kubectl(t, "status")
		NewWithT(t).Expect(r.errOut.String()).To(Equal("No circuit breakers found in namespace default.\n"))
	})
}

func TestWhy(t *testing.T) {
	shop(t, "why-shop")
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"why-payments", []string{"why", "payments", "-n", "why-shop"}},
		{"why-payments-limit", []string{"why", "payments", "-n", "why-shop", "--limit", "3"}},
		{"why-orders", []string{"why", "orders", "-n", "why-shop"}},
		{"why-search", []string{"why", "search", "-n", "why-shop"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			r := kubectl(t, tc.args...)
			NewWithT(t).Expect(r.code).To(Equal(0), r.errOut.String())
			golden(t, tc.golden, r.out.String())
		})
	}

	t.Run("events of an older breaker of the same name are not its story", func(t *testing.T) {
		g := NewWithT(t)
		ctx := context.Background()
		g.Expect(k8s.Delete(ctx, breakerIn(t, "why-shop", "search"))).To(Succeed())
		f := &fixture{ns: "why-shop"}
		f.breaker(t, "search", tripswitchv1alpha1.CircuitBreakerSpec{Target: target("search-backend")},
			tripswitchv1alpha1.CircuitBreakerStatus{State: tripswitchv1alpha1.StateClosed}, nil)
		r := kubectl(t, "why", "search", "-n", "why-shop")
		g.Expect(r.code).To(Equal(0), r.errOut.String())
		g.Expect(r.out.String()).To(Equal("search is Closed.\n\nNo events for it: events expire an hour after they happen by default.\n"))
	})
}

func TestModeCommands(t *testing.T) {
	const ns = "mode-shop"
	shop(t, ns)
	g := NewWithT(t)

	// trip --for: ForceOpen with modeUntil ten minutes from the fake clock's now.
	r := kubectl(t, "trip", "payments", "-n", ns, "--for", "10m", "--yes")
	g.Expect(r.code).To(Equal(0), r.errOut.String())
	g.Expect(r.out.String()).To(Equal("circuitbreaker.tripswitch.io/payments set to ForceOpen for 10m0s, until 2026-12-06T10:10:00Z, then Auto\n"))
	g.Expect(r.errOut.String()).To(BeEmpty())
	cb := breakerIn(t, ns, "payments")
	g.Expect(cb.Spec.Mode).To(Equal(tripswitchv1alpha1.ModeForceOpen))
	g.Expect(cb.Spec.ModeUntil.Time).To(BeTemporally("==", now.Add(10*time.Minute)))
	g.Expect(cb.ManagedFields).To(ContainElement(HaveField("Manager", FieldManager)))

	// The same again changes nothing.
	r = kubectl(t, "trip", "payments", "-n", ns, "--for", "10m", "--yes")
	g.Expect(r.out.String()).To(Equal("circuitbreaker.tripswitch.io/payments unchanged: mode is already ForceOpen for 10m0s, until 2026-12-06T10:10:00Z, then Auto\n"))

	// A --for that does not end on a second lasts at least as long as asked.
	late := &run{clockOverride: clocktesting.NewFakeClock(now.Add(300 * time.Millisecond))}
	late.exec("trip", "payments", "-n", ns, "--for", "90s", "--yes")
	g.Expect(late.code).To(Equal(0), late.errOut.String())
	g.Expect(breakerIn(t, ns, "payments").Spec.ModeUntil.Time).To(BeTemporally("==", now.Add(91*time.Second)))

	// close without --for: ForceClosed until changed, modeUntil cleared.
	r = kubectl(t, "close", "payments", "-n", ns, "-y")
	g.Expect(r.code).To(Equal(0), r.errOut.String())
	g.Expect(r.out.String()).To(Equal("circuitbreaker.tripswitch.io/payments set to ForceClosed until changed\n"))
	cb = breakerIn(t, ns, "payments")
	g.Expect(cb.Spec.Mode).To(Equal(tripswitchv1alpha1.ModeForceClosed))
	g.Expect(cb.Spec.ModeUntil).To(BeNil())

	// auto clears modeUntil too, which the API refuses beside Auto.
	r = kubectl(t, "trip", "payments", "-n", ns, "--for", "1h", "--yes")
	g.Expect(r.code).To(Equal(0), r.errOut.String())
	r = kubectl(t, "auto", "payments", "-n", ns, "--yes")
	g.Expect(r.code).To(Equal(0), r.errOut.String())
	g.Expect(r.out.String()).To(Equal("circuitbreaker.tripswitch.io/payments set to Auto\n"))
	cb = breakerIn(t, ns, "payments")
	g.Expect(cb.Spec.Mode).To(Equal(tripswitchv1alpha1.ModeAuto))
	g.Expect(cb.Spec.ModeUntil).To(BeNil())

	t.Run("without a terminal and without --yes, nothing changes", func(t *testing.T) {
		g := NewWithT(t)
		r := kubectl(t, "trip", "search", "-n", ns, "--for", "10m")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.errOut.String()).To(Equal("error: Set breaker mode-shop/search to ForceOpen for 10m0s, until 2026-12-06T10:10:00Z, then Auto: " +
			"its front Service publishes no target endpoint, so every caller is refused at once, whatever the probes say.\n" +
			"no terminal to confirm on: pass --yes to go on\n"))
		g.Expect(breakerIn(t, ns, "search").Spec.Mode).To(Equal(tripswitchv1alpha1.ModeAuto))
	})
	t.Run("on a terminal, only yes goes on", func(t *testing.T) {
		g := NewWithT(t)
		for _, answer := range []string{"\n", "n\n", "nope\n", ""} {
			r := &run{terminal: true, stdin: answer}
			r.exec("trip", "search", "-n", ns)
			g.Expect(r.code).To(Equal(1), "answer %q", answer)
			g.Expect(r.errOut.String()).To(HaveSuffix("Continue? [y/N] error: not confirmed; nothing was changed\n"))
			g.Expect(breakerIn(t, ns, "search").Spec.Mode).To(Equal(tripswitchv1alpha1.ModeAuto))
		}
		r := &run{terminal: true, stdin: "y\n"}
		r.exec("trip", "search", "-n", ns)
		g.Expect(r.code).To(Equal(0), r.errOut.String())
		g.Expect(r.errOut.String()).To(Equal("Set breaker mode-shop/search to ForceOpen until changed: its front Service publishes no target " +
			"endpoint, so every caller is refused at once, whatever the probes say.\nContinue? [y/N] "))
		g.Expect(breakerIn(t, ns, "search").Spec.Mode).To(Equal(tripswitchv1alpha1.ModeForceOpen))
	})
	t.Run("a breaker managed from Git gets a warning", func(t *testing.T) {
		g := NewWithT(t)
		r := kubectl(t, "close", "orders", "-n", ns, "--for", "5m", "--yes")
		g.Expect(r.code).To(Equal(0), r.errOut.String())
		g.Expect(r.errOut.String()).To(Equal("Warning: Argo CD manages this breaker (argocd.argoproj.io/instance): a sync may undo this change. " +
			"Change it in Git, or pause the sync while it lasts.\n"))
	})
	t.Run("a change between the read and the write is not overwritten", func(t *testing.T) {
		g := NewWithT(t)
		before := breakerIn(t, ns, "search")
		changed := before.DeepCopy()
		changed.Spec.Mode = tripswitchv1alpha1.ModeObserve
		g.Expect(k8s.Update(context.Background(), changed)).To(Succeed())
		s := &session{Options: (&run{}).options(), client: nil, namespace: ns}
		s.client = mustClient(t)
		after := before.DeepCopy()
		after.Spec.Mode = tripswitchv1alpha1.ModeForceClosed
		err := s.patch(context.Background(), before, after)
		g.Expect(err).To(MatchError(ContainSubstring("changed while you confirmed; nothing was written")))
		g.Expect(breakerIn(t, ns, "search").Spec.Mode).To(Equal(tripswitchv1alpha1.ModeObserve))
	})
	t.Run("bad flags", func(t *testing.T) {
		g := NewWithT(t)
		r := kubectl(t, "trip", "search", "-n", ns, "--for", "0s", "--yes")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.errOut.String()).To(Equal("error: --for must be above 0\n"))
		r = kubectl(t, "auto", "search", "-n", ns, "--for", "1m")
		g.Expect(r.code).To(Equal(1))
		g.Expect(r.errOut.String()).To(HavePrefix("error: unknown flag: --for"))
	})
}

func TestReset(t *testing.T) {
	const ns = "reset-shop"
	shop(t, ns)
	g := NewWithT(t)
	r := kubectl(t, "reset", "payments", "-n", ns)
	g.Expect(r.code).To(Equal(1))
	g.Expect(breakerIn(t, ns, "payments").Annotations).NotTo(HaveKey(tripswitchv1alpha1.ResetAnnotation))

	r = kubectl(t, "reset", "payments", "-n", ns, "--yes")
	g.Expect(r.code).To(Equal(0), r.errOut.String())
	g.Expect(r.out.String()).To(Equal("circuitbreaker.tripswitch.io/payments reset requested (tripswitch.io/reset=2026-12-06T10:00:00Z)\n"))
	g.Expect(breakerIn(t, ns, "payments").Annotations).To(HaveKeyWithValue(tripswitchv1alpha1.ResetAnnotation, "2026-12-06T10:00:00Z"))

	// Each reset writes a token never used before, so that the manager acts on it.
	second := &run{clockOverride: clocktesting.NewFakeClock(now.Add(1500 * time.Millisecond))}
	second.exec("reset", "payments", "-n", ns, "--yes")
	g.Expect(second.code).To(Equal(0), second.errOut.String())
	g.Expect(breakerIn(t, ns, "payments").Annotations).To(HaveKeyWithValue(tripswitchv1alpha1.ResetAnnotation, "2026-12-06T10:00:01.5Z"))
}

func TestWatch(t *testing.T) {
	const ns = "watch-shop"
	payments, _, search := shop(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &run{terminal: true, ctx: ctx, out: &syncBuffer{}, errOut: &syncBuffer{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.exec("watch", "-n", ns)
	}()
	g := NewWithT(t)
	lines := func() []string { return strings.Split(strings.TrimSuffix(r.out.String(), "\n"), "\n") }
	g.Eventually(lines, 20*time.Second).Should(HaveLen(4), "the header and a line for each breaker")

	setStatus := func(cb *tripswitchv1alpha1.CircuitBreaker, change func(*tripswitchv1alpha1.CircuitBreakerStatus)) {
		t.Helper()
		current := breakerIn(t, ns, cb.Name)
		change(&current.Status)
		g.Expect(k8s.Status().Update(context.Background(), current)).To(Succeed())
	}
	// A counter refresh prints nothing; a transition prints a line.
	setStatus(search, func(st *tripswitchv1alpha1.CircuitBreakerStatus) { st.ConsecutiveSuccesses = 41 })
	setStatus(payments, func(st *tripswitchv1alpha1.CircuitBreakerStatus) {
		st.State, st.GateState, st.Reason, st.TransitionMessage = tripswitchv1alpha1.StateHalfOpen, tripswitchv1alpha1.StateHalfOpen, "OpenTimeout", ""
	})
	g.Eventually(lines, 10*time.Second).Should(HaveLen(5))
	setStatus(payments, func(st *tripswitchv1alpha1.CircuitBreakerStatus) {
		st.State, st.GateState, st.Reason = tripswitchv1alpha1.StateClosed, tripswitchv1alpha1.StateClosed, "TrialSucceeded"
	})
	g.Eventually(lines, 10*time.Second).Should(HaveLen(6))
	g.Expect(k8s.Delete(context.Background(), breakerIn(t, ns, "search"))).To(Succeed())
	g.Eventually(lines, 10*time.Second).Should(HaveLen(7))
	cancel()
	g.Eventually(done, 10*time.Second).Should(BeClosed())
	g.Expect(r.code).To(Equal(0), r.errOut.String())
	golden(t, "watch", r.out.String())

	t.Run("no colour under NO_COLOR, --no-color or without a terminal", func(t *testing.T) {
		for _, r := range []*run{{terminal: true, noColorEnv: true}, {terminal: false}, {terminal: true}} {
			r.out, r.errOut = &syncBuffer{}, &syncBuffer{}
			ctx, cancel := context.WithCancel(context.Background())
			r.ctx = ctx
			args := []string{"watch", "orders", "-n", ns}
			if r.terminal && !r.noColorEnv {
				args = append(args, "--no-color")
			}
			go func() {
				defer cancel()
				g.Eventually(func() int { return strings.Count(r.out.String(), "\n") }, 10*time.Second).Should(Equal(2))
			}()
			r.exec(args...)
			g.Expect(r.code).To(Equal(0), r.errOut.String())
			g.Expect(r.out.String()).NotTo(ContainSubstring("\x1b["))
			g.Expect(r.out.String()).To(MatchRegexp(`orders\s+Closed\s+Open\s+ForceOpen\s+1\s+Forced\n$`))
		}
	})
}

func TestForcedModeEndsAtModeUntilInStatus(t *testing.T) {
	// status counts down to modeUntil, and after it says the forced mode ended (the manager
	// runs the breaker in Auto from then on, which status.mode shows).
	const ns = "until-shop"
	shop(t, ns)
	g := NewWithT(t)
	later := &run{clockOverride: clocktesting.NewFakeClock(now.Add(11 * time.Minute))}
	later.exec("status", "orders", "-n", ns)
	g.Expect(later.code).To(Equal(0), later.errOut.String())
	g.Expect(later.out.String()).To(MatchRegexp(`(?m)^Mode:\s+ForceOpen \(spec.mode ForceOpen ended at 2026-12-06T10:10:00Z, 60s ago; ` +
		`the manager has not returned the breaker to Auto yet\)$`))
	r := kubectl(t, "status", "orders", "-n", ns)
	g.Expect(r.out.String()).To(MatchRegexp(`(?m)^Mode:\s+ForceOpen until 2026-12-06T10:10:00Z \(Auto in 10m\)$`))
}

// TestREADMEShowsRealSessions keeps the README's terminal sessions true: each shows the very
// output a golden file holds.
func TestREADMEShowsRealSessions(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for command, name := range map[string]string{
		"$ kubectl tripswitch status -n shop\n":                 "status-list",
		"$ kubectl tripswitch status payments -n shop\n":        "status-payments",
		"$ kubectl tripswitch why payments -n shop --limit 3\n": "why-payments-limit",
	} {
		want, err := os.ReadFile(filepath.Join("testdata", name+".golden"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(readme), command+string(want)) {
			t.Errorf("README.md does not show %q followed by testdata/%s.golden", strings.TrimSpace(command), name)
		}
	}
}

// TestWatchResumesAfterTheWatchBreaks breaks the watch the way an API server does when its
// resource version has expired (410 Gone), and fails the list after it once: watch lists
// again after a pause, prints the change it missed meanwhile, and goes on watching.
func TestWatchResumesAfterTheWatchBreaks(t *testing.T) {
	const ns = "rewatch-shop"
	payments, _, _ := shop(t, ns)
	g := NewWithT(t)
	var watches, lists atomic.Int32
	broken := watch.NewFake()
	c := interceptor.NewClient(mustClient(t), interceptor.Funcs{
		Watch: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) (watch.Interface, error) {
			if watches.Add(1) == 1 {
				return broken, nil
			}
			return c.Watch(ctx, list, opts...)
		},
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if lists.Add(1) == 2 {
				return apierrors.NewServiceUnavailable("the API server is restarting")
			}
			return c.List(ctx, list, opts...)
		},
	})
	r := &run{out: &syncBuffer{}, errOut: &syncBuffer{}}
	s := &session{Options: r.options(), client: c, namespace: ns}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.watch(ctx, "", false, true) }()
	lines := func() []string { return strings.Split(strings.TrimSuffix(r.out.String(), "\n"), "\n") }
	g.Eventually(lines, 10*time.Second).Should(HaveLen(4))

	// A transition while the watch is broken, then the break.
	current := breakerIn(t, ns, payments.Name)
	current.Status.State, current.Status.GateState, current.Status.Reason, current.Status.TransitionMessage = tripswitchv1alpha1.StateHalfOpen, tripswitchv1alpha1.StateHalfOpen, "OpenTimeout", ""
	g.Expect(k8s.Status().Update(context.Background(), current)).To(Succeed())
	broken.Error(&apierrors.NewResourceExpired("too old resource version").ErrStatus)

	g.Eventually(lines, 10*time.Second).Should(HaveLen(5))
	g.Expect(lines()[4]).To(MatchRegexp(`^10:00:00 payments HalfOpen\s+HalfOpen\s+Auto\s+4  OpenTimeout$`))
	// The broken watch had no event, so the pauses grow from the first: 500 ms, then 1 s.
	g.Expect(r.errOut.String()).To(MatchRegexp(`(?s)watch interrupted \(.*too old resource version.*\); listing again in 500ms\n` +
		`listing breakers failed \(the API server is restarting\); trying again in 1s\n$`))

	// The new watch sees the next transition.
	current = breakerIn(t, ns, payments.Name)
	current.Status.State, current.Status.GateState, current.Status.Reason = tripswitchv1alpha1.StateClosed, tripswitchv1alpha1.StateClosed, "TrialSucceeded"
	g.Expect(k8s.Status().Update(context.Background(), current)).To(Succeed())
	g.Eventually(lines, 10*time.Second).Should(HaveLen(6))
	g.Expect(watches.Load()).To(BeNumerically(">=", 2))
	cancel()
	g.Eventually(done, 10*time.Second).Should(Receive(BeNil()))
}

// TestWatchStopsWhenItMayNotWatch ends watch with the API server's refusal when the user may
// list breakers but not watch them, instead of listing again and again.
func TestWatchStopsWhenItMayNotWatch(t *testing.T) {
	const ns = "forbidden-shop"
	shop(t, ns)
	var watches atomic.Int32
	c := interceptor.NewClient(mustClient(t), interceptor.Funcs{
		Watch: func(context.Context, client.WithWatch, client.ObjectList, ...client.ListOption) (watch.Interface, error) {
			watches.Add(1)
			return nil, apierrors.NewForbidden(tripswitchv1alpha1.GroupVersion.WithResource("circuitbreakers").GroupResource(), "",
				errors.New(`User "viewer" cannot watch resource "circuitbreakers"`))
		},
	})
	r := &run{out: &syncBuffer{}, errOut: &syncBuffer{}}
	s := &session{Options: r.options(), client: c, namespace: ns}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := s.watch(ctx, "", false, true)
	g := NewWithT(t)
	g.Expect(err).To(MatchError(ContainSubstring(`watching breakers: circuitbreakers.tripswitch.io is forbidden: User "viewer" cannot watch`)))
	g.Expect(ctx.Err()).To(BeNil(), "it stopped by itself")
	g.Expect(watches.Load()).To(Equal(int32(1)))
	g.Expect(strings.Count(r.out.String(), "\n")).To(Equal(4), "the header and the listed breakers were printed first")
}
