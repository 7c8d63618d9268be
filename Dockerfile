# syntax=docker/dockerfile:1
# netinspect image: a static binary on Debian slim with the iptables (nft and
# legacy backends) and nftables userspace the rule collectors run.
#
#   docker build --build-arg VERSION=$(deploy/image/version.sh) \
#                --build-arg REVISION=$(deploy/image/version.sh revision) -t netinspect .
#
# Without Docker, `make image` builds the same recipe for linux/amd64 and
# linux/arm64 (deploy/image/image.sh): the same build.sh, the same package
# list (deploy/image/packages, read here and there by packages.sh), the same
# entrypoint, user and labels; its Debian layer holds only those packages
# and their dependencies, where this one adds them to debian:<suite>-slim.
# deploy/image/build_test.go checks that this file keeps to that recipe.

ARG GO_VERSION=1.26.8
# The Debian release: the suite: line of deploy/image/packages (the tests
# check they agree; the runtime stage fails on another release).
ARG DEBIAN_SUITE=trixie

FROM golang:${GO_VERSION}-${DEBIAN_SUITE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG REVISION=unknown
RUN VERSION=${VERSION} REVISION=${REVISION} ./deploy/image/build.sh /out/netinspect

FROM debian:${DEBIAN_SUITE}-slim
# The one package list: iptables ships iptables-save/ip6tables-save for both
# backends (iptables-nft-save, iptables-legacy-save); the collector detects
# which one the node's kube-proxy uses. nftables and conntrack are the nft
# and conntrack CLIs, for debugging with `kubectl exec`.
COPY deploy/image/packages deploy/image/packages.sh /tmp/netinspect-image/
RUN . /etc/os-release \
	&& suite=$(/tmp/netinspect-image/packages.sh suite) \
	&& { [ "$suite" = "$VERSION_CODENAME" ] || { echo "deploy/image/packages is for Debian $suite, the base image is $VERSION_CODENAME" >&2; exit 1; }; } \
	&& apt-get update \
	&& apt-get install -y --no-install-recommends $(/tmp/netinspect-image/packages.sh list) \
	&& rm -rf /var/lib/apt/lists/* /tmp/netinspect-image
COPY --from=build /out/netinspect /usr/bin/netinspect
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="netinspect" \
	org.opencontainers.image.source="https://github.com/netinspect/netinspect" \
	org.opencontainers.image.licenses="NOASSERTION" \
	org.opencontainers.image.version="${VERSION}" \
	org.opencontainers.image.revision="${REVISION}"
# The DaemonSet runs as uid 0 with every capability dropped except the few it
# adds back (deploy/daemonset.yaml): Kubernetes gives added capabilities
# to uid 0 only (it sets no ambient capabilities), and file capabilities on
# the binary are ignored under allowPrivilegeEscalation: false and would not
# reach the iptables-save it runs. Run as another user, netinspect still
# serves what needs no privilege (conntrack from procfs, veth counters).
USER 0:0
EXPOSE 10271
ENTRYPOINT ["/usr/bin/netinspect"]
