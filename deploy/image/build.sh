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

# CGO_ENABLED=0: a static binary that runs on any base image; -trimpath,
# -buildid= and -buildvcs=false (the version comes from -X) make the build
# reproducible, and so do GOAMD64/GOARM64 fixed at Go's defaults whatever
# the environment says; -s -w drop the symbol tables.
CGO_ENABLED=0 GOAMD64=v1 GOARM64=v8.0 exec go build -trimpath -buildvcs=false \
	-ldflags "-s -w -buildid= -X main.version=${version} -X main.revision=${revision}" \
	-o "$out" ./cmd/netinspect
