package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/tripswitch/tripswitch/internal/external"
)

// The CoreDNS stanzas of coreDNSCustom: a ConfigMap that k3s and AKS CoreDNS import, with one
// <host>.override key per external host, each the very stanza the manager writes to the
// breaker's status.external.dnsRewrite. The template's text is external.DNSRewrite's own,
// rendered with tokens for the host, the Service, its namespace and the cluster's domain, so
// the chart's stanzas follow the manager's; test/helm renders them and compares.
const (
	hostToken    = "__COREDNS_HOST__"
	svcToken     = "__COREDNS_SERVICE__"
	svcNSToken   = "__COREDNS_NAMESPACE__"
	domainToken  = "__COREDNS_DOMAIN__"
	coreDNSKey   = "coreDNSCustom"
	crdName      = "circuitbreakers.tripswitch.io"
	clusterFlag  = "cluster-domain"
	labelPattern = `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
)

// coreDNSTemplate is templates/coredns-custom.yaml. The cluster's domain is
// coreDNSCustom.clusterDomain, else the manager's --cluster-domain as values pass it, else
// the flag's default (the manager's -help): the domain the manager's own stanzas name.
func coreDNSTemplate(managerFlags []flagDoc) ([]byte, error) {
	i := slices.IndexFunc(managerFlags, func(f flagDoc) bool { return f.Name == clusterFlag })
	if i < 0 {
		return nil, fmt.Errorf("the manager has no --%s, which coreDNSCustom's stanzas need", clusterFlag)
	}
	def := managerFlags[i].Default
	if def == "" {
		return nil, fmt.Errorf("the manager's --%s has no default", clusterFlag)
	}
	stanza := external.DNSRewrite(hostToken, external.ClusterName(svcToken, svcNSToken, domainToken))
	for _, tok := range []string{hostToken, svcToken, svcNSToken, domainToken} {
		if !strings.Contains(stanza, tok) {
			return nil, fmt.Errorf("external.DNSRewrite's stanza %q leaves out %s", stanza, tok)
		}
	}
	if !strings.HasSuffix(stanza, "\n") || strings.HasSuffix(stanza, "\n\n") || strings.HasPrefix(stanza, " ") {
		// A block scalar (|) keeps exactly one final newline, and takes its indentation from
		// its first line.
		return nil, fmt.Errorf("external.DNSRewrite's stanza %q does not fit a YAML block scalar", stanza)
	}
	body := strings.ReplaceAll(stanza, "{{", `{{ "{{" }}`)
	body = strings.NewReplacer(hostToken, "{{ .host }}", svcToken, "{{ .service }}", svcNSToken, "{{ .namespace }}",
		domainToken, "{{ $domain }}").Replace(body)
	var indented strings.Builder
	for _, l := range strings.SplitAfter(strings.TrimSuffix(body, "\n"), "\n") {
		indented.WriteString("    " + l)
	}
	v := ".Values." + coreDNSKey
	return []byte(header + `{{- if ` + v + `.enabled }}
{{- /* external.ClusterName trims the domain's final dot. */}}
{{- $domain := ` + v + `.clusterDomain | default (dig "` + clusterFlag + `" "" (.Values.manager.flags | default dict) | default "" | toString) | default "` + def + `" | trimSuffix "." }}
# The CoreDNS stanzas of the breakers with external targets, for the CoreDNS of k3s and AKS,
# which imports the keys *.override of kube-system/coredns-custom into its server block: each
# answers a host with its breaker's front Service, as the breaker's status.external.dnsRewrite
# says.
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ ` + v + `.name }}
  namespace: {{ ` + v + `.namespace }}
  labels:
    app.kubernetes.io/name: tripswitch
    app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- if not ` + v + `.hosts }}
data: {}
{{- else }}
data:
{{- $seen := dict }}
{{- range ` + v + `.hosts }}
{{- if hasKey $seen .host }}
{{- fail (printf "` + coreDNSKey + `.hosts lists %s twice: CoreDNS takes one rewrite of a name" .host) }}
{{- end }}
{{- $_ := set $seen .host true }}
  {{ printf "%s.override" .host | quote }}: |
