package envtest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/controller"
)

// The agreement test's knobs. The seed is fixed so that every run checks the same specs; set
// TRIPSWITCH_AGREEMENT_SEED (and TRIPSWITCH_AGREEMENT_COUNT) to explore others, and put a
// seed that finds something into a case of the API table.
const (
	defaultAgreementSeed  = 20260517
	defaultAgreementCount = 1500
	agreementWorkers      = 8
)

var _ = Describe("Admission and the engine agree", func() {
	It("can run every random spec that the API server accepts", func(ctx SpecContext) {
		seed := envUint("TRIPSWITCH_AGREEMENT_SEED", defaultAgreementSeed)
		count := int(envUint("TRIPSWITCH_AGREEMENT_COUNT", defaultAgreementCount))
		fmt.Fprintf(GinkgoWriter, "agreement: seed %d (override with TRIPSWITCH_AGREEMENT_SEED), %d specs\n", seed, count)

		ns := newNamespace()
		r := rand.New(rand.NewPCG(seed, 0x7472697073776974)) //nolint:gosec // reproducible test input
		cases := make([]*agreementCase, count)
		for i := range cases {
			g := &specGen{r: r, edge: r.IntN(2) == 0}
			cases[i] = &agreementCase{obj: g.breaker(ns, i), edge: g.edge}
		}

		started := time.Now()
		runConcurrently(ctx, cases, func(ctx context.Context, c *agreementCase) { c.check(ctx) })

		var accepted, refused, acceptedEdge int
		var problems []string
		refusedBy := map[string]int{}
		for i, c := range cases {
			switch {
			case c.problem != "":
				problems = append(problems, fmt.Sprintf("spec #%d (seed %d):\n%s\n%s", i, seed, c.yaml(), c.problem))
				fmt.Fprintf(GinkgoWriter, "agreement: spec #%d: %s\n", i, strings.SplitN(c.problem, "\n", 2)[0])
				if c.accepted {
					accepted++
				}
			case c.accepted:
				accepted++
				if c.edge {
					acceptedEdge++
				}
			default:
				refused++
				refusedBy[c.refusal]++
			}
		}
		fmt.Fprintf(GinkgoWriter, "agreement: %d specs in %s: %d accepted (%d of them borderline), %d refused\n",
			count, time.Since(started).Round(time.Millisecond), accepted, acceptedEdge, refused)
		reasons := make([]string, 0, len(refusedBy))
		for reason := range refusedBy {
			reasons = append(reasons, reason)
		}
		sort.Slice(reasons, func(i, j int) bool { return refusedBy[reasons[i]] > refusedBy[reasons[j]] })
		for _, reason := range reasons {
			fmt.Fprintf(GinkgoWriter, "  refused %4d× %s\n", refusedBy[reason], reason)
		}

		// A generator that produced only refusals, or only acceptances, would prove nothing.
		Expect(accepted).To(BeNumerically(">=", count/4), "too few specs were accepted to say anything")
		Expect(refused).To(BeNumerically(">=", count/10), "too few specs were refused: the generator is not probing the bounds")
		if len(problems) > 0 {
			shown := problems[:min(len(problems), 8)]
			Fail(fmt.Sprintf("%d of %d accepted specs cannot be run by the operator (showing %d):\n\n%s",
				len(problems), accepted, len(shown), strings.Join(shown, "\n\n")))
		}
	})
})

// agreementCase is one random breaker and what came of it.
type agreementCase struct {
	obj  *unstructured.Unstructured
	edge bool

	accepted bool
	// refusal is a short key for why the server refused the spec, for the summary.
	refusal string
	// problem says why the operator cannot run a spec the server accepted, or why the
	// server's answer was not a clean acceptance or refusal.
	problem string
}

func (c *agreementCase) yaml() string {
	obj := map[string]any{"metadata": map[string]any{"name": c.obj.GetName()}, "spec": c.obj.Object["spec"]}
	out, err := yaml.Marshal(obj)
	if err != nil {
		// YAML cannot hold some control characters; JSON, which is YAML too, can.
		if out, err = json.MarshalIndent(obj, "", "  "); err != nil {
			return err.Error()
		}
	}
	return string(out)
}

var agreementDecoder = sync.OnceValue(func() func([]byte) (*tripswitchv1alpha1.CircuitBreaker, error) {
	deserializer := serializer.NewCodecFactory(scheme).UniversalDeserializer()
	return func(data []byte) (*tripswitchv1alpha1.CircuitBreaker, error) {
		cb := &tripswitchv1alpha1.CircuitBreaker{}
		if _, _, err := deserializer.Decode(data, nil, cb); err != nil {
			return nil, err
		}
		return cb, nil
	}
})

