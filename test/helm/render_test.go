package helm_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/action"
	chartloader "helm.sh/helm/v4/pkg/chart/loader"
	"helm.sh/helm/v4/pkg/kube"
	release "helm.sh/helm/v4/pkg/release/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

var (
	repoRoot = filepath.Join("..", "..")
	chartDir = filepath.Join(repoRoot, "charts", "tripswitch")
)

// tester is what the helpers need of testing.T and of GinkgoT().
type tester interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// object is one decoded manifest.
type object = map[string]any

// render renders the chart as helm template does, CRDs and hooks included, for a release
// called name in namespace, and returns the release.
func render(t tester, name, namespace string, values map[string]any) *release.Release {
	t.Helper()
	chart, err := chartloader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(action.NewConfiguration())
	install.DryRunStrategy = action.DryRunClient
	install.Replace = true
	install.IncludeCRDs = true
	install.ReleaseName, install.Namespace = name, namespace
	install.WaitStrategy = kube.HookOnlyStrategy
	rel, err := install.Run(chart, values)
	if err != nil {
		t.Fatalf("rendering the chart with %v: %v", values, err)
	}
	return rel.(*release.Release)
}

// decode splits a multi-document manifest into objects, leaving out empty documents.
func decode(t tester, manifest string) []object {
	t.Helper()
	var out []object
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	for {
		var o object
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("decoding the manifest: %v", err)
		}
		if len(o) > 0 {
			out = append(out, o)
		}
	}
}

func key(o object) string {
	meta, _ := o["metadata"].(object)
	return fmt.Sprintf("%s %v/%v", o["kind"], meta["namespace"], meta["name"])
}

// kustomizeBuild runs kustomize build config/default with the pinned kustomize.
func kustomizeBuild(t tester) []object {
	t.Helper()
	return kustomizeBuildDir(t, filepath.Join(repoRoot, "config", "default"))
}

// kustomizeBuildDir runs kustomize build dir with the pinned kustomize.
func kustomizeBuildDir(t tester, dir string) []object {
	t.Helper()
	kustomize := os.Getenv("KUSTOMIZE")
	if kustomize == "" {
		matches, _ := filepath.Glob(filepath.Join(repoRoot, "bin", "kustomize-*"))
		if len(matches) == 0 {
			t.Fatal("no kustomize: set KUSTOMIZE, or run make kustomize (make test-chart does)")
		}
		kustomize = matches[len(matches)-1]
	}
	var stderr bytes.Buffer
	cmd := exec.Command(kustomize, "build", dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kustomize build: %v: %s", err, stderr.String())
	}
	return decode(t, string(out))
}

// kustomizeBuildObservers builds config/default with the config/observers component, as the
// README's install with the second opinion does.
func kustomizeBuildObservers(t tester) []object {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	overlay, err := os.MkdirTemp("", "observers-")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = os.RemoveAll(overlay) }()
	// kustomize takes no absolute paths.
	config, err := filepath.Rel(overlay, filepath.Join(root, "config"))
	if err != nil {
		t.Fatal(err)
	}
	kustomization := "resources:\n- " + config + "/default\ncomponents:\n- " + config + "/observers\n"
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kustomization), 0o600); err != nil {
		t.Fatal(err)
	}
	return kustomizeBuildDir(t, overlay)
}

// normalize makes the differences that are meant to be invisible: kustomize manages the one,
// Helm the other, and the chart passes flags sorted by name (and booleans as =true).
func normalize(o object) object {
	if labels, ok := o["metadata"].(object)["labels"].(object); ok && labels["app.kubernetes.io/managed-by"] == "kustomize" {
		labels["app.kubernetes.io/managed-by"] = "Helm"
	}
	spec, _ := o["spec"].(object)
	tmpl, _ := spec["template"].(object)
	pod, _ := tmpl["spec"].(object)
	containers, _ := pod["containers"].([]any)
	for _, c := range containers {
		ctr := c.(object)
		args, _ := ctr["args"].([]any)
		var words, flags []any
		for _, a := range args {
			s := a.(string)
			switch {
			case !strings.HasPrefix(s, "-"):
				words = append(words, s)
			case !strings.Contains(s, "="):
				flags = append(flags, s+"=true")
			default:
				flags = append(flags, s)
			}
		}
		slices.SortFunc(flags, func(a, b any) int { return strings.Compare(a.(string), b.(string)) })
		if args != nil {
			ctr["args"] = append(words, flags...)
		}
	}
	return o
}

// config/default's namespaces: the manager's and the responder's, and the node agent's own,
// which the chart replaces by the release's namespace, or by the one agent.namespace names.
const (
	installNamespace = "tripswitch-system"
	agentNamespace   = "tripswitch-agent"
)

