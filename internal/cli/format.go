package cli

import (
	"fmt"
	"io"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
)

// stamp writes an instant as the API does, in UTC to the second.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// ago says how long ago t was, in kubectl's short style ("42s", "9m12s").
func ago(now, t time.Time) string {
	if t.After(now) {
		return "just now"
	}
	return duration.HumanDuration(now.Sub(t)) + " ago"
}

// countdown says how long until t, or that t has passed: a deadline in status that has
// passed waits for the manager (or for a manager at all).
func countdown(now, t time.Time) string {
	if !t.After(now) {
		return "due " + ago(now, t)
	}
	return "in " + duration.HumanDuration(t.Sub(now))
}

// short is a column's duration: "18s", or "-" when there is none.
func short(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return duration.HumanDuration(d)
}

// palette colours states for a terminal; its zero value writes plain text.
type palette struct{ on bool }

// newPalette colours only a terminal, and never when NO_COLOR (https://no-color.org) or
// --no-color says not to.
func (s *session) newPalette(out io.Writer, noColor bool) palette {
	return palette{on: !noColor && s.Getenv("NO_COLOR") == "" && s.IsTerminal != nil && s.IsTerminal(out)}
}

// state pads a state to width, then colours it: Open red, HalfOpen yellow, Closed green.
// Padding first keeps the columns of a stream aligned, as escape codes take no room.
func (p palette) state(state tripswitchv1alpha1.State, width int) string {
	text := fmt.Sprintf("%-*s", width, orDash(string(state)))
	if !p.on {
		return text
	}
	code := ""
	switch state {
	case tripswitchv1alpha1.StateOpen:
		code = "31"
	case tripswitchv1alpha1.StateHalfOpen:
		code = "33"
	case tripswitchv1alpha1.StateClosed:
		code = "32"
	default:
		return text
	}
	return "\x1b[" + code + "m" + text + "\x1b[0m"
}

// orDash shows an empty value as "-", as kubectl does.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
