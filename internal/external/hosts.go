package external

import (
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// HostPatterns is the manager's --allowed-external-hosts: exact host names, and "*.suffix"
// patterns that allow every name below suffix (at any depth) but not suffix itself. The zero
// value allows nothing, which is the default: an external target makes the manager connect to
// whatever a breaker names, so a cluster admin must say which hosts are fair game.
type HostPatterns struct {
	exact    []string
	suffixes []string // each with its leading dot, such as ".stripe.com"
}

// ParseHostPatterns parses a comma-separated list such as "api.stripe.com,*.openai.com".
func ParseHostPatterns(s string) (HostPatterns, error) {
	var h HostPatterns
	for item := range strings.SplitSeq(s, ",") {
		item = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(item), "."))
		if item == "" {
			continue
		}
		name, wildcard := strings.CutPrefix(item, "*.")
		if _, ok := dns.IsDomainName(name); !ok || strings.ContainsAny(name, "*") || !strings.Contains(name, ".") && !wildcard {
			return HostPatterns{}, fmt.Errorf("%q is neither a host name with a dot nor a *.suffix pattern", item)
		}
		if wildcard {
			h.suffixes = append(h.suffixes, "."+name)
		} else {
			h.exact = append(h.exact, name)
		}
	}
	return h, nil
}

// Allows says whether host may be resolved and probed.
func (h HostPatterns) Allows(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return slices.Contains(h.exact, host) || slices.ContainsFunc(h.suffixes, func(s string) bool { return strings.HasSuffix(host, s) })
}

// Empty says whether no host is allowed.
func (h HostPatterns) Empty() bool { return len(h.exact) == 0 && len(h.suffixes) == 0 }

// String lists the patterns as the flag takes them.
func (h HostPatterns) String() string {
	out := slices.Clone(h.exact)
	for _, s := range h.suffixes {
		out = append(out, "*"+s)
	}
	return strings.Join(out, ",")
}