// moveNamespace puts a namespaced object of namespace from, and a binding's subjects there,
// in namespace to.
func moveNamespace(o object, from, to string) object {
	if meta := o["metadata"].(object); meta["namespace"] == from {
		meta["namespace"] = to
	}
	subjects, _ := o["subjects"].([]any)
	for _, s := range subjects {
		if subject := s.(object); subject["namespace"] == from {
			subject["namespace"] = to
		}
	}
	// A flag that names an object there by namespace/name (the manager's --observer-service).
	spec, _ := o["spec"].(object)
	tmpl, _ := spec["template"].(object)
	pod, _ := tmpl["spec"].(object)
	containers, _ := pod["containers"].([]any)
	for _, c := range containers {
		args, _ := c.(object)["args"].([]any)
		for i, a := range args {
			args[i] = strings.Replace(a.(string), "="+from+"/", "="+to+"/", 1)
		}
	}
	return o
}

// TestChartRendersConfigDefault is the drift check's other half: the chart, for a release
// called tripswitch in tripswitch-system, renders the very objects of kustomize build
// config/default (but the Namespaces: helm install --create-namespace makes the release's,
// and the chart makes none), field by field. With default values the node agent goes into the
// release's namespace, where config/default gives it tripswitch-agent: its objects are
// compared as if config had put them in tripswitch-system. With agent.namespace set to
// tripswitch-agent, they are compared as they are. make chart generates the chart; this shows
// the generator right.
func TestChartRendersConfigDefault(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		// agentIn is where the chart puts the agent's objects.
		agentIn string
		// observers: the second opinion is on, and config/default is built with the
		// config/observers component.
		observers bool
	}{
		{"default values", nil, installNamespace, false},
		{"agent.namespace", map[string]any{"agent": map[string]any{"namespace": agentNamespace}}, agentNamespace, false},
		{"observers.enabled", map[string]any{"observers": map[string]any{"enabled": true}}, installNamespace, true},
		{"observers.enabled and agent.namespace", map[string]any{"observers": map[string]any{"enabled": true},
			"agent": map[string]any{"namespace": agentNamespace}}, agentNamespace, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := map[string]object{}
			agentObjects := 0
			build := kustomizeBuild(t)
			if tc.observers {
				build = kustomizeBuildObservers(t)
			}
			for _, o := range build {
				if o["kind"] == "Namespace" {
					continue
				}
				if labels, _ := o["metadata"].(object)["labels"].(object); labels["app.kubernetes.io/component"] == "agent" {
					agentObjects++
				}
				o = moveNamespace(o, agentNamespace, tc.agentIn)
				want[key(o)] = normalize(o)
			}
			rel := render(t, "tripswitch", installNamespace, tc.values)
			got := map[string]object{}
			for _, o := range decode(t, rel.Manifest) {
				got[key(o)] = normalize(o)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("the chart renders something else than config/default (-kustomize +helm):\n%s", diff)
			}
			if len(got) < 19 {
				t.Fatalf("only %d objects compared", len(got))
			}
			// The ServiceAccount, the ClusterRole and its binding, and the DaemonSet; with
			// observers, their Service, ClusterRole and binding too.
			wantAgent := map[bool]int{false: 4, true: 7}[tc.observers]
			if agentObjects != wantAgent || got["DaemonSet "+tc.agentIn+"/tripswitch-agent"] == nil {
				t.Fatalf("the agent's objects were not compared: %d of config/default's, and the chart's DaemonSet in %s is %v",
					agentObjects, tc.agentIn, got["DaemonSet "+tc.agentIn+"/tripswitch-agent"] != nil)
			}
		})
	}
}

// TestConfigDefaultNamespaces: config/default puts the manager and the responder in
// tripswitch-system, which enforces the restricted Pod Security level, and nothing else; the
// node agent, whose pods need the privileged level, in tripswitch-agent, and nothing else.
func TestConfigDefaultNamespaces(t *testing.T) {
	levels := map[string]any{}
	inNamespace := map[string][]string{}
	for _, o := range kustomizeBuild(t) {
		meta := o["metadata"].(object)
		if o["kind"] == "Namespace" {
			labels, _ := meta["labels"].(object)
			levels[meta["name"].(string)] = labels["pod-security.kubernetes.io/enforce"]
			continue
		}
		if ns, ok := meta["namespace"].(string); ok {
			labels, _ := meta["labels"].(object)
			component, _ := labels["app.kubernetes.io/component"].(string)
			if !slices.Contains(inNamespace[ns], component) {
				inNamespace[ns] = append(inNamespace[ns], component)
			}
		}
	}
	if want := map[string]any{installNamespace: "restricted", agentNamespace: "privileged"}; !cmp.Equal(levels, want) {
		t.Errorf("config/default's namespaces and their enforced Pod Security levels are %v, want %v", levels, want)
	}
	for ns := range inNamespace {
		slices.Sort(inNamespace[ns])
	}
	// The manager's ServiceAccount and leader election role carry no component label.
	if want := map[string][]string{installNamespace: {"", "manager", "responder"}, agentNamespace: {"agent"}}; !cmp.Equal(inNamespace, want) {
		t.Errorf("config/default's components by namespace are %v, want %v", inNamespace, want)
	}
}

