// Command coredns is CoreDNS built from source with only the plugins the data-plane suite
// (test/e2e) needs: the resolver of its pod namespaces, answering cluster names from the
// suite's kube-apiserver (kubernetes), external names rewritten to a front Service's cluster
// name (rewrite), and everything else from a test upstream (forward). `make coredns` builds it.
package main

import (
	"fmt"
	"os"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The plugins, each registering its directive.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/rewrite"
)

// directives are the plugins above in CoreDNS's execution order (its plugin.cfg, generated
// into dnsserver.Directives): a plugin sees a query after every plugin before it in this list,
// whatever the order in the Corefile.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"rewrite",
	"cache",
	"hosts",
	"kubernetes",
	"forward",
}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		fmt.Fprintln(os.Stderr, "coredns:", err)
		os.Exit(1)
	}
	coremain.Run()
}
