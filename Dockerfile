# syntax=docker/dockerfile:1
# netinspect image: a static binary on Debian slim with the iptables (nft and
# legacy backends) and nftables userspace the rule collectors run.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#                --build-arg REVISION=$(git rev-parse HEAD) -t netinspect .
#
# The build stage runs deploy/image/build.sh, the same script the tests run
# (deploy/image/build_test.go checks this file calls it).

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG REVISION=unknown
RUN VERSION=${VERSION} REVISION=${REVISION} ./deploy/image/build.sh /out/netinspect

FROM debian:trixie-slim
# iptables ships iptables-save/ip6tables-save for both backends
# (iptables-nft-save, iptables-legacy-save); the collector detects which one
# the node's kube-proxy uses. nftables is the nft CLI, for debugging with
# `kubectl exec` (the nftables collector itself reads netlink).
RUN apt-get update \
	&& apt-get install -y --no-install-recommends iptables nftables conntrack \
	&& rm -rf /var/lib/apt/lists/*
COPY --from=build /out/netinspect /usr/bin/netinspect
# The DaemonSet runs as uid 0 with every capability dropped except the few it
# adds back (deploy/daemonset.yaml): Kubernetes gives added capabilities
# to uid 0 only (it sets no ambient capabilities), and file capabilities on
# the binary are ignored under allowPrivilegeEscalation: false and would not
# reach the iptables-save it runs. Run as another user, netinspect still
# serves what needs no privilege (conntrack from procfs, veth counters).
USER 0:0
EXPOSE 10271
ENTRYPOINT ["/usr/bin/netinspect"]
