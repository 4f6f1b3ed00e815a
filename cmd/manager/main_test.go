package main

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	for _, tt := range []struct {
		args    []string
		wantErr string
		check   func(*options) bool
	}{
		{args: nil, check: func(o *options) bool {
			return o.statusSyncPeriod == 10*time.Second && !o.leaderElect && o.secureMetrics &&
				o.leaderElectionID == "tripswitch.tripswitch.io" && o.metricsAddr == "0" && o.probeAddr == ":8081"
		}},
		{args: []string{"--leader-elect", "--leader-election-id=x", "--status-sync-period=30s", "--metrics-bind-address=:8080", "--metrics-secure=false", "--zap-log-level=debug"},
			check: func(o *options) bool {
				return o.leaderElect && o.leaderElectionID == "x" && o.statusSyncPeriod == 30*time.Second &&
					o.metricsAddr == ":8080" && !o.secureMetrics
			}},
		{args: []string{"--status-sync-period=100ms"}, wantErr: "--status-sync-period must be at least 1s"},
		{args: []string{"--leader-election-id="}, wantErr: "--leader-election-id must not be empty"},
		{args: []string{"--no-such-flag"}, wantErr: "flag provided but not defined"},
		{args: []string{"--max-concurrent-probes=0"}, wantErr: "--max-concurrent-probes must be at least 1"},
		{args: []string{"--probe-address-map=192.0.2.0/24"}, wantErr: "--probe-address-map"},
		{args: nil, check: func(o *options) bool {
			return o.guard.MaxTripFraction == 0.5 && o.guard.Window == 30*time.Second && o.guard.MinBreakers == 5 &&
				o.guard.ReleaseTimeout == 5*time.Minute && o.handBackTimeout == time.Minute
		}},
		{args: []string{"--max-trip-fraction=1", "--observer-guard-window=1m", "--observer-guard-min-breakers=10",
			"--observer-guard-release-timeout=0", "--hand-back-timeout=10s"}, check: func(o *options) bool {
			return o.guard.Disabled() && o.guard.Window == time.Minute && o.guard.MinBreakers == 10 &&
				o.guard.ReleaseTimeout == 0 && o.handBackTimeout == 10*time.Second
		}},
		{args: []string{"--max-trip-fraction=0"}, wantErr: "observer guard"},
		{args: []string{"--max-trip-fraction=1.5"}, wantErr: "observer guard"},
		{args: []string{"--observer-guard-window=0s"}, wantErr: "observer guard"},
		{args: []string{"--hand-back-timeout=0s"}, wantErr: "--hand-back-timeout must be at least 1s"},
		{args: nil, check: func(o *options) bool { return o.responderService == "tripswitch-system/tripswitch-responder" }},
		{args: []string{"--responder-service="}, check: func(o *options) bool { return o.responderService == "" }},
		{args: []string{"--responder-service=ops/answer"}, check: func(o *options) bool { return o.responderService == "ops/answer" }},
		{args: []string{"--responder-service=tripswitch-responder"}, wantErr: "--responder-service must be namespace/name"},
		{args: []string{"--responder-service=a/b/c"}, wantErr: "--responder-service must be namespace/name"},
		{args: []string{"--responder-service=Ops/answer"}, wantErr: "--responder-service must be namespace/name"},
		{args: []string{"--responder-service=ops/"}, wantErr: "--responder-service must be namespace/name"},
		{args: nil, check: func(o *options) bool { return o.observerService == "" }},
		{args: []string{"--observer-service=tripswitch-system/tripswitch-observers", "--node-name=node-a"}, check: func(o *options) bool {
			return o.observerService == "tripswitch-system/tripswitch-observers" && o.nodeName == "node-a"
		}},
		{args: []string{"--observer-service=tripswitch-observers", "--node-name=node-a"}, wantErr: "--observer-service"},
		{args: []string{"--observer-service=tripswitch-system/tripswitch-observers", "--node-name="}, wantErr: "--observer-service needs --node-name"},
		{args: nil, check: func(o *options) bool { return o.probeAllowedCIDRs == "0.0.0.0/0,::/0" }},
		{args: []string{"--probe-allowed-cidrs=10.244.0.0/16,fd00:10:244::/48"}, check: func(o *options) bool {
			return o.probeAllowedCIDRs == "10.244.0.0/16,fd00:10:244::/48"
		}},
		{args: []string{"--probe-allowed-cidrs="}, wantErr: "--probe-allowed-cidrs: no prefix given"},
		{args: []string{"--probe-allowed-cidrs=10.244.0.0"}, wantErr: "--probe-allowed-cidrs"},
		{args: nil, check: func(o *options) bool {
			return o.maxConcurrentReconciles == 4 && o.kubeAPIQPS == 50 && o.kubeAPIBurst == 100
		}},
		{args: []string{"--max-concurrent-reconciles=16", "--kube-api-qps=200.5", "--kube-api-burst=400"}, check: func(o *options) bool {
			return o.maxConcurrentReconciles == 16 && o.kubeAPIQPS == 200.5 && o.kubeAPIBurst == 400
		}},
		{args: []string{"--max-concurrent-reconciles=0"}, wantErr: "--max-concurrent-reconciles must be at least 1"},
		{args: []string{"--kube-api-qps=0"}, wantErr: "--kube-api-qps must be above 0"},
		{args: []string{"--kube-api-qps=NaN"}, wantErr: "--kube-api-qps must be above 0"},
		{args: []string{"--kube-api-burst=0"}, wantErr: "--kube-api-burst at least 1"},
		{args: []string{"--probe-address-map=192.0.2.0/24=127.0.0.0/24", "--max-concurrent-probes=10"}, check: func(o *options) bool {
			return o.probeAddressMap == "192.0.2.0/24=127.0.0.0/24" && o.maxConcurrentProbes == 10
		}},
	} {
		fs := flag.NewFlagSet("manager", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		o, err := parseFlags(fs, tt.args)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseFlags(%q) error = %v, want %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseFlags(%q) error = %v", tt.args, err)
			continue
		}
		if !tt.check(o) {
			t.Errorf("parseFlags(%q) = %+v, not what was asked", tt.args, o)
		}
	}
}
