package rig

import (
	"fmt"
	"os"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
)

// EnvFlakyReport names the file WriteFlakyReport writes to; unset, it writes nothing.
const EnvFlakyReport = "E2E_FLAKY_REPORT"

// failedAttemptEntry names the report entries NoteFailedAttempt adds.
const failedAttemptEntry = "failed attempt"

// failureLines bounds the lines of a failure message kept for a failed attempt: the timed
// stories' messages carry their numbers in the first lines, and then Gomega's dump of the
// values, which the report does not need.
const failureLines = 12

// NoteFailedAttempt, run in an AfterEach, keeps the failure of an attempt that Ginkgo will
// retry (FlakeAttempts) as a report entry. Ginkgo keeps only the last attempt's failure, and
// go test prints nothing of a package that passed, so a story that failed once and then passed
// would leave no trace of what it measured the first time.
func NoteFailedAttempt() {
	report := CurrentSpecReport()
	if !report.Failed() || report.NumAttempts >= report.MaxFlakeAttempts {
		return
	}
	AddReportEntry(failedAttemptEntry, fmt.Sprintf("attempt %d of %d failed at %s: %s",
		report.NumAttempts, report.MaxFlakeAttempts, report.Failure.Location, firstLines(report.Failure.Message, failureLines)))
}

// WriteFlakyReport, run in a ReportAfterSuite, writes the specs that passed only on a retry,
// with what their failed attempts said, to the file named by $E2E_FLAKY_REPORT; it writes no
// file when no spec needed a retry. make test prints the file at its end, so that a green run
// still tells how close a timed story came to failing.
func WriteFlakyReport(report types.Report) error {
	path := os.Getenv(EnvFlakyReport)
	summary := flakySummary(report.SpecReports)
	if path == "" || summary == "" {
		return nil
	}
	return os.WriteFile(path, []byte(summary), 0o644)
}

// flakySummary is one paragraph per spec that passed after more than one attempt: its name,
// its attempts and each failed attempt's message; empty when there is none.
func flakySummary(specs types.SpecReports) string {
	var b strings.Builder
	for _, spec := range specs {
		if !spec.State.Is(types.SpecStatePassed) || spec.NumAttempts < 2 {
			continue
		}
		fmt.Fprintf(&b, "flaky: %q passed on attempt %d of %d (%s)\n", spec.FullText(), spec.NumAttempts,
			max(spec.MaxFlakeAttempts, spec.NumAttempts), spec.LeafNodeLocation)
		for _, entry := range spec.ReportEntries {
			if entry.Name == failedAttemptEntry {
				fmt.Fprintf(&b, "  %s\n", strings.ReplaceAll(entry.StringRepresentation(), "\n", "\n  "))
			}
		}
	}
	return b.String()
}

// firstLines is s cut to its first n lines.
func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) <= n {
		return s
	}
	return strings.Join(lines[:n], "\n") + "\n..."
}
