#!/bin/sh
# Prints the version every build artefact carries: `git describe --tags
# --always --dirty` of the checkout (v0.1.0 on a tag, v0.1.0-3-gabc1234 after
# it, abc1234 before the first tag, with -dirty when tracked files have
# uncommitted changes). The binary (--version, netinspect_build_info), the
# image tag and the image's labels all take it from here; $VERSION, when
# set, wins (the Dockerfile build has no .git and passes it as a build arg).
#
# Usage: version.sh [version|revision|epoch]
#   version   the version (default)
#   revision  the full commit hash (or unknown)
#   epoch     the commit time in seconds, SOURCE_DATE_EPOCH of reproducible builds
set -eu
cd "$(dirname "$0")/../.."

case ${1:-version} in
version)
	if [ -n "${VERSION:-}" ]; then
		echo "$VERSION"
	else
		git describe --tags --always --dirty 2>/dev/null || echo dev
	fi
	;;
revision)
	if [ -n "${REVISION:-}" ]; then
		echo "$REVISION"
	else
		git rev-parse HEAD 2>/dev/null || echo unknown
	fi
	;;
epoch)
	if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
		echo "$SOURCE_DATE_EPOCH"
	else
		git log -1 --format=%ct HEAD 2>/dev/null || echo 0
	fi
	;;
*)
	echo "usage: version.sh [version|revision|epoch]" >&2
	exit 2
	;;
esac
