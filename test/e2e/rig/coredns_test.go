package rig

import (
	"strings"
	"testing"
	"time"

	"github.com/tripswitch/tripswitch/internal/external"
)

func TestCorefile(t *testing.T) {
	cfg := CoreDNSConfig{
		Listen:     "10.250.0.1:53",
		Kubeconfig: "/tmp/run/kubeconfig",
		Stanzas: []string{
			external.DNSRewrite("api.example.test", external.ClusterName("payments", "shop", "cluster.local")),
			external.DNSRewrite("db.example.test", external.ClusterName("db", "data", "cluster.local")),
		},
		Upstream: "127.0.0.1:5353",
		Cache:    30 * time.Second,
		Health:   "127.0.0.1:8080",
		Ready:    "127.0.0.1:8181",
	}
	got, err := cfg.Corefile()
	if err != nil {
		t.Fatal(err)
	}
	want := `.:53 {
    bind 10.250.0.1
    errors
    log
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    rewrite stop {
        name exact api.example.test. payments.shop.svc.cluster.local.
        answer auto
    }
    rewrite stop {
        name exact db.example.test. db.data.svc.cluster.local.
        answer auto
    }
    cache 30
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig /tmp/run/kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . 127.0.0.1:5353
}
`
	if got != want {
		t.Errorf("Corefile() =\n%s\nwant\n%s", got, want)
	}

	minimal, err := CoreDNSConfig{Listen: "0.0.0.0:1053", Kubeconfig: "/k"}.Corefile()
	if err != nil {
		t.Fatal(err)
	}
	for _, absent := range []string{"bind", "health", "ready", "rewrite", "cache", "forward"} {
		if strings.Contains(minimal, absent) {
			t.Errorf("minimal Corefile has %s:\n%s", absent, minimal)
		}
	}

	for name, bad := range map[string]CoreDNSConfig{
		"no listen":         {Kubeconfig: "/k"},
		"no kubeconfig":     {Listen: "10.250.0.1:53"},
		"blank in path":     {Listen: "10.250.0.1:53", Kubeconfig: "/a b"},
		"unbalanced stanza": {Listen: "10.250.0.1:53", Kubeconfig: "/k", Stanzas: []string{"rewrite stop {\n"}},
		"upstream not addr": {Listen: "10.250.0.1:53", Kubeconfig: "/k", Upstream: "dns.example"},
	} {
		if out, err := bad.Corefile(); err == nil {
			t.Errorf("%s: Corefile() did not fail:\n%s", name, out)
		}
	}
}

func TestResolvConf(t *testing.T) {
	d := &CoreDNS{Config: CoreDNSConfig{Listen: "10.250.0.1:53"}}
	want := "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.250.0.1\noptions ndots:5\n"
	if got := d.ResolvConf("shop"); got != want {
		t.Errorf("ResolvConf(shop) =\n%s\nwant\n%s", got, want)
	}
}
