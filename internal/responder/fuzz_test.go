package responder

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

// referenceParseHost is ParseHost written the obvious way, sharing nothing with it: split on
// the last colon and on every dot, lower-case ASCII letters only, and judge the labels with
// Kubernetes' own validation.
func referenceParseHost(host, clusterDomain string) (Host, bool) {
	name := host
	if i := strings.LastIndexByte(name, ':'); i >= 0 {
		port := name[i+1:]
		name = name[:i]
		if len(port) < 1 || len(port) > 5 || strings.Trim(port, "0123456789") != "" || strings.Contains(name, ":") {
			return Host{}, false
		}
	}
	name = strings.TrimSuffix(name, ".")
	name = strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}, name)
	labels := strings.Split(name, ".")
	switch {
	case len(labels) == 1:
		if len(validation.IsDNS1035Label(labels[0])) > 0 {
			return Host{}, false
		}
		return Host{Service: labels[0]}, true
	case len(labels) == 2:
	case labels[2] == "svc" && (len(labels) == 3 || strings.Join(labels[3:], ".") == clusterDomain):
	default:
		return Host{}, false
	}
	if len(validation.IsDNS1035Label(labels[0])) > 0 || len(validation.IsDNS1123Label(labels[1])) > 0 {
		return Host{}, false
	}
	return Host{Service: labels[0], Namespace: labels[1]}, true
}

// FuzzParseHost checks ParseHost against the reference, and that what it finds can be
// written back as a name that finds the same front.
func FuzzParseHost(f *testing.F) {
	for _, seed := range []string{
		"payments.shop.svc.cluster.local:8080", "payments", "payments.shop.", "10.0.0.1:80", "[::1]:80",
		"a.b.svc.cluster.local.", "A-1.B-2.SVC", "x.y.svc.cluster.localx", "p.q:0", "",
	} {
		f.Add(seed)
	}
	const cd = "cluster.local"
	f.Fuzz(func(t *testing.T, host string) {
		got, ok := ParseHost(host, cd)
		want, wantOK := referenceParseHost(host, cd)
		if got != want || ok != wantOK {
			t.Fatalf("ParseHost(%q) = %+v, %v; the reference says %+v, %v", host, got, ok, want, wantOK)
		}
		if !ok {
			return
		}
		back := got.Service
		if got.Namespace != "" {
			back += "." + got.Namespace + ".svc." + cd
		}
		if again, ok := ParseHost(strings.ToUpper(back)+":443", cd); !ok || again != got {
			t.Fatalf("ParseHost(%q) = %+v, but its name %q gives %+v, %v", host, got, back, again, ok)
		}
	})
}
