package ejection

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/tripswitch/tripswitch/internal/breaker"
)

// mEndpoint is the model's endpoint: it keeps every outcome since the endpoint last came back
// and recomputes its rules by scanning them.
type mEndpoint struct {
	addr         netip.AddrPort
	outcomes     []bool // true = failure, since the last return or clear
	rateFrom     int    // outcomes before this index left the rate window when it shrank
	phase        Phase
	reason       Reason
	since, until time.Time
	returned     time.Time
	ejections    int
	wants        bool
	joined       int
}

// model is the obviously-correct reference for Tracker: no running counts, no ring, every
// number recomputed from the endpoints each time.
type model struct {
	cfg        Config
	now        time.Time
	eps        map[netip.AddrPort]*mEndpoint
	held       bool
	allow      bool
	rampOn     bool
	rampStart  time.Time
	rampSize   int
	joinNumber int
}

func (m *model) count(p Phase) int {
	n := 0
	for _, e := range m.eps {
		if e.phase == p {
			n++
		}
	}
	return n
}

func (m *model) wanting() int {
	n := 0
	for _, e := range m.eps {
		if e.wants {
			n++
		}
	}
	return n
}

func (m *model) capacity() int {
	n := len(m.eps)
	c := n * m.cfg.MaxEjectedPercent / 100
	if c > n-1 {
		c = n - 1
	}
	if c < 0 {
		c = 0
	}
	return c
}

func (m *model) rule(e *mEndpoint) Reason {
	if n := m.cfg.ConsecutiveFailures; n > 0 {
		run := 0
		for i := len(e.outcomes) - 1; i >= 0 && e.outcomes[i]; i-- {
			run++
		}
		if run >= n {
			return ConsecutiveFailures
		}
	}
	if r := m.cfg.FailureRate; r.Window > 0 {
		window := e.outcomes[e.rateFrom:]
		if len(window) > r.Window {
			window = window[len(window)-r.Window:]
		}
		failed := 0
		for _, f := range window {
			if f {
				failed++
			}
		}
		if len(window) >= r.MinimumProbes && failed*100 >= r.Percent*len(window) {
			return FailureRate
		}
	}
	return NoReason
}

func (m *model) duration(n int) time.Duration {
	d := time.Duration(0)
	for range n {
		d += m.cfg.BaseEjectionTime
		if d >= m.cfg.MaxEjectionTime {
			return m.cfg.MaxEjectionTime
		}
	}
	return d
}

func (m *model) record(a netip.AddrPort, o breaker.Outcome) {
	e := m.eps[a]
	if e == nil || o == breaker.Neutral {
		return
	}
	failed := o == breaker.Failure
	if e.phase == Ejected {
		if m.now.Before(e.until) {
			return
		}
		if failed {
			e.ejections++
			e.reason, e.since, e.until = TrialFailed, m.now, m.now.Add(m.duration(e.ejections))
			return
		}
		m.bringBack(e, true)
		m.settle()
		return
	}
	e.outcomes = append(e.outcomes, failed)
	r := m.rule(e)
	if r == NoReason {
		e.wants = false
		if m.wanting() == 0 {
			m.held = false
		}
		return
	}
	switch {
	case m.count(Ejected) >= m.capacity():
		e.wants = true
	case m.count(Ejected) == 0 && !m.allow:
		e.wants, m.held = true, true
	default:
		m.held, e.wants = false, false
		if !e.returned.IsZero() {
			e.ejections = max(0, e.ejections-int(m.now.Sub(e.returned)/m.cfg.BaseEjectionTime))
		}
		e.ejections++
		e.phase, e.reason, e.since, e.until = Ejected, r, m.now, m.now.Add(m.duration(e.ejections))
	}
	m.settle()
}

func (m *model) bringBack(e *mEndpoint, ramp bool) {
	e.phase, e.reason, e.until = Healthy, NoReason, time.Time{}
	e.outcomes, e.rateFrom, e.returned = nil, 0, m.now
	if ramp && m.cfg.SlowStart > 0 {
		m.join(e)
	}
}

func (m *model) join(e *mEndpoint) {
	if !m.rampOn || !m.now.Before(m.rampStart.Add(m.cfg.SlowStart)) {
		m.rampOn, m.rampStart, m.rampSize = true, m.now, 0
	}
	m.rampSize++
	m.joinNumber++
	e.phase, e.joined, e.since = SlowStart, m.joinNumber, m.now
}

func (m *model) waiting() []*mEndpoint {
	var out []*mEndpoint
	for _, e := range m.eps {
		if e.phase == SlowStart {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b *mEndpoint) int { return cmp.Or(cmp.Compare(a.joined, b.joined), a.addr.Compare(b.addr)) })
	return out
}

