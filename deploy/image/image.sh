#!/bin/sh
# Builds the netinspect image for linux/amd64 and linux/arm64 without a
# container engine (`make image` runs it), from the Dockerfile's recipe: the
# static binary of build.sh on the Debian packages of deploy/image/packages.
#
# Usage: deploy/image/image.sh [OUTDIR]          (default: bin/image)
#
# Output (a stable interface: test/node imports the first into containerd):
#   OUTDIR/netinspect-VERSION.oci.tar
#       OCI image layout archive holding the multi-architecture index.
#       index.json names it io.containerd.image.name=IMAGE:VERSION and
#       org.opencontainers.image.ref.name=VERSION, so
#         ctr -n k8s.io images import --platform linux/amd64 OUTDIR/netinspect-VERSION.oci.tar
#       creates the image IMAGE:VERSION, and
#         skopeo copy --all oci-archive:OUTDIR/netinspect-VERSION.oci.tar docker://REGISTRY/netinspect:VERSION
#       pushes it (`make image-push`).
#   OUTDIR/netinspect-VERSION-linux-ARCH.docker.tar
#       one architecture as a `docker save` archive tagged IMAGE:VERSION
#       (`docker load`, `kind load image-archive`).
#   OUTDIR/netinspect-VERSION.digest
#       the index's digest (sha256:...), what a registry reports after a push.
#   OUTDIR/netinspect-linux-ARCH
#       the static binaries in the images.
# VERSION is deploy/image/version.sh's (git describe --tags --always --dirty);
# the last line printed is the .oci.tar's path.
#
# Environment:
#   IMAGE      image name without tag (default ghcr.io/netinspect/netinspect)
#   PLATFORMS  default "linux/amd64 linux/arm64"
#   VERSION, REVISION, SOURCE_DATE_EPOCH  default from git (version.sh)
#   NETINSPECT_CACHE  where rootfs.sh caches the Debian root filesystems
#
# Reproducible: the same source (commit) and Debian package versions give
# the same digests (deploy/image's tests build twice and compare).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
outdir=${1:-$repo/bin/image}
image=${IMAGE:-ghcr.io/netinspect/netinspect}
platforms=${PLATFORMS:-linux/amd64 linux/arm64}
# The repository has no LICENSE file yet: the SPDX "no assertion" value
# until the project states its licence here.
licenses=NOASSERTION
source_url=https://github.com/netinspect/netinspect

# The Go release of go.mod (and of the Dockerfile's GO_VERSION): the same
# source gives the same binaries whatever Go the machine has (the go
# command fetches that release through the module proxy when it differs).
GOTOOLCHAIN=${GOTOOLCHAIN:-go$(sed -n 's/^go //p' "$repo/go.mod")}
export GOTOOLCHAIN
VERSION=$("$here/version.sh" version)
REVISION=$("$here/version.sh" revision)
SOURCE_DATE_EPOCH=$("$here/version.sh" epoch)
export VERSION REVISION SOURCE_DATE_EPOCH
suite=$("$here/packages.sh" suite)

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The Debian root filesystems (cached; a cold build downloads the packages)
# and the binaries, the root filesystems of both architectures at once.
pids=
for p in $platforms; do
	arch=${p#linux/}
	case $p in
	linux/amd64 | linux/arm64) ;;
	*) echo "image.sh: unsupported platform $p (want linux/amd64, linux/arm64)" >&2; exit 2 ;;
	esac
	"$here/rootfs.sh" "$arch" >"$work/rootfs-$arch" &
	pids="$pids $!"
done
for p in $platforms; do
	arch=${p#linux/}
	GOARCH=$arch "$here/build.sh" "$outdir/netinspect-linux-$arch"
done
for pid in $pids; do
	wait "$pid" || { echo "image.sh: building a root filesystem failed (see above)" >&2; exit 1; }
done

args=
for p in $platforms; do
	arch=${p#linux/}
	args="$args -platform $p=$(tail -1 "$work/rootfs-$arch"),$outdir/netinspect-linux-$arch"
done
(cd "$repo" && go build -o "$work/mkimage" ./deploy/image/mkimage)
name=$outdir/netinspect-$VERSION
# shellcheck disable=SC2086 # $args is a list of flags without spaces
"$work/mkimage" -repository "$image" -version "$VERSION" -revision "$REVISION" \
	-epoch "$SOURCE_DATE_EPOCH" -source "$source_url" -licenses "$licenses" \
	-base "debian:$suite" -oci "$name.oci.tar" -docker-prefix "$name" $args >"$work/digests"
cat "$work/digests"
sed -n 's/^index\t//p' "$work/digests" >"$name.digest"
echo "$name.oci.tar"
