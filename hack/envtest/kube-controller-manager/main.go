// Command kube-controller-manager is the upstream controller manager, built from source for
// the data-plane suite: its EndpointSlice, EndpointSlice-mirroring and garbage-collector
// controllers are what hands a front Service back and deletes owned slices.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
