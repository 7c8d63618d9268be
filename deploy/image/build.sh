#!/bin/sh
# Builds the static netinspect binary. The Dockerfile's build stage runs this
# script, and so do the tests (deploy/image and test/e2e), so what is tested
# is what the image ships.
#
# Usage: deploy/image/build.sh OUTPUT
# Environment: VERSION, REVISION (default: deploy/image/version.sh, from git),
#              GOARCH for a cross build (image.sh builds amd64 and arm64),
#              GOFLAGS etc. pass through to go build.
set -eu

out=${1:?usage: build.sh OUTPUT}
case $out in
/*) ;;
*) out=$(pwd)/$out ;;
esac

cd "$(dirname "$0")/../.."
version=$(deploy/image/version.sh version)
revision=$(deploy/image/version.sh revision)

# CGO_ENABLED=0: a static binary that runs on any base image; -trimpath and
# -buildid= make the build reproducible; -s -w drop the symbol tables.
CGO_ENABLED=0 exec go build -trimpath \
	-ldflags "-s -w -buildid= -X main.version=${version} -X main.revision=${revision}" \
	-o "$out" ./cmd/netinspect