// check sends the breaker to the API server as a dry run and, if it is accepted, decodes the
// server's defaulted object as the controller's client would, resolves it and compiles it.
func (c *agreementCase) check(ctx context.Context) {
	sent := c.obj.DeepCopy()
	err := k8sClient.Create(ctx, sent, client.DryRunAll)
	if err != nil {
		if !apierrors.IsInvalid(err) {
			c.problem = fmt.Sprintf("the server neither accepted nor cleanly refused it (want 422 Invalid): %v", err)
			return
		}
		c.refusal = refusalKey(err)
		return
	}
	c.accepted = true
	data, err := sent.MarshalJSON()
	if err != nil {
		c.problem = fmt.Sprintf("encode the server's object: %v", err)
		return
	}
	cb, err := agreementDecoder()(data)
	if err != nil {
		c.problem = fmt.Sprintf("the operator cannot decode the server's object: %v\n%s", err, data)
		return
	}
	spec := cb.Resolve()
	if _, err := controller.Compile(&spec); err != nil {
		c.problem = fmt.Sprintf("controller.Compile(Resolve()) fails: %v", err)
		return
	}
	if err := probeRequestWorks(&spec); err != nil {
		c.problem = fmt.Sprintf("every probe would fail before it is sent: %v", err)
		return
	}

	// What Resolve fills in must itself pass admission: written out explicitly, the resolved
	// spec is one the API accepts.
	resolved := &tripswitchv1alpha1.CircuitBreaker{ObjectMeta: metav1.ObjectMeta{Namespace: cb.Namespace, Name: cb.Name},
		Spec: spec}
	if err := k8sClient.Create(ctx, resolved, client.DryRunAll); err != nil {
		out, _ := yaml.Marshal(spec)
		c.problem = fmt.Sprintf("the API refuses the spec that Resolve made of it: %v\nresolved:\n%s", err, out)
	}
}

// probeRequestWorks builds an HTTP probe's request the way internal/probe does (httpconn.go)
// and writes it out: a spec whose request cannot be built fails every probe, and so would
// open the breaker on a healthy target.
func probeRequestWorks(spec *tripswitchv1alpha1.CircuitBreakerSpec) error {
	h := spec.Probe.HTTP
	if h == nil || spec.Probe.TCP != nil || spec.Probe.GRPC != nil {
		return nil
	}
	scheme := "http://"
	if h.Scheme == tripswitchv1alpha1.SchemeHTTPS {
		scheme = "https://"
	}
	req, err := http.NewRequest(http.MethodGet, scheme+"192.0.2.1:8080"+h.Path, nil)
	if err != nil {
		return err
	}
	for _, hd := range h.Headers {
		req.Header.Add(hd.Name, hd.Value)
		// Request.Write does not check values; servers refuse control characters (RFC 9110 §5.5).
		if strings.ContainsFunc(hd.Value, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
			return fmt.Errorf("header %s has a control character in its value %q", hd.Name, hd.Value)
		}
	}
	if h.Host != "" {
		req.Host = h.Host
	}
	return req.Write(&bytes.Buffer{})
}

// refusalKey shortens a refusal to the rule that caused it, for the summary.
func refusalKey(err error) string {
	var status apierrors.APIStatus
	if s, ok := err.(apierrors.APIStatus); ok {
		status = s
	}
	if status == nil || status.Status().Details == nil || len(status.Status().Details.Causes) == 0 {
		return err.Error()
	}
	cause := status.Status().Details.Causes[0]
	msg := cause.Message
	// Drop the offending value, which differs from spec to spec.
	if i := strings.Index(msg, "Invalid value: "); i >= 0 {
		if j := strings.LastIndex(msg, ": "); j > i+len("Invalid value: ") {
			msg = msg[:i] + msg[j+2:]
		}
	}
	return cause.Field + ": " + msg
}

// runConcurrently runs f on every case with a few workers, as independent clients would.
func runConcurrently(ctx context.Context, cases []*agreementCase, f func(context.Context, *agreementCase)) {
	next := make(chan *agreementCase)
	var wg sync.WaitGroup
	for range agreementWorkers {
		wg.Go(func() {
			defer GinkgoRecover()
			for c := range next {
				f(ctx, c)
			}
		})
	}
	for _, c := range cases {
		next <- c
	}
	close(next)
	wg.Wait()
}