// TestChartValues renders the values an operator changes and checks each lands where it
// should; a values key that rendered nowhere would pass helm lint unnoticed.
func TestChartValues(t *testing.T) {
	values := map[string]any{
		"fullnameOverride": "ts",
		"image":            map[string]any{"repository": "registry.example/tripswitch", "tag": "v9", "pullPolicy": "Always"},
		"imagePullSecrets": []any{map[string]any{"name": "pull"}},
		"manager": map[string]any{
			"replicas": 3,
			// Numbers from a values file reach templates as float64, which would print 1e+06.
			"flags": map[string]any{"status-sync-period": "5s", "max-trip-fraction": 0.3, "metrics-secure": false,
				"max-concurrent-probes": float64(1000000)},
			"extraArgs":    []any{"--zap-devel"},
			"resources":    map[string]any{"limits": map[string]any{"memory": "1Gi"}},
			"nodeSelector": map[string]any{"pool": "system"},
			"tolerations":  []any{map[string]any{"key": "dedicated", "operator": "Exists"}},
			"affinity": map[string]any{"nodeAffinity": map[string]any{"requiredDuringSchedulingIgnoredDuringExecution": map[string]any{
				"nodeSelectorTerms": []any{map[string]any{"matchExpressions": []any{map[string]any{"key": "a", "operator": "Exists"}}}}}}},
			"podSecurityContext": map[string]any{"runAsUser": 1000},
			"podAnnotations":     map[string]any{"example.com/a": "b"},
		},
		"responder": map[string]any{"enabled": false},
		"agent": map[string]any{
			"namespace": "node-agents",
			"flags": map[string]any{"metrics-bind-address": ":8492", "kube-proxy-metrics-url": "", "reset-guard": false,
				"reset-guard-ttl": "30m"},
			"extraArgs":      []any{"--zap-log-level=debug"},
			"resources":      map[string]any{"limits": map[string]any{"memory": "512Mi"}},
			"nodeSelector":   map[string]any{"kubernetes.io/os": "linux"},
			"tolerations":    []any{map[string]any{"key": "dedicated", "operator": "Exists"}},
			"podAnnotations": map[string]any{"example.com/c": "d"},
		},
		"serviceMonitor":   map[string]any{"enabled": true, "labels": map[string]any{"release": "prometheus"}},
		"prometheusRule":   map[string]any{"enabled": true},
		"grafanaDashboard": map[string]any{"enabled": true, "namespace": "grafana"},
	}
	rel := render(t, "anything", "ops", values)
	objs := map[string]object{}
	for _, o := range decode(t, rel.Manifest) {
		objs[key(o)] = o
	}
	dep := objs["Deployment ops/ts-controller-manager"]
	if dep == nil {
		t.Fatalf("no manager Deployment called ts-controller-manager in %v", slices.Sorted(maps.Keys(objs)))
	}
	spec := dep["spec"].(object)
	pod := spec["template"].(object)["spec"].(object)
	ctr := pod["containers"].([]any)[0].(object)
	checks := map[string]bool{
		"replicas":         fmt.Sprint(spec["replicas"]) == "3",
		"image":            ctr["image"] == "registry.example/tripswitch:v9" && ctr["imagePullPolicy"] == "Always",
		"imagePullSecrets": fmt.Sprint(pod["imagePullSecrets"]) == "[map[name:pull]]",
		// Helm merges maps into the defaults: the requests stay.
		"resources":          fmt.Sprint(ctr["resources"]) == "map[limits:map[memory:1Gi] requests:map[cpu:100m memory:128Mi]]",
		"nodeSelector":       fmt.Sprint(pod["nodeSelector"]) == "map[pool:system]",
		"tolerations":        fmt.Sprint(pod["tolerations"]) == "[map[key:dedicated operator:Exists]]",
		"affinity":           pod["affinity"] != nil,
		"podSecurityContext": fmt.Sprint(pod["securityContext"]) == "map[runAsNonRoot:true runAsUser:1000 seccompProfile:map[type:RuntimeDefault]]",
		"podAnnotations":     spec["template"].(object)["metadata"].(object)["annotations"].(object)["example.com/a"] == "b",
		"topologySpread":     len(pod["topologySpreadConstraints"].([]any)) == 2,
		"serviceAccount":     pod["serviceAccountName"] == "ts-controller-manager",
	}
	args := fmt.Sprint(ctr["args"])
	for _, want := range []string{"--status-sync-period=5s", "--max-trip-fraction=0.3", "--metrics-secure=false",
		"--leader-elect=true", "--responder-service= ", "--zap-devel]", "--max-concurrent-probes=1000000 "} {
		checks["args have "+want] = strings.Contains(args+" ", want)
	}
	for _, k := range []string{"ServiceMonitor ops/ts-controller-manager-metrics-monitor", "PrometheusRule ops/ts-tripswitch-alerts",
		"ConfigMap grafana/ts-dashboard", "Service ops/ts-controller-manager-metrics-service"} {
		checks[k] = objs[k] != nil
	}
	checks["no responder"] = objs["Deployment ops/ts-responder"] == nil && objs["Service ops/ts-responder"] == nil
	if sm := objs["ServiceMonitor ops/ts-controller-manager-metrics-monitor"]; sm != nil {
		checks["ServiceMonitor labels"] = sm["metadata"].(object)["labels"].(object)["release"] == "prometheus"
	}
	if cm := objs["ConfigMap grafana/ts-dashboard"]; cm != nil {
		dashboard, _ := cm["data"].(object)["tripswitch-dashboard.json"].(string)
		raw, err := os.ReadFile(filepath.Join(repoRoot, "config", "grafana", "tripswitch-dashboard.json"))
		checks["dashboard is config/grafana's"] = err == nil && strings.TrimSpace(dashboard) == strings.TrimSpace(string(raw))
	}
	if pr := objs["PrometheusRule ops/ts-tripswitch-alerts"]; pr != nil {
		checks["alert templates kept"] = strings.Contains(fmt.Sprint(pr["spec"]), "{{ $labels.namespace }}")
	}
	ds := objs["DaemonSet node-agents/ts-agent"]
	if ds == nil {
		t.Fatalf("no agent DaemonSet called ts-agent in node-agents in %v", slices.Sorted(maps.Keys(objs)))
	}
	agentTemplate := ds["spec"].(object)["template"].(object)
	agentPod := agentTemplate["spec"].(object)
	agent := agentPod["containers"].([]any)[0].(object)
	agentArgs := fmt.Sprint(agent["args"])
	checks["agent image"] = agent["image"] == "registry.example/tripswitch:v9" && agent["imagePullPolicy"] == "Always"
	checks["agent imagePullSecrets"] = fmt.Sprint(agentPod["imagePullSecrets"]) == "[map[name:pull]]"
	// The subcommand first, then config's listen address for the probes, then the flags by
	// name (an empty URL included: it turns the wait for kube-proxy off), then extraArgs.
	checks["agent args"] = agentArgs == "[agent --health-probe-bind-address=:8491 --kube-proxy-metrics-url= --metrics-bind-address=:8492 "+
		"--reset-guard=false --reset-guard-ttl=30m --zap-log-level=debug]"
	checks["agent resources"] = fmt.Sprint(agent["resources"]) == "map[limits:map[memory:512Mi] requests:map[cpu:10m memory:32Mi]]"
	checks["agent nodeSelector"] = fmt.Sprint(agentPod["nodeSelector"]) == "map[kubernetes.io/os:linux]"
	// A list replaces the default (operator: Exists) rather than adding to it.
	checks["agent tolerations"] = fmt.Sprint(agentPod["tolerations"]) == "[map[key:dedicated operator:Exists]]"
	checks["agent podAnnotations"] = agentTemplate["metadata"].(object)["annotations"].(object)["example.com/c"] == "d"
	checks["agent hostNetwork"] = agentPod["hostNetwork"] == true && agentPod["dnsPolicy"] == "ClusterFirstWithHostNet"
	checks["agent securityContext"] = fmt.Sprint(agent["securityContext"]) == "map[allowPrivilegeEscalation:false "+
		"capabilities:map[add:[NET_ADMIN NET_RAW] drop:[ALL]] readOnlyRootFilesystem:true runAsNonRoot:false runAsUser:0]"
	checks["agent serviceAccount"] = agentPod["serviceAccountName"] == "ts-agent" && objs["ServiceAccount node-agents/ts-agent"] != nil
	if crb := objs["ClusterRoleBinding <nil>/ts-agent-rolebinding"]; crb != nil {
		checks["agent binding subject"] = fmt.Sprint(crb["subjects"]) == "[map[kind:ServiceAccount name:ts-agent namespace:node-agents]]" &&
			fmt.Sprint(crb["roleRef"]) == "map[apiGroup:rbac.authorization.k8s.io kind:ClusterRole name:ts-agent-role]"
	} else {
		checks["agent binding"] = false
	}
	for name, ok := range checks {
		if !ok {
			t.Errorf("%s: not rendered as set", name)
		}
	}
	if t.Failed() {
		t.Logf("manager container: %v", ctr)
		t.Logf("agent container: %v", agent)
	}
}

