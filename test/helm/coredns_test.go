package helm_test

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/action"
	chartloader "helm.sh/helm/v4/pkg/chart/loader"
	"helm.sh/helm/v4/pkg/kube"

	"github.com/tripswitch/tripswitch/internal/external"
)

// coreDNSHosts are two external hosts, as coreDNSCustom.hosts lists them.
var coreDNSHosts = []any{
	map[string]any{"host": "api.stripe.com", "service": "stripe", "namespace": "shop"},
	map[string]any{"host": "api.openai.com", "service": "llm-gateway", "namespace": "ml"},
}

// TestChartCoreDNSCustom: coreDNSCustom renders nothing by default; enabled, it renders one
// ConfigMap kube-system/coredns-custom with a <host>.override key per host, each the very stanza
// the manager writes to status.external.dnsRewrite (external.DNSRewrite), for the cluster
// domain the manager uses.
func TestChartCoreDNSCustom(t *testing.T) {
	objects := func(t *testing.T, values map[string]any) map[string]object {
		t.Helper()
		objs := map[string]object{}
		for _, o := range decode(t, render(t, "tripswitch", installNamespace, values).Manifest) {
			objs[key(o)] = o
		}
		return objs
	}
	defaults := objects(t, nil)
	for k := range defaults {
		if strings.HasPrefix(k, "ConfigMap ") || strings.Contains(k, "kube-system/") {
			t.Errorf("default values render %s", k)
		}
	}

	for _, tc := range []struct {
		name   string
		values map[string]any
		// domain is what the stanzas must name, as the manager's --cluster-domain would.
		domain string
	}{
		{"the manager's default domain", map[string]any{"coreDNSCustom": map[string]any{"enabled": true, "hosts": coreDNSHosts}},
			"cluster.local"},
		{"the manager's --cluster-domain", map[string]any{
			"manager":       map[string]any{"flags": map[string]any{"cluster-domain": "corp.example."}},
			"coreDNSCustom": map[string]any{"enabled": true, "hosts": coreDNSHosts}}, "corp.example."},
		{"coreDNSCustom.clusterDomain", map[string]any{
			"manager":       map[string]any{"flags": map[string]any{"cluster-domain": "corp.example"}},
			"coreDNSCustom": map[string]any{"enabled": true, "hosts": coreDNSHosts, "clusterDomain": "k8s.internal"}}, "k8s.internal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := objects(t, tc.values)
			var added []string
			for k := range objs {
				if defaults[k] == nil {
					added = append(added, k)
				}
			}
			if want := []string{"ConfigMap kube-system/coredns-custom"}; !slices.Equal(added, want) || len(objs) != len(defaults)+1 {
				t.Fatalf("coreDNSCustom adds %v to the %d objects of the defaults (%d in all), want %v", added, len(defaults), len(objs), want)
			}
			want := map[string]any{}
			for _, h := range coreDNSHosts {
				h := h.(map[string]any)
				host, svc, ns := h["host"].(string), h["service"].(string), h["namespace"].(string)
				want[host+".override"] = external.DNSRewrite(host, external.ClusterName(svc, ns, tc.domain))
			}
			got, _ := objs["ConfigMap kube-system/coredns-custom"]["data"].(object)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("the ConfigMap's stanzas are not the manager's (-external.DNSRewrite +chart):\n%s", diff)
			}
		})
	}

	// The manager's stanza as docs show it: the comparison above is not a comparison of two
	// empty strings.
	if s := external.DNSRewrite("api.stripe.com", external.ClusterName("stripe", "shop", "cluster.local")); s !=
		"rewrite stop {\n    name exact api.stripe.com. stripe.shop.svc.cluster.local.\n    answer auto\n}\n" {
		t.Errorf("external.DNSRewrite gives %q", s)
	}
}

// TestChartRefusesBadCoreDNSHosts: values.schema.json takes a host as the CRD takes
// spec.target.external.host, and a front Service as it takes gate.endpointSlice.service;
// the template refuses a host listed twice, which CoreDNS would rewrite twice.
func TestChartRefusesBadCoreDNSHosts(t *testing.T) {
	chart, err := chartloader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(action.NewConfiguration())
	install.DryRunStrategy = action.DryRunClient
	install.ReleaseName, install.Namespace = "tripswitch", installNamespace
	install.WaitStrategy = kube.HookOnlyStrategy
	good := map[string]any{"host": "api.stripe.com", "service": "stripe", "namespace": "shop"}
	with := func(k, v string) map[string]any {
		h := maps.Clone(good)
		if v == "" {
			delete(h, k)
		} else {
			h[k] = v
		}
		return h
	}
	for name, tc := range map[string]struct {
		hosts []any
		want  string
	}{
		"upper case host":      {[]any{with("host", "API.stripe.com")}, "/coreDNSCustom/hosts/0/host"},
		"trailing dot":         {[]any{with("host", "api.stripe.com.")}, "/coreDNSCustom/hosts/0/host"},
		"one label":            {[]any{with("host", "localhost")}, "/coreDNSCustom/hosts/0/host"},
		"a port":               {[]any{good, with("host", "api.stripe.com:443")}, "/coreDNSCustom/hosts/1/host"},
		"a stanza's injection": {[]any{with("host", "a.com. x.y.svc.cluster.local.\n    answer auto\n}\nrewrite stop {\n    name exact b.com")}, "/coreDNSCustom/hosts/0/host"},
		"bad service":          {[]any{with("service", "9stripe")}, "/coreDNSCustom/hosts/0/service"},
		"bad namespace":        {[]any{with("namespace", "Shop")}, "/coreDNSCustom/hosts/0/namespace"},
		"no service":           {[]any{with("service", "")}, "missing property 'service'"},
		"misspelt key":         {[]any{map[string]any{"host": "api.stripe.com", "svc": "stripe", "namespace": "shop"}}, "'svc' not allowed"},
		"a host twice":         {[]any{good, with("service", "stripe-2")}, "lists api.stripe.com twice"},
	} {
		_, err := install.Run(chart, map[string]any{"coreDNSCustom": map[string]any{"enabled": true, "hosts": tc.hosts}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want an error naming %q, got %v", name, tc.want, err)
		}
	}
	// Off, with the default (empty) hosts, and with an empty list enabled: accepted.
	for _, values := range []map[string]any{nil, {"coreDNSCustom": map[string]any{"enabled": true}}} {
		if _, err := install.Run(chart, values); err != nil {
			t.Errorf("%v: %v", values, err)
		}
	}
}
