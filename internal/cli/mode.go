package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// modeVerbs names the command that sets each mode, and says what the mode does to traffic.
var modeVerbs = map[tripswitchv1alpha1.Mode]struct{ use, short, effect string }{
	tripswitchv1alpha1.ModeForceOpen: {"trip", "Force a breaker Open: its front Service refuses every connection",
		"its front Service publishes no target endpoint, so every caller is refused at once, whatever the probes say"},
	tripswitchv1alpha1.ModeForceClosed: {"close", "Force a breaker Closed: its front Service publishes the target's endpoints",
		"its front Service publishes every ready target endpoint, even while the probes fail"},
	tripswitchv1alpha1.ModeAuto: {"auto", "Return a breaker to Auto: the gate follows the breaker's state again",
		"the gate follows the breaker's state again"},
}

func newModeCommand(connect connectFunc, mode tripswitchv1alpha1.Mode) *cobra.Command {
	verb := modeVerbs[mode]
	var (
		yes     bool
		forTime time.Duration
	)
	cmd := &cobra.Command{
		Use:   verb.use + " NAME",
		Short: verb.short,
		Long: verb.short + `.

It sets spec.mode (and spec.modeUntil with --for) with one patch, after a confirmation on a
terminal; without a terminal it needs --yes. The probes and the state machine go on in every
mode, so status keeps saying what the target's health is.

A breaker managed from Git (Argo CD, Flux) gets its spec back at the next sync: the command
warns when it sees such a manager. Change the breaker in Git instead, or pause the sync.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("for") && forTime <= 0 {
				return fmt.Errorf("--for must be above 0")
			}
			s, err := connect()
			if err != nil {
				return err
			}
			return s.setMode(cmd.Context(), args[0], mode, forTime, yes)
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "Do not ask for a confirmation.")
	if mode != tripswitchv1alpha1.ModeAuto {
		cmd.Flags().DurationVar(&forTime, "for", 0,
			"Return to Auto by itself after this long (spec.modeUntil), for example 10m; without it the mode stays until changed.")
		cmd.Example = fmt.Sprintf("  kubectl tripswitch %s payments -n shop --for 10m", verb.use)
	} else {
		cmd.Example = "  kubectl tripswitch auto payments -n shop"
	}
	return cmd
}

// setMode writes spec.mode and spec.modeUntil after a confirmation.
func (s *session) setMode(ctx context.Context, name string, mode tripswitchv1alpha1.Mode, forTime time.Duration, yes bool) error {
	cb, err := s.getBreaker(ctx, name)
	if err != nil {
		return err
	}
	var until *metav1.Time
	what := fmt.Sprintf("%s until changed", mode)
	if forTime > 0 {
		// The API keeps whole seconds: round up, so the mode lasts at least as long as asked.
		end := s.Clock.Now().Add(forTime)
		if rounded := end.Truncate(time.Second); rounded.Before(end) {
			end = rounded.Add(time.Second)
		}
		until = &metav1.Time{Time: end.UTC()}
		what = fmt.Sprintf("%s for %s, until %s, then Auto", mode, forTime, stamp(end))
	}
	if mode == tripswitchv1alpha1.ModeAuto {
		what = "Auto"
	}
	if cb.Spec.Mode == mode && equalTimes(cb.Spec.ModeUntil, until) {
		fmt.Fprintf(s.Streams.Out, "circuitbreaker.tripswitch.io/%s unchanged: mode is already %s\n", cb.Name, what)
		return nil
	}
	s.warnGitOps(cb)
	prompt := fmt.Sprintf("Set breaker %s/%s to %s: %s.", cb.Namespace, cb.Name, what, modeVerbs[mode].effect)
	if err := s.confirm(prompt, yes); err != nil {
		return err
	}
	patched := cb.DeepCopy()
	patched.Spec.Mode, patched.Spec.ModeUntil = mode, until
	if err := s.patch(ctx, cb, patched); err != nil {
		return err
	}
	fmt.Fprintf(s.Streams.Out, "circuitbreaker.tripswitch.io/%s set to %s\n", cb.Name, what)
	return nil
}

func equalTimes(a, b *metav1.Time) bool {
	return a == nil && b == nil || a != nil && b != nil && a.Equal(b)
}

// patch writes the change from before to after as a merge patch that fails if the breaker
// changed since it was read: the user confirmed a change to what they saw.
func (s *session) patch(ctx context.Context, before, after *tripswitchv1alpha1.CircuitBreaker) error {
	err := s.client.Patch(ctx, after, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}),
		client.FieldOwner(FieldManager))
	if apierrors.IsConflict(err) {
		return fmt.Errorf("breaker %s/%s changed while you confirmed; nothing was written, run the command again", before.Namespace, before.Name)
	}
	return err
}

// errNotConfirmed is the error of a change the user did not confirm.
var errNotConfirmed = errors.New("not confirmed; nothing was changed")

// confirm asks on the terminal whether to go on. Without a terminal it refuses, unless yes:
// a script must say what it wants, not hang on a prompt or take silence for consent.
func (s *session) confirm(prompt string, yes bool) error {
	if yes {
		return nil
	}
	if s.IsTerminal == nil || !s.IsTerminal(s.Streams.In) {
		return fmt.Errorf("%s\nno terminal to confirm on: pass --yes to go on", prompt)
	}
	fmt.Fprintf(s.Streams.ErrOut, "%s\nContinue? [y/N] ", prompt)
	answer, _ := bufio.NewReader(s.Streams.In).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	return errNotConfirmed
}

// gitOpsMarks are the labels and annotations by which Argo CD and Flux mark what they manage.
var gitOpsMarks = []struct{ key, tool string }{
	{"argocd.argoproj.io/tracking-id", "Argo CD"},
	{"argocd.argoproj.io/instance", "Argo CD"},
	{"kustomize.toolkit.fluxcd.io/name", "Flux"},
	{"helm.toolkit.fluxcd.io/name", "Flux"},
}

// warnGitOps says when a breaker is managed from Git, where a sync may undo the change.
func (s *session) warnGitOps(cb *tripswitchv1alpha1.CircuitBreaker) {
	for _, mark := range gitOpsMarks {
		_, annotated := cb.Annotations[mark.key]
		_, labelled := cb.Labels[mark.key]
		if annotated || labelled {
			fmt.Fprintf(s.Streams.ErrOut, "Warning: %s manages this breaker (%s): a sync may undo this change. "+
				"Change it in Git, or pause the sync while it lasts.\n", mark.tool, mark.key)
			return
		}
	}
}
