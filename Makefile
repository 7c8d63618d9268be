# netinspect: `make run` builds and runs the exporter against this machine's
# kernel; `make test` installs what the tests need and runs all of them;
# `make image` builds the linux/amd64 + linux/arm64 image without Docker and
# `make image-push REGISTRY=registry.example.com/team` pushes it.

GO        ?= go
BIN       := bin/netinspect
# git describe --tags --always --dirty: the binary's --version and
# netinspect_build_info, the image's tag and labels.
VERSION   ?= $(shell deploy/image/version.sh)
REVISION  ?= $(shell deploy/image/version.sh revision)
# The image's name in its archives; `make image-push` pushes to
# $(REGISTRY)/netinspect:$(VERSION).
IMAGE     ?= ghcr.io/netinspect/netinspect
PLATFORMS ?= linux/amd64 linux/arm64
REGISTRY  ?=
RUN_ARGS  ?= --log.format=console
# Each fuzz target runs this long in `make test`.
FUZZTIME  ?= 15s

.PHONY: all build run image image-push release-version test test-deps test-tools vet unit fuzz bench clean

all: build

# The same script the Dockerfile's build stage runs: a static binary.
build:
	VERSION=$(VERSION) REVISION=$(REVISION) ./deploy/image/build.sh $(BIN)

# Without a kubeconfig or in-cluster config, Kubernetes enrichment is off and
# the node's own metrics are served. Run as root for netlink (CAP_NET_ADMIN);
# otherwise conntrack figures come from procfs.
run: build
	./$(BIN) $(RUN_ARGS)

# The image without a container engine (mmdebstrap, go-containerregistry):
# bin/image/netinspect-$(VERSION).oci.tar (multi-architecture OCI layout
# archive), a docker-archive per architecture; deploy/image/image.sh lists
# them. The Debian root filesystems are cached under ~/.cache/netinspect.
image:
	VERSION=$(VERSION) REVISION=$(REVISION) IMAGE=$(IMAGE) PLATFORMS="$(PLATFORMS)" ./deploy/image/image.sh bin/image

# Pushes the image (both architectures, one index) with skopeo; log in first
# (`skopeo login registry.example.com`). REGISTRY_TLS_VERIFY=false for a
# plain-HTTP registry. A -dirty version is refused before anything is built.
image-push:
	@test -n "$(REGISTRY)" || { echo "make image-push: set REGISTRY, e.g. make image-push REGISTRY=registry.example.com/team" >&2; exit 2; }
	./deploy/image/push.sh --check $(REGISTRY)/netinspect:$(VERSION)
	$(MAKE) image
	./deploy/image/push.sh bin/image/netinspect-$(VERSION).oci.tar $(REGISTRY)/netinspect:$(VERSION)

# Sets the version the manifests ship (kustomize newTag, the DaemonSet's
# image, the chart's version/appVersion and image.tag) to RELEASE, e.g.
# `make release-version RELEASE=v0.2.0`, after CHANGELOG.md has its section.
release-version:
	./deploy/image/release-version.sh $(RELEASE)

test: test-deps test-tools vet
	$(GO) test -count=1 -timeout 60m ./...
	$(MAKE) fuzz

# Installs the packages the integration tests use, when missing (Debian).
test-deps:
	./test/install-deps.sh

# Builds (once, cached by version outside the repo) the binaries the
# integration tests run: etcd, kube-apiserver, kube-proxy, kubectl, the real
# node's kubelet, kube-controller-manager, kube-scheduler and Prometheus, helm.
test-tools:
	./test/build-tools.sh

vet:
	$(GO) vet ./...

# Every fuzz target of the module (test/fuzz.sh finds them): the parsers of
# the kernel readers (source/), the netlink codec, kube-proxy's names, the
# bearer token.
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./test/fuzz.sh

bench:
	$(GO) test ./... -run '^$$' -bench . -benchmem

clean:
	rm -rf bin
