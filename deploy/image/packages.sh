#!/bin/sh
# Reads deploy/image/packages, the image's one package list, for both the
# Dockerfile and rootfs.sh, so that they cannot read it differently.
#
# Usage: packages.sh suite [FILE]   the Debian release (suite: line)
#        packages.sh list [FILE]    the packages, one per line
# FILE defaults to the packages file next to this script. A malformed line
# is an error naming the file and line.
set -eu

what=${1:?usage: packages.sh suite|list [FILE]}
file=${2:-$(dirname "$0")/packages}
[ -r "$file" ] || { echo "packages.sh: cannot read $file" >&2; exit 1; }

# Debian package names: lower case letters, digits, + - . (Debian policy 5.6.1).
awk -v what="$what" -v file="$file" '
	function fail(msg) { printf "packages.sh: %s:%d: %s\n", file, NR, msg > "/dev/stderr"; bad = 1; exit 1 }
	{ sub(/#.*/, ""); gsub(/^[ \t]+|[ \t]+$/, "") }
	$0 == "" { next }
	/^suite:/ {
		if (suite != "") fail("second suite: line")
		suite = $2
		if (NF != 2 || suite !~ /^[a-z][a-z0-9-]*$/) fail("want \"suite: <debian release>\", got \"" $0 "\"")
		next
	}
	NF != 1 || $1 !~ /^[a-z0-9][a-z0-9+.-]+$/ { fail("want one Debian package name, got \"" $0 "\"") }
	seen[$1]++ { fail("package " $1 " listed twice") }
	{ pkgs[++n] = $1 }
	END {
		if (bad) exit 1
		if (suite == "") { printf "packages.sh: %s: no suite: line\n", file > "/dev/stderr"; exit 1 }
		if (n == 0) { printf "packages.sh: %s: no packages\n", file > "/dev/stderr"; exit 1 }
		if (what == "suite") print suite
		else if (what == "list") for (i = 1; i <= n; i++) print pkgs[i]
		else { printf "packages.sh: unknown request %s (want suite or list)\n", what > "/dev/stderr"; exit 1 }
	}
' "$file"
