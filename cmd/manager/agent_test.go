package main

import (
	"flag"
	"io"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

func TestParseAgentFlags(t *testing.T) {
	g := NewWithT(t)
	parse := func(args ...string) (agentOptions, error) {
		fs := flag.NewFlagSet("manager agent", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		o, err := parseAgentFlags(fs, args)
		if err != nil {
			return agentOptions{}, err
		}
		o.zap = zap.Options{}
		return *o, nil
	}
	g.Expect(parse()).To(Equal(agentOptions{probeAddr: ":8491", metricsAddr: "127.0.0.1:8492",
		kubeProxyURL: "http://127.0.0.1:10249/metrics", kubeProxyWait: 2 * time.Second, maxChangeAge: 10 * time.Second,
		resetGuard: true, resetGuardTTL: 10 * time.Minute, observerAddr: ":8493"}))
	g.Expect(parse("--health-probe-bind-address=:1", "--metrics-bind-address=0", "--kube-proxy-metrics-url=",
		"--kube-proxy-sync-timeout=1s", "--max-change-age=30s", "--reset-guard=false", "--reset-guard-ttl=1m", "--kubeconfig=/k",
	)).To(Equal(agentOptions{probeAddr: ":1", metricsAddr: "0", kubeProxyWait: time.Second, maxChangeAge: 30 * time.Second,
		resetGuardTTL: time.Minute, kubeconfig: "/k", observerAddr: ":8493"}))
	g.Expect(parse("--manager-service-account=tripswitch-system/tripswitch-manager", "--observer-bind-address=10.0.0.1:9",
		"--node-name=node-b")).To(Equal(agentOptions{probeAddr: ":8491", metricsAddr: "127.0.0.1:8492",
		kubeProxyURL: "http://127.0.0.1:10249/metrics", kubeProxyWait: 2 * time.Second, maxChangeAge: 10 * time.Second,
		resetGuard: true, resetGuardTTL: 10 * time.Minute, observerAddr: "10.0.0.1:9",
		managerSA: "tripswitch-system/tripswitch-manager", nodeName: "node-b"}))
	for arg, want := range map[string]string{
		"--health-probe-bind-address=8491":             "--health-probe-bind-address must be host:port",
		"--metrics-bind-address=8492":                  "--metrics-bind-address must be host:port or 0",
		"--kube-proxy-metrics-url=127.0.0.1:10249":     "--kube-proxy-metrics-url must be an http(s) URL or empty",
		"--kube-proxy-sync-timeout=0s":                 "--kube-proxy-sync-timeout must be positive",
		"--max-change-age=-1s":                         "--max-change-age must be positive",
		"--reset-guard-ttl=0s":                         "--reset-guard-ttl must be positive",
		"--leader-elect":                               "flag provided but not defined",
		"--manager-service-account=tripswitch-manager": "--manager-service-account must be namespace/name",
		"--manager-service-account=a/b/c":              "--manager-service-account must be namespace/name",
		"extra":                                        "takes no arguments",
	} {
		_, err := parse(arg)
		g.Expect(err).To(MatchError(ContainSubstring(want)), arg)
	}
}
