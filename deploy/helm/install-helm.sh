#!/usr/bin/env bash
# Builds helm from the Go module proxy into the test tool cache
# (${NETINSPECT_CACHE:-$HOME/.cache/netinspect}/bin/helm-<version>, outside
# the repository), once per version. deploy/helm_test.go runs it from there.
set -euo pipefail
version=v3.22.0 # keep in step with helmVersion in deploy/helm_test.go
dir=${NETINSPECT_CACHE:-$HOME/.cache/netinspect}/bin
bin=$dir/helm-$version
if [ -x "$bin" ]; then
	exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "install-helm: building helm $version (a few minutes, once)"
GOBIN=$tmp go install "helm.sh/helm/v3/cmd/helm@$version"
mv "$tmp/helm" "$bin"
