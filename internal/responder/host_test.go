package responder

import (
	"strings"
	"testing"
)

func TestParseHost(t *testing.T) {
	const cd = "cluster.local"
	full := Host{Service: "payments", Namespace: "shop"}
	for _, tt := range []struct {
		host string
		want Host
		ok   bool
	}{
		{"payments.shop", full, true},
		{"payments.shop.svc", full, true},
		{"payments.shop.svc.cluster.local", full, true},
		{"payments.shop.svc.cluster.local.", full, true},
		{"payments.shop.svc.cluster.local:8080", full, true},
		{"payments.shop.svc.cluster.local.:8080", full, true},
		{"Payments.SHOP.Svc.Cluster.Local", full, true},
		{"payments.shop:80", full, true},
		{"payments.shop.", full, true},
		{"payments", Host{Service: "payments"}, true},
		{"payments:8080", Host{Service: "payments"}, true},
		{"PAYMENTS.", Host{Service: "payments"}, true},
		{"a.0", Host{Service: "a", Namespace: "0"}, true}, // namespaces may start with a digit
		{"p-1.ns-2.svc", Host{Service: "p-1", Namespace: "ns-2"}, true},
		{strings.Repeat("a", 63) + ".shop", Host{Service: strings.Repeat("a", 63), Namespace: "shop"}, true},

		{"", Host{}, false},
		{":80", Host{}, false},
		{".", Host{}, false},
		{"payments.shop..", Host{}, false},
		{"payments..shop", Host{}, false},
		{"payments.shop.svc.cluster.local..", Host{}, false},
		{"payments.shop.svc.example.com", Host{}, false}, // another cluster domain
		{"payments.shop.svc.cluster", Host{}, false},
		{"payments.shop.svc.cluster.local.evil", Host{}, false},
		{"payments.shop.svcx", Host{}, false},
		{"payments.shop.pod", Host{}, false},
		{"payments.shop.svc.cluster.localx", Host{}, false},
		{"10.96.0.10", Host{}, false},
		{"10.96.0.10:8080", Host{}, false},
		{"[fd00::10]:8080", Host{}, false},
		{"[fd00::10]", Host{}, false},
		{"fd00::10", Host{}, false},
		{"::1", Host{}, false},
		{"1payments.shop", Host{}, false}, // a Service name starts with a letter
		{"-payments.shop", Host{}, false},
		{"payments-.shop", Host{}, false},
		{"payments.-shop", Host{}, false},
		{"pay_ments.shop", Host{}, false},
		{"payments.shop:", Host{}, false},
		{"payments.shop:http", Host{}, false},
		{"payments.shop:123456", Host{}, false},
		{"payments.shop:80:80", Host{}, false},
		{"payments shop", Host{}, false},
		{"payments%2eshop", Host{}, false},
		{"user@payments.shop", Host{}, false},
		{"paymentş.shop", Host{}, false},
		{"payment\u212a.shop", Host{}, false}, // the Kelvin sign, which strings.ToLower folds into k
		{strings.Repeat("a", 64) + ".shop", Host{}, false},
	} {
		got, ok := ParseHost(tt.host, cd)
		if ok != tt.ok || got != tt.want {
			t.Errorf("ParseHost(%q) = %+v, %v; want %+v, %v", tt.host, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseHostWithAnotherClusterDomain(t *testing.T) {
	domain, ok := NormalizeClusterDomain("Corp.Example.")
	if !ok || domain != "corp.example" {
		t.Fatalf("NormalizeClusterDomain = %q, %v", domain, ok)
	}
	if got, ok := ParseHost("payments.shop.svc.corp.example", domain); !ok || got != (Host{"payments", "shop"}) {
		t.Errorf("ParseHost with domain %q = %+v, %v", domain, got, ok)
	}
	if _, ok := ParseHost("payments.shop.svc.cluster.local", domain); ok {
		t.Errorf("ParseHost accepted cluster.local with domain %q", domain)
	}
	for _, bad := range []string{"", ".", "a..b", "exa mple", "-a.b", strings.Repeat("a.", 127) + "aa"} {
		if d, ok := NormalizeClusterDomain(bad); ok {
			t.Errorf("NormalizeClusterDomain(%q) = %q, want refused", bad, d)
		}
	}
}
