// Package e2e is tripswitch's data-plane suite: the real kube-proxy (in iptables and nftables
// mode) and the real kube-controller-manager on a one-node cluster in network namespaces,
// with backends and clients in namespaces of their own, as pods are. The rig (package
// test/e2e/rig, documented there) is the harness; smoke_test.go proves it in both proxy
// modes and rig_test.go checks its parts.
//
// It needs root: `make test-e2e` installs Debian's iptables, nftables, conntrack and iproute2
// when missing, builds kube-apiserver, etcd, kube-proxy and kube-controller-manager from
// source, and runs it; `make test` runs it with everything else. Without root (or without
// `ip netns`) it skips with one line, and fails under CI=true.
package e2e