` + indented.String() + `
{{- end }}
{{- end }}
{{- end }}
`), nil
}

// coreDNSValues is coreDNSCustom in values.yaml.
const coreDNSValues = `
# CoreDNS stanzas for breakers with external targets (spec.target.external), for the CoreDNS of
# k3s and AKS, which imports the keys *.override of a ConfigMap called coredns-custom in
# kube-system into its server block. With enabled: true, the chart renders that ConfigMap, one
# <host>.override key per host, each the stanza the manager writes to the breaker's
# status.external.dnsRewrite: the host's name answered with the breaker's front Service
# (gate.endpointSlice.service, by default the breaker's name) in its namespace. The ConfigMap
# lives outside the release's namespace (AKS and k3s read it only in kube-system, by that name),
# and belongs to the release: helm uninstall deletes it. Helm refuses to install over one it did
# not make: where the cluster already has a coredns-custom (AKS clusters may come with an empty
# one), leave this off and add the stanzas to it yourself, from
#   kubectl get cb -A -o jsonpath='{range .items[*]}{.status.external.dnsRewrite}{end}'
# Restart CoreDNS if it does not pick a change up (AKS documents
#   kubectl -n kube-system rollout restart deployment coredns).
# tripswitch never edits the cluster's Corefile itself. Other clusters' CoreDNS imports nothing:
# add the stanzas to its Corefile's server block.
coreDNSCustom:
  enabled: false
  name: coredns-custom
  namespace: kube-system
  # The cluster's DNS domain. Empty: the manager's --cluster-domain (manager.flags), as the
  # manager's own stanzas use.
  clusterDomain: ""
  # Each host, its breaker's front Service and that Service's namespace, as
  #   - {host: api.stripe.com, service: stripe, namespace: shop}
  hosts: []
`

// coreDNSSchema is coreDNSCustom's part of values.schema.json: the host as the CRD takes it
// (spec.target.external.host), the Service as the CRD takes a front Service
// (spec.gate.endpointSlice.service), and the namespace a DNS label.
func coreDNSSchema(objs []object) (object, error) {
	var crd object
	for _, o := range objs {
		if str(o, "kind") == "CustomResourceDefinition" && str(o, "metadata", "name") == crdName {
			crd = o
		}
	}
	if crd == nil {
		return nil, fmt.Errorf("config/default has no CRD %s", crdName)
	}
	host, err := crdField(crd, "spec", "target", "external", "host")
	if err != nil {
		return nil, err
	}
	service, err := crdField(crd, "spec", "gate", "endpointSlice", "service")
	if err != nil {
		return nil, err
	}
	label := object{"type": "string", "minLength": 1, "maxLength": 63, "pattern": labelPattern}
	return object{
		"type":                 "object",
		"additionalProperties": false,
		"properties": object{
			"enabled": object{"type": "boolean"},
			"name": object{"type": "string", "minLength": 1, "maxLength": 253,
				"pattern": `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`},
			"namespace": label,
			"clusterDomain": object{"type": "string", "maxLength": 253,
				"pattern": `^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\.?)?$`},
			"hosts": object{
				"type": "array",
				"items": object{
					"type":                 "object",
					"additionalProperties": false,
					"required":             []string{"host", "service", "namespace"},
					"properties":           object{"host": host, "service": service, "namespace": label},
				},
			},
		},
	}, nil
}

// crdField is the validation of a field of the CRD's first version's schema: its type,
// length bounds and pattern.
func crdField(crd object, path ...string) (object, error) {
	spec, _ := crd["spec"].(object)
	versions, _ := spec["versions"].([]any)
	if len(versions) == 0 {
		return nil, fmt.Errorf("the CRD %s has no versions", crdName)
	}
	version, _ := versions[0].(object)
	schema, _ := version["schema"].(object)
	s, _ := schema["openAPIV3Schema"].(object)
	for _, p := range path {
		props, _ := s["properties"].(object)
		s, _ = props[p].(object)
		if s == nil {
			return nil, fmt.Errorf("the CRD %s has no field %s", crdName, strings.Join(path, "."))
		}
	}
	out := object{}
	for _, k := range []string{"type", "minLength", "maxLength", "pattern"} {
		if v, ok := s[k]; ok {
			out[k] = v
		}
	}
	if out["type"] != "string" || out["pattern"] == nil {
		return nil, fmt.Errorf("the CRD's %s is not a string with a pattern", strings.Join(path, "."))
	}
	return out, nil
}
