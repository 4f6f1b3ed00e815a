// Package argocd holds the Argo CD health check for CircuitBreakers; this test runs it in
// gopher-lua, the interpreter Argo CD embeds, against fixture objects.
package argocd

import (
	"os"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

// toLua converts decoded YAML into Lua values, as Argo CD does for obj.
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, e := range v {
			t.Append(toLua(L, e))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case nil:
		return lua.LNil
	}
	panic("unexpected YAML value")
}

func health(t *testing.T, script, object string) (status, message string) {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(object), &obj); err != nil {
		t.Fatal(err)
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: false})
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		t.Fatalf("health.lua failed: %v", err)
	}
	hs, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("health.lua returned %s, not a table", L.Get(-1).Type())
	}
	return hs.RawGetString("status").String(), hs.RawGetString("message").String()
}

func TestHealth(t *testing.T) {
	script, err := os.ReadFile("health.lua")
	if err != nil {
		t.Fatal(err)
	}
	const ready = `{type: Ready, status: "True", reason: Reconciled, message: ok}`
	for _, tt := range []struct {
		name, object, status, message string
	}{
		{"closed", `{metadata: {generation: 2}, spec: {mode: Auto}, status: {observedGeneration: 2, state: Closed, conditions: [` + ready + `]}}`,
			"Healthy", "Breaker is Closed"},
		{"open", `{metadata: {generation: 2}, status: {observedGeneration: 2, state: Open, reason: ConsecutiveFailures,
			openUntil: "2026-11-22T12:01:00Z", lastProbe: {message: HTTP 503}, conditions: [` + ready + `]}}`,
			"Degraded", "Breaker is Open (ConsecutiveFailures) until 2026-11-22T12:01:00Z; last probe: HTTP 503"},
		{"open without a ready responder says clients get the reject", `{metadata: {generation: 2}, status: {observedGeneration: 2,
			state: Open, reason: ConsecutiveFailures, conditions: [` + ready + `, {type: Responder, status: "False", reason: NoReadyResponder}]}}`,
			"Degraded", "Breaker is Open (ConsecutiveFailures); NoReadyResponder: clients get kube-proxy's reject"},
		{"open with its responder says nothing more", `{metadata: {generation: 2}, status: {observedGeneration: 2,
			state: Open, reason: ConsecutiveFailures, conditions: [` + ready + `, {type: Responder, status: "True", reason: ResponderPublished}]}}`,
			"Degraded", "Breaker is Open (ConsecutiveFailures)"},
		{"open in observe mode says traffic is not gated", `{metadata: {generation: 1}, spec: {mode: Observe},
			status: {observedGeneration: 1, state: Open, gateState: Closed, reason: FailureRate}}`,
			"Degraded", "Breaker is Open (FailureRate) (mode Observe, gate Closed)"},
		{"a trip held by the observer guard", `{metadata: {generation: 2}, status: {observedGeneration: 2, state: Closed,
			conditions: [` + ready + `, {type: ObserverGuard, status: "True", reason: TripHeld, message: "Trip held since 2026-11-22T12:00:00Z"}]}}`,
			"Degraded", "Trip held by the observer guard: Trip held since 2026-11-22T12:00:00Z"},
		{"half-open", `{metadata: {generation: 2}, status: {observedGeneration: 2, state: HalfOpen}}`,
			"Progressing", "Breaker is HalfOpen: trial probes are testing the target"},
		{"not reconciled yet", `{metadata: {generation: 1}}`, "Progressing", "Waiting for tripswitch to reconcile the breaker"},
		{"a new generation not observed yet", `{metadata: {generation: 3}, status: {observedGeneration: 2, state: Closed}}`,
			"Progressing", "Waiting for tripswitch to reconcile the breaker"},
		{"target missing", `{metadata: {generation: 1}, status: {observedGeneration: 1, state: Closed, conditions: [
			{type: Ready, status: "False", reason: TargetNotFound, message: target Service "x" not found},
			{type: Reconciling, status: "True", reason: TargetNotFound, message: target Service "x" not found}]}}`,
			"Progressing", `TargetNotFound: target Service "x" not found`},
		{"stalled", `{metadata: {generation: 1}, status: {observedGeneration: 1, state: Closed, conditions: [
			{type: Stalled, status: "True", reason: FrontServiceClaimed, message: front Service "p" is gated by breaker "q"}]}}`,
			"Degraded", `FrontServiceClaimed: front Service "p" is gated by breaker "q"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, message := health(t, string(script), tt.object)
			if status != tt.status || message != tt.message {
				t.Errorf("got %s %q, want %s %q", status, message, tt.status, tt.message)
			}
		})
	}
}

// TestDocumentedSnippetEmbedsTheScript keeps the resource.customizations example in the
// docs identical to the tested script.
func TestDocumentedSnippetEmbedsTheScript(t *testing.T) {
	script, err := os.ReadFile("health.lua")
	if err != nil {
		t.Fatal(err)
	}
	snippet, err := os.ReadFile("argocd-cm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(snippet, &cm); err != nil {
		t.Fatal(err)
	}
	got := cm.Data["resource.customizations.health.tripswitch.io_CircuitBreaker"]
	if strings.TrimSpace(got) != strings.TrimSpace(string(script)) {
		t.Error("argocd-cm.yaml does not embed health.lua as it is; copy the script into it")
	}
}
