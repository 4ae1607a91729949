#!/usr/bin/env bash
# Checks that `cargo nextest run --partition count:K/N`, K = 1..N, selects every test exactly once, slow
# (ignored) ones included: the N machines of a split CI run together run the whole suite, nothing twice.
# Usage: bash ci/check-partitions.sh [N]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
parts=${1:-2}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# nextest's own messages (building, listing) are shown only when it fails.
list() {
  if ! cargo nextest list --locked --run-ignored all --message-format oneline "$@" 2> "$scratch/stderr"; then
    cat "$scratch/stderr" >&2
    echo "ci/check-partitions.sh: cargo nextest list${*:+ $*} failed" >&2
    return 1
  fi
}
list | sort > "$scratch/all"
for k in $(seq 1 "$parts"); do
  list --partition "count:$k/$parts" > "$scratch/part-$k"
  echo "count:$k/$parts: $(wc -l < "$scratch/part-$k") tests"
done
sort "$scratch"/part-* > "$scratch/joined"
duplicates=$(uniq -d "$scratch/joined")
if [ -n "$duplicates" ]; then
  echo "ci/check-partitions.sh: in more than one partition:" >&2
  echo "$duplicates" >&2
  exit 1
fi
if ! diff -u "$scratch/all" "$scratch/joined" > "$scratch/diff"; then
  echo "ci/check-partitions.sh: the partitions do not select exactly the whole suite:" >&2
  cat "$scratch/diff" >&2
  exit 1
fi
echo "$parts partitions cover all $(wc -l < "$scratch/all") tests exactly once"
