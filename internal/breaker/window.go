package breaker

// span counts the outcomes among the newest size outcomes of a ring.
type span struct {
	size                 int
	held, failures, slow int
}

func (s *span) add(o Outcome, delta int) {
	s.held += delta
	switch o {
	case Failure:
		s.failures += delta
	case Slow:
		s.slow += delta
	}
}

// window is a ring of the newest counted outcomes (never Neutral) with running counts over
// three spans: the whole ring, the failure-rate window and the slow-rate window. Each span is
// a suffix of the ring, so pushing an outcome moves exactly one outcome out of each full span:
// push is O(1) and allocation-free.
type window struct {
	ring []Outcome
	next int // where the next outcome goes
	held int // outcomes in the ring, at most len(ring)

	all, failureSpan, slowSpan span
}

func newWindow(size, failureWindow, slowWindow int) window {
	return window{
		ring:        make([]Outcome, size),
		all:         span{size: size},
		failureSpan: span{size: failureWindow},
		slowSpan:    span{size: slowWindow},
	}
}

func (w *window) push(o Outcome) {
	n := len(w.ring)
	if n == 0 {
		return
	}
	w.slide(&w.all, o)
	w.slide(&w.failureSpan, o)
	w.slide(&w.slowSpan, o)
	w.ring[w.next] = o
	w.next++
	if w.next == n {
		w.next = 0
	}
	if w.held < n {
		w.held++
	}
}

// slide adds o to s and, once s is full, takes out the outcome that leaves it: the one s.size
// places back from the slot o is about to take.
func (w *window) slide(s *span, o Outcome) {
	if s.size == 0 {
		return
	}
	if w.held >= s.size {
		i := w.next - s.size
		if i < 0 {
			i += len(w.ring)
		}
		s.add(w.ring[i], -1)
	}
	s.add(o, +1)
}

// newest returns the newest n outcomes, oldest first.
func (w *window) newest(n int) []Outcome {
	n = min(n, w.held)
	out := make([]Outcome, 0, n)
	for i := n; i > 0; i-- {
		j := w.next - i
		if j < 0 {
			j += len(w.ring)
		}
		out = append(out, w.ring[j])
	}
	return out
}

// resized returns a window with new sizes that holds the newest outcomes of w that fit.
func (w *window) resized(size, failureWindow, slowWindow int) window {
	nw := newWindow(size, failureWindow, slowWindow)
	for _, o := range w.newest(size) {
		nw.push(o)
	}
	return nw
}

// clear empties the window, keeping its buffer.
func (w *window) clear() {
	w.next, w.held = 0, 0
	for _, s := range []*span{&w.all, &w.failureSpan, &w.slowSpan} {
		*s = span{size: s.size}
	}
}

func (w *window) stats() WindowStats {
	return WindowStats{Probes: w.all.held, Failures: w.all.failures, Slow: w.all.slow}
}
