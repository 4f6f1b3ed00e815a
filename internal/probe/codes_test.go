package probe

import (
	"strings"
	"testing"
)

func TestParseCodes(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		has      []int
		hasNot   []int
	}{
		{in: "200-399", want: "200-399", has: []int{200, 301, 399}, hasNot: []int{199, 400, 503}},
		{in: "200-299,304", want: "200-299,304", has: []int{204, 304}, hasNot: []int{300, 305}},
		{in: "429", want: "429", has: []int{429}, hasNot: []int{428, 430}},
		{in: " 200 , 201-202 ", want: "200-202", has: []int{200, 202}},
		{in: "500,200-299,250", want: "200-299,500"},
		{in: "100-599", want: "100-599", has: []int{100, 599}, hasNot: []int{99, 600, -1, 1 << 20}},
		{in: "", want: "", hasNot: []int{200}},
	} {
		set, err := ParseCodes(tt.in)
		if err != nil {
			t.Errorf("ParseCodes(%q): %v", tt.in, err)
			continue
		}
		if got := set.String(); got != tt.want {
			t.Errorf("ParseCodes(%q).String() = %q, want %q", tt.in, got, tt.want)
		}
		for _, c := range tt.has {
			if !set.Has(c) {
				t.Errorf("ParseCodes(%q) lacks %d", tt.in, c)
			}
		}
		for _, c := range tt.hasNot {
			if set.Has(c) {
				t.Errorf("ParseCodes(%q) has %d", tt.in, c)
			}
		}
	}
	for _, bad := range []string{"2000", "99", "600", "abc", "200-", "-200", "300-200", "200,,201", "+200", "0200", "20x", "200-3x9"} {
		if _, err := ParseCodes(bad); err == nil {
			t.Errorf("ParseCodes(%q) accepted bad input", bad)
		}
	}
}

// FuzzParseCodes checks that the parser never panics, that what it accepts round-trips
// through String, and that it agrees with a naive reading of the syntax.
func FuzzParseCodes(f *testing.F) {
	for _, s := range []string{"200-399", "200-299,304", "429", "", "100-599,200", "300-200", "2x0", " 200 ,201"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		set, err := ParseCodes(s)
		if err != nil {
			return
		}
		again, err := ParseCodes(set.String())
		if err != nil || again != set {
			t.Fatalf("%q -> %q does not round-trip: %v", s, set.String(), err)
		}
		// Every code the input names explicitly must be in the set.
		for item := range strings.SplitSeq(s, ",") {
			lo, _, _ := strings.Cut(strings.TrimSpace(item), "-")
			if c, err := parseCode(lo); err == nil && !set.Has(c) {
				t.Fatalf("%q names %d but the set lacks it", s, c)
			}
		}
	})
}
