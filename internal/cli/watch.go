package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	watchtools "k8s.io/client-go/tools/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

func newWatchCommand(connect connectFunc) *cobra.Command {
	var allNamespaces, noColor bool
	cmd := &cobra.Command{
		Use:   "watch [NAME]",
		Short: "Print a line whenever a breaker changes state, gate, mode or trips",
		Long: `watch lists the breakers (one, those of the namespace, or with -A all), then prints a line each
time one changes its state, the gate applied to traffic, its mode or its trip count, like
kubectl get -w but without the lines that only refresh counters. On a terminal the states are
coloured: Open red, HalfOpen yellow, Closed green; NO_COLOR or --no-color turn that off. It runs
until interrupted, and resumes by itself when the watch breaks.`,
		Example: "  kubectl tripswitch watch -A",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 && allNamespaces {
				return errNamedInAllNamespaces
			}
			s, err := connect()
			if err != nil {
				return err
			}
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			return s.watch(cmd.Context(), name, allNamespaces, noColor)
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "Watch the breakers of every namespace.")
	cmd.Flags().BoolVar(&noColor, "no-color", false, "Never colour the states.")
	return cmd
}

// watchedState is what a line of watch shows; a line is printed when it changes.
type watchedState struct {
	state, gate     tripswitchv1alpha1.State
	mode            tripswitchv1alpha1.Mode
	trips           int64
	reason, message string
}

func watchedOf(cb *tripswitchv1alpha1.CircuitBreaker) watchedState {
	st := &cb.Status
	return watchedState{state: st.State, gate: st.GateState, mode: st.Mode, trips: st.Trips, reason: st.Reason, message: st.TransitionMessage}
}

// watcher prints the lines of one watch.
type watcher struct {
	*session
	colors    palette
	namespace bool // print the namespace column
	nameWidth int
	seen      map[client.ObjectKey]watchedState
}

func (s *session) watch(ctx context.Context, name string, allNamespaces, noColor bool) error {
	w := &watcher{session: s, colors: s.newPalette(s.Streams.Out, noColor), namespace: allNamespaces,
		nameWidth: len("NAME"), seen: map[client.ObjectKey]watchedState{}}
	var opts []client.ListOption
	if !allNamespaces {
		opts = append(opts, client.InNamespace(s.namespace))
	}
	if name != "" {
		opts = append(opts, client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", name)})
	}
	first := true
	retry := relistBackoff
	for ctx.Err() == nil {
		// A list, then a watch from its resource version; when the watch cannot go on (its
		// version expired, the connection broke for good), list again and print what changed.
		var list tripswitchv1alpha1.CircuitBreakerList
		if err := s.client.List(ctx, &list, opts...); err != nil {
			if ctx.Err() != nil {
				break
			}
			if first { // nothing shown yet: a wrong namespace or missing rights, say so at once
				return err
			}
			delay := retry.Step()
			fmt.Fprintf(s.Streams.ErrOut, "listing breakers failed (%v); trying again in %s\n", err, delay)
			select {
			case <-ctx.Done():
			case <-time.After(delay):
			}
			continue
		}
		retry = relistBackoff
		if first {
			w.header(list.Items)
			first = false
		}
		w.sync(list.Items)
		events, err := w.follow(ctx, list.ResourceVersion, opts)
		if ctx.Err() != nil {
			break
		}
		if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
			// Listing again would not help, and without a pause it would spin.
			return fmt.Errorf("watching breakers: %w", err)
		}
		if events > 0 {
			retry = relistBackoff // the watch worked for a while: start the pauses over
		}
		delay := retry.Step()
		fmt.Fprintf(s.Streams.ErrOut, "watch interrupted (%v); listing again in %s\n", err, delay)
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
	return nil
}

// relistBackoff spaces the lists again after a watch broke and a list failed: an API server
// that is down is asked again soon, then every 30 s at most.
var relistBackoff = wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Cap: 30 * time.Second, Steps: math.MaxInt32}