// TestChartLeavesTheAgentOut: agent.enabled false renders no object of the agent's, its
// RBAC included, and nothing else changes.
func TestChartLeavesTheAgentOut(t *testing.T) {
	with := map[string]object{}
	for _, o := range decode(t, render(t, "tripswitch", installNamespace, nil).Manifest) {
		with[key(o)] = o
	}
	without := map[string]object{}
	// observers.enabled needs the agents: without them it adds nothing, and the manager asks
	// nobody.
	for _, o := range decode(t, render(t, "tripswitch", installNamespace, map[string]any{"agent": map[string]any{"enabled": false},
		"observers": map[string]any{"enabled": true}}).Manifest) {
		without[key(o)] = o
	}
	if manager, _ := json.Marshal(without["Deployment tripswitch-system/tripswitch-controller-manager"]); strings.Contains(string(manager), "observer-service") || strings.Contains(string(manager), "observer-token") {
		t.Errorf("without agents, the manager is told of observers: %s", manager)
	}
	var left []string
	for k, o := range with {
		labels, _ := o["metadata"].(object)["labels"].(object)
		isAgent := labels["app.kubernetes.io/component"] == "agent"
		if isAgent {
			left = append(left, k)
		}
		if _, kept := without[k]; kept == isAgent {
			t.Errorf("%s: agent.enabled=false should leave out exactly the agent's objects", k)
		}
	}
	slices.Sort(left)
	if want := []string{"ClusterRole <nil>/tripswitch-agent-role", "ClusterRoleBinding <nil>/tripswitch-agent-rolebinding",
		"DaemonSet tripswitch-system/tripswitch-agent", "ServiceAccount tripswitch-system/tripswitch-agent"}; !slices.Equal(left, want) {
		t.Errorf("the agent's objects are %v, want %v", left, want)
	}
	if len(without) != len(with)-len(left) {
		t.Errorf("agent.enabled=false renders %d objects, want %d", len(without), len(with)-len(left))
	}
}

