package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// The second opinion (config/observers) is a kustomize component on top of config/default;
// the chart offers it as observers.enabled. chartgen builds both and takes the difference:
// the objects the component adds go to templates/observers.yaml, and the items it adds to the
// manager's and the agent's lists (args, env, volume mounts, ports, volumes) are rendered in
// their templates under the same condition. Any other change is refused, so that the chart
// never drifts from the component.

const (
	observersKey = "observers"
	// observersCond is the template condition: observers need the agents.
	observersCond = "and $.Values.observers.enabled $.Values.agent.enabled"
)

// containerLists are the container's lists the component may add to; the pod's is volumes.
var containerLists = []string{"args", "env", "volumeMounts", "ports"}

// additions are the items the component adds to one workload, by list name ("volumes" is the
// pod's, the others the container's).
type additions map[string][]any

// observerParts returns the objects that observed (config/default with the component) adds to
// base, and the additions to each component's workload, by component key.
func observerParts(base, observed []object) ([]object, map[string]additions, error) {
	byKey := map[string]object{}
	for _, o := range base {
		byKey[objectKey(o)] = o
	}
	var added []object
	adds := map[string]additions{}
	for _, o := range observed {
		b, ok := byKey[objectKey(o)]
		if !ok {
			added = append(added, o)
			continue
		}
		if kind := str(o, "kind"); kind != "Deployment" && kind != "DaemonSet" {
			if !equalJSON(b, o) {
				return nil, nil, fmt.Errorf("config/observers changes %s, which the chart cannot express", objectKey(o))
			}
			continue
		}
		a, err := workloadAdditions(b, o)
		if err != nil {
			return nil, nil, fmt.Errorf("config/observers changes %s: %w", objectKey(o), err)
		}
		if len(a) > 0 {
			key := str(o, "metadata", "labels", "app.kubernetes.io/component")
			if key == "" {
				key = "manager"
			}
			adds[key] = a
		}
	}
	return added, adds, nil
}

// workloadAdditions returns what observed adds to base's lists, and fails on any other change.
func workloadAdditions(base, observed object) (additions, error) {
	base, observed = deepCopy(base), deepCopy(observed)
	a := additions{}
	take := func(from, to object, list string) error {
		items, _ := to[list].([]any)
		have, _ := from[list].([]any)
		for i, item := range items {
			if i < len(have) {
				if !equalJSON(have[i], item) {
					return fmt.Errorf("it changes %s[%d], where the chart can only add", list, i)
				}
				continue
			}
			a[list] = append(a[list], item)
		}
		if len(items) < len(have) {
			return fmt.Errorf("it removes from %s", list)
		}
		delete(from, list)
		delete(to, list)
		return nil
	}
	basePod, obsPod := podSpec(base), podSpec(observed)
	if err := take(basePod, obsPod, "volumes"); err != nil {
		return nil, err
	}
	baseCtr, obsCtr := onlyContainer(basePod), onlyContainer(obsPod)
	if baseCtr == nil || obsCtr == nil {
		return nil, fmt.Errorf("the chart expects one container")
	}
	for _, list := range containerLists {
		if err := take(baseCtr, obsCtr, list); err != nil {
			return nil, err
		}
	}
	if !equalJSON(base, observed) {
		return nil, fmt.Errorf("it changes more than the lists %s and volumes", strings.Join(containerLists, ", "))
	}
	return a, nil
}

func podSpec(o object) object {
	return o["spec"].(object)["template"].(object)["spec"].(object)
}

func onlyContainer(pod object) object {
	containers, _ := pod["containers"].([]any)
	if len(containers) != 1 {
		return nil
	}
	return containers[0].(object)
}

func objectKey(o object) string {
	return str(o, "kind") + " " + str(o, "metadata", "namespace") + "/" + str(o, "metadata", "name")
}

func equalJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

func deepCopy(o object) object {
	data, err := json.Marshal(o)
	if err != nil {
		panic(err)
	}
	var out object
	if err := json.Unmarshal(data, &out); err != nil {
		panic(err)
	}
	return out
}

// rewriteRefs rewrites namespace/name references in flag values (--observer-service=
// tripswitch-agent/tripswitch-agent): the namespace by its token, as rewrite does for
// namespace fields, the rest as rewrite does.
func rewriteRefs(args []any, names map[string]bool, namespaces map[string]string) []any {
	out := make([]any, len(args))
	for i, a := range args {
		s := a.(string)
		if flag, value, ok := strings.Cut(s, "="); ok {
			if ns, name, ok := strings.Cut(value, "/"); ok && namespaces[ns] != "" {
				out[i] = rewrite(flag, names, namespaces).(string) + "=" + namespaces[ns] + "/" +
					rewrite(name, names, namespaces).(string)
				continue
			}
		}
		out[i] = rewrite(s, names, namespaces)
	}
	return out
}

// conditional renders items under observersCond: as list items at the indentation of the
// list's dashes, or with key, as key: items for a list the base does not have.
func conditional(key string, items []any) func(indent int) string {
	return func(indent int) string {
		data, err := yaml.Marshal(items)
		if err != nil {
			panic(err)
		}
		ls := []string{"{{- if " + observersCond + " }}"}
		if key != "" {
			ls = append(ls, key+":")
		}
		ls = append(ls, strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")...)
		return lines(indent, append(ls, "{{- end }}")...)
	}
}

// applyAdditions puts c's additions into the workload's container and pod as conditional
// template lines; args are the args token's (c.observerArgs).
func (t *templater) applyAdditions(pod, ctr object, c *component) {
	for _, list := range append([]string{"volumes"}, containerLists...) {
		items := c.observe[list]
		if len(items) == 0 || list == "args" {
			continue
		}
		into := ctr
		if list == "volumes" {
			into = pod
		}
		if have, ok := into[list].([]any); ok {
			tok := t.token(conditional("", items))
			t.raw[tok] = true
			into[list] = append(have, tok)
			continue
		}
		into[t.token(conditional(list, items))] = ""
	}
}

// observersValues is values.yaml's section for the second opinion.
const observersValues = `
# The second opinion (spec.trip.confirm; config/observers): the node agents become observers
# that the manager asks before a trip or an ejection it decided on its own probes takes traffic
# away: it goes ahead only if most of them see the failure too. Needs agent.enabled. It adds the
# agents' headless Service, their right to read CircuitBreakers and to create TokenReviews,
# their --manager-service-account and port 8493 (a hostPort), and the manager's
# --observer-service, NODE_NAME and a projected service-account token for the audience
# tripswitch-observer. Breakers then default to confirm: {observers: 2, zones: Prefer}.
observers:
  enabled: false
`

// observersSchema is the values schema of the observers section.
var observersSchema = object{"type": "object", "additionalProperties": false,
	"properties": object{"enabled": object{"type": "boolean"}}}

// renderObservers renders the objects the component adds, under its condition.
func renderObservers(added []object, names map[string]bool, namespaces map[string]string) ([]byte, error) {
	var texts []string
	slices.SortFunc(added, func(a, b object) int { return strings.Compare(objectKey(a), objectKey(b)) })
	for _, o := range added {
		o = rewrite(o, names, namespaces).(object)
		t := &templater{snippets: map[string]func(int) string{}, raw: map[string]bool{}}
		text, err := t.render(o)
		if err != nil {
			return nil, err
		}
		texts = append(texts, text)
	}
	return []byte(header + "{{- if " + strings.ReplaceAll(observersCond, "$.", ".") + " }}\n" +
		strings.Join(texts, "---\n") + "{{- end }}\n"), nil
}
