package query

import (
	"os"
	"regexp"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestReadmeQueriesCompile compiles every query rule in the README's YAML examples, confined
// as the manager's default does: admission cannot parse PromQL, so a broken example would only
// show as a condition on the reader's cluster.
func TestReadmeQueriesCompile(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	compiled := 0
	for _, block := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(readme), -1) {
		var doc any
		if err := yaml.Unmarshal([]byte(block[1]), &doc); err != nil {
			t.Fatalf("a YAML example does not parse: %v\n%s", err, block[1])
		}
		for _, rule := range queryRules(doc) {
			spec := Spec{Name: str(rule["name"]), Query: str(rule["query"]), Above: str(rule["above"]),
				Below: str(rule["below"]), For: 1}
			if _, err := Compile(spec, "namespace", "shop"); err != nil {
				t.Errorf("README example %q: %v", spec.Name, err)
			}
			compiled++
		}
	}
	if compiled < 5 {
		t.Errorf("compiled %d query rules from the README, want at least 5", compiled)
	}
}

// queryRules finds the items of every "queries" list in a decoded YAML document.
func queryRules(v any) []map[string]any {
	var out []map[string]any
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if items, ok := e.([]any); ok && k == "queries" {
				for _, item := range items {
					if m, ok := item.(map[string]any); ok {
						out = append(out, m)
					}
				}
				continue
			}
			out = append(out, queryRules(e)...)
		}
	case []any:
		for _, e := range v {
			out = append(out, queryRules(e)...)
		}
	}
	return out
}

func str(v any) string {
	s, _ := v.(string)
	return s
}
