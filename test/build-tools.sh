#!/usr/bin/env bash
# Builds the binaries the integration tests run, once per version: they are
# cached under ${NETINSPECT_CACHE:-$HOME/.cache/netinspect}, outside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd, the Kubernetes binaries, Prometheus and helm from the Go module proxy
# (tools/).
bash test/controlplane/build.sh
