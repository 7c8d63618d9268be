#!/usr/bin/env bash
# Builds, if missing, the Kubernetes binaries the integration tests run:
# etcd (tools/etcd) and kube-apiserver, kube-proxy, kubectl and, for the real
# node of test/node, kubelet, kube-controller-manager and kube-scheduler
# (tools/kube) and Prometheus with Kubernetes service discovery
# (tools/prometheus), from the Go module proxy at the versions pinned in those
# modules' go.mod files.
#
# Binaries are cached by version outside the repository, in
#   ${NETINSPECT_CACHE:-$HOME/.cache/netinspect}/bin/<name>-<version>
# so a machine builds them once (about 10 minutes cold on 2 cores) and every
# later `make test`, including CI's fresh clone, reuses them. The harness
# (test/controlplane) finds them at the same paths.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${NETINSPECT_CACHE:-${HOME:-/root}/.cache/netinspect}/bin"
mkdir -p "$cache"

version_of() { # module dir, module path
	(cd "$1" && go list -m -f '{{.Version}}' "$2")
}

build() { # module dir, package, name, version, extra ldflags
	local dir="$1" pkg="$2" name="$3" version="$4" ldflags="${5:-}"
	local out="$cache/$name-$version"
	if [[ -x "$out" ]]; then
		echo "cached: $out"
		return
	fi
	echo "building $name $version (package $pkg) ..."
	local start=$SECONDS
	(cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w $ldflags" -o "$out.tmp.$$" "$pkg")
	mv "$out.tmp.$$" "$out"
	echo "built $out in $((SECONDS - start)) s"
}

etcd_version="$(version_of "$root/tools/etcd" go.etcd.io/etcd/server/v3)"
kube_version="$(version_of "$root/tools/kube" k8s.io/kubernetes)"

build "$root/tools/etcd" ./cmd/etcd etcd "$etcd_version"
# Without these the binaries report v0.0.0-master to clients and in logs.
IFS=. read -r kube_major kube_minor _ <<<"${kube_version#v}"
kube_ldflags="-X k8s.io/component-base/version.gitVersion=$kube_version"
kube_ldflags+=" -X k8s.io/component-base/version.gitMajor=$kube_major -X k8s.io/component-base/version.gitMinor=$kube_minor"
kube_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
build "$root/tools/kube" k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$kube_version" "$kube_ldflags"
build "$root/tools/kube" k8s.io/kubernetes/cmd/kube-proxy kube-proxy "$kube_version" "$kube_ldflags"
# kubectl renders deploy/ with kustomize and server-side dry-runs it.
build "$root/tools/kube" k8s.io/kubernetes/cmd/kubectl kubectl "$kube_version" "$kube_ldflags"
# test/node: a real single-node cluster (about 6-18 min more, cold).
build "$root/tools/kube" k8s.io/kubernetes/cmd/kubelet kubelet "$kube_version" "$kube_ldflags"
build "$root/tools/kube" k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$kube_version" "$kube_ldflags"
build "$root/tools/kube" k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler "$kube_version" "$kube_ldflags"
# test/nodee2e: Prometheus with Kubernetes service discovery (Debian's package
# has none), and only that discovery (about 3-6 min more, cold).
prometheus_version="$(version_of "$root/tools/prometheus" github.com/prometheus/prometheus)"
GOFLAGS="${GOFLAGS:-} -tags=remove_all_sd,enable_kubernetes_sd" \
	build "$root/tools/prometheus" github.com/prometheus/prometheus/cmd/prometheus prometheus "$prometheus_version"
