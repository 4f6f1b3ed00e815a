package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// kube-proxy's gauges of when it last queued a rules sync (on any Service or EndpointSlice
// change it must apply) and when a sync last succeeded, per IP family. Every proxy mode
// (iptables, nftables, ipvs) sets both.
const (
	proxyQueuedMetric = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
	proxySyncedMetric = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
)

// KubeProxySync tells, from kube-proxy's metrics endpoint on this node, whether kube-proxy has
// applied the slice changes the agent saw by some time. The agent cuts only then: a client
// whose flow is cut redials at once, and a redial before kube-proxy's sync would reach the
// endpoint the front stopped publishing, on a new connection the cut never saw.
type KubeProxySync struct {
	URL    string
	Client *http.Client
}

// SyncedSince says whether, for each family, kube-proxy's last successful sync ended at or
// after since and after the last sync it queued: it has heard of the change (kube-proxy's
// informer sees a slice change when the agent's does) and applied it. A family kube-proxy
// does not report is not waited for.
func (k *KubeProxySync) SyncedSince(ctx context.Context, since time.Time, families []corev1.IPFamily) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.URL, nil)
	if err != nil {
		return false, err
	}
	resp, err := k.Client.Do(req)
	if err != nil {
		return false, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("kube-proxy metrics at %s: %s", k.URL, resp.Status)
	}
	queued, synced, err := readSyncTimes(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return false, fmt.Errorf("reading kube-proxy metrics at %s: %w", k.URL, err)
	}
	for _, family := range families {
		s, ok := synced[family]
		if !ok {
			continue
		}
		if s.Before(since) || s.Before(queued[family]) {
			return false, nil
		}
	}
	return true, nil
}

// readSyncTimes reads the two gauges by IP family from kube-proxy's text exposition. It reads
// lines rather than parsing every metric family: kube-proxy exposes hundreds of series, and
// the agent asks every few milliseconds while it waits.
func readSyncTimes(r io.Reader) (queued, synced map[corev1.IPFamily]time.Time, err error) {
	queued, synced = map[corev1.IPFamily]time.Time{}, map[corev1.IPFamily]time.Time{}
	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	for scanner.Scan() {
		line := scanner.Text()
		var into map[corev1.IPFamily]time.Time
		switch {
		case strings.HasPrefix(line, proxyQueuedMetric+"{"):
			into = queued
		case strings.HasPrefix(line, proxySyncedMetric+"{"):
			into = synced
		default:
			continue
		}
		family := corev1.IPv4Protocol
		if strings.Contains(line, `ip_family="IPv6"`) {
			family = corev1.IPv6Protocol
		}
		fields := strings.Fields(line)
		seconds, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil || seconds <= 0 || math.IsInf(seconds, 0) || math.IsNaN(seconds) {
			continue
		}
		into[family] = time.Unix(0, int64(seconds*1e9))
	}
	return queued, synced, scanner.Err()
}
