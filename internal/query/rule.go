// Package query is one PromQL trip rule, pure: it compiles a rule (parses the query, confines
// it to the breaker's namespace when asked, checks its bounds), reads a query result as one
// number or no data, and counts the consecutive evaluations that hold. Sending the query is
// the caller's job.
package query

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// MaxQueryLength bounds a query's text, as the API does.
const MaxQueryLength = 4096

// NoData says what an evaluation that returns nothing counts as.
type NoData uint8

const (
	// NoDataIgnore: an empty result neither holds nor breaks the run of evaluations that held.
	NoDataIgnore NoData = iota
	// NoDataFailure: an empty result counts as one that holds.
	NoDataFailure
)

// Rule is one compiled trip rule.
type Rule struct {
	Name string
	// Query is what is sent: the user's query, confined to the namespace if asked.
	Query string
	// Threshold is the bound; Above says whether the rule holds above it or below it.
	Threshold float64
	Above     bool
	// For is how many consecutive evaluations must hold.
	For    int
	NoData NoData
	// Lookback is how far back one evaluation reads: the longest range of the query's
	// selectors, with their offsets and enclosing subqueries. A window that reaches back over
	// a time the breaker was not Closed holds traffic of then (the errors that tripped it, the
	// responder's refusals), so the runner does not judge it.
	Lookback time.Duration
}

// Spec is a rule as the API states it.
type Spec struct {
	Name, Query  string
	Above, Below string // exactly one is set: a decimal number
	For          int
	NoData       NoData
}

// Compile parses and checks a rule. When namespaceLabel is set, every series selector of the
// query gets the matcher namespaceLabel="namespace" added, so that a breaker can only read the
// series of its own namespace whatever it writes (a matcher of its own for another namespace
// then selects nothing).
func Compile(s Spec, namespaceLabel, namespace string) (Rule, error) {
	r := Rule{Name: s.Name, For: s.For, NoData: s.NoData}
	switch {
	case s.Name == "":
		return Rule{}, errors.New("a query rule needs a name")
	case len(s.Query) == 0 || len(s.Query) > MaxQueryLength:
		return Rule{}, fmt.Errorf("query %q: the query must have 1 to %d characters", s.Name, MaxQueryLength)
	case (s.Above == "") == (s.Below == ""):
		return Rule{}, fmt.Errorf("query %q: set exactly one of above and below", s.Name)
	case s.For < 1:
		return Rule{}, fmt.Errorf("query %q: for must be at least 1", s.Name)
	}
	bound := s.Above
	r.Above = s.Above != ""
	if !r.Above {
		bound = s.Below
	}
	v, err := strconv.ParseFloat(bound, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return Rule{}, fmt.Errorf("query %q: the bound %q is not a finite decimal number", s.Name, bound)
	}
	r.Threshold = v
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(s.Query)
	if err != nil {
		return Rule{}, fmt.Errorf("query %q: %w", s.Name, err)
	}
	switch t := expr.Type(); t {
	case parser.ValueTypeVector, parser.ValueTypeScalar:
	case parser.ValueTypeMatrix:
		return Rule{}, fmt.Errorf("query %q returns a range vector; a trip rule needs an instant vector or a scalar, such as rate(%s)",
			s.Name, expr)
	default:
		return Rule{}, fmt.Errorf("query %q returns a %s; a trip rule needs an instant vector or a scalar", s.Name, t)
	}
	if namespaceLabel != "" {
		confine(expr, namespaceLabel, namespace)
	}
	r.Query = expr.String()
	r.Lookback = lookback(expr)
	return r, nil
}

