package external

import (
	"strings"
	"testing"
)

func TestHostPatterns(t *testing.T) {
	h, err := ParseHostPatterns(" api.stripe.com, *.openai.com ,API.Example.TEST.,")
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]bool{
		"api.stripe.com":          true,
		"API.Stripe.com.":         true,
		"stripe.com":              false,
		"evil-api.stripe.com":     false,
		"api.stripe.com.evil.com": false,
		"api.openai.com":          true,
		"a.b.openai.com":          true,
		"openai.com":              false,
		"notopenai.com":           false,
		"api.example.test":        true,
	} {
		if got := h.Allows(host); got != want {
			t.Errorf("Allows(%q) = %v, want %v", host, got, want)
		}
	}
	if got := h.String(); got != "api.stripe.com,api.example.test,*.openai.com" {
		t.Errorf("String() = %q", got)
	}
	if none, _ := ParseHostPatterns(""); !none.Empty() || none.Allows("api.stripe.com") {
		t.Error("the empty list must allow nothing")
	}
	for _, bad := range []string{"*", "*.", "localhost", "a..b", "*.*.com", "api.*.com", strings.Repeat("a", 64) + ".com"} {
		if _, err := ParseHostPatterns(bad); err == nil {
			t.Errorf("ParseHostPatterns(%q) accepted it", bad)
		}
	}
}

func TestDNSRewrite(t *testing.T) {
	got := DNSRewrite("api.stripe.com", ClusterName("stripe", "shop", "cluster.local."))
	want := "rewrite stop {\n    name exact api.stripe.com. stripe.shop.svc.cluster.local.\n    answer auto\n}\n"
	if got != want {
		t.Errorf("DNSRewrite:\n%s\nwant:\n%s", got, want)
	}
}
