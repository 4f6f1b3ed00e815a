package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/endpoints"
)

func newStatusCommand(connect connectFunc) *cobra.Command {
	var allNamespaces bool
	maxEndpoints := 20
	cmd := &cobra.Command{
		Use:   "status [NAME]",
		Short: "Show breakers, or one breaker with its endpoints, query rules and conditions",
		Long: `Without NAME, status lists the breakers of the namespace (or of all, with -A): state, the gate
applied to traffic, mode, trips, published endpoints and what comes next.

With NAME, it shows that breaker in full: what decided its last transition, the countdowns to
its half-open trial and to the end of a forced mode, the target's endpoints (published or not,
ejected, the last probe), its query rules, and every condition that needs attention.`,
		Example: `  kubectl tripswitch status -A
  kubectl tripswitch status payments -n shop`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := connect()
			if err != nil {
				return err
			}
			if len(args) == 0 {
				return s.statusList(cmd.Context(), allNamespaces)
			}
			if allNamespaces {
				return errNamedInAllNamespaces
			}
			return s.statusOne(cmd.Context(), args[0], maxEndpoints)
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "List the breakers of every namespace.")
	cmd.Flags().IntVar(&maxEndpoints, "max-endpoints", maxEndpoints,
		"With NAME, list at most this many endpoints, those that need attention first; 0 lists all.")
	return cmd
}

