package main

import (
	"flag"
	"io"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestParseReleaseFlags(t *testing.T) {
	parse := func(args ...string) (*releaseOptions, types.NamespacedName, error) {
		fs := flag.NewFlagSet("manager release", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		return parseReleaseFlags(fs, args)
	}
	o, key, err := parse()
	if err != nil {
		t.Fatal(err)
	}
	// The defaults are the kustomize install's and the manager's own.
	if key != (types.NamespacedName{Namespace: "tripswitch-system", Name: "tripswitch-controller-manager"}) ||
		o.lease != "tripswitch.tripswitch.io" || o.timeout != 2*time.Minute {
		t.Fatalf("defaults: %v %q %s", key, o.lease, o.timeout)
	}
	o, key, err = parse("--manager-deployment=ops/ts-controller-manager", "--leader-election-id=x", "--timeout=3s")
	if err != nil || key.Namespace != "ops" || key.Name != "ts-controller-manager" || o.lease != "x" || o.timeout != 3*time.Second {
		t.Fatalf("got %v %+v %v", key, o, err)
	}
	for _, bad := range [][]string{
		{"--manager-deployment=no-namespace"},
		{"--manager-deployment=/name"},
		{"--manager-deployment=a/b/c"},
		{"--leader-election-id="},
		{"--timeout=0s"},
		{"extra"},
	} {
		if _, _, err := parse(bad...); err == nil {
			t.Errorf("%v was accepted", bad)
		}
	}
}
