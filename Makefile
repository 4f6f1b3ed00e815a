# Image URL used by docker-build, deploy and build-installer.
IMG ?= ghcr.io/tripswitch/tripswitch:dev
CONTAINER_TOOL ?= docker
KUBECTL ?= kubectl

# Recipes run in bash with errexit and pipefail, so a failed command in a pipe fails the target.
SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

LOCALBIN ?= $(CURDIR)/bin
$(LOCALBIN):
	mkdir -p $(LOCALBIN)

## Tool versions (pinned; installed into ./bin by the targets below)
CONTROLLER_TOOLS_VERSION ?= v0.23.0
KUSTOMIZE_VERSION ?= v5.8.2
PROMTOOL_VERSION ?= v0.316.0
# The Prometheus server of the query stories: the same module version as promtool.
PROMETHEUS_VERSION ?= $(PROMTOOL_VERSION)
CRD_REF_DOCS_VERSION ?= v0.3.0
GOLANGCI_LINT_VERSION ?= v2.15.0
HELM_VERSION ?= v4.3.1

CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
KUSTOMIZE ?= $(LOCALBIN)/kustomize-$(KUSTOMIZE_VERSION)
PROMTOOL ?= $(LOCALBIN)/promtool-$(PROMTOOL_VERSION)
PROMETHEUS ?= $(LOCALBIN)/prometheus-$(PROMETHEUS_VERSION)
CRD_REF_DOCS ?= $(LOCALBIN)/crd-ref-docs-$(CRD_REF_DOCS_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
HELM ?= $(LOCALBIN)/helm-$(HELM_VERSION)

# envtest needs kube-apiserver and etcd at the Kubernetes version that matches k8s.io/api
# (v0.37.2 -> 1.37.2). They cannot be downloaded here, so hack/envtest builds them from source.
ENVTEST_K8S_VERSION ?= $(shell go list -m -f '{{.Version}}' k8s.io/api | sed -e 's/^v0\./1./')
ENVTEST_ASSETS_DIR ?= $(LOCALBIN)/k8s/$(ENVTEST_K8S_VERSION)
# A KUBEBUILDER_ASSETS set by the user wins, and then nothing is built.
ifdef KUBEBUILDER_ASSETS
ENVTEST_DEP :=
else
KUBEBUILDER_ASSETS := $(ENVTEST_ASSETS_DIR)
ENVTEST_DEP := envtest
endif

GO_TEST_FLAGS ?= -timeout 45m
# TEST_LOGS keeps the output of make test's go test runs, for the failure digest at its end.
TEST_LOGS ?= $(LOCALBIN)/test-logs

# The data-plane suite (test/e2e) runs the real kube-proxy and kube-controller-manager, built
# from source like kube-apiserver, with pods in network namespaces: it needs root. As root,
# `make test` installs its Debian packages and builds its binaries; otherwise the suite skips
# (and fails under CI=true). E2E_ASSETS is where kube-proxy and kube-controller-manager are.
E2E_ASSETS ?= $(ENVTEST_ASSETS_DIR)
# Debian package:command pairs that the data-plane suite needs.
E2E_PACKAGES := iptables:iptables nftables:nft conntrack:conntrack iproute2:ip curl:curl
ifeq ($(shell id -u),0)
E2E_DEP := e2e-packages e2e-binaries
# Beside the data-plane suite, the other go test runs compile at the lowest priority and run
# their test binaries at the normal one (-exec raises them back, which needs root): a run here
# whose cold compiles overlapped the data-plane stories, as CI's did, saw a trip take 1.06 s
# instead of 0.25 s, and failed them.
GO_TEST_NICE := nice -n 19
GO_TEST_EXEC := -exec 'nice -n -19'
else
E2E_DEP :=
endif

.PHONY: all
all: build

##@ Demo

.PHONY: demo
demo: build $(ENVTEST_DEP) ## Watch a breaker trip and recover: as root, a pod's calls through the real kube-proxy; otherwise the breaker's states on a local control plane (DEMO_KEEP=1: that one, left running).
	@if [ "$(DEMO_KEEP)" != 1 ] && [ "$$(id -u)" = 0 ] && ip netns add tsdemo-check-$$$$ 2>/dev/null && ip netns del tsdemo-check-$$$$; then \
		$(MAKE) --no-print-directory demo-dataplane; \
	else \
		echo "make demo: the data-plane demo (a pod's calls through the real kube-proxy) needs root and network namespaces; showing the breaker's states on a local control plane instead."; \
		KUBEBUILDER_ASSETS="$(KUBEBUILDER_ASSETS)" go run ./hack/demo -manager bin/manager; \
	fi

.PHONY: demo-dataplane
demo-dataplane: $(ENVTEST_DEP) e2e-packages e2e-binaries ## The data-plane demo alone (root): the suite's demo story, printed as it goes.
	go test -c -o $(LOCALBIN)/e2e.test ./test/e2e
	cd test/e2e && KUBEBUILDER_ASSETS="$(KUBEBUILDER_ASSETS)" E2E_ASSETS="$(E2E_ASSETS)" E2E_DEMO=1 $(LOCALBIN)/e2e.test \
		-ginkgo.label-filter=demo -ginkgo.succinct -ginkgo.no-color

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate the CRD and RBAC manifests from the Go markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods for the API types.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: api-docs
api-docs: crd-ref-docs ## Generate the API reference, docs/api.md, from the Go types.
	$(CRD_REF_DOCS) --source-path=./api --config=hack/crd-ref-docs/config.yaml --renderer=markdown --output-path=docs/api.md

.PHONY: chart
chart: manifests kustomize ## Generate the Helm chart's CRDs, templates and values (charts/tripswitch) from config/ and the binary's flags.
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && go build -o "$$tmp/manager" ./cmd/manager && \
		go run ./hack/chartgen -kustomize $(KUSTOMIZE) -manager "$$tmp/manager" -chart charts/tripswitch

.PHONY: fmt
fmt: ## Run go fmt.
	go fmt ./...

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: lint
lint: golangci-lint ## Run golangci-lint (govet, staticcheck, errcheck, gosec, ineffassign, unused; see .golangci.yml).
	$(GOLANGCI_LINT) run ./...

.PHONY: tidy
tidy: ## Run go mod tidy on the project and on the envtest and coredns tools modules.
	go mod tidy
	cd hack/envtest && go mod tidy
	cd hack/coredns && go mod tidy
	cd test/helm && go mod tidy

.PHONY: test
test: manifests generate $(ENVTEST_DEP) $(E2E_DEP) ## Run every test: envtest suites on a source-built kube-apiserver, the data-plane suite (as root), promtool on the alerts, the query stories on a real Prometheus, and the Helm chart.
ifeq ($(E2E_DEP),)
	@echo "test/e2e: skipped: the data-plane suite needs root for network namespaces and iptables (as root: make test-e2e)"
	$(MAKE) --no-print-directory fmt vet build-installer promtool prometheus helm
	mkdir -p $(TEST_LOGS) && rm -f $(TEST_LOGS)/*.log
	KUBEBUILDER_ASSETS="$(KUBEBUILDER_ASSETS)" E2E_ASSETS="$(E2E_ASSETS)" PROMTOOL="$(PROMTOOL)" PROMETHEUS="$(PROMETHEUS)" go test $(GO_TEST_FLAGS) ./... -coverprofile cover.out 2>&1 | tee $(TEST_LOGS)/packages.log || \
		{ hack/test-failures.sh $(TEST_LOGS)/packages.log; exit 1; }
	$(MAKE) --no-print-directory test-chart
else
	@# The data-plane suite is the longest package and spends most of its time waiting (leases,
	@# open durations, two minutes of failing writes), so it starts as soon as the Kubernetes
	@# binaries and the generated code are there, in two runs. First its stories that time the
	@# data plane (label timed, and the rig's own pooled clients), alone: on 2 cores, anything
	@# beside them, even builds at nice 19, slowed everything a hundredfold for seconds and
	@# failed them, three runs in four. Then the rest of it, with CoreDNS (which its
	@# external-target stories wait for), fmt, the installer and the builds of promtool and
	@# Prometheus beside it at the lowest priority; then the other packages (which need those),
	@# compiling at the lowest priority too (GO_TEST_NICE), with vet, the helm build and then
	@# the chart's tests beside them.
	@# Each go test's output is kept in $(TEST_LOGS) too, so that a failed run ends with a digest
	@# of its failure messages (hack/test-failures.sh): CI logs are read from the end. Before it,
	@# the data-plane stories that passed only on their retry, with what their failed attempt
	@# measured (go test prints nothing of a package that passed).
	mkdir -p $(TEST_LOGS) && rm -f $(TEST_LOGS)/*.log $(TEST_LOGS)/*.flaky
	rc=0; \
	KUBEBUILDER_ASSETS="$(KUBEBUILDER_ASSETS)" E2E_ASSETS="$(E2E_ASSETS)" E2E_COREDNS="$(COREDNS)" E2E_FLAKY_REPORT=$(TEST_LOGS)/e2e-timed.flaky \
		go test $(GO_TEST_FLAGS) -count=1 ./test/e2e -args -ginkgo.label-filter='timed || rig' 2>&1 | tee $(TEST_LOGS)/e2e-timed.log || rc=1; \
	( KUBEBUILDER_ASSETS="$(KUBEBUILDER_ASSETS)" E2E_ASSETS="$(E2E_ASSETS)" E2E_COREDNS="$(COREDNS)" E2E_FLAKY_REPORT=$(TEST_LOGS)/e2e.flaky \
		go test $(GO_TEST_FLAGS) -count=1 ./test/e2e -args -ginkgo.label-filter='!(timed || rig)' 2>&1 | tee $(TEST_LOGS)/e2e.log ) & e2e=$$!; \
	if nice -n 19 $(MAKE) --no-print-directory coredns fmt build-installer promtool prometheus; then \
		{ nice -n 19 $(MAKE) --no-print-directory vet helm && \
			$(MAKE) --no-print-directory test-chart 2>&1 | tee $(TEST_LOGS)/chart.log; } & side=$$!; \
		KUBEBUILDER_ASSETS="$(KUBEBUILDER_ASSETS)" PROMTOOL="$(PROMTOOL)" PROMETHEUS="$(PROMETHEUS)" $(GO_TEST_NICE) go test $(GO_TEST_FLAGS) \
			$(GO_TEST_EXEC) $$(go list ./... | grep -v '/test/e2e$$') -coverprofile cover.out 2>&1 | tee $(TEST_LOGS)/packages.log || rc=1; \
		wait $$side || rc=1; \
	else rc=1; fi; \
	wait $$e2e || rc=1; \
	for f in $(TEST_LOGS)/*.flaky; do if [ -s "$$f" ]; then echo "==== $$f: passed only on a retry ===="; cat "$$f"; fi; done; \
	if [ $$rc -ne 0 ]; then hack/test-failures.sh $(TEST_LOGS)/*.log; fi; \
	exit $$rc
endif

.PHONY: test-chart
test-chart: helm kustomize $(ENVTEST_DEP) ## Test the Helm chart: helm lint and template, and the Helm SDK suite (test/helm): same objects as config/default, a dry run, install, upgrade, uninstall and reinstall on envtest.
	$(HELM) lint --strict charts/tripswitch
	$(HELM) lint --strict charts/tripswitch --set responder.enabled=false,agent.enabled=false,serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true,uninstall.releaseFronts=false
	$(HELM) lint --strict charts/tripswitch --set observers.enabled=true,agent.namespace=tripswitch-agent
	$(HELM) lint --strict charts/tripswitch --set 'coreDNSCustom.enabled=true,coreDNSCustom.hosts[0].host=api.stripe.com,coreDNSCustom.hosts[0].service=stripe,coreDNSCustom.hosts[0].namespace=shop'
	$(HELM) template tripswitch charts/tripswitch -n tripswitch-system >/dev/null
	cd test/helm && KUBEBUILDER_ASSETS="$(KUBEBUILDER_ASSETS)" KUSTOMIZE="$(KUSTOMIZE)" $(GO_TEST_NICE) go test $(GO_TEST_FLAGS) $(GO_TEST_EXEC) -count=1 ./...

.PHONY: test-e2e
test-e2e: manifests generate fmt vet $(ENVTEST_DEP) $(E2E_DEP) coredns ## Run the data-plane suite only: real kube-proxy (iptables and nftables), kube-controller-manager and CoreDNS, pods in network namespaces (root).
	KUBEBUILDER_ASSETS="$(KUBEBUILDER_ASSETS)" E2E_ASSETS="$(E2E_ASSETS)" E2E_COREDNS="$(COREDNS)" go test $(GO_TEST_FLAGS) -count=1 -v ./test/e2e/...

.PHONY: verify
verify: controller-gen crd-ref-docs golangci-lint kustomize ## Fail when generated code, manifests, API docs, formatting or go.mod are out of date, or golangci-lint finds anything (run on a committed tree).
	hack/verify.sh

.PHONY: envtest
envtest: $(ENVTEST_ASSETS_DIR)/kube-apiserver $(ENVTEST_ASSETS_DIR)/etcd ## Build kube-apiserver and etcd for envtest from source (first time ~10 min; a no-op after).

$(ENVTEST_ASSETS_DIR)/kube-apiserver $(ENVTEST_ASSETS_DIR)/etcd: | $(LOCALBIN)
	@grep -q "k8s.io/kubernetes v$(ENVTEST_K8S_VERSION)" hack/envtest/go.mod || \
		{ echo "hack/envtest/go.mod must require k8s.io/kubernetes v$(ENVTEST_K8S_VERSION) to match k8s.io/api"; exit 1; }
	@echo "Building kube-apiserver and etcd $(ENVTEST_K8S_VERSION) from source into $(ENVTEST_ASSETS_DIR); the first build takes about 10 minutes."
	@# As root the data-plane suite needs kube-proxy and kube-controller-manager too: one go
	@# build of all four overlaps their compiles and links, which two builds in a row do not.
	rm -rf $(ENVTEST_ASSETS_DIR).tmp && mkdir -p $(ENVTEST_ASSETS_DIR).tmp
	extra=; if [ -n "$(E2E_DEP)" ]; then for b in kube-proxy kube-controller-manager; do \
		[ -x "$(E2E_ASSETS)/$$b" ] || extra="$$extra ./$$b"; done; fi; \
	cd hack/envtest && go build -buildvcs=false -trimpath -ldflags='-s -w' -o $(ENVTEST_ASSETS_DIR).tmp/ ./kube-apiserver ./etcd $$extra
	mkdir -p $(ENVTEST_ASSETS_DIR) $(E2E_ASSETS)
	for b in kube-proxy kube-controller-manager; do \
		[ ! -e $(ENVTEST_ASSETS_DIR).tmp/$$b ] || mv $(ENVTEST_ASSETS_DIR).tmp/$$b $(E2E_ASSETS)/; done
	mv $(ENVTEST_ASSETS_DIR).tmp/* $(ENVTEST_ASSETS_DIR)/ && rmdir $(ENVTEST_ASSETS_DIR).tmp

.PHONY: e2e-binaries
e2e-binaries: $(E2E_ASSETS)/kube-proxy $(E2E_ASSETS)/kube-controller-manager ## Build kube-proxy and kube-controller-manager for the data-plane suite from source (~1.5 min after envtest; a no-op after).

$(E2E_ASSETS)/kube-proxy $(E2E_ASSETS)/kube-controller-manager: | $(LOCALBIN)
	@grep -q "k8s.io/kubernetes v$(ENVTEST_K8S_VERSION)" hack/envtest/go.mod || \
		{ echo "hack/envtest/go.mod must require k8s.io/kubernetes v$(ENVTEST_K8S_VERSION) to match k8s.io/api"; exit 1; }
	@echo "Building kube-proxy and kube-controller-manager $(ENVTEST_K8S_VERSION) from source into $(E2E_ASSETS)."
	rm -rf $(E2E_ASSETS).e2e.tmp && mkdir -p $(E2E_ASSETS).e2e.tmp
	cd hack/envtest && go build -buildvcs=false -trimpath -ldflags='-s -w' -o $(E2E_ASSETS).e2e.tmp/ ./kube-proxy ./kube-controller-manager
	mkdir -p $(E2E_ASSETS) && mv $(E2E_ASSETS).e2e.tmp/* $(E2E_ASSETS)/ && rmdir $(E2E_ASSETS).e2e.tmp

# CoreDNS for the data-plane suite's pod namespaces (kubernetes, rewrite and forward plugins),
# built from source by hack/coredns with only the plugins the suite needs: it cannot be
# downloaded here. COREDNS_VERSION must be the version hack/coredns/go.mod requires.
COREDNS_VERSION ?= 1.15.0
COREDNS ?= $(LOCALBIN)/coredns-v$(COREDNS_VERSION)

.PHONY: coredns
coredns: $(COREDNS) ## Build CoreDNS (hack/coredns: only the plugins the data-plane suite needs) from source into ./bin (about 1.5 min the first time; a no-op after).

$(COREDNS): | $(LOCALBIN)
	@grep -q "github.com/coredns/coredns v$(COREDNS_VERSION)$$" hack/coredns/go.mod || \
		{ echo "hack/coredns/go.mod must require github.com/coredns/coredns v$(COREDNS_VERSION) (COREDNS_VERSION)"; exit 1; }
	@echo "Building CoreDNS $(COREDNS_VERSION) from source into $(COREDNS)."
	cd hack/coredns && go build -buildvcs=false -ldflags='-s -w' -o "$(COREDNS).tmp" .
	mv -f "$(COREDNS).tmp" "$(COREDNS)"

.PHONY: e2e-packages
e2e-packages: ## Install the data-plane suite's Debian packages (iptables nftables conntrack iproute2 curl) when their commands are missing; needs root.
	@missing=$$(for pc in $(E2E_PACKAGES); do command -v $${pc#*:} >/dev/null || echo $${pc%%:*}; done | xargs); \
	if [ -n "$$missing" ]; then \
		command -v apt-get >/dev/null || { echo "Install $$missing (the data-plane suite needs them)"; exit 1; }; \
		echo "Installing $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing || \
			{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; }; \
	fi

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the manager binary into bin/manager.
	go build -o bin/manager ./cmd/manager

.PHONY: run
run: manifests generate fmt vet ## Run the manager against the cluster in the current kubeconfig.
	go run ./cmd/manager

.PHONY: docker-build
docker-build: ## Build the manager image (needs a container engine).
	$(CONTAINER_TOOL) build -t $(IMG) .

.PHONY: build-installer
build-installer: manifests generate kustomize ## Write dist/install.yaml: CRDs, RBAC, the manager, the responder and the node agent for IMG.
	mkdir -p dist
	$(call kustomize-build-with-image) > dist/install.yaml

# The kubectl plugin's release archives: one per platform, named as the krew manifest template
# (plugins/tripswitch.yaml) names them; cmd/kubectl-tripswitch's test keeps the two in step.
PLUGIN_PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64
PLUGIN_VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: plugin
plugin: fmt vet ## Build the kubectl plugin into bin/kubectl-tripswitch: on the PATH, kubectl runs it as `kubectl tripswitch`.
	go build -o bin/kubectl-tripswitch ./cmd/kubectl-tripswitch

.PHONY: plugin-dist
plugin-dist: ## Build the plugin's release archives and their sha256 sums into dist/plugin, for the krew manifest (PLUGIN_VERSION=v0.1.0).
	rm -rf dist/plugin && mkdir -p dist/plugin
	for platform in $(PLUGIN_PLATFORMS); do \
		os=$${platform%/*}; arch=$${platform#*/}; exe=kubectl-tripswitch; \
		if [ $$os = windows ]; then exe=$$exe.exe; fi; \
		dir=dist/plugin/kubectl-tripswitch_$(PLUGIN_VERSION)_$${os}_$${arch}; mkdir -p $$dir; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch go build -trimpath -ldflags "-s -w" -o $$dir/$$exe ./cmd/kubectl-tripswitch; \
		tar -C $$dir -czf $$dir.tar.gz $$exe; rm -rf $$dir; \
	done
	cd dist/plugin && sha256sum *.tar.gz > SHA256SUMS && cat SHA256SUMS