// statusList prints one line per breaker.
func (s *session) statusList(ctx context.Context, allNamespaces bool) error {
	var list tripswitchv1alpha1.CircuitBreakerList
	var opts []client.ListOption
	if !allNamespaces {
		opts = append(opts, client.InNamespace(s.namespace))
	}
	if err := s.client.List(ctx, &list, opts...); err != nil {
		return err
	}
	if len(list.Items) == 0 {
		if allNamespaces {
			fmt.Fprintln(s.Streams.ErrOut, "No circuit breakers found.")
		} else {
			fmt.Fprintf(s.Streams.ErrOut, "No circuit breakers found in namespace %s.\n", s.namespace)
		}
		return nil
	}
	slices.SortFunc(list.Items, func(a, b tripswitchv1alpha1.CircuitBreaker) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	now := s.Clock.Now()
	w := printers.GetNewTabWriter(s.Streams.Out)
	header := "NAME\tSTATE\tGATE\tMODE\tTRIPS\tPUBLISHED\tEJECTED\tCHANGED\tREASON\tNEXT"
	if allNamespaces {
		header = "NAMESPACE\t" + header
	}
	fmt.Fprintln(w, header)
	for i := range list.Items {
		cb := &list.Items[i]
		st := &cb.Status
		published, ejected, changed := "-", "-", "-"
		if st.Endpoints != nil {
			published = fmt.Sprintf("%d/%d", st.Endpoints.Published, st.Endpoints.Target)
		}
		if st.Ejection != nil {
			ejected = fmt.Sprint(st.Ejection.Ejected)
		}
		if st.LastTransitionTime != nil {
			changed = short(now.Sub(st.LastTransitionTime.Time))
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s", cb.Name, orDash(string(st.State)), orDash(string(st.GateState)),
			orDash(string(st.Mode)), st.Trips, published, ejected, changed, orDash(st.Reason), orDash(next(cb, now)))
		if allNamespaces {
			line = cb.Namespace + "\t" + line
		}
		fmt.Fprintln(w, line)
	}
	return w.Flush()
}

// next says what the breaker waits for, in a few words: the half-open trial, or the end of a
// forced mode.
func next(cb *tripswitchv1alpha1.CircuitBreaker, now time.Time) string {
	var parts []string
	if cb.Status.State == tripswitchv1alpha1.StateOpen && cb.Status.OpenUntil != nil {
		parts = append(parts, "HalfOpen "+countdown(now, cb.Status.OpenUntil.Time))
	}
	if until := cb.Spec.ModeUntil; until != nil && cb.Spec.Mode != tripswitchv1alpha1.ModeAuto && until.After(now) {
		parts = append(parts, "Auto "+countdown(now, until.Time))
	}
	return strings.Join(parts, ", ")
}

// statusOne prints one breaker in full.
func (s *session) statusOne(ctx context.Context, name string, maxEndpoints int) error {
	cb, err := s.getBreaker(ctx, name)
	if err != nil {
		return err
	}
	now := s.Clock.Now()
	st := &cb.Status
	out := s.Streams.Out
	w := printers.GetNewTabWriter(out)
	field := func(label, format string, args ...any) {
		fmt.Fprintf(w, "%s:\t%s\n", label, fmt.Sprintf(format, args...))
	}

	field("Name", "%s/%s", cb.Namespace, cb.Name)
	if ext := cb.Spec.Target.External; ext != nil {
		field("Target", "external host %s, port %d", ext.Host, ext.Port)
		if line := resolutionLine(st.External, now); line != "" {
			field("Resolution", "%s", line)
		}
	} else {
		field("Target", "Service %s, port %s", cb.Spec.Target.Service, cb.Spec.Target.Port.String())
	}
	if st.State == "" {
		field("State", "not reported yet: is the manager running?")
	} else {
		state := string(st.State)
		if st.LastTransitionTime != nil {
			state += fmt.Sprintf(" since %s (%s)", stamp(st.LastTransitionTime.Time), ago(now, st.LastTransitionTime.Time))
		}
		if st.Reason != "" {
			state += ", reason " + st.Reason
		}
		field("State", "%s", state)
	}
	if st.TransitionMessage != "" {
		field("Decided by", "%s", st.TransitionMessage)
	}
	if st.State == tripswitchv1alpha1.StateOpen && st.OpenUntil != nil {
		field("Half-open trial", "%s (%s)", countdown(now, st.OpenUntil.Time), stamp(st.OpenUntil.Time))
	}
	field("Mode", "%s", modeLine(cb, now))
	field("Gate", "%s", gateLine(cb))
	field("Trips", "%d all time, %d since the breaker last closed", st.Trips, st.OpenStreak)
	probes := fmt.Sprintf("%d failed and %d succeeded in a row", st.ConsecutiveFailures, st.ConsecutiveSuccesses)
	if st.Window != nil {
		probes += fmt.Sprintf("; rate window: %d of %d failed, %d slow", st.Window.Failures, st.Window.Probes, st.Window.Slow)
	}
	field("Probes", "%s", probes)
	if p := st.LastProbe; p != nil {
		field("Last probe", "%s from %s %s: %s (%dms)", p.Outcome, p.Endpoint, ago(now, p.Time.Time), orDash(p.Message), p.LatencyMilliseconds)
	}
	if e := st.Ejection; e != nil {
		ejection := fmt.Sprintf("%d ejected (at most %d at once), %d failing but capped, %d waiting for slow start",
			e.Ejected, e.MaxEjected, e.Capped, e.SlowStart)
		if e.Panic {
			ejection += "; PANIC: too few healthy endpoints, so every endpoint is published"
		}
		field("Ejection", "%s", ejection)
	}
	if err := w.Flush(); err != nil {
		return err
	}

	rows, note, err := s.endpointRows(ctx, cb, now)
	fmt.Fprintln(out)
	switch {
	case err != nil:
		fmt.Fprintf(out, "Endpoints: cannot read them: %v\n", err)
	case note != "":
		fmt.Fprintf(out, "Endpoints: %s\n", note)
	default:
		printEndpoints(out, rows, maxEndpoints)
	}
	if len(cb.Spec.Trip.Queries) > 0 {
		fmt.Fprintln(out)
		printQueries(out, cb, now)
	}
	fmt.Fprintln(out)
	printConditions(out, cb, now)
	return nil
}

// modeLine says which mode is in effect, and until when.
func modeLine(cb *tripswitchv1alpha1.CircuitBreaker, now time.Time) string {
	inEffect := cb.Status.Mode
	if inEffect == "" {
		inEffect = cb.Spec.Mode
	}
	line := string(orDash(string(inEffect)))
	if until := cb.Spec.ModeUntil; until != nil && cb.Spec.Mode != tripswitchv1alpha1.ModeAuto {
		if until.After(now) {
			line += fmt.Sprintf(" until %s (Auto %s)", stamp(until.Time), countdown(now, until.Time))
		} else {
			line += fmt.Sprintf(" (spec.mode %s ended at %s, %s", cb.Spec.Mode, stamp(until.Time), ago(now, until.Time))
			if inEffect != tripswitchv1alpha1.ModeAuto {
				line += "; the manager has not returned the breaker to Auto yet"
			}
			line += ")"
		}
	}
	return line
}

// gateLine says what traffic sees.
func gateLine(cb *tripswitchv1alpha1.CircuitBreaker) string {
	st := &cb.Status
	line := orDash(string(st.GateState))
	if st.FrontService != "" {
		line += ": front Service " + st.FrontService
		if st.Endpoints != nil {
			line += fmt.Sprintf(" publishes %d of %d ready target endpoints", st.Endpoints.Published, st.Endpoints.Target)
			if st.Endpoints.Responders > 0 {
				line += fmt.Sprintf(" and %d responder endpoints", st.Endpoints.Responders)
			}
		}
	}
	return line
}

// endpointRow is one endpoint of the target, as the plugin can see it.
type endpointRow struct {
	addr netip.AddrPort
	// published is "yes" or "no" for the front's slices, "-" for a breaker without a front
	// (an annotation gate only).
	published string
	// level is what the endpoint level says of it (Ejected or SlowStart), and detail why.
	level, detail string
	// probe is the last probe, when the breaker's last probe was to this endpoint.
	probe string
}

// attention orders rows: those held back or not published first.
func (r endpointRow) attention() int {
	switch {
	case r.level != "":
		return 0
	case r.published == "no":
		return 1
	case r.probe != "":
		return 2
	}
	return 3
}

// endpointRows joins the target's ready endpoints with what the front publishes and what
// status says of each. status holds only the last probe and the ejected endpoints, so the
// other endpoints show no outcome of their own.
func (s *session) endpointRows(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker, now time.Time) ([]endpointRow, string, error) {
	ready, none, err := s.targetEndpoints(ctx, cb)
	if err != nil || len(ready) == 0 {
		return nil, none, err
	}
	var published map[string]bool
	if cb.Status.FrontService != "" {
		published = map[string]bool{}
		var front discoveryv1.EndpointSliceList
		if err := s.client.List(ctx, &front, client.InNamespace(cb.Namespace), client.MatchingLabels{
			discoveryv1.LabelServiceName: cb.Status.FrontService, discoveryv1.LabelManagedBy: tripswitchv1alpha1.ManagedBy}); err != nil {
			return nil, "", err
		}
		for _, slice := range front.Items {
			for _, ep := range slice.Endpoints {
				if endpoints.IsReady(ep) && len(ep.Addresses) > 0 {
					published[ep.Addresses[0]] = true
				}
			}
		}
	}
	levels := map[string]tripswitchv1alpha1.EjectedEndpoint{}
	if e := cb.Status.Ejection; e != nil {
		for _, ep := range e.Endpoints {
			levels[ep.Endpoint] = ep
		}
	}
	rows := make([]endpointRow, 0, len(ready))
	for _, addr := range ready {
		row := endpointRow{addr: addr, published: "-"}
		if published != nil {
			row.published = map[bool]string{true: "yes", false: "no"}[published[addr.Addr().String()]]
		}
		if ep, ok := levels[addr.String()]; ok {
			row.level, row.detail = ep.Phase, levelDetail(ep, now)
		}
		if p := cb.Status.LastProbe; p != nil && p.Endpoint == addr.String() {
			row.probe = fmt.Sprintf("%s %s: %s", p.Outcome, ago(now, p.Time.Time), orDash(p.Message))
		}
		rows = append(rows, row)
	}
	slices.SortStableFunc(rows, func(a, b endpointRow) int { return cmp.Compare(a.attention(), b.attention()) })
	return rows, "", nil
}

// levelDetail describes an ejected or slow-starting endpoint.
func levelDetail(ep tripswitchv1alpha1.EjectedEndpoint, now time.Time) string {
	var parts []string
	if ep.Reason != "" {
		parts = append(parts, ep.Reason)
	}
	if ep.Message != "" {
		parts = append(parts, ep.Message)
	}
	if ep.Until != nil {
		parts = append(parts, "trial "+countdown(now, ep.Until.Time))
	} else {
		parts = append(parts, "since "+ago(now, ep.Since.Time))
	}
	if ep.Ejections > 1 {
		parts = append(parts, fmt.Sprintf("ejected %d times", ep.Ejections))
	}
	return strings.Join(parts, ", ")
}

func printEndpoints(out io.Writer, rows []endpointRow, limit int) {
	w := printers.GetNewTabWriter(out)
	fmt.Fprintln(w, "ENDPOINT\tPUBLISHED\tENDPOINT LEVEL\tLAST PROBE")
	shown := rows
	if limit > 0 && len(rows) > limit {
		shown = rows[:limit]
	}
	for _, r := range shown {
		level := "-"
		if r.level != "" {
			level = r.level + ": " + r.detail
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.addr, r.published, level, orDash(r.probe))
	}
	_ = w.Flush()
	if len(shown) < len(rows) {
		fmt.Fprintf(out, "... and %d more endpoints (--max-endpoints=0 lists all)\n", len(rows)-len(shown))
	}
}

// printQueries joins each query rule with its newest evaluation.
func printQueries(out io.Writer, cb *tripswitchv1alpha1.CircuitBreaker, now time.Time) {
	evaluations := map[string]tripswitchv1alpha1.QueryStatus{}
	for _, q := range cb.Status.Queries {
		evaluations[q.Name] = q
	}
	w := printers.GetNewTabWriter(out)
	fmt.Fprintln(w, "QUERY RULE\tTRIPS WHEN\tVALUE\tHELD\tEVALUATED\tNOTE")
	for _, rule := range cb.Spec.Trip.Queries {
		when := "-"
		switch {
		case rule.Above != nil:
			when = "> " + *rule.Above
		case rule.Below != nil:
			when = "< " + *rule.Below
		}
		forCount := rule.For
		if forCount == 0 { // a breaker read before the API server defaulted it
			forCount = tripswitchv1alpha1.DefaultQueryFor
		}
		q := evaluations[rule.Name]
		evaluated, note := "-", "-"
		if q.LastEvaluation != nil {
			evaluated = ago(now, q.LastEvaluation.Time)
		}
		switch {
		case q.Error != "":
			note = "failing: " + q.Error
		case q.SettlingUntil != nil && q.SettlingUntil.After(now):
			note = "settling after a close, judged again " + countdown(now, q.SettlingUntil.Time)
		case q.LastEvaluation != nil && q.Value == "":
			note = "no data"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d of %d\t%s\t%s\n", rule.Name, when, orDash(q.Value), q.Holding, forCount, evaluated, note)
	}
	_ = w.Flush()
}

// printConditions lists the conditions that need attention; a breaker that is Ready with
// nothing else to say gets one line.
func printConditions(out io.Writer, cb *tripswitchv1alpha1.CircuitBreaker, now time.Time) {
	var notable []metav1.Condition
	for _, c := range cb.Status.Conditions {
		fine := c.Type == tripswitchv1alpha1.ConditionReady && c.Status == metav1.ConditionTrue ||
			c.Type == tripswitchv1alpha1.ConditionEjection && c.Status == metav1.ConditionFalse ||
			c.Type == tripswitchv1alpha1.ConditionResponder && c.Status == metav1.ConditionTrue ||
			c.Type == tripswitchv1alpha1.ConditionAnnotationsApplied && c.Status == metav1.ConditionTrue
		if !fine {
			notable = append(notable, c)
		}
	}
	if len(cb.Status.Conditions) == 0 {
		fmt.Fprintln(out, "Conditions: none reported yet.")
		return
	}
	if len(notable) == 0 {
		if meta := cb.Status.ObservedGeneration; meta != 0 && meta != cb.Generation {
			fmt.Fprintf(out, "Conditions: the manager has not acted on the newest spec yet (generation %d, status from %d).\n", cb.Generation, meta)
			return
		}
		fmt.Fprintln(out, "Conditions: Ready, nothing needs attention.")
		return
	}
	w := printers.GetNewTabWriter(out)
	fmt.Fprintln(w, "CONDITION\tSTATUS\tREASON\tSINCE\tMESSAGE")
	for _, c := range notable {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, ago(now, c.LastTransitionTime.Time), orDash(c.Message))
	}
	_ = w.Flush()
}

// targetEndpoints are the target's ready endpoints: the target Service's, or the addresses
// status holds for an external target. When there are none, the string says why.
func (s *session) targetEndpoints(ctx context.Context, cb *tripswitchv1alpha1.CircuitBreaker) ([]netip.AddrPort, string, error) {
	if ext := cb.Spec.Target.External; ext != nil {
		var ready []netip.AddrPort
		if st := cb.Status.External; st != nil && st.Host == ext.Host {
			for _, a := range st.Addresses {
				if addr, err := netip.ParseAddr(a.Address); err == nil {
					ready = append(ready, netip.AddrPortFrom(addr, uint16(ext.Port)))
				}
			}
		}
		if len(ready) == 0 {
			return nil, fmt.Sprintf("the external host %s has no resolved addresses yet", ext.Host), nil
		}
		return ready, "", nil
	}
	target := &corev1.Service{}
	if err := s.client.Get(ctx, client.ObjectKey{Namespace: cb.Namespace, Name: cb.Spec.Target.Service}, target); err != nil {
		return nil, "", fmt.Errorf("target Service %s: %w", cb.Spec.Target.Service, err)
	}
	port, err := endpoints.ServicePort(target, *cb.Spec.Target.Port)
	if err != nil {
		return nil, "", err
	}
	var targetSlices discoveryv1.EndpointSliceList
	if err := s.client.List(ctx, &targetSlices, client.InNamespace(cb.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: cb.Spec.Target.Service}); err != nil {
		return nil, "", err
	}
	ready := endpoints.Ready(port, targetSlices.Items)
	if len(ready) == 0 {
		return nil, fmt.Sprintf("the target Service %s has no ready endpoints on port %s", target.Name, cb.Spec.Target.Port.String()), nil
	}
	return ready, "", nil
}

// resolutionLine sums up an external target's last resolution.
func resolutionLine(st *tripswitchv1alpha1.ExternalStatus, now time.Time) string {
	if st == nil || st.LastResolution == nil {
		return ""
	}
	line := fmt.Sprintf("%d addresses, resolved %s", len(st.Addresses), ago(now, st.LastResolution.Time))
	if st.Server != "" {
		line += " via " + st.Server
	}
	if st.Error != "" {
		line += "; failing: " + st.Error + " (the last good addresses stay published)"
	}
	if len(st.Refused) > 0 {
		line += fmt.Sprintf("; refused %v", st.Refused)
	}
	return line
}
