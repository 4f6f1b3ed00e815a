package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseHelp(t *testing.T) {
	help := `Usage of manager:
  -leader-elect
    	Elect a leader.
  -kube-api-qps float
    	Requests a second. (default 50)
  -responder-service string
    	The responder's Service. (default "tripswitch-system/tripswitch-responder")
`
	got, err := parseHelp(help)
	if err != nil {
		t.Fatal(err)
	}
	want := []flagDoc{
		{Name: "leader-elect", Type: "bool", Usage: "Elect a leader."},
		{Name: "kube-api-qps", Type: "float", Usage: "Requests a second.", Default: "50"},
		{Name: "responder-service", Type: "string", Usage: "The responder's Service.", Default: "tripswitch-system/tripswitch-responder"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if _, err := parseHelp("no flags here"); err == nil {
		t.Fatal("a help text without flags was accepted")
	}
}

func TestParseArgs(t *testing.T) {
	words, flags, err := parseArgs([]string{"responder", "--a=1", "--b", "-c=x=y"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(words, []string{"responder"}) || !reflect.DeepEqual(flags, map[string]string{"a": "1", "b": "true", "c": "x=y"}) {
		t.Fatalf("got %v %v", words, flags)
	}
	for _, bad := range [][]string{{"--a=1", "--a=2"}, {"--a=1", "responder"}} {
		if _, _, err := parseArgs(bad); err == nil {
			t.Errorf("%v was accepted", bad)
		}
	}
}

func TestRewrite(t *testing.T) {
	names := map[string]bool{"tripswitch-responder": true, "tripswitch-controller-manager": true, "tripswitch-agent": true}
	namespaces := map[string]string{installNamespace: nsToken, "tripswitch-agent": namespaceToken("agent")}
	in := object{
		"a":      "tripswitch-system/tripswitch-responder",
		"b":      []any{"tripswitch-controller-manager", "tripswitch-responder-role", "tripswitch.tripswitch.io", "tripswitch"},
		"labels": object{"app.kubernetes.io/managed-by": "kustomize"},
		// tripswitch-agent is a namespace in a namespace field, and a name elsewhere.
		"metadata": object{"name": "tripswitch-agent", "namespace": "tripswitch-agent"},
		"subjects": []any{object{"name": "tripswitch-agent", "namespace": "tripswitch-agent"},
			object{"name": "tripswitch-responder", "namespace": "tripswitch-system"}},
	}
	got := rewrite(in, names, namespaces)
	want := object{
		"a":        nsToken + "/" + fullnameToken + "-responder",
		"b":        []any{fullnameToken + "-controller-manager", "tripswitch-responder-role", "tripswitch.tripswitch.io", "tripswitch"},
		"labels":   object{"app.kubernetes.io/managed-by": serviceToken},
		"metadata": object{"name": fullnameToken + "-agent", "namespace": namespaceToken("agent")},
		"subjects": []any{object{"name": fullnameToken + "-agent", "namespace": namespaceToken("agent")},
			object{"name": fullnameToken + "-responder", "namespace": nsToken}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestRenderEscapesBracesAndOpensTokenItems(t *testing.T) {
	tm := &templater{snippets: map[string]func(int) string{}}
	o := object{"description": "{{ $labels.name }}", "items": []any{object{tm.token(func(indent int) string {
		return lines(indent, "x: 1")
	}): "", "name": "y"}}}
	got, err := tm.render(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`description: '{{ "{{" }} $labels.name }}'`, "items:\n-\n  x: 1\n  name: \"y\"\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("want %q in:\n%s", want, got)
		}
	}
}

func TestCoreDNSTemplate(t *testing.T) {
	got, err := coreDNSTemplate([]flagDoc{{Name: "cluster-domain", Type: "string", Default: "cluster.local"}})
	if err != nil {
		t.Fatal(err)
	}
	// external.DNSRewrite's stanza, in a block scalar, with the values in place of the tokens.
	for _, want := range []string{
		`default "cluster.local" | trimSuffix "." }}`,
		"  {{ printf \"%s.override\" .host | quote }}: |\n    rewrite stop {\n" +
			"        name exact {{ .host }}. {{ .service }}.{{ .namespace }}.svc.{{ $domain }}.\n        answer auto\n    }\n{{- end }}",
	} {
		if !strings.Contains(string(got), want) {
			t.Errorf("want %q in:\n%s", want, got)
		}
	}
	if strings.Contains(string(got), "__COREDNS_") {
		t.Errorf("a token is left in:\n%s", got)
	}
	if _, err := coreDNSTemplate([]flagDoc{{Name: "leader-elect", Type: "bool"}}); err == nil {
		t.Error("a manager without --cluster-domain was accepted")
	}
}
