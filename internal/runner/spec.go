package runner

import (
	"reflect"

	"github.com/tripswitch/tripswitch/internal/probe"
)

// sameSpec says whether two probe specs ask the same question, so that a prober (and its
// kept-alive connections) survives an Upsert that changed nothing about the probe. It compares
// every field, including fields added after it was written; TestSameSpecSeesEveryField fails
// for a field it cannot compare.
func sameSpec(a, b probe.Spec) bool {
	return reflect.DeepEqual(a, b)
}
