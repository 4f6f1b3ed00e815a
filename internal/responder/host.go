package responder

import "strings"

// DefaultClusterDomain is the DNS domain of Services in most clusters (kubelet's
// --cluster-domain).
const DefaultClusterDomain = "cluster.local"

// Host is the front Service a request addressed, as ParseHost read it from the Host or
// :authority header. Namespace is empty when the client used the Service's name alone, as
// pods in the Service's own namespace may; the Index resolves such a name only when a single
// namespace has a front of that name.
type Host struct {
	Service, Namespace string
}

// ParseHost reads the front Service from a Host or :authority header: <svc>, <svc>.<ns>,
// <svc>.<ns>.svc or <svc>.<ns>.svc.<clusterDomain>, in any case, with or without a port and a
// trailing dot. clusterDomain must be lower case without a trailing dot (NormalizeClusterDomain).
// Anything else (an IP address, another domain, a name that is no Service's) is not a front,
// and ok is false: the responder then answers without naming a breaker.
func ParseHost(host, clusterDomain string) (h Host, ok bool) {
	name, ok := stripPort(host)
	if !ok {
		return Host{}, false
	}
	name = strings.TrimSuffix(name, ".")
	name = lowerASCII(name)
	// An IP address never gets past the labels' checks: IPv4 starts with a digit, which no
	// Service name does, and IPv6 has colons, which stripPort refuses.
	svc, rest, more := strings.Cut(name, ".")
	if !isServiceName(svc) {
		return Host{}, false
	}
	if !more {
		return Host{Service: svc}, true
	}
	ns, rest, more := strings.Cut(rest, ".")
	if !isNamespaceName(ns) {
		return Host{}, false
	}
	if more {
		domain, inCluster := strings.CutPrefix(rest, "svc")
		if !inCluster || (domain != "" && domain != "."+clusterDomain) {
			return Host{}, false
		}
	}
	return Host{Service: svc, Namespace: ns}, true
}

// lowerASCII lower-cases ASCII letters only. strings.ToLower would also fold some other
// letters into ASCII (the Kelvin sign K into k), making a name that is no Service's look like
// one. It returns s itself, without allocating, when there is nothing to change.
func lowerASCII(s string) string {
	for i := range len(s) {
		if s[i] >= 'A' && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// stripPort drops a ":port" from a host. A bracketed or bare IPv6 literal is no Service's
// name, and a port that is not a number makes the header invalid: both are !ok.
func stripPort(host string) (string, bool) {
	name, port, hasPort := strings.Cut(host, ":")
	if !hasPort {
		return host, host != ""
	}
	if name == "" || len(port) == 0 || len(port) > 5 {
		return "", false
	}
	for i := range len(port) {
		if port[i] < '0' || port[i] > '9' {
			return "", false
		}
	}
	return name, true
}

// isServiceName says whether s is a DNS-1035 label, which Service names are: a lower-case
// letter first, then letters, digits and dashes, no dash last, at most 63 characters.
func isServiceName(s string) bool {
	return s != "" && s[0] >= 'a' && s[0] <= 'z' && isNamespaceName(s)
}

// isNamespaceName says whether s is a DNS-1123 label, which namespace names are: lower-case
// letters, digits and dashes, neither first nor last a dash, at most 63 characters.
func isNamespaceName(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// NormalizeClusterDomain lower-cases a cluster domain and drops its leading and trailing
// dots, as ParseHost expects it; ok is false when what remains is not a DNS name of labels.
func NormalizeClusterDomain(domain string) (string, bool) {
	d := strings.Trim(lowerASCII(domain), ".")
	if d == "" || len(d) > 253 {
		return "", false
	}
	for label := range strings.SplitSeq(d, ".") {
		if !isNamespaceName(label) {
			return "", false
		}
	}
	return d, true
}