// TestChartRefusesUnknownFlags: a misspelt flag fails at render time (values.schema.json),
// not in a crash-looping pod.
func TestChartRefusesUnknownFlags(t *testing.T) {
	chart, err := chartloader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(action.NewConfiguration())
	install.DryRunStrategy = action.DryRunClient
	install.ReleaseName, install.Namespace = "tripswitch", "tripswitch-system"
	install.WaitStrategy = kube.HookOnlyStrategy
	for component, flag := range map[string]string{"manager": "status-sync-perod", "agent": "reset-gaurd"} {
		_, err = install.Run(chart, map[string]any{component: map[string]any{"flags": map[string]any{flag: "5s"}}})
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Fatalf("a misspelt flag of the %s was not refused by name: %v", component, err)
		}
	}
}

// TestChartLints runs helm lint --strict as a library, with the default values and with
// every switch turned, so that go test alone catches what make test-chart's helm lint does
// (a values.yaml the schema refuses, for one).
func TestChartLints(t *testing.T) {
	for _, values := range []map[string]any{nil, {
		"responder": map[string]any{"enabled": false}, "agent": map[string]any{"enabled": false},
		"serviceMonitor": map[string]any{"enabled": true}, "prometheusRule": map[string]any{"enabled": true},
		"grafanaDashboard": map[string]any{"enabled": true}, "uninstall": map[string]any{"releaseFronts": false},
		"coreDNSCustom": map[string]any{"enabled": true, "hosts": coreDNSHosts},
	}, {"agent": map[string]any{"namespace": agentNamespace}}} {
		lint := action.NewLint()
		lint.Strict = true
		result := lint.Run([]string{chartDir}, values)
		if len(result.Errors) > 0 {
			t.Errorf("helm lint with %v: %v", values, result.Errors)
		}
		for _, m := range result.Messages {
			t.Logf("helm lint with %v: %s", values, m)
		}
	}
}