func (m *model) settle() {
	for m.count(Ejected) > m.capacity() {
		var first *mEndpoint
		for _, e := range m.eps {
			if e.phase == Ejected && (first == nil || e.until.Before(first.until) ||
				e.until.Equal(first.until) && e.addr.Compare(first.addr) < 0) {
				first = e
			}
		}
		m.bringBack(first, false)
	}
	if !m.rampOn {
		return
	}
	if w := m.waiting(); len(w) > 0 {
		elapsed, c := m.now.Sub(m.rampStart), m.rampSize
		allowed := c
		switch {
		case elapsed < m.cfg.SlowStart/3:
			allowed = 1
		case elapsed < 2*m.cfg.SlowStart/3:
			allowed = max(1, (c+3)/4)
		case elapsed < m.cfg.SlowStart:
			allowed = max(1, (c+1)/2)
		}
		admit := allowed - (c - len(w))
		if keep := len(m.eps) - m.count(Ejected) - 1; len(w)-max(0, admit) > keep {
			admit = len(w) - keep
		}
		for _, e := range w[:max(0, min(admit, len(w)))] {
			e.phase = Healthy
		}
	}
	if !m.now.Before(m.rampStart.Add(m.cfg.SlowStart)) {
		m.rampOn = false
	}
}

func (m *model) sorted() []*mEndpoint {
	var out []*mEndpoint
	for _, e := range m.eps {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *mEndpoint) int { return a.addr.Compare(b.addr) })
	return out
}

func (m *model) setEndpoints(eps []netip.AddrPort) {
	want := map[netip.AddrPort]bool{}
	for _, a := range eps {
		want[a] = true
		if m.eps[a] == nil {
			m.eps[a] = &mEndpoint{addr: a}
		}
	}
	for a := range m.eps {
		if !want[a] {
			delete(m.eps, a)
		}
	}
	m.settle()
}

func (m *model) startRamp(keep int) {
	if m.cfg.SlowStart <= 0 {
		return
	}
	for _, e := range m.sorted() {
		if e.phase != Healthy || e.wants {
			continue
		}
		if keep > 0 {
			keep--
			continue
		}
		m.join(e)
	}
	m.settle()
}

func (m *model) clear() {
	for a := range m.eps {
		m.eps[a] = &mEndpoint{addr: a}
	}
	m.held, m.rampOn = false, false
}

func (m *model) reconfigure(cfg Config) {
	if cfg == m.cfg {
		return
	}
	old := m.cfg
	m.cfg = cfg
	if cfg.FailureRate.Window != old.FailureRate.Window {
		// The tracker's ring kept only the old window's outcomes.
		for _, e := range m.eps {
			e.rateFrom = max(e.rateFrom, len(e.outcomes)-min(old.FailureRate.Window, cfg.FailureRate.Window))
		}
	}
	if !cfg.Ejects() {
		for _, e := range m.sorted() {
			if e.phase == Ejected {
				m.bringBack(e, true)
			}
			e.wants = false
		}
		m.held = false
	}
	if cfg.SlowStart == 0 {
		for _, e := range m.waiting() {
			e.phase = Healthy
		}
	}
	m.settle()
}

func (m *model) view() View {
	v := View{Endpoints: len(m.eps), Ejected: m.count(Ejected), Capped: m.wanting(), MaxEjected: m.capacity(),
		SlowStart: m.count(SlowStart), Held: m.held}
	healthy := v.Endpoints - v.Ejected - v.Capped
	v.Panic = v.Endpoints > 0 && healthy*100 < v.Endpoints*m.cfg.PanicThresholdPercent
	var ejected []*mEndpoint
	for _, e := range m.eps {
		if e.phase == Ejected {
			ejected = append(ejected, e)
		}
	}
	slices.SortFunc(ejected, func(a, b *mEndpoint) int { return cmp.Or(a.since.Compare(b.since), a.addr.Compare(b.addr)) })
	for _, e := range append(ejected, m.waiting()...) {
		if !v.Panic {
			v.HeldBack = append(v.HeldBack, e.addr)
		}
		if len(v.Listed) < MaxListed {
			s := EndpointStatus{Endpoint: e.addr, Phase: e.phase, Since: e.since, Ejections: e.ejections}
			if e.phase == Ejected {
				s.Reason, s.Until = e.reason, e.until
			}
			v.Listed = append(v.Listed, s)
		}
	}
	slices.SortFunc(v.HeldBack, netip.AddrPort.Compare)
	return v
}

// fuzzConfigs are the configurations a sequence switches between.
var fuzzConfigs = []Config{
	{ConsecutiveFailures: 2, BaseEjectionTime: 3 * time.Second, MaxEjectionTime: 10 * time.Second, MaxEjectedPercent: 50,
		PanicThresholdPercent: 40, SlowStart: 9 * time.Second},
	{ConsecutiveFailures: 0, FailureRate: breaker.RateRule{Percent: 50, Window: 4, MinimumProbes: 2},
		BaseEjectionTime: 2 * time.Second, MaxEjectionTime: 2 * time.Second, MaxEjectedPercent: 100},
	{ConsecutiveFailures: 3, FailureRate: breaker.RateRule{Percent: 34, Window: 7, MinimumProbes: 3},
		BaseEjectionTime: time.Second, MaxEjectionTime: 5 * time.Second, MaxEjectedPercent: 34, PanicThresholdPercent: 100},
	{SlowStart: 6 * time.Second},
	{ConsecutiveFailures: 1, BaseEjectionTime: time.Second, MaxEjectionTime: time.Hour, MaxEjectedPercent: 75,
		PanicThresholdPercent: 10},
}