##@ Deployment

ifndef ignore-not-found
  ignore-not-found = false
endif

# How long delete-breakers waits for the manager to hand every front Service back.
UNINSTALL_TIMEOUT ?= 5m

.PHONY: install
install: manifests ## Install the CRDs into the cluster in the current kubeconfig.
	$(KUBECTL) apply --server-side -f config/crd/bases

# Breakers go first, while the manager still runs: their finalizers hand every front Service
# back to Kubernetes. Deleting the CRD or the manager first would leave the fronts with
# whatever they last published, Open ones rejecting every connection for good.
.PHONY: delete-breakers
delete-breakers: ## Delete every CircuitBreaker and wait until the manager has handed every front Service back.
	@if $(KUBECTL) get crd circuitbreakers.tripswitch.io >/dev/null 2>&1; then \
		$(KUBECTL) delete circuitbreakers.tripswitch.io --all --all-namespaces --wait=true --timeout=$(UNINSTALL_TIMEOUT) || { \
			echo "CircuitBreakers are still terminating: is the manager running? Nothing else was removed."; exit 1; }; \
	fi

.PHONY: uninstall
uninstall: manifests delete-breakers ## Remove every CircuitBreaker (handing fronts back), then the CRDs. ignore-not-found=true ignores missing ones.
	$(KUBECTL) delete --ignore-not-found=$(ignore-not-found) -f config/crd/bases

