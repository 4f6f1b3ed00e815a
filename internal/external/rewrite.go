package external

import (
	"fmt"
	"strings"
)

// ClusterName is a front Service's name in the cluster's DNS.
func ClusterName(service, namespace, clusterDomain string) string {
	return fmt.Sprintf("%s.%s.svc.%s", service, namespace, strings.TrimSuffix(clusterDomain, "."))
}

// DNSRewrite is the CoreDNS stanza that answers host with the front Service's ClusterIP. An
// exact name rule gives the records back the name the client asked for ("answer auto" says so
// in the stanza; CoreDNS 1.15 does it for exact rules anyway): glibc drops an answer whose
// owner name is not the question's, though Go's resolver takes it. CoreDNS runs its plugins in
// its own order, so the stanza may go anywhere in the server block; each host needs a rewrite
// of its own (CoreDNS refuses two name rules in one block).
func DNSRewrite(host, clusterName string) string {
	return fmt.Sprintf("rewrite stop {\n    name exact %s. %s.\n    answer auto\n}\n", host, clusterName)
}