// lookback is how far back before the evaluation time expr reads samples: for each selector
// its range (for a range vector) and offset, plus the range and offset of every subquery
// around it. An instant selector's own staleness lookback (5m by default) is left out: it
// finds the newest sample, not a window of them.
func lookback(expr parser.Expr) time.Duration {
	var longest time.Duration
	parser.Inspect(expr, func(n parser.Node, path []parser.Node) error {
		var reach time.Duration
		switch n := n.(type) {
		case *parser.MatrixSelector:
			reach = n.Range
			if vs, ok := n.VectorSelector.(*parser.VectorSelector); ok {
				reach += max(vs.OriginalOffset, 0)
			}
		case *parser.VectorSelector:
			reach = max(n.OriginalOffset, 0)
		default:
			return nil
		}
		for _, p := range path {
			if sq, ok := p.(*parser.SubqueryExpr); ok {
				reach += sq.Range + max(sq.OriginalOffset, 0)
			}
		}
		longest = max(longest, reach)
		return nil
	})
	return longest
}

// confine adds label="value" to every series selector of expr.
func confine(expr parser.Expr, label, value string) {
	m := labels.MustNewMatcher(labels.MatchEqual, label, value)
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			vs.LabelMatchers = append(vs.LabelMatchers, m)
		}
		return nil
	})
}

// Sample is what one evaluation returned: a number, or no data.
type Sample struct {
	Value  float64
	NoData bool
}

// ErrTooManySeries is a result with more than one series: the rule cannot tell which to judge.
var ErrTooManySeries = errors.New("the query returned more than one series; aggregate it, for example with sum()")

// Read reads a query result as one number. An empty vector, and NaN (as 0/0 gives when
// there is no traffic), are no data.
func Read(v model.Value) (Sample, error) {
	var value float64
	switch r := v.(type) {
	case *model.Scalar:
		value = float64(r.Value)
	case model.Vector:
		switch len(r) {
		case 0:
			return Sample{NoData: true}, nil
		case 1:
			value = float64(r[0].Value)
		default:
			return Sample{}, fmt.Errorf("%w (%d series)", ErrTooManySeries, len(r))
		}
	default:
		return Sample{}, fmt.Errorf("the query returned a %s; a trip rule needs an instant vector or a scalar", v.Type())
	}
	if math.IsNaN(value) {
		return Sample{NoData: true}, nil
	}
	return Sample{Value: value}, nil
}

// Holds says whether a value is beyond the rule's bound.
func (r Rule) Holds(v float64) bool {
	if r.Above {
		return v > r.Threshold
	}
	return v < r.Threshold
}

// Judge counts the consecutive evaluations of one rule that hold.
type Judge struct {
	Rule Rule
	// Holding is how many consecutive evaluations held; Last is the newest sample.
	Holding int
	Last    Sample
}

// Observe counts one evaluation and says whether the rule trips: For consecutive
// evaluations held. No data counts as the rule's NoData policy says: Ignore leaves the run as
// it was, Failure extends it.
func (j *Judge) Observe(s Sample) bool {
	j.Last = s
	switch {
	case s.NoData && j.Rule.NoData == NoDataIgnore:
	case s.NoData || j.Rule.Holds(s.Value):
		j.Holding = min(j.Holding+1, math.MaxInt32)
	default:
		j.Holding = 0
	}
	return j.Holding >= j.Rule.For
}

// Reset forgets the run, as when the breaker leaves Closed.
func (j *Judge) Reset() { j.Holding = 0 }

// Describe says why the rule tripped, for events and status: "error-rate 0.31 > 0.05 for 3
// evaluations".
func (j *Judge) Describe() string {
	op := ">"
	if !j.Rule.Above {
		op = "<"
	}
	value := "no data"
	if !j.Last.NoData {
		value = strconv.FormatFloat(j.Last.Value, 'g', 4, 64)
	}
	unit := "evaluations"
	if j.Holding == 1 {
		unit = "evaluation"
	}
	return fmt.Sprintf("%s %s %s %s for %d %s", j.Rule.Name, value, op,
		strconv.FormatFloat(j.Rule.Threshold, 'g', -1, 64), j.Holding, unit)
}
