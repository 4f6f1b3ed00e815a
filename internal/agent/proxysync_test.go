package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// kubeProxy serves kube-proxy's two sync gauges, as its metrics endpoint does among many others.
type kubeProxy struct {
	mu             sync.Mutex
	queued, synced map[string]float64
}

func (k *kubeProxy) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	k.mu.Lock()
	defer k.mu.Unlock()
	fmt.Fprintln(w, "# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds")
	fmt.Fprintln(w, `kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"} 0`)
	for family, v := range k.queued {
		fmt.Fprintf(w, "%s{ip_family=%q} %v\n", proxyQueuedMetric, family, v)
	}
	for family, v := range k.synced {
		fmt.Fprintf(w, "%s{ip_family=%q} %v\n", proxySyncedMetric, family, v)
	}
}

func secs(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func TestKubeProxySyncedSince(t *testing.T) {
	change := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	kp := &kubeProxy{}
	srv := httptest.NewServer(kp)
	defer srv.Close()
	k := &KubeProxySync{URL: srv.URL, Client: srv.Client()}
	v4 := []corev1.IPFamily{corev1.IPv4Protocol}
	for _, tt := range []struct {
		name           string
		queued, synced map[string]float64
		families       []corev1.IPFamily
		want           bool
	}{
		{"kube-proxy has not heard of the change: its last sync is older",
			map[string]float64{"IPv4": secs(change.Add(-2 * time.Second))}, map[string]float64{"IPv4": secs(change.Add(-time.Second))}, v4, false},
		{"queued by the change, not synced yet",
			map[string]float64{"IPv4": secs(change.Add(time.Millisecond))}, map[string]float64{"IPv4": secs(change.Add(-time.Second))}, v4, false},
		{"synced after the change it queued",
			map[string]float64{"IPv4": secs(change.Add(time.Millisecond))}, map[string]float64{"IPv4": secs(change.Add(30 * time.Millisecond))}, v4, true},
		{"a later change queued another sync that has not run",
			map[string]float64{"IPv4": secs(change.Add(40 * time.Millisecond))}, map[string]float64{"IPv4": secs(change.Add(30 * time.Millisecond))}, v4, false},
		{"only the families of the cut count",
			map[string]float64{"IPv4": secs(change), "IPv6": secs(change.Add(time.Hour))},
			map[string]float64{"IPv4": secs(change.Add(time.Millisecond)), "IPv6": secs(change)}, v4, true},
		{"a family kube-proxy does not report is not waited for",
			map[string]float64{"IPv4": secs(change)}, map[string]float64{"IPv4": secs(change.Add(time.Millisecond))},
			[]corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kp.mu.Lock()
			kp.queued, kp.synced = tt.queued, tt.synced
			kp.mu.Unlock()
			got, err := k.SyncedSince(context.Background(), change, tt.families)
			if err != nil || got != tt.want {
				t.Errorf("SyncedSince = %v, %v; want %v", got, err, tt.want)
			}
		})
	}

	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	bad := &KubeProxySync{URL: notFound.URL, Client: notFound.Client()}
	if _, err := bad.SyncedSince(context.Background(), change, v4); err == nil {
		t.Error("a metrics endpoint that fails must be an error, so the agent stops waiting")
	}
}
