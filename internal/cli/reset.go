package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

func newResetCommand(connect connectFunc) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "reset NAME",
		Short: "Reset a breaker: Closed at once, counters and ejections cleared",
		Long: `reset writes a new value into the breaker's ` + tripswitchv1alpha1.ResetAnnotation + ` annotation. The manager
acts on each new value once: the breaker closes without a half-open trial, its failure counters
and its ejections are cleared, and its front Service publishes the target's endpoints again.
It asks for a confirmation on a terminal; without a terminal it needs --yes.`,
		Example: "  kubectl tripswitch reset payments -n shop",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := connect()
			if err != nil {
				return err
			}
			return s.reset(cmd.Context(), args[0], yes)
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "Do not ask for a confirmation.")
	return cmd
}

func (s *session) reset(ctx context.Context, name string, yes bool) error {
	cb, err := s.getBreaker(ctx, name)
	if err != nil {
		return err
	}
	s.warnGitOps(cb)
	prompt := fmt.Sprintf("Reset breaker %s/%s (now %s): it closes at once without a trial, and its front Service "+
		"publishes the target's endpoints again even if they still fail.", cb.Namespace, cb.Name, orDash(string(cb.Status.State)))
	if err := s.confirm(prompt, yes); err != nil {
		return err
	}
	patched := cb.DeepCopy()
	// A token that was never used before: the time, to the nanosecond.
	metav1.SetMetaDataAnnotation(&patched.ObjectMeta, tripswitchv1alpha1.ResetAnnotation, s.Clock.Now().UTC().Format(time.RFC3339Nano))
	if err := s.patch(ctx, cb, patched); err != nil {
		return err
	}
	fmt.Fprintf(s.Streams.Out, "circuitbreaker.tripswitch.io/%s reset requested (%s=%s)\n", cb.Name,
		tripswitchv1alpha1.ResetAnnotation, patched.Annotations[tripswitchv1alpha1.ResetAnnotation])
	return nil
}