.PHONY: deploy
deploy: manifests kustomize ## Deploy the manager with image IMG to the cluster in the current kubeconfig.
	$(call kustomize-build-with-image) | $(KUBECTL) apply --server-side -f -

.PHONY: undeploy
undeploy: kustomize delete-breakers ## Remove every CircuitBreaker (handing fronts back), then the manager and the CRDs.
	$(KUSTOMIZE) build config/default | $(KUBECTL) delete --ignore-not-found=$(ignore-not-found) -f -

##@ Tools

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Install controller-gen into ./bin.
$(CONTROLLER_GEN): | $(LOCALBIN)
	$(call go-install-tool,$(CONTROLLER_GEN),sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_TOOLS_VERSION))

.PHONY: kustomize
kustomize: $(KUSTOMIZE) ## Install kustomize into ./bin.
$(KUSTOMIZE): | $(LOCALBIN)
	$(call go-install-tool,$(KUSTOMIZE),sigs.k8s.io/kustomize/kustomize/v5,$(KUSTOMIZE_VERSION))

.PHONY: crd-ref-docs
crd-ref-docs: $(CRD_REF_DOCS) ## Install crd-ref-docs into ./bin.
$(CRD_REF_DOCS): | $(LOCALBIN)
	$(call go-install-tool,$(CRD_REF_DOCS),github.com/elastic/crd-ref-docs,$(CRD_REF_DOCS_VERSION))

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT) ## Install golangci-lint into ./bin (about 3 minutes the first time).
$(GOLANGCI_LINT): | $(LOCALBIN)
	$(call go-install-tool,$(GOLANGCI_LINT),github.com/golangci/golangci-lint/v2/cmd/golangci-lint,$(GOLANGCI_LINT_VERSION))

