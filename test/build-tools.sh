#!/usr/bin/env bash
# Builds the binaries the integration tests run, once per version: they are
# cached under ${NETINSPECT_CACHE:-$HOME/.cache/netinspect}, outside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd, kube-apiserver, kube-proxy from the Go module proxy (tools/).
bash test/controlplane/build.sh

# helm, for the chart tests in deploy/.
bash deploy/helm/install-helm.sh
