// Command kubectl-tripswitch is the `kubectl tripswitch` plugin: kubectl runs it for
// `kubectl tripswitch ...` once it is on the PATH (or installed with krew). The commands live
// in internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/tripswitch/tripswitch/internal/cli"
)

func main() {
	// client-go's retrying watch logs every broken or cancelled watch through klog, which would
	// write to the user's terminal between the lines of `watch` (and on every Ctrl-C); the
	// commands say themselves what went wrong.
	klog.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx, cli.DefaultOptions(), os.Args[1:])
	stop()
	os.Exit(code)
}
