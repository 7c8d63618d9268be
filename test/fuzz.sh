#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 15s), so a
# new Fuzz function is fuzzed by `make test` without being listed anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-15s}"
go="${GO:-go}"

grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(' . | xargs -n1 dirname | sort -u |
while read -r dir; do
	for target in $(grep -h -oE '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | sed 's/^func //' | sort -u); do
		echo "fuzz: $dir $target ($fuzztime)"
		"$go" test "$dir" -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime"
	done
done
