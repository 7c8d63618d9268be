# netinspect: `make run` builds and runs the exporter against this machine's
# kernel; `make test` installs what the tests need and runs all of them.

GO        ?= go
BIN       := bin/netinspect
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
RUN_ARGS  ?= --log.format=console
# Each fuzz target runs this long in `make test`.
FUZZTIME  ?= 15s

.PHONY: all build run test test-deps test-tools vet unit fuzz bench clean

all: build

# The same script the Dockerfile's build stage runs: a static binary.
build:
	VERSION=$(VERSION) REVISION=$(REVISION) ./deploy/image/build.sh $(BIN)

# Without a kubeconfig or in-cluster config, Kubernetes enrichment is off and
# the node's own metrics are served. Run as root for netlink (CAP_NET_ADMIN);
# otherwise conntrack figures come from procfs.
run: build
	./$(BIN) $(RUN_ARGS)

test: test-deps test-tools vet
	$(GO) test -count=1 -timeout 60m ./...
	$(MAKE) fuzz

# Installs the packages the integration tests use, when missing (Debian).
test-deps:
	./test/install-deps.sh

# Builds (once, cached by version outside the repo) the binaries the
# integration tests run: etcd, kube-apiserver, kube-proxy, the VM kernel.
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
