package rig

import (
	"strings"
	"testing"

	"github.com/onsi/ginkgo/v2/types"
)

func TestFlakySummary(t *testing.T) {
	entry := types.ReportEntry{Name: failedAttemptEntry, Value: types.WrapEntryValue("attempt 1 of 2 failed at a.go:1: p99 512ms\nExpected\n  <int>: 1")}
	other := types.ReportEntry{Name: "numbers", Value: types.WrapEntryValue("p99 180ms")}
	specs := types.SpecReports{
		{ContainerHierarchyTexts: []string{"timed"}, LeafNodeText: "passes at once", State: types.SpecStatePassed, NumAttempts: 1, MaxFlakeAttempts: 2},
		{ContainerHierarchyTexts: []string{"timed"}, LeafNodeText: "passes on its retry", State: types.SpecStatePassed, NumAttempts: 2, MaxFlakeAttempts: 2,
			LeafNodeLocation: types.CodeLocation{FileName: "dataplane_test.go", LineNumber: 42}, ReportEntries: types.ReportEntries{entry, other}},
		{ContainerHierarchyTexts: []string{"timed"}, LeafNodeText: "fails both", State: types.SpecStateFailed, NumAttempts: 2, MaxFlakeAttempts: 2},
		{LeafNodeText: "skipped", State: types.SpecStateSkipped},
	}
	got := flakySummary(specs)
	want := `flaky: "timed passes on its retry" passed on attempt 2 of 2 (dataplane_test.go:42)
  attempt 1 of 2 failed at a.go:1: p99 512ms
  Expected
    <int>: 1
`
	if got != want {
		t.Errorf("flakySummary:\n%s\nwant:\n%s", got, want)
	}
	if got := flakySummary(specs[:1]); got != "" {
		t.Errorf("no spec needed a retry, yet the summary says:\n%s", got)
	}
}

func TestFirstLines(t *testing.T) {
	if got := firstLines("a\nb\nc", 2); got != "a\nb\n..." {
		t.Errorf("firstLines(3 lines, 2) = %q", got)
	}
	if got := firstLines("a\nb", 2); got != "a\nb" {
		t.Errorf("firstLines(2 lines, 2) = %q", got)
	}
	if got := firstLines(strings.Repeat("x\n", 20), failureLines); strings.Count(got, "\n") != failureLines {
		t.Errorf("firstLines kept %d lines", strings.Count(got, "\n"))
	}
}