// follow prints changes from a watch until it ends, and says how many events it had.
func (w *watcher) follow(ctx context.Context, resourceVersion string, opts []client.ListOption) (events int, err error) {
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, resourceVersion, watcherFunc(func(ctx context.Context, lo metav1.ListOptions) (watch.Interface, error) {
		listOpts := (&client.ListOptions{}).ApplyOptions(opts)
		listOpts.Raw = &lo
		return w.client.Watch(ctx, &tripswitchv1alpha1.CircuitBreakerList{}, listOpts)
	}))
	if err != nil {
		return 0, err
	}
	defer rw.Stop()
	for {
		select {
		case <-ctx.Done():
			return events, nil
		case ev, ok := <-rw.ResultChan():
			if !ok {
				return events, errors.New("the watch ended")
			}
			switch ev.Type {
			case watch.Error:
				return events, apierrors.FromObject(ev.Object)
			case watch.Bookmark:
				continue
			}
			events++
			cb, ok := ev.Object.(*tripswitchv1alpha1.CircuitBreaker)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted {
				w.gone(client.ObjectKeyFromObject(cb))
				continue
			}
			w.update(cb)
		}
	}
}

// header prints the column names, sized for the breakers there are now.
func (w *watcher) header(items []tripswitchv1alpha1.CircuitBreaker) {
	for i := range items {
		w.nameWidth = max(w.nameWidth, len(items[i].Name))
	}
	ns := ""
	if w.namespace {
		ns = fmt.Sprintf("%-20s ", "NAMESPACE")
	}
	fmt.Fprintf(w.Streams.Out, "%-9s%s%-*s %-9s %-9s %-12s %5s  %s\n", "TIME", ns, w.nameWidth, "NAME", "STATE", "GATE", "MODE", "TRIPS", "REASON")
}

// sync prints the breakers of a list that are new or changed, and those that are gone.
func (w *watcher) sync(items []tripswitchv1alpha1.CircuitBreaker) {
	slices.SortFunc(items, func(a, b tripswitchv1alpha1.CircuitBreaker) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	present := map[client.ObjectKey]bool{}
	for i := range items {
		present[client.ObjectKeyFromObject(&items[i])] = true
		w.update(&items[i])
	}
	for key := range w.seen {
		if !present[key] {
			w.gone(key)
		}
	}
}

// update prints a breaker's line if what it shows changed.
func (w *watcher) update(cb *tripswitchv1alpha1.CircuitBreaker) {
	key := client.ObjectKeyFromObject(cb)
	now := watchedOf(cb)
	if was, ok := w.seen[key]; ok && was == now {
		return
	}
	w.seen[key] = now
	why := now.reason
	if now.message != "" {
		why += ": " + now.message
	}
	w.line(key, w.colors.state(now.state, 9), w.colors.state(now.gate, 9), string(now.mode), fmt.Sprint(now.trips), why)
}

func (w *watcher) gone(key client.ObjectKey) {
	delete(w.seen, key)
	w.line(key, fmt.Sprintf("%-9s", "deleted"), fmt.Sprintf("%-9s", "-"), "-", "-", "")
}

func (w *watcher) line(key client.ObjectKey, state, gate, mode, trips, why string) {
	ns := ""
	if w.namespace {
		ns = fmt.Sprintf("%-20s ", key.Namespace)
	}
	text := fmt.Sprintf("%-9s%s%-*s %s %s %-12s %5s  %s", w.Clock.Now().UTC().Format("15:04:05"), ns, w.nameWidth, key.Name,
		state, gate, orDash(mode), trips, orDash(why))
	fmt.Fprintln(w.Streams.Out, strings.TrimRight(text, " "))
}

// watcherFunc adapts a function to the watcher the retry watcher restarts.
type watcherFunc func(ctx context.Context, options metav1.ListOptions) (watch.Interface, error)

func (f watcherFunc) WatchWithContext(ctx context.Context, options metav1.ListOptions) (watch.Interface, error) {
	return f(ctx, options)
}
