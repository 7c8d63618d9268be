#!/bin/sh
# Builds the Debian root filesystem of the netinspect image for one
# architecture, without running any of its code, and prints the path of the
# tarball. The packages are deploy/image/packages (the list the Dockerfile
# installs too). The tarball is cached under
# ${NETINSPECT_CACHE:-$HOME/.cache/netinspect}/image-rootfs/, keyed by the
# package list, this script and the architecture, so a warm build costs
# nothing; NETINSPECT_ROOTFS_REFRESH=1 rebuilds it (newer package versions).
#
# Usage: deploy/image/rootfs.sh ARCH     (Debian architecture: amd64, arm64)
# Environment: PACKAGES (default: deploy/image/packages), DEBIAN_MIRROR
#              (default: http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR
#              (default: http://deb.debian.org/debian-security).
#
# How: mmdebstrap --variant=extract downloads the packages and their
# dependencies with apt and only unpacks them: no maintainer script runs,
# so arm64 needs no qemu and both architectures are built the same way. A
# hook writes the dpkg database (/var/lib/dpkg/status, info/) from the .deb
# files with the host's dpkg-deb, so image scanners see the packages.
# deploy/image/mkimage then does what the maintainer scripts would have
# done that the image needs (update-alternatives links) and normalises the
# files into the image layer.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

# --hook ROOT: run by mmdebstrap after extracting, before its cleanup; the
# .deb files are still in ROOT/var/cache/apt/archives.
if [ "${1:-}" = --hook ]; then
	root=${2:?}
	info=$root/var/lib/dpkg/info
	status=$root/var/lib/dpkg/status
	mkdir -p "$info"
	: >"$status"
	ctl=$(mktemp -d)
	trap 'rm -rf "$ctl"' EXIT
	# Sorted by file name, which starts with the package name: the status
	# file's order does not depend on the directory's.
	for deb in $(find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' | LC_ALL=C sort); do
		pkg=$(dpkg-deb --field "$deb" Package)
		name=$pkg
		# dpkg names the files of Multi-Arch: same packages pkg:arch.
		if [ "$(dpkg-deb --field "$deb" Multi-Arch)" = same ]; then
			name=$pkg:$(dpkg-deb --field "$deb" Architecture)
		fi
		# The status stanza: the control fields with Status after Package,
		# as dpkg writes it for an installed package.
		dpkg-deb --field "$deb" | awk '{ print } /^Package:/ { print "Status: install ok installed" }' >>"$status"
		echo >>"$status"
		rm -rf "${ctl:?}"/*
		dpkg-deb --control "$deb" "$ctl"
		for f in "$ctl"/*; do
			case ${f##*/} in
			control) ;;
			*) cp "$f" "$info/$name.${f##*/}" ;;
			esac
		done
		dpkg-deb --fsys-tarfile "$deb" | tar -t | sed -e 's#^\./#/#' -e 's#/$##' -e 's#^$#/.#' >"$info/$name.list"
	done
	exit 0
fi

arch=${1:?usage: rootfs.sh ARCH (amd64, arm64)}
packages=${PACKAGES:-$here/packages}
suite=$("$here/packages.sh" suite "$packages")
list=$("$here/packages.sh" list "$packages")
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

key=$( (cat "$packages" "$0"; echo "$arch $mirror $security") | sha256sum | cut -c1-16)
dir=${NETINSPECT_CACHE:-$HOME/.cache/netinspect}/image-rootfs
out=$dir/$suite-$arch-$key.tar
mkdir -p "$dir"

# One build per cache entry at a time (tests and `make image` may run at once).
exec 9>"$out.lock"
flock 9
if [ -s "$out" ] && [ "${NETINSPECT_ROOTFS_REFRESH:-}" != 1 ]; then
	echo "$out"
	exit 0
fi

mode=root
[ "$(id -u)" -eq 0 ] || mode=unshare
log=$(mktemp)
trap 'rm -f "$log" "$out.tmp"' EXIT
start=$(date +%s)
# SOURCE_DATE_EPOCH=0: the files mmdebstrap creates get a fixed time; mkimage
# sets every time in the layer anyway.
if ! SOURCE_DATE_EPOCH=0 mmdebstrap --mode=$mode --variant=extract --architectures="$arch" \
	--include="$(echo $list | tr ' ' ,)" \
	--extract-hook="'$here/rootfs.sh' --hook \"\$1\"" \
	--format=tar "$suite" "$out.tmp" \
	"deb $mirror $suite main" \
	"deb $mirror $suite-updates main" \
	"deb $security $suite-security main" >"$log" 2>&1; then
	missing=$(sed -n 's/.*Unable to locate package \([^ ]*\).*/\1/p; s/.*Package \([^ ]*\) has no installation candidate.*/\1/p' "$log" | sort -u | tr '\n' ' ')
	if [ -n "$missing" ]; then
		echo "rootfs.sh: package(s) ${missing% } of $packages not found in Debian $suite for $arch (mirror $mirror): fix the list" >&2
	else
		tail -20 "$log" >&2
		echo "rootfs.sh: mmdebstrap failed for Debian $suite $arch (log above)" >&2
	fi
	exit 1
fi
mv "$out.tmp" "$out"
echo "rootfs.sh: built $out in $(($(date +%s) - start)) s" >&2
echo "$out"
