#!/bin/sh
# Pushes the multi-architecture image that image.sh made to a registry
# (`make image-push REGISTRY=...` runs it), with skopeo: any registry that
# speaks the OCI distribution API.
#
# Usage: deploy/image/push.sh OCI_ARCHIVE DESTINATION
#        deploy/image/push.sh --check DESTINATION   (only check DESTINATION)
#   OCI_ARCHIVE  image.sh's OUTDIR/netinspect-VERSION.oci.tar
#   DESTINATION  REGISTRY/REPOSITORY:TAG, e.g. registry.example.com/team/netinspect:v0.1.0
# Environment:
#   REGISTRY_AUTH_FILE    credentials (default: skopeo's, from `skopeo login`
#                         or ~/.docker/config.json)
#   REGISTRY_TLS_VERIFY   false for a registry on plain HTTP or with a
#                         self-signed certificate (default true)
#   ALLOW_DIRTY=1         push a -dirty version (built from uncommitted
#                         changes) anyway
#
# Success is reported only once the registry serves DESTINATION with the
# archive's index digest; any failure exits 1 with the reason and says that
# nothing was pushed under that tag.
set -eu

usage="usage: push.sh OCI_ARCHIVE REGISTRY/REPOSITORY:TAG | push.sh --check REGISTRY/REPOSITORY:TAG"
archive=${1:?$usage}
dest=${2:?$usage}

fail() {
	echo "image-push: $*" >&2
	exit 1
}

tag=${dest##*:}
case $dest in
*/*:*) ;;
*) fail "destination $dest: want REGISTRY/REPOSITORY:TAG" ;;
esac
case $tag in
*/*) fail "destination $dest: want REGISTRY/REPOSITORY:TAG" ;;
*-dirty)
	[ "${ALLOW_DIRTY:-}" = 1 ] || fail "refusing to push $dest: the version says -dirty, the image was built from uncommitted changes and the tag names no commit; commit first (or set ALLOW_DIRTY=1)"
	;;
latest) fail "refusing to push $dest: netinspect images are tagged with their version, never latest" ;;
esac
[ "$archive" = --check ] && exit 0

[ -r "$archive" ] || fail "no image archive $archive: run \`make image\` first"
digest_file=${archive%.oci.tar}.digest
[ -r "$digest_file" ] || fail "no $digest_file next to $archive: run \`make image\` again"
want=$(cat "$digest_file")

tls=true
[ "${REGISTRY_TLS_VERIFY:-true}" = false ] && tls=false
log=$(mktemp)
trap 'rm -f "$log" "$log.raw"' EXIT

# remote_digest prints the digest the registry serves for $dest, or fails.
remote_digest() {
	skopeo inspect --raw --tls-verify="$tls" "docker://$dest" >"$log.raw" 2>>"$log" || return 1
	echo "sha256:$(sha256sum <"$log.raw" | cut -d' ' -f1)"
}

platforms=$(skopeo inspect --raw "oci-archive:$archive" 2>"$log" | grep -o '"architecture":"[^"]*"' | cut -d'"' -f4 | sed 's#^#linux/#' | tr '\n' ' ') ||
	fail "cannot read $archive: $(cat "$log")"
echo "image-push: pushing $archive ($want: ${platforms% }) to $dest"
# --all: the index and every architecture's image; --preserve-digests: fail
# rather than convert anything, so the registry holds the same digests.
if ! skopeo copy --retry-times 2 --all --preserve-digests --dest-tls-verify="$tls" \
	"oci-archive:$archive" "docker://$dest" >"$log" 2>&1; then
	cat "$log" >&2
	# skopeo's own one-line reason: level=fatal msg="..."
	reason=$(sed -n 's/.*level=fatal msg="\(.*\)"$/\1/p' "$log" | tail -1 | sed -e 's/\\n$//' -e 's/\\"/"/g')
	# skopeo writes the tag last (the index, after every image); say what
	# the tag names now.
	now=$(remote_digest 2>/dev/null) || now=
	case $now in
	"$want") fail "push to $dest failed after the registry took the index (${reason:-see above}): $dest is $want, check it before relying on it" ;;
	"") fail "push to $dest failed${reason:+: $reason}; the registry did not take the image and nothing was pushed under that tag" ;;
	*) fail "push to $dest failed${reason:+: $reason}; the registry did not take the image, $dest still names the earlier $now" ;;
	esac
fi
got=$(remote_digest) || fail "pushed, but reading $dest back failed: $(cat "$log")"
[ "$got" = "$want" ] ||
	fail "the registry serves $dest as $got, not the archive's $want: the push did not take effect"
echo "image-push: pushed $dest@$want"
