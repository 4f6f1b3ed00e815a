#!/usr/bin/env bash
# verify.sh fails when golangci-lint finds anything, or when generated code, manifests, the API
# reference, the Helm chart, formatting or go.mod are not what the generators make of the sources. It catches both a stale generated file that was committed
# and a hand edit that is not committed yet (which regenerating would silently undo).
set -euo pipefail
cd "$(dirname "$0")/.."

# fingerprint hashes the working tree's difference from HEAD, untracked files included.
fingerprint() {
	{
		git diff HEAD --binary
		git ls-files --others --exclude-standard -z | xargs -0 -r sha256sum
	} | sha256sum
}

before=$(fingerprint)
make --no-print-directory manifests generate api-docs fmt tidy chart
after=$(fingerprint)

if [[ "$before" != "$after" ]]; then
	echo "verify: regenerating changed the tree, so a generated file, the chart, the formatting or go.mod was out of date"
	echo "verify: (a hand edit to a generated file is now overwritten; change the Go source or markers instead)"
	git status --short
	exit 1
fi
if [[ -n "$(git status --porcelain --untracked-files=all)" ]]; then
	echo "verify: the tree differs from HEAD; commit or stash your changes and run make verify again"
	git status --short
	exit 1
fi
make --no-print-directory lint
echo "verify: generated code, manifests, formatting and go.mod are up to date; golangci-lint found nothing"
