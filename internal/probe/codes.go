package probe

import (
	"fmt"
	"strconv"
	"strings"
)

// CodeSet is a set of HTTP status codes 100-599, as a bitmap: membership is one shift and
// one AND, with no allocation per probe.
type CodeSet struct {
	bits [8]uint64 // bit c-100 of the 500 possible codes
}

const (
	minCode = 100
	maxCode = 599
)

// ParseCodes parses comma-separated codes and inclusive ranges, such as "200-299,304".
// Spaces around items are allowed; an empty string is the empty set.
func ParseCodes(s string) (CodeSet, error) {
	var set CodeSet
	if strings.TrimSpace(s) == "" {
		return set, nil
	}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		lo, hi, isRange := strings.Cut(item, "-")
		from, err := parseCode(lo)
		if err != nil {
			return CodeSet{}, fmt.Errorf("status codes %q: %w", s, err)
		}
		to := from
		if isRange {
			if to, err = parseCode(hi); err != nil {
				return CodeSet{}, fmt.Errorf("status codes %q: %w", s, err)
			}
			if to < from {
				return CodeSet{}, fmt.Errorf("status codes %q: range %q is written high-low", s, item)
			}
		}
		for c := from; c <= to; c++ {
			set.add(c)
		}
	}
	return set, nil
}

func parseCode(s string) (int, error) {
	s = strings.TrimSpace(s)
	// Exactly three digits: Atoi would take "+200" or "0200".
	if len(s) != 3 || s[0] < '0' || s[0] > '9' {
		return 0, fmt.Errorf("%q is not a three-digit status code", s)
	}
	c, err := strconv.Atoi(s)
	if err != nil || c < minCode || c > maxCode {
		return 0, fmt.Errorf("%q is not a status code in %d-%d", s, minCode, maxCode)
	}
	return c, nil
}

func (s *CodeSet) add(c int) {
	i := c - minCode
	s.bits[i/64] |= 1 << (i % 64)
}

// Has reports whether code is in the set.
func (s *CodeSet) Has(code int) bool {
	if code < minCode || code > maxCode {
		return false
	}
	i := code - minCode
	return s.bits[i/64]&(1<<(i%64)) != 0
}

// String writes the set back in the canonical, range-merged form.
func (s CodeSet) String() string {
	var b strings.Builder
	for c := minCode; c <= maxCode; c++ {
		if !s.Has(c) {
			continue
		}
		end := c
		for end < maxCode && s.Has(end+1) {
			end++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(c))
		if end > c {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(end))
		}
		c = end
	}
	return b.String()
}