func envUint(name string, def uint64) uint64 {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.ParseUint(v, 10, 64)
	Expect(err).NotTo(HaveOccurred(), "%s=%q is not a number", name, v)
	return n
}

// specGen draws random CircuitBreakers. With edge set, values cluster on and around every
// bound the API or the operator knows of (and sometimes just outside the grammar); without
// it, they are ordinary values a user might write.
type specGen struct {
	r    *rand.Rand
	edge bool
}

func (g *specGen) chance(p float64) bool { return g.r.Float64() < p }

func oneOf[T any](g *specGen, xs ...T) T { return xs[g.r.IntN(len(xs))] }

// bordering says whether this value of a borderline spec sits on a bound. Not every one
// does, so that borderline specs with several values on their bounds still pass often.
func (g *specGen) bordering() bool { return g.edge && g.chance(0.6) }

// intNear is a number on or next to one of bounds when bordering, else one in [lo, hi].
func (g *specGen) intNear(lo, hi int, bounds ...int) int {
	if g.bordering() {
		return oneOf(g, bounds...) + oneOf(g, -1, 0, 0, 0, 1)
	}
	return lo + g.r.IntN(max(hi, lo)-lo+1)
}

// durNear is a duration on or next to one of bounds when bordering, else one in [lo, hi].
func (g *specGen) durNear(lo, hi time.Duration, bounds ...time.Duration) time.Duration {
	if g.bordering() {
		b := oneOf(g, bounds...)
		return b + oneOf(g, -time.Second, -time.Millisecond, -time.Nanosecond, 0, 0, 0, time.Nanosecond,
			time.Millisecond, time.Second)
	}
	hi = max(hi, lo)
	d := lo + time.Duration(g.r.Int64N(int64(hi-lo)+1))
	// Ordinary values are round: whole milliseconds, or whole seconds when that is long.
	if d > 10*time.Second {
		return d.Round(time.Second)
	}
	return max(d.Round(time.Millisecond), lo)
}

