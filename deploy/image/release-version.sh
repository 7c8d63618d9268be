#!/bin/sh
# Points the shipped manifests at a release: deploy/kustomization.yaml's
# images: newTag, deploy/daemonset.yaml's image, the Helm chart's version,
# appVersion and default image.tag (`make release-version RELEASE=v0.2.0`).
# They are committed files, so they name the last release (or the one being
# prepared), never a build's git describe version and never latest;
# deploy/image's tests check that they agree with each other, with
# CHANGELOG.md's newest section and with the newest git tag.
#
# Release steps: add the `## vX.Y.Z` section to CHANGELOG.md, run this,
# commit, tag that commit vX.Y.Z (git describe then gives vX.Y.Z, which
# `make image` and `make image-push` use as the image tag).
#
# Usage: release-version.sh vMAJOR.MINOR.PATCH [ROOT]   (ROOT: the repository)
set -eu

v=${1:-}
root=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
if ! echo "$v" | grep -Eq '^v[0-9]+\.[0-9]+\.[0-9]+$'; then
	echo "release-version: \"$v\" is not a release version vMAJOR.MINOR.PATCH (set RELEASE=v0.2.0; -dirty and -N-gHASH versions of untagged commits are not releases)" >&2
	exit 2
fi
if ! grep -Eq "^## $v( |$)" "$root/CHANGELOG.md"; then
	echo "release-version: CHANGELOG.md has no \"## $v\" section: say what changed for users first" >&2
	exit 1
fi

# set FILE SED-PATTERN REPLACEMENT: replace the one matching line, or fail.
set_line() {
	file=$root/$1
	n=$(grep -Ec "$2" "$file" || true)
	if [ "$n" != 1 ]; then
		echo "release-version: $1 has $n lines matching $2, want 1" >&2
		exit 1
	fi
	sed -i -E "s#$2#$3#" "$file"
}
set_line deploy/kustomization.yaml '^(    newTag: ).*$' "\\1$v"
set_line deploy/daemonset.yaml '^( +image: ghcr\.io/netinspect/netinspect)(:.*)?$' "\\1:$v"
set_line deploy/helm/netinspect/Chart.yaml '^version: .*$' "version: ${v#v}"
set_line deploy/helm/netinspect/Chart.yaml '^appVersion: .*$' "appVersion: $v"
set_line deploy/helm/netinspect/values.yaml '^(  tag: ).*$' "\\1$v"
echo "release-version: deploy/ and the Helm chart now name $v"
