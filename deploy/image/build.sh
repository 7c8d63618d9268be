#!/bin/sh
# Builds the static netinspect binary. The Dockerfile's build stage runs this
# script, and so do the tests (deploy/image and test/e2e), so what is tested
# is what the image ships.
#
# Usage: deploy/image/build.sh OUTPUT
# Environment: VERSION, REVISION (default: from git, else dev/unknown),
#              GOFLAGS etc. pass through to go build.
set -eu

out=${1:?usage: build.sh OUTPUT}
case $out in
/*) ;;
*) out=$(pwd)/$out ;;
esac

cd "$(dirname "$0")/../.."
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
revision=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

# CGO_ENABLED=0: a static binary that runs on any base image; -trimpath and
# -buildid= make the build reproducible; -s -w drop the symbol tables.
CGO_ENABLED=0 exec go build -trimpath \
	-ldflags "-s -w -buildid= -X main.version=${version} -X main.revision=${revision}" \
	-o "$out" ./cmd/netinspect
