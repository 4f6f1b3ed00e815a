// Command kubectl-tripswitch is the `kubectl tripswitch` plugin: kubectl runs it for
// `kubectl tripswitch ...` once it is on the PATH (or installed with krew). The commands live
// in internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tripswitch/tripswitch/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx, cli.DefaultOptions(), os.Args[1:])
	stop()
	os.Exit(code)
}
