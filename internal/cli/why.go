package cli

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

func newWhyCommand(connect connectFunc) *cobra.Command {
	limit := 20
	cmd := &cobra.Command{
		Use:   "why NAME",
		Short: "Explain a breaker's state: what decided it, and the timeline of its transitions",
		Long: `why tells the story of one breaker: its state and what decided the last transition (the
deciding probe and endpoint, or the query rule and the value it saw), then the manager's events
for it, oldest first: transitions, ejections, held trips.

Events are kept for an hour by default (the API server's --event-ttl); status keeps the last
transition for good.`,
		Example: `  kubectl tripswitch why payments -n shop`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := connect()
			if err != nil {
				return err
			}
			return s.why(cmd.Context(), args[0], limit)
		},
	}
	cmd.Flags().IntVar(&limit, "limit", limit, "Show at most this many of the newest events; 0 shows all.")
	return cmd
}

// why prints the breaker's state and its event timeline.
func (s *session) why(ctx context.Context, name string, limit int) error {
	cb, err := s.getBreaker(ctx, name)
	if err != nil {
		return err
	}
	now := s.Clock.Now()
	out := s.Streams.Out
	st := &cb.Status
	switch {
	case st.State == "":
		fmt.Fprintf(out, "%s has no state yet: the manager has not reconciled it. Is the manager running?\n", cb.Name)
	case st.LastTransitionTime == nil:
		fmt.Fprintf(out, "%s is %s.\n", cb.Name, st.State)
	default:
		fmt.Fprintf(out, "%s is %s since %s (%s)", cb.Name, st.State, stamp(st.LastTransitionTime.Time), ago(now, st.LastTransitionTime.Time))
		if st.Reason != "" {
			fmt.Fprintf(out, ", reason %s", st.Reason)
		}
		if st.TransitionMessage != "" {
			fmt.Fprintf(out, ": %s", st.TransitionMessage)
		}
		fmt.Fprintln(out, ".")
	}
	if st.GateState != "" && st.GateState != st.State {
		fmt.Fprintf(out, "Traffic sees %s: mode %s.\n", st.GateState, modeLine(cb, now))
	}
	if st.State == tripswitchv1alpha1.StateOpen && st.OpenUntil != nil {
		fmt.Fprintf(out, "The half-open trial is %s (%s).\n", countdown(now, st.OpenUntil.Time), stamp(st.OpenUntil.Time))
	}
	for _, q := range st.Queries {
		if q.Error != "" {
			fmt.Fprintf(out, "Query rule %s cannot trip the breaker now: %s\n", q.Name, q.Error)
		}
	}
	if c := st.Confirmation; c != nil {
		about := ""
		if c.Endpoint != "" {
			about = " on ejecting " + c.Endpoint
		}
		fmt.Fprintf(out, "Second opinion%s at %s (%s), %s: %s.\n", about, stamp(c.Time.Time), ago(now, c.Time.Time), c.Outcome, c.Message)
		for _, v := range c.Votes {
			line := fmt.Sprintf("  %s: %s", v.Observer, v.Verdict)
			if v.Zone != "" {
				line += ", zone " + v.Zone
			}
			if v.Degraded {
				line += ", degraded (its vote weighs half)"
			}
			if v.Detail != "" {
				line += ", " + v.Detail
			}
			fmt.Fprintln(out, line)
		}
		if c.HeldUntil != nil && c.HeldUntil.After(now) {
			fmt.Fprintf(out, "The observers are asked again %s if the manager's probes still hold %s.\n", countdown(now, c.HeldUntil.Time), c.Rule)
		}
	}

	var list eventsv1.EventList
	// The field selector narrows the list on the server; the loop below still checks the UID,
	// so that an older breaker of the same name tells nothing about this one.
	if err := s.client.List(ctx, &list, client.InNamespace(cb.Namespace), client.MatchingFields{
		"regarding.kind": "CircuitBreaker", "regarding.name": cb.Name}); err != nil {
		return fmt.Errorf("events of %s: %w", cb.Name, err)
	}
	var events []eventsv1.Event
	for _, ev := range list.Items {
		if ev.Regarding.UID == cb.UID {
			events = append(events, ev)
		}
	}
	fmt.Fprintln(out)
	if len(events) == 0 {
		fmt.Fprintln(out, "No events for it: events expire an hour after they happen by default.")
		return nil
	}
	slices.SortStableFunc(events, func(a, b eventsv1.Event) int { return cmp.Compare(eventTime(&a).UnixNano(), eventTime(&b).UnixNano()) })
	if limit > 0 && len(events) > limit {
		fmt.Fprintf(out, "The newest %d of %d events (--limit=0 shows all):\n", limit, len(events))
		events = events[len(events)-limit:]
	}
	w := printers.GetNewTabWriter(out)
	fmt.Fprintln(w, "TIME\tAGO\tTYPE\tREASON\tWHAT")
	for i := range events {
		ev := &events[i]
		at := eventTime(ev)
		note := strings.TrimSpace(ev.Note)
		if ev.Series != nil && ev.Series.Count > 1 {
			note += fmt.Sprintf(" (%d times)", ev.Series.Count)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", stamp(at), short(now.Sub(at)), ev.Type, ev.Reason, note)
	}
	return w.Flush()
}

// eventTime is when an event last happened: the last of its series, else its own time, else
// the time an older writer put in the deprecated fields.
func eventTime(ev *eventsv1.Event) time.Time {
	switch {
	case ev.Series != nil && !ev.Series.LastObservedTime.IsZero():
		return ev.Series.LastObservedTime.Time
	case !ev.EventTime.IsZero():
		return ev.EventTime.Time
	case !ev.DeprecatedLastTimestamp.IsZero():
		return ev.DeprecatedLastTimestamp.Time
	}
	return ev.CreationTimestamp.Time
}
