#!/bin/sh
# Fills corpus/parse/ with the seeds of the parse target: every scenario of the suite, every bad scenario, the
# test fixtures, and the YAML examples of FORMAT.md (the fragments wrapped into a whole scenario the way the
# unit test format_reference_examples_are_valid does). Run from anywhere; safe to run again.
set -eu
fuzz=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$fuzz/../.." && pwd)
corpus="$fuzz/corpus/parse"
mkdir -p "$corpus"
find "$repo/scenarios" "$repo/harness/tests" -name '*.yaml' | while read -r file; do
    cp "$file" "$corpus/seed-$(echo "${file#"$repo"/}" | tr '/' '_')"
done
awk -v out="$corpus/seed-format-md" '
    /^```yaml$/ { n++; body = ""; inside = 1; next }
    /^```/ && inside {
        inside = 0
        file = out "-" n ".yaml"
        if (body ~ /^description:/) printf "%s", body > file
        else printf "description: d\nclient:\n  - connect: { port: 9000 }\n    name: connect\n%s", body > file
        close(file)
        next
    }
    inside { body = body $0 "\n" }
' "$repo/harness/src/scenario/FORMAT.md"
echo "$(ls "$corpus" | wc -l) files in $corpus"
