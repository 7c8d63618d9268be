#!/usr/bin/env bash
# Builds, if missing, the binaries the integration tests run, from the Go
# module proxy at the versions pinned in the tools modules' go.mod files:
#   tools/etcd: etcd
#   tools/kube: kube-apiserver, kube-proxy, kubectl, and for the real node of
#               test/node kubelet, kube-controller-manager, kube-scheduler;
#               Prometheus with Kubernetes service discovery only (Debian's
#               has none) for test/nodee2e; helm for the chart tests.
#
# Binaries are cached by version outside the repository, in
#   ${NETINSPECT_CACHE:-$HOME/.cache/netinspect}/bin/<name>-<version>
# so a machine builds them once and every later `make test`, including CI's
# fresh clone, reuses them. The harness (test/controlplane) finds them at the
# same paths.
#
# The binaries of tools/kube that are missing are built by ONE `go build`:
# they share most of their packages (client-go, api, apimachinery, grpc,
# otel...), which one module gives one version each, so each package is
# compiled once and the links run in parallel with the compiles. The
# compiler writes no DWARF (the linker's -w drops it anyway).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${NETINSPECT_CACHE:-${HOME:-/root}/.cache/netinspect}/bin"
mkdir -p "$cache"
work="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

version_of() { # module dir, module path
	(cd "$1" && go list -m -f '{{.Version}}' "$2")
}

# build MODULE_DIR LDFLAGS NAME=VERSION=PACKAGE...: builds the packages whose
# $cache/NAME-VERSION is missing with one go build and moves each binary there.
build() {
	local dir="$1" ldflags="$2" pkgs=() names=() spec name version pkg
	shift 2
	for spec in "$@"; do
		IFS== read -r name version pkg <<<"$spec"
		if [[ -x "$cache/$name-$version" ]]; then
			echo "cached: $cache/$name-$version"
			continue
		fi
		pkgs+=("$pkg")
		names+=("$name=$version")
	done
	[[ ${#pkgs[@]} -gt 0 ]] || return 0
	echo "building ${names[*]} ..."
	local start=$SECONDS out="$work/$(basename "$dir")"
	mkdir -p "$out"
	# -o DIR/ names each binary after its package's last element.
	(cd "$dir" && CGO_ENABLED=0 go build -trimpath -gcflags=all=-dwarf=false \
		-tags=remove_all_sd,enable_kubernetes_sd -ldflags="-s -w $ldflags" -o "$out/" "${pkgs[@]}")
	for spec in "${names[@]}"; do
		IFS== read -r name version <<<"$spec"
		mv "$out/$name" "$cache/$name-$version"
	done
	echo "built ${names[*]} in $((SECONDS - start)) s"
}

etcd_version="$(version_of "$root/tools/etcd" go.etcd.io/etcd/server/v3)"
build "$root/tools/etcd" "" "etcd=$etcd_version=./cmd/etcd"

kube_version="$(version_of "$root/tools/kube" k8s.io/kubernetes)"
prometheus_version="$(version_of "$root/tools/kube" github.com/prometheus/prometheus)"
helm_version="$(version_of "$root/tools/kube" helm.sh/helm/v3)"
# Without these the Kubernetes binaries report v0.0.0-master to clients and
# in logs (Prometheus and helm report their own versions).
IFS=. read -r kube_major kube_minor _ <<<"${kube_version#v}"
kube_ldflags="-X k8s.io/component-base/version.gitVersion=$kube_version"
kube_ldflags+=" -X k8s.io/component-base/version.gitMajor=$kube_major -X k8s.io/component-base/version.gitMinor=$kube_minor"
kube_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
# The build tags only select Prometheus's service discovery: Kubernetes only.
build "$root/tools/kube" "$kube_ldflags" \
	"kube-apiserver=$kube_version=k8s.io/kubernetes/cmd/kube-apiserver" \
	"kube-proxy=$kube_version=k8s.io/kubernetes/cmd/kube-proxy" \
	"kubectl=$kube_version=k8s.io/kubernetes/cmd/kubectl" \
	"kubelet=$kube_version=k8s.io/kubernetes/cmd/kubelet" \
	"kube-controller-manager=$kube_version=k8s.io/kubernetes/cmd/kube-controller-manager" \
	"kube-scheduler=$kube_version=k8s.io/kubernetes/cmd/kube-scheduler" \
	"prometheus=$prometheus_version=github.com/prometheus/prometheus/cmd/prometheus" \
	"helm=$helm_version=helm.sh/helm/v3/cmd/helm"