.PHONY: helm
helm: $(HELM) ## Install helm into ./bin.
$(HELM): | $(LOCALBIN)
	$(call go-install-tool,$(HELM),helm.sh/helm/v4/cmd/helm,$(HELM_VERSION))

.PHONY: promtool
promtool: $(PROMTOOL) ## Install promtool into ./bin (built from source, about 3 minutes the first time).
$(PROMTOOL): | $(LOCALBIN)
	@echo "Installing github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)"
	@# remove_all_sd leaves out the service-discovery plugins, whose dependencies the module proxy does not serve.
	GOBIN="$(LOCALBIN)" GOFLAGS="$$GOFLAGS -tags=remove_all_sd" go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	mv "$(LOCALBIN)/promtool" "$(PROMTOOL)"

.PHONY: prometheus
prometheus: $(PROMETHEUS) ## Install the Prometheus server into ./bin, for the query stories (built from source, about 3 minutes the first time).
$(PROMETHEUS): | $(LOCALBIN)
	@echo "Installing github.com/prometheus/prometheus/cmd/prometheus@$(PROMETHEUS_VERSION)"
	@# remove_all_sd, as for promtool; the web UI's assets are not in the module, and the HTTP API needs none.
	rm -rf "$(LOCALBIN)/prometheus.tmp" && mkdir -p "$(LOCALBIN)/prometheus.tmp"
	GOBIN="$(LOCALBIN)/prometheus.tmp" GOFLAGS="$$GOFLAGS -tags=remove_all_sd" go install github.com/prometheus/prometheus/cmd/prometheus@$(PROMETHEUS_VERSION)
	mv "$(LOCALBIN)/prometheus.tmp/prometheus" "$(PROMETHEUS)" && rmdir "$(LOCALBIN)/prometheus.tmp"

# kustomize-build-with-image builds config/default with image IMG, from a copy of config/ so
# that the committed kustomization is never edited.
define kustomize-build-with-image
tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && cp -r config "$$tmp/" && \
	(cd "$$tmp/config/default" && $(KUSTOMIZE) edit set image controller=$(IMG)) && \
	$(KUSTOMIZE) build "$$tmp/config/default"
endef

# go-install-tool installs package $(2) at version $(3) as the versioned binary $(1), so a
# change of pin installs the new version instead of reusing the old one.
define go-install-tool
@set -e; \
echo "Installing $(2)@$(3)"; \
rm -f "$$(echo "$(1)" | sed "s/-$(3)$$//")"; \
GOBIN="$(LOCALBIN)" go install $(2)@$(3); \
mv "$(LOCALBIN)/$$(basename "$$(echo "$(1)" | sed "s/-$(3)$$//")")" "$(1)"
endef
