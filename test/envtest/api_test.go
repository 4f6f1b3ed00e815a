package envtest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	tripswitchv1alpha1 "github.com/tripswitch/tripswitch/api/v1alpha1"
	"github.com/tripswitch/tripswitch/internal/controller"
	"github.com/tripswitch/tripswitch/internal/query"
	"github.com/tripswitch/tripswitch/internal/testcerts"
)

// envtestCA signs the certificates of the suite's TLS servers; its PEM is a valid caBundle.
var envtestCA = testcerts.NewCA("tripswitch envtest CA")

// breakerFromYAML builds a CircuitBreaker named name from a spec written in YAML, so that the
// table below can hold values the Go types could not express (unknown enums, wrong types).
func breakerFromYAML(namespace, name, specYAML string) *unstructured.Unstructured {
	spec := map[string]any{}
	Expect(yaml.Unmarshal([]byte(specYAML), &spec)).To(Succeed())
	return breakerObject(namespace, name, spec)
}

// breakerObject builds a CircuitBreaker named name around a spec held as a map.
func breakerObject(namespace, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetAPIVersion(tripswitchv1alpha1.GroupVersion.String())
	u.SetKind("CircuitBreaker")
	u.SetNamespace(namespace)
	u.SetName(name)
	return u
}

var _ = Describe("The CircuitBreaker API", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("accepts every sample in config/samples", func(ctx SpecContext) {
		files, err := filepath.Glob(filepath.Join(repoRoot, "config", "samples", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		created := 0
		for _, file := range files {
			if filepath.Base(file) == "kustomization.yaml" {
				continue
			}
			data, err := os.ReadFile(file)
			Expect(err).NotTo(HaveOccurred())
			decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
			for {
				obj := &unstructured.Unstructured{}
				if err := decoder.Decode(&obj.Object); errors.Is(err, io.EOF) {
					break
				} else {
					Expect(err).NotTo(HaveOccurred(), file)
				}
				if len(obj.Object) == 0 {
					continue
				}
				obj.SetNamespace(ns)
				Expect(k8sClient.Create(ctx, obj)).To(Succeed(), file)
				created++
				// Admission cannot parse PromQL: the manager's compiler must take every query too.
				var cb tripswitchv1alpha1.CircuitBreaker
				Expect(runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, &cb)).To(Succeed())
				for _, q := range cb.Spec.Trip.Queries {
					_, err := query.Compile(query.Spec{Name: q.Name, Query: q.Query, Above: ptr.Deref(q.Above, ""),
						Below: ptr.Deref(q.Below, ""), For: 1}, "namespace", ns)
					Expect(err).NotTo(HaveOccurred(), file)
				}
			}
		}
		Expect(created).To(BeNumerically(">=", 4), "every sample file should hold a breaker")
	})

	It("accepts every CircuitBreaker example in the README", func(ctx SpecContext) {
		readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
		Expect(err).NotTo(HaveOccurred())
		examples := 0
		for _, block := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(readme), -1) {
			if !strings.Contains(block[1], "kind: CircuitBreaker") {
				continue
			}
			obj := &unstructured.Unstructured{}
			Expect(yaml.Unmarshal([]byte(block[1]), &obj.Object)).To(Succeed())
			obj.SetNamespace(ns)
			Expect(k8sClient.Create(ctx, obj)).To(Succeed(), block[1])
			examples++
		}
		Expect(examples).To(BeNumerically(">=", 1))
	})

	It("applies defaults on the server", func(ctx SpecContext) {
		minimal := breakerFromYAML(ns, "minimal", `{target: {service: backend, port: 80}}`)
		Expect(k8sClient.Create(ctx, minimal)).To(Succeed())
		got := &tripswitchv1alpha1.CircuitBreaker{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(minimal), got)).To(Succeed())
		Expect(got.Spec.Mode).To(Equal(tripswitchv1alpha1.ModeAuto))
		Expect(got.Spec.Probe.Interval).NotTo(BeNil())
		Expect(got.Spec.Probe.Interval.Duration.String()).To(Equal("1s"))
		Expect(got.Spec.Gate).NotTo(BeNil())
		Expect(got.Spec.Gate.EndpointSlice).NotTo(BeNil())
		Expect(got.Spec.Gate.EndpointSlice.HalfOpenEndpoints).To(BeEquivalentTo(1))
		// Defaults that depend on another field or on the profile are left to Resolve, so the
		// server leaves them unset rather than guessing.
		Expect(got.Spec.Probe.Timeout).To(BeNil())
		Expect(got.Spec.Trip.ConsecutiveFailures).To(BeNil())
		Expect(got.Spec.Recovery.OpenDuration).To(BeNil())

		detailed := breakerFromYAML(ns, "detailed", `
target: {service: backend, port: http}
probe: {http: {}}
trip: {failureRate: {percent: 50}}
recovery: {backoff: {}}
`)
		Expect(k8sClient.Create(ctx, detailed)).To(Succeed())
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(detailed), got)).To(Succeed())
		Expect(got.Spec.Probe.HTTP.Path).To(Equal("/"))
		Expect(got.Spec.Probe.HTTP.Scheme).To(Equal(tripswitchv1alpha1.SchemeHTTP))
		Expect(got.Spec.Probe.HTTP.SuccessCodes).To(BeEquivalentTo("200-399"))
		Expect(got.Spec.Trip.FailureRate.Window).To(BeEquivalentTo(20))
		Expect(got.Spec.Recovery.Backoff.Factor).To(BeEquivalentTo(2))
	})

	DescribeTable("rejects an invalid spec with a clear message",
		func(ctx SpecContext, name, specYAML, wantMessage string) {
			err := k8sClient.Create(ctx, breakerFromYAML(ns, name, specYAML))
			Expect(err).To(HaveOccurred())
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want 422 Invalid, got %v", err)
			Expect(err.Error()).To(ContainSubstring(wantMessage))
		},
		Entry("no target", "a", `{mode: Auto}`, `spec.target: Required value`),
		Entry("two probe kinds", "a", `{target: {service: b, port: 80}, probe: {http: {}, tcp: {}}}`,
			"probe may set only one of http, tcp or grpc"),
		Entry("timeout longer than interval", "a", `{target: {service: b, port: 80}, probe: {interval: 1s, timeout: 2s}}`,
			"probe.timeout must not be longer than probe.interval"),
		Entry("timeout longer than the default interval", "a", `{target: {service: b, port: 80}, probe: {timeout: 1500ms}}`,
			"probe.timeout must not be longer than probe.interval"),
		Entry("interval under 50ms", "a", `{target: {service: b, port: 80}, probe: {interval: 20ms}}`,
			"probe.interval must be at least 50ms"),
		Entry("interval that is not a duration", "a", `{target: {service: b, port: 80}, probe: {interval: soon}}`,
			"spec.probe.interval: Invalid value"),
		Entry("slowThreshold not under timeout", "a", `{target: {service: b, port: 80}, probe: {timeout: 500ms, slowThreshold: 500ms}}`,
			"probe.slowThreshold must be shorter than probe.timeout"),
		Entry("successThreshold above trialProbes", "a",
			`{target: {service: b, port: 80}, recovery: {halfOpen: {trialProbes: 2, successThreshold: 3}}}`,
			"halfOpen.successThreshold must not exceed halfOpen.trialProbes"),
		Entry("explicit front Service equal to target", "a",
			`{target: {service: b, port: 80}, gate: {endpointSlice: {service: b}}}`,
			"the front Service (gate.endpointSlice.service, default metadata.name) must differ from target.service"),
		Entry("breaker named like its target", "backend", `{target: {service: backend, port: 80}}`,
			"the front Service (gate.endpointSlice.service, default metadata.name) must differ from target.service"),
		Entry("a Service and an external host", "a",
			`{target: {service: b, port: 80, external: {host: api.example.test, port: 443}}, probe: {tcp: {}}}`,
			"target needs exactly one of service and external"),
		Entry("a Service without its port", "a", `{target: {service: b}}`,
			"target.port goes with target.service"),
		Entry("an external host with target.port", "a",
			`{target: {port: 443, external: {host: api.example.test, port: 443}}, probe: {tcp: {}}}`,
			"target.port goes with target.service"),
		Entry("an external host given as an IP address", "a",
			`{target: {external: {host: 203.0.113.7, port: 443}}, probe: {tcp: {}}}`, "spec.target.external.host"),
		Entry("an external host with one label", "a",
			`{target: {external: {host: localhost, port: 443}}, probe: {tcp: {}}}`, "spec.target.external.host"),
		Entry("an external host without a probe kind", "a",
			`{target: {external: {host: api.example.test, port: 443}}, probe: {interval: 5s}}`,
			"an external target needs probe.http, probe.tcp or probe.grpc"),
		Entry("an external port out of range", "a",
			`{target: {external: {host: api.example.test, port: 70000}}, probe: {tcp: {}}}`, "spec.target.external.port"),
		Entry("no gate at all", "a", `{target: {service: b, port: 80}, gate: {}}`,
			"gate needs endpointSlice, annotations, or both"),
		Entry("failure rate of 0%", "a", `{target: {service: b, port: 80}, trip: {failureRate: {percent: 0}}}`,
			"spec.trip.failureRate.percent: Invalid value: 0: spec.trip.failureRate.percent in body should be greater than or equal to 1"),
		Entry("slow rate over 100%", "a", `{target: {service: b, port: 80}, probe: {slowThreshold: 300ms}, trip: {slowRate: {percent: 101}}}`,
			"spec.trip.slowRate.percent in body should be less than or equal to 100"),
		Entry("window smaller than minimumProbes", "a",
			`{target: {service: b, port: 80}, trip: {failureRate: {percent: 50, window: 5, minimumProbes: 10}}}`,
			"window must be at least minimumProbes"),
		Entry("slow rate without a slow threshold", "a", `{target: {service: b, port: 80}, trip: {slowRate: {percent: 50}}}`,
			"trip.slowRate needs probe.slowThreshold, which says what slow is"),
		Entry("unknown mode", "a", `{target: {service: b, port: 80}, mode: Sometimes}`,
			`spec.mode: Unsupported value: "Sometimes"`),
		Entry("unknown profile", "a", `{target: {service: b, port: 80}, profile: yolo}`,
			`spec.profile: Unsupported value: "yolo"`),
		Entry("port number out of range", "a", `{target: {service: b, port: 70000}}`,
			"port must be a number in 1-65535 or a Service port name"),
		Entry("port name with capitals", "a", `{target: {service: b, port: HTTP}}`,
			"port must be a number in 1-65535 or a Service port name"),
		Entry("ejection time cap under the base", "a",
			`{target: {service: b, port: 80}, ejection: {baseEjectionTime: 1m, maxEjectionTime: 30s}}`,
			"ejection.maxEjectionTime must not be shorter than ejection.baseEjectionTime"),
		Entry("ejection time cap under the default base", "a",
			`{target: {service: b, port: 80}, ejection: {maxEjectionTime: 10s}}`,
			"ejection.maxEjectionTime must not be shorter than ejection.baseEjectionTime (30s when unset)"),
		Entry("ejection rate window over 100", "a",
			`{target: {service: b, port: 80}, ejection: {failureRate: {percent: 50, window: 200}}}`,
			"ejection.failureRate.window must be at most 100"),
		Entry("ejected share over 100%", "a", `{target: {service: b, port: 80}, ejection: {maxEjectedPercent: 101}}`,
			"spec.ejection.maxEjectedPercent: Invalid value"),
		Entry("ejection without the endpointSlice gate", "a",
			`{target: {service: b, port: 80}, ejection: {}, gate: {annotations: [{apiVersion: v1, kind: Service, name: c}]}}`,
			"spec.ejection needs the endpointSlice gate"),
		Entry("slow start without the endpointSlice gate", "a",
			`{target: {service: b, port: 80}, recovery: {slowStart: {window: 10s}}, gate: {annotations: [{apiVersion: v1, kind: Service, name: c}]}}`,
			"spec.recovery.slowStart needs the endpointSlice gate"),
		Entry("a query rule with both bounds", "a",
			`{target: {service: b, port: 80}, trip: {queries: [{name: errors, query: up, above: "1", below: "2"}]}}`,
			"set exactly one of above and below"),
		Entry("a query rule with no bound", "a",
			`{target: {service: b, port: 80}, trip: {queries: [{name: errors, query: up}]}}`,
			"set exactly one of above and below"),
		Entry("a query bound that is not a number", "a",
			`{target: {service: b, port: 80}, trip: {queries: [{name: errors, query: up, above: "5%"}]}}`,
			"spec.trip.queries[0].above in body should match"),
		Entry("two query rules with one name", "a",
			`{target: {service: b, port: 80}, trip: {queries: [{name: e, query: up, above: "1"}, {name: e, query: up, below: "1"}]}}`,
			"Duplicate value"),
		Entry("a query interval under 1s", "a",
			`{target: {service: b, port: 80}, trip: {queryInterval: 500ms, queries: [{name: e, query: up, above: "1"}]}}`,
			"trip.queryInterval must be at least 1s"),
		Entry("slow start window under 1s", "a", `{target: {service: b, port: 80}, recovery: {slowStart: {window: 500ms}}}`,
			"recovery.slowStart.window must be at least 1s"),
		Entry("status code range written backwards", "a",
			`{target: {service: b, port: 80}, probe: {http: {successCodes: "399-200"}}}`,
			"status code ranges must be written low-high, as in 200-399"),
		Entry("malformed status codes", "a", `{target: {service: b, port: 80}, probe: {http: {neutralCodes: "429,"}}}`,
			"spec.probe.http.neutralCodes in body should match"),
		Entry("open duration under 1s", "a", `{target: {service: b, port: 80}, recovery: {openDuration: 500ms}}`,
			"recovery.openDuration must be at least 1s"),
		Entry("backoff cap under the open duration", "a",
			`{target: {service: b, port: 80}, recovery: {openDuration: 5m, backoff: {maxOpenDuration: 1m}}}`,
			"recovery.backoff.maxOpenDuration must not be shorter than recovery.openDuration"),
		// Found by "Admission and the engine agree": without openDuration, the cap must be
		// checked against the open duration that Resolve fills in, or the engine refuses it.
		Entry("backoff cap under the default open duration", "a",
			`{target: {service: b, port: 80}, recovery: {backoff: {maxOpenDuration: 30s}}}`,
			"spec.recovery.backoff.maxOpenDuration: Invalid value: recovery.backoff.maxOpenDuration must not be shorter than recovery.openDuration (60s by default when unset)"),
		Entry("backoff cap under the balanced profile's open duration", "a",
			`{target: {service: b, port: 80}, profile: balanced, recovery: {backoff: {maxOpenDuration: 59.999s}}}`,
			"recovery.backoff.maxOpenDuration must not be shorter than recovery.openDuration (60s from the balanced profile when unset)"),
		Entry("backoff cap under the conservative profile's open duration", "a",
			`{target: {service: b, port: 80}, profile: conservative, recovery: {backoff: {maxOpenDuration: 60s}}}`,
			"recovery.backoff.maxOpenDuration must not be shorter than recovery.openDuration (120s from the conservative profile when unset)"),
		Entry("backoff cap under the aggressive profile's open duration", "a",
			`{target: {service: b, port: 80}, profile: aggressive, recovery: {backoff: {factor: 3, maxOpenDuration: 29999ms}}}`,
			"recovery.backoff.maxOpenDuration must not be shorter than recovery.openDuration (30s from the aggressive profile when unset)"),
		// Found by the agreement test: a slow threshold at or over the timeout that Resolve
		// fills in can never be reached, so the slow rate could never trip.
		Entry("slowThreshold not under the default timeout", "a", `{target: {service: b, port: 80}, probe: {slowThreshold: 1s}}`,
			"probe.slowThreshold must be shorter than probe.timeout (1s when unset, or probe.interval when that is shorter)"),
		Entry("slowThreshold not under a default timeout that is the interval", "a",
			`{target: {service: b, port: 80}, probe: {interval: 200ms, slowThreshold: 0.2s}, trip: {slowRate: {percent: 50}}}`,
			"probe.slowThreshold must be shorter than probe.timeout (1s when unset, or probe.interval when that is shorter)"),
		Entry("slowThreshold over the default timeout of a long interval", "a",
			`{target: {service: b, port: 80}, probe: {interval: 5s, slowThreshold: 2s}}`,
			"probe.slowThreshold must be shorter than probe.timeout (1s when unset, or probe.interval when that is shorter)"),
		// Found by the agreement test: paths that make no URL, and header values that no HTTP
		// server takes, fail every probe before it is sent, which would open the breaker.
		Entry("HTTP path with a broken percent escape", "a", `{target: {service: b, port: 80}, probe: {http: {path: "/%zz"}}}`,
			"spec.probe.http.path in body should match"),
		Entry("HTTP path with a lone percent sign", "a", `{target: {service: b, port: 80}, probe: {http: {path: "/ready?load=100%"}}}`,
			"spec.probe.http.path in body should match"),
		Entry("HTTP path with a control character", "a", `{target: {service: b, port: 80}, probe: {http: {path: "/a\x01b"}}}`,
			"spec.probe.http.path in body should match"),
		Entry("HTTP header value with a line break", "a",
			`{target: {service: b, port: 80}, probe: {http: {headers: [{name: X-Probe, value: "a\r\nX-Injected: 1"}]}}}`,
			"spec.probe.http.headers[0].value in body should match"),
		Entry("HTTP header value with a NUL", "a",
			`{target: {service: b, port: 80}, probe: {http: {headers: [{name: X-Probe, value: "a\x00"}]}}}`,
			"spec.probe.http.headers[0].value in body should match"),
		Entry("fallback equal to the default front Service", "a",
			`{target: {service: b, port: 80}, gate: {endpointSlice: {fallback: {service: a}}}}`,
			"gate.endpointSlice.fallback.service must differ from the front Service"),
		Entry("breaker name that cannot name a Service", "pay.ments", `{target: {service: b, port: 80}}`,
			"metadata.name is not a valid Service name; set gate.endpointSlice.service"),
		Entry("HTTP path without a leading slash", "a", `{target: {service: b, port: 80}, probe: {http: {path: healthz}}}`,
			"spec.probe.http.path in body should match"),
		Entry("target Service name that is not a DNS label", "a", `{target: {service: Payments, port: 80}}`,
			"spec.target.service in body should match"),
		// An HTTPS host is the TLS server name too, where a port makes every probe fail.
		Entry("HTTPS host with a port", "a", `{target: {service: b, port: 80}, probe: {http: {scheme: HTTPS, host: "payments:8443"}}}`,
			"an HTTPS probe's host is also its TLS server name, which cannot have a port: drop the port, or set tls.serverName"),
		Entry("HTTP tls without HTTPS", "a", `{target: {service: b, port: 80}, probe: {http: {tls: {serverName: payments}}}}`,
			"probe.http.tls needs scheme HTTPS"),
		Entry("TLS server name with a port", "a",
			`{target: {service: b, port: 80}, probe: {http: {scheme: HTTPS, tls: {serverName: "payments:8443"}}}}`,
			"spec.probe.http.tls.serverName in body should match"),
		Entry("CA bundle that is not PEM", "a", `{target: {service: b, port: 80}, probe: {http: {scheme: HTTPS, tls: {caBundle: "MIIB..."}}}}`,
			"caBundle must be one or more PEM certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----) and nothing else"),
		Entry("CA bundle with a private key in it", "a",
			fmt.Sprintf(`{target: {service: b, port: 80}, probe: {grpc: {tls: {caBundle: %q}}}}`,
				envtestCA.PEM+"-----BEGIN EC PRIVATE KEY-----\nTUlJQm9v\n-----END EC PRIVATE KEY-----\n"),
			"caBundle must be one or more PEM certificates"),
		Entry("CA bundle beside insecureSkipVerify", "a",
			fmt.Sprintf(`{target: {service: b, port: 80}, probe: {http: {scheme: HTTPS, insecureSkipVerify: true, tls: {caBundle: %q}}}}`, envtestCA.PEM),
			"probe.http.insecureSkipVerify skips the very check that tls.caBundle is for: set one of them"),
	)

	DescribeTable("accepts a borderline spec, and the operator can run it",
		func(ctx SpecContext, specYAML string) {
			obj := breakerFromYAML(ns, "a", specYAML)
			Expect(k8sClient.Create(ctx, obj)).To(Succeed())
			got := &tripswitchv1alpha1.CircuitBreaker{}
			Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), got)).To(Succeed())
			spec := got.Resolve()
			_, err := controller.Compile(&spec)
			Expect(err).NotTo(HaveOccurred())
		},
		Entry("backoff cap equal to the aggressive profile's open duration",
			`{target: {service: b, port: 80}, profile: aggressive, recovery: {backoff: {maxOpenDuration: 30s}}}`),
		Entry("backoff cap equal to the default open duration",
			`{target: {service: b, port: 80}, recovery: {backoff: {maxOpenDuration: 1m}}}`),
		Entry("backoff cap equal to the balanced profile's open duration, spelled in hours",
			`{target: {service: b, port: 80}, profile: balanced, recovery: {backoff: {maxOpenDuration: 0.01666666666666666667h}}}`),
		Entry("backoff cap equal to the conservative profile's open duration",
			`{target: {service: b, port: 80}, profile: conservative, recovery: {backoff: {maxOpenDuration: 1m60s}}}`),
		Entry("backoff cap under a profile's open duration that openDuration overrides",
			`{target: {service: b, port: 80}, profile: conservative, recovery: {openDuration: 10s, backoff: {maxOpenDuration: 10s}}}`),
		Entry("backoff without a cap and the longest open duration",
			`{target: {service: b, port: 80}, recovery: {openDuration: 1h, backoff: {}}}`),
		Entry("slowThreshold just under the default timeout",
			`{target: {service: b, port: 80}, probe: {slowThreshold: 999ms}, trip: {slowRate: {percent: 50}}}`),
		Entry("slowThreshold just under a default timeout that is the interval",
			`{target: {service: b, port: 80}, probe: {interval: 200ms, slowThreshold: 199.999ms}}`),
		Entry("slowThreshold over a second under a long explicit timeout",
			`{target: {service: b, port: 80}, probe: {interval: 5s, timeout: 3s, slowThreshold: 1.5s}}`),
		Entry("HTTP path with escapes, a query and a fragment",
			`{target: {service: b, port: 80}, probe: {http: {path: "/caf%C3%A9/ready?full=1&x=%41#top"}}}`),
		Entry("HTTP path with characters that need no escape",
			`{target: {service: b, port: 80}, probe: {http: {path: "/café/[v1]/{id}|~"}}}`),
		Entry("HTTP header value with a tab and an empty one",
			`{target: {service: b, port: 80}, probe: {http: {headers: [{name: X-A, value: "a\tb"}, {name: X-B, value: ""}]}}}`),
		Entry("HTTPS host with a port beside a TLS server name",
			`{target: {service: b, port: 80}, probe: {http: {scheme: HTTPS, host: "payments.example.com:8443", tls: {serverName: payments.svc}}}}`),
		Entry("plain HTTP host with a port", `{target: {service: b, port: 80}, probe: {http: {host: "payments:8080"}}}`),
		Entry("gRPC over TLS with the system roots", `{target: {service: b, port: 80}, probe: {grpc: {tls: {}}}}`),
		Entry("a bundle of two CAs with CRLF line ends and blank lines",
			fmt.Sprintf(`{target: {service: b, port: 80}, probe: {http: {scheme: HTTPS, tls: {caBundle: %q, serverName: "10.0.0.1"}}}}`,
				strings.ReplaceAll(envtestCA.PEM+"\n"+testcerts.NewCA("another").PEM, "\n", "\r\n"))),
	)

	It("defines the kubectl get columns, short names and category as designed", func(ctx SpecContext) {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "circuitbreakers.tripswitch.io"}, crd)).To(Succeed())
		Expect(crd.Spec.Names.ShortNames).To(ConsistOf("cb", "breaker"))
		Expect(crd.Spec.Names.Categories).To(ConsistOf("tripswitch"))
		Expect(crd.Spec.Scope).To(Equal(apiextensionsv1.NamespaceScoped))
		Expect(crd.Spec.Versions).To(HaveLen(1))
		Expect(crd.Spec.Versions[0].Subresources.Status).NotTo(BeNil())

		// Ask the API server for the Table that `kubectl get cb` renders.
		ns := newNamespace()
		Expect(k8sClient.Create(ctx, breakerFromYAML(ns, "tabled", `{target: {service: b, port: 80}}`))).To(Succeed())
		table := getTable(ctx, ns)
		type column struct {
			Name     string
			Priority int32
		}
		var got []column
		for _, c := range table.ColumnDefinitions {
			got = append(got, column{c.Name, c.Priority})
		}
		Expect(got).To(Equal([]column{
			{"Name", 0}, {"State", 0}, {"Target", 0}, {"Front", 0}, {"Trips", 0}, {"Last Change", 0}, {"Age", 0},
			{"Mode", 1}, {"Gate", 1}, {"Failures", 1}, {"Window Failures", 1}, {"Endpoints", 1}, {"Published", 1},
			{"Ejected", 1},
		}))
		Expect(table.Rows).To(HaveLen(1))
		Expect(table.Rows[0].Cells[0]).To(Equal("tabled"))
		Expect(table.Rows[0].Cells[2]).To(BeNil(), "TARGET is status.target, which the manager writes, and none runs here")
		Expect(table.Rows[0].Cells[7]).To(BeNil(), "MODE is status.mode, the mode in effect, and no manager runs here")
		cb := &tripswitchv1alpha1.CircuitBreaker{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "tabled"}, cb)).To(Succeed())
		cb.Status.Target = "api.example.test:443"
		Expect(k8sClient.Status().Update(ctx, cb)).To(Succeed())
		Expect(getTable(ctx, ns).Rows[0].Cells[2]).To(Equal("api.example.test:443"), "a Service's name, or an external host:port")
	})

	It("documents every field, so kubectl explain has something to say", func() {
		data, err := os.ReadFile(filepath.Join(repoRoot, "config", "crd", "bases", "tripswitch.io_circuitbreakers.yaml"))
		Expect(err).NotTo(HaveOccurred())
		crd := &apiextensionsv1.CustomResourceDefinition{}
		Expect(yaml.Unmarshal(data, crd)).To(Succeed())
		var undocumented []string
		var walk func(path string, s apiextensionsv1.JSONSchemaProps)
		walk = func(path string, s apiextensionsv1.JSONSchemaProps) {
			if strings.TrimSpace(s.Description) == "" {
				undocumented = append(undocumented, path)
			}
			for name, prop := range s.Properties {
				// apiVersion, kind and metadata are documented by Kubernetes itself.
				if path == "" && (name == "apiVersion" || name == "kind" || name == "metadata") {
					continue
				}
				walk(path+"."+name, prop)
			}
			if s.Items != nil && s.Items.Schema != nil {
				// A list's items share the list's description.
				walk(path+"[]", withDescription(*s.Items.Schema, s.Description))
			}
		}
		walk("", *crd.Spec.Versions[0].Schema.OpenAPIV3Schema)
		sort.Strings(undocumented)
		Expect(undocumented).To(BeEmpty())
	})
})

func withDescription(s apiextensionsv1.JSONSchemaProps, d string) apiextensionsv1.JSONSchemaProps {
	if s.Description == "" {
		s.Description = d
	}
	return s
}

// getTable asks the API server for CircuitBreakers in namespace as a meta.k8s.io Table, the
// representation kubectl get prints.
func getTable(ctx context.Context, namespace string) *metav1.Table {
	restCfg := rest.CopyConfig(cfg)
	restCfg.GroupVersion = &tripswitchv1alpha1.GroupVersion
	restCfg.APIPath = "/apis"
	restCfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(restCfg)
	Expect(err).NotTo(HaveOccurred())
	raw, err := rc.Get().Namespace(namespace).Resource("circuitbreakers").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").
		Param("includeObject", "None").
		DoRaw(ctx)
	Expect(err).NotTo(HaveOccurred())
	table := &metav1.Table{}
	Expect(yaml.Unmarshal(raw, table)).To(Succeed())
	return table
}