// spell writes d in one of the spellings that both metav1.Duration and CEL's duration()
// accept: 1m30s, 90s, 90000ms, 1.5m, 0.025h, 1m30000ms ... Borderline specs sometimes get a
// spelling outside the grammar, which the API must refuse.
func (g *specGen) spell(d time.Duration) string {
	if d <= 0 {
		return oneOf(g, "0s", "0", "-1s")
	}
	if g.edge && g.chance(0.04) {
		return oneOf(g, "1 s", "1sec", "1.s", ".5s", "1e3ms", "", "1µs", "+1s", "P1S", "99999999999h", "2562048h")
	}
	var spellings []string
	add := func(s string) {
		if len(s) <= 32 {
			if back, err := time.ParseDuration(s); err == nil && back == d {
				spellings = append(spellings, s)
			}
		}
	}
	add(d.String())
	for _, unit := range []struct {
		name string
		d    time.Duration
	}{{"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}, {"ms", time.Millisecond}, {"us", time.Microsecond}, {"ns", 1}} {
		if d%unit.d == 0 {
			add(strconv.FormatInt(int64(d/unit.d), 10) + unit.name)
		}
		add(strconv.FormatFloat(float64(d)/float64(unit.d), 'f', -1, 64) + unit.name)
		if d > unit.d && unit.d > time.Millisecond && d%time.Millisecond == 0 {
			add(strconv.FormatInt(int64(d/unit.d), 10) + unit.name + strconv.FormatInt(int64(d%unit.d/time.Millisecond), 10) + "ms")
		}
	}
	if len(spellings) == 0 {
		return d.String()
	}
	return oneOf(g, spellings...)
}

func (g *specGen) breaker(ns string, i int) *unstructured.Unstructured {
	target := oneOf(g, "backend", "payments-backend", "b")
	name := fmt.Sprintf("cb-%d", i)
	if g.edge && g.chance(0.05) {
		name = oneOf(g, target, "pay.ments", "front")
	}
	spec := map[string]any{"target": g.target(target)}
	if g.chance(0.6) {
		spec["profile"] = oneOf(g, "aggressive", "balanced", "conservative")
		if g.edge && g.chance(0.03) {
			spec["profile"] = oneOf(g, "Balanced", "yolo", "")
		}
	}
	if g.chance(0.5) {
		spec["mode"] = oneOf(g, "Auto", "ForceOpen", "ForceClosed", "Observe")
		if g.edge && g.chance(0.03) {
			spec["mode"] = oneOf(g, "auto", "Off")
		}
	}
	probe, slow := g.probe()
	if probe != nil {
		spec["probe"] = probe
	}
	if trip := g.trip(slow); trip != nil {
		spec["trip"] = trip
	}
	if rec := g.recovery(spec["profile"]); rec != nil {
		spec["recovery"] = rec
	}
	if gate := g.gate(name, target); gate != nil {
		spec["gate"] = gate
	}
	if ej := g.ejection(); ej != nil {
		spec["ejection"] = ej
	}
	if g.chance(0.2) {
		rec, _ := spec["recovery"].(map[string]any)
		if rec == nil {
			rec = map[string]any{}
		}
		rec["slowStart"] = map[string]any{"window": g.spell(g.durNear(time.Second, time.Hour, time.Second, time.Hour, 30*time.Second))}
		spec["recovery"] = rec
	}
	return breakerObject(ns, name, spec)
}

func (g *specGen) port() any {
	if g.chance(0.5) {
		return int64(g.intNear(1, 65535, 1, 65535))
	}
	if g.edge && g.chance(0.3) {
		return oneOf(g, "HTTP", "a-very-long-port-name", "-http", "80", "")
	}
	return oneOf(g, "http", "grpc", "h2c", "metrics-9090")
}

func (g *specGen) target(service string) map[string]any {
	return map[string]any{"service": service, "port": g.port()}
}

// probe returns the probe section, and whether it sets a slow threshold (which the slow rate
// rule needs).
func (g *specGen) probe() (map[string]any, bool) {
	if !g.chance(0.85) {
		return nil, false
	}
	p := map[string]any{}
	interval := time.Second
	if g.chance(0.7) {
		interval = g.durNear(50*time.Millisecond, 30*time.Second, 50*time.Millisecond, 5*time.Minute, time.Second)
		p["interval"] = g.spell(interval)
	}
	timeout := min(time.Second, interval)
	if g.chance(0.6) {
		timeout = g.durNear(10*time.Millisecond, interval, 10*time.Millisecond, interval, time.Second)
		p["timeout"] = g.spell(timeout)
	}
	slow := false
	if g.chance(0.4) {
		slow = true
		p["slowThreshold"] = g.spell(g.durNear(time.Millisecond, max(time.Millisecond, timeout-time.Millisecond),
			time.Millisecond, timeout, time.Second))
	}
	switch kind := g.r.IntN(10); {
	case kind < 5:
		p["http"] = g.httpProbe()
	case kind < 7:
		p["tcp"] = map[string]any{}
	case kind < 9:
		grpc := map[string]any{}
		if g.chance(0.5) {
			grpc["service"] = oneOf(g, "", "payments.v1.Payments", "grpc.health.v1.Health")
		}
		if g.chance(0.3) {
			grpc["tls"] = g.tls()
		}
		p["grpc"] = grpc
	default:
		if g.edge && g.chance(0.3) {
			p["http"], p["tcp"] = map[string]any{}, map[string]any{} // two kinds: refused
		}
		// Otherwise no kind: the default HTTP GET /.
	}
	return p, slow
}

func (g *specGen) httpProbe() map[string]any {
	h := map[string]any{}
	if g.chance(0.6) {
		h["path"] = oneOf(g, "/", "/healthz", "/health/ready?full=1", "/a/b/c", "/status#frag", "/caf%C3%A9")
		if g.edge && g.chance(0.4) {
			h["path"] = oneOf(g, "healthz", "/%zz", "/100%", "/a b", "/a\x01b", "/a\x7fb", "", "/%2", "/ok?x=%41")
		}
	}
	if g.chance(0.4) {
		h["scheme"] = oneOf(g, "HTTP", "HTTPS")
		if g.edge && g.chance(0.1) {
			h["scheme"] = "https"
		}
	}
	if g.chance(0.3) {
		h["host"] = oneOf(g, "payments.example.com", "localhost", "svc:8443", "a", "10.0.0.1")
		if g.edge && g.chance(0.3) {
			h["host"] = oneOf(g, "-bad", "a_b", "host:123456", "")
		}
	}
	if g.chance(0.3) {
		var headers []any
		names := []string{"X-Probe", "Authorization", "Accept", "x-tenant", "User-Agent", "Host"}
		g.r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
		for j := range 1 + g.r.IntN(3) {
			name := names[j]
			if g.edge && g.chance(0.1) {
				name = names[0] // a duplicate name: refused
			}
			value := oneOf(g, "tripswitch", "Bearer abc", "*/*", "", "a\tb")
			if g.edge && g.chance(0.2) {
				value = oneOf(g, "a\nb", "a\r\nX-Injected: 1", "nul\x00", "del\x7f")
			}
			headers = append(headers, map[string]any{"name": name, "value": value})
		}
		if g.edge && g.chance(0.1) {
			headers = append(headers, map[string]any{"name": "Bad Name", "value": "x"})
		}
		h["headers"] = headers
	}
	if g.chance(0.4) {
		h["successCodes"] = g.codes()
	}
	if g.chance(0.3) {
		h["neutralCodes"] = g.codes()
	}
	if g.chance(0.2) {
		h["insecureSkipVerify"] = g.chance(0.5)
	}
	if g.chance(0.2) {
		h["tls"] = g.tls()
	}
	return h
}

// tls draws a probe.http.tls or probe.grpc.tls. A bundle that is PEM-shaped but does not
// parse is left out: admission cannot tell, and the controller reports it as InvalidSpec by
// design ("keeps the last good configuration when a CA bundle does not parse", test/envtest).
func (g *specGen) tls() map[string]any {
	t := map[string]any{}
	if g.chance(0.5) {
		t["caBundle"] = envtestCA.PEM
		if g.edge && g.chance(0.3) {
			t["caBundle"] = oneOf(g, "", "hello", "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
				strings.TrimSuffix(envtestCA.PEM, "\n")+"trailing words")
		}
	}
	if g.chance(0.5) {
		t["serverName"] = oneOf(g, "payments.svc", "10.0.0.1", "a")
		if g.edge && g.chance(0.3) {
			t["serverName"] = oneOf(g, "payments:443", "", "-a", "a_b")
		}
	}
	return t
}

func (g *specGen) codes() string {
	if g.edge && g.chance(0.3) {
		return oneOf(g, "399-200", "200,", "600", "099", "200-600", "", " 200", "200 - 299", "2xx", "200-200", "100-599",
			"599", "100", "500-599,100-199")
	}
	return oneOf(g, "200-399", "200", "200-299,304", "429", "429,503", "100-599", "204,301-302")
}

func (g *specGen) trip(slowThreshold bool) map[string]any {
	if !g.chance(0.7) {
		return nil
	}
	t := map[string]any{}
	if g.chance(0.5) {
		t["consecutiveFailures"] = int64(g.intNear(1, 20, 1, 1000, 3, 5, 10))
	}
	if g.chance(0.4) {
		t["failureRate"] = g.rate()
	}
	// The slow rate needs a slow threshold; borderline specs sometimes forget it.
	if g.chance(0.3) && (slowThreshold || g.edge && g.chance(0.3)) {
		t["slowRate"] = g.rate()
	}
	return t
}

func (g *specGen) rate() map[string]any {
	r := map[string]any{"percent": int64(g.intNear(1, 100, 1, 50, 100))}
	window := int(tripswitchv1alpha1.DefaultRateWindow)
	if g.chance(0.6) {
		window = g.intNear(1, 100, 1, 20, 1000)
		r["window"] = int64(window)
	}
	if g.chance(0.5) {
		r["minimumProbes"] = int64(g.intNear(1, max(1, window), 1, window, 1000, 20))
	}
	return r
}

// ejection returns the endpoint level's section, with durations around the bounds and the
// defaults that Resolve fills in, where the API and the engine can disagree.
func (g *specGen) ejection() map[string]any {
	if !g.chance(0.3) {
		return nil
	}
	e := map[string]any{}
	if g.chance(0.5) {
		e["consecutiveFailures"] = int64(g.intNear(1, 20, 1, 1000))
	}
	if g.chance(0.4) {
		r := g.rate()
		if w, ok := r["window"].(int64); ok && w > 100 && !g.bordering() {
			r["window"] = int64(100)
		}
		e["failureRate"] = r
	}
	bounds := []time.Duration{time.Second, 30 * time.Second, 5 * time.Minute, time.Hour, 24 * time.Hour}
	base := tripswitchv1alpha1.DefaultBaseEjectionTime
	if g.chance(0.5) {
		base = g.durNear(time.Second, time.Hour, bounds...)
		e["baseEjectionTime"] = g.spell(base)
	}
	if g.chance(0.5) {
		e["maxEjectionTime"] = g.spell(g.durNear(base, 24*time.Hour, append(bounds, base)...))
	}
	if g.chance(0.5) {
		e["maxEjectedPercent"] = int64(g.intNear(0, 100, 0, 50, 100))
	}
	if g.chance(0.5) {
		e["panicThresholdPercent"] = int64(g.intNear(0, 100, 0, 50, 100))
	}
	return e
}

func (g *specGen) recovery(profile any) map[string]any {
	if !g.chance(0.7) {
		return nil
	}
	presets := []time.Duration{30 * time.Second, 60 * time.Second, 120 * time.Second}
	rec := map[string]any{}
	open := tripswitchv1alpha1.Presets[tripswitchv1alpha1.ProfileBalanced].OpenDuration
	if p, ok := profile.(string); ok {
		if preset, ok := tripswitchv1alpha1.Presets[tripswitchv1alpha1.Profile(p)]; ok {
			open = preset.OpenDuration
		}
	}
	if g.chance(0.5) {
		open = g.durNear(time.Second, 10*time.Minute, append(presets, time.Second, time.Hour)...)
		rec["openDuration"] = g.spell(open)
	}
	if g.chance(0.6) {
		b := map[string]any{}
		if g.chance(0.5) {
			b["factor"] = int64(g.intNear(1, 10, 1, 10))
		}
		if g.chance(0.7) {
			// Around the effective open duration, and around every open duration a profile
			// might fill in, which is where the API and the engine can disagree.
			b["maxOpenDuration"] = g.spell(g.durNear(open, 2*time.Hour,
				append(presets, open, time.Second, 24*time.Hour, tripswitchv1alpha1.DefaultMaxOpenDuration)...))
		}
		if g.chance(0.5) {
			b["jitterPercent"] = int64(g.intNear(0, 50, 0, 50))
		}
		rec["backoff"] = b
	}
	if g.chance(0.5) {
		h := map[string]any{}
		trial := 0
		if g.chance(0.6) {
			trial = g.intNear(1, 10, 1, 100)
			h["trialProbes"] = int64(trial)
		}
		if g.chance(0.6) {
			h["successThreshold"] = int64(g.intNear(1, max(1, trial), 1, max(1, trial), 100))
		}
		rec["halfOpen"] = h
	}
	return rec
}

func (g *specGen) gate(name, target string) map[string]any {
	switch g.r.IntN(6) {
	case 0:
		return nil
	case 1:
		if g.edge && g.chance(0.2) {
			return map[string]any{} // no gate at all: refused
		}
		return map[string]any{"endpointSlice": map[string]any{}}
	}
	gate := map[string]any{}
	if g.chance(0.8) {
		es := map[string]any{}
		if g.chance(0.5) {
			es["service"] = oneOf(g, "front", "payments", name)
			if g.edge && g.chance(0.2) {
				es["service"] = oneOf(g, target, "Front", "")
			}
		}
		if g.chance(0.4) {
			es["halfOpenEndpoints"] = int64(g.intNear(1, 10, 1, 1000))
		}
		if g.chance(0.4) {
			fb := map[string]any{"service": oneOf(g, "degraded", "payments-degraded")}
			if g.edge && g.chance(0.3) {
				fb["service"] = oneOf(g, name, "front", target)
			}
			if g.chance(0.5) {
				fb["port"] = g.port()
			}
			es["fallback"] = fb
		}
		gate["endpointSlice"] = es
	}
	if g.chance(0.4) || gate["endpointSlice"] == nil {
		var refs []any
		kinds := [][2]string{{"networking.k8s.io/v1", "Ingress"}, {"v1", "Service"},
			{"gateway.networking.k8s.io/v1", "HTTPRoute"}, {"gateway.networking.k8s.io/v1", "GRPCRoute"}}
		if g.edge && g.chance(0.15) {
			kinds = append(kinds, [2]string{"apps/v1", "Deployment"}, [2]string{"networking.k8s.io/v1", "HTTPRoute"})
		}
		n := g.r.IntN(4)
		if g.edge && g.chance(0.1) {
			n = oneOf(g, 16, 17)
		}
		for j := range n {
			k := oneOf(g, kinds...)
			refs = append(refs, map[string]any{"apiVersion": k[0], "kind": k[1], "name": fmt.Sprintf("obj-%d", j)})
		}
		gate["annotations"] = refs
	}
	return gate
}