// FuzzTrackerAgainstModel drives a Tracker and the model with one sequence of operations,
// two bytes each, and compares their views, trials and deadlines after every one. It also
// checks the promises the gate relies on: never more ejected than the cap, never every
// endpoint held back, nothing held back in panic.
func FuzzTrackerAgainstModel(f *testing.F) {
	f.Add([]byte{0x10, 0x00, 0x10, 0x00, 0x10, 0x00, 0x30, 0x05, 0x11, 0x01})
	f.Add([]byte{0x70, 0x01, 0x10, 0x02, 0x10, 0x02, 0x10, 0x12, 0x30, 0x09, 0x40, 0x00, 0x50, 0x01})
	f.Add([]byte{0x60, 0x00, 0x10, 0x01, 0x10, 0x01, 0x11, 0x21, 0x30, 0x20, 0x50, 0x02, 0x30, 0x03, 0x40, 0x00})
	f.Add([]byte{0x70, 0x03, 0x50, 0x01, 0x30, 0x03, 0x30, 0x03, 0x30, 0x03, 0x20, 0x07, 0x30, 0x0a})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 400 {
			ops = ops[:400]
		}
		clk := testingclock.NewFakeClock(t0)
		tr, err := New(fuzzConfigs[0], clk)
		if err != nil {
			t.Fatal(err)
		}
		m := &model{cfg: fuzzConfigs[0], now: t0, eps: map[netip.AddrPort]*mEndpoint{}}
		tr.SetPermit(func() bool { return m.allow })
		all := addrs(8)
		tr.SetEndpoints(all[:5])
		m.setEndpoints(all[:5])
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i]>>4, ops[i+1]
			var what string
			switch op {
			case 0, 1, 2:
				a := all[int(arg&7)]
				o := []breaker.Outcome{breaker.Failure, breaker.Failure, breaker.Success, breaker.Slow, breaker.Neutral,
					breaker.Failure, breaker.Success, breaker.Failure}[ops[i]&7]
				what = fmt.Sprintf("record %s %s", a, o)
				tr.Record(a, o, "")
				m.record(a, o)
			case 3:
				d := time.Duration(arg%40) * 250 * time.Millisecond
				what = fmt.Sprintf("advance %s and tick", d)
				clk.Step(d)
				m.now = clk.Now()
				tr.Tick()
				m.settle()
			case 4:
				var eps []netip.AddrPort
				for j, a := range all {
					if arg&(1<<j) != 0 {
						eps = append(eps, a)
					}
				}
				what = fmt.Sprintf("set endpoints %v", eps)
				tr.SetEndpoints(eps)
				m.setEndpoints(eps)
			case 5:
				keep := int(arg % 4)
				what = fmt.Sprintf("start the ramp keeping %d", keep)
				tr.StartRamp(keep)
				m.startRamp(keep)
			case 6:
				what = "clear"
				tr.Clear()
				m.clear()
			case 7:
				cfg := fuzzConfigs[int(arg)%len(fuzzConfigs)]
				what = fmt.Sprintf("reconfigure to %+v", cfg)
				if err := tr.Reconfigure(cfg); err != nil {
					t.Fatal(err)
				}
				m.reconfigure(cfg)
			default:
				m.allow = arg&1 == 1
				what = fmt.Sprintf("permit %v", m.allow)
			}
			tr.TakeEvents()
			got, want := tr.View(), m.view()
			if diff := gocmp.Diff(want, got, cmpopts.EquateComparable(netip.AddrPort{}),
				cmpopts.IgnoreFields(EndpointStatus{}, "Message")); diff != "" {
				t.Fatalf("after op %d (%s): view (-model +tracker):\n%s", i/2, what, diff)
			}
			if got.Ejected > got.MaxEjected {
				t.Fatalf("after op %d (%s): %d ejected, more than the cap %d", i/2, what, got.Ejected, got.MaxEjected)
			}
			if got.Endpoints > 0 && len(got.HeldBack) >= got.Endpoints {
				t.Fatalf("after op %d (%s): every endpoint is held back: %v", i/2, what, got.HeldBack)
			}
			if got.Panic && len(got.HeldBack) > 0 {
				t.Fatalf("after op %d (%s): endpoints held back in panic", i/2, what)
			}
			var due []netip.AddrPort
			for _, e := range m.sorted() {
				if e.phase == Ejected && !m.now.Before(e.until) {
					due = append(due, e.addr)
				}
			}
			if !slices.Equal(tr.DueTrials(), due) {
				t.Fatalf("after op %d (%s): due trials %v, model %v", i/2, what, tr.DueTrials(), due)
			}
			if at, ok := tr.NextDeadline(); ok && !at.After(m.now) {
				t.Fatalf("after op %d (%s): a deadline at %s is not in the future", i/2, what, at)
			}
		}
	})
}
