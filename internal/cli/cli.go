// Package cli is `kubectl tripswitch`: commands that show why a breaker is in its state (status,
// why, watch) and that change it from a terminal (trip, close, auto, reset). They read and write
// only through the API server, with the user's own kubeconfig and rights, like kubectl; every
// mutation is one patch of the CircuitBreaker that the manager then acts on.
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// FieldManager is the field manager of the plugin's patches, as managedFields show it.
const FieldManager = "kubectl-tripswitch"

// Options are what the commands depend on beyond their flags, so that tests can replace them.
type Options struct {
	Streams genericiooptions.IOStreams
	// Clock tells the time for countdowns, ages and the end of --for.
	Clock clock.PassiveClock
	// IsTerminal says whether a stream is a terminal: a confirmation is asked only on one,
	// and colour is written only to one.
	IsTerminal func(any) bool
	// Getenv reads the environment (NO_COLOR).
	Getenv func(string) string
}

// DefaultOptions are the options of the real program: standard streams and the real clock.
func DefaultOptions() Options {
	return Options{
		Streams: genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr},
		Clock:   clock.RealClock{},
		IsTerminal: func(stream any) bool {
			f, ok := stream.(interface{ Fd() uintptr })
			return ok && term.IsTerminal(int(f.Fd()))
		},
		Getenv: os.Getenv,
	}
}

// scheme holds the kinds the plugin reads: breakers, Services, EndpointSlices and events.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(tripswitchv1alpha1.AddToScheme(s))
	return s
}()

// session is one command's connection: a client, the namespace the flags chose, and Options.
type session struct {
	Options
	client    client.WithWatch
	namespace string
}

// NewCommand returns the `kubectl tripswitch` command tree. Its kubeconfig, context and
// namespace flags are kubectl's own, from cli-runtime.
func NewCommand(o Options) *cobra.Command {
	flags := genericclioptions.NewConfigFlags(true)
	root := &cobra.Command{
		Use:   "kubectl-tripswitch",
		Short: "See why circuit breakers are in their state, and force or reset them",
		Long: `kubectl tripswitch shows tripswitch's CircuitBreakers from a terminal: their state, the
gate applied to traffic, which endpoints fail and why a breaker opened; and it forces a breaker
Open or Closed for a while, returns it to Auto, or resets it.`,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl tripswitch"},
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(o.Streams.In)
	root.SetOut(o.Streams.Out)
	root.SetErr(o.Streams.ErrOut)
	flags.AddFlags(root.PersistentFlags())

	connect := func() (*session, error) {
		cfg, err := flags.ToRESTConfig()
		if err != nil {
			return nil, err
		}
		c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
		if err != nil {
			return nil, err
		}
		ns, _, err := flags.ToRawKubeConfigLoader().Namespace()
		if err != nil {
			return nil, err
		}
		return &session{Options: o, client: c, namespace: ns}, nil
	}
	root.AddCommand(newStatusCommand(connect), newWhyCommand(connect), newWatchCommand(connect),
		newModeCommand(connect, tripswitchv1alpha1.ModeForceOpen), newModeCommand(connect, tripswitchv1alpha1.ModeForceClosed),
		newModeCommand(connect, tripswitchv1alpha1.ModeAuto), newResetCommand(connect))
	return root
}

// Execute runs the command tree with args and returns the process's exit code, writing any
// error to the error stream the way kubectl does.
func Execute(ctx context.Context, o Options, args []string) int {
	cmd := NewCommand(o)
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(o.Streams.ErrOut, "error: %s\n", strings.TrimSuffix(err.Error(), "\n"))
		return 1
	}
	return 0
}

// errNamedInAllNamespaces refuses NAME beside -A, for the commands that take both.
var errNamedInAllNamespaces = errors.New("a breaker is named in one namespace: use -n, not -A, with NAME")

// connectFunc makes a session from the command line's flags, once they are parsed.
type connectFunc func() (*session, error)

// getBreaker reads one breaker, with an error that names it in the user's terms.
func (s *session) getBreaker(ctx context.Context, name string) (*tripswitchv1alpha1.CircuitBreaker, error) {
	cb := &tripswitchv1alpha1.CircuitBreaker{}
	if err := s.client.Get(ctx, client.ObjectKey{Namespace: s.namespace, Name: name}, cb); err != nil {
		return nil, fmt.Errorf("circuit breaker %q in namespace %q: %w", name, s.namespace, err)
	}
	return cb, nil
}
