#!/usr/bin/env bash
# Checks the README's "Kernel differences the matrix found" against what a `netfault matrix` run measured:
# every scenario that was not applicable, or had an expectation left out, on a kernel of the run is named in a
# row of that table whose kernels column names that kernel (major.minor); and every row names at least one
# scenario that did so in the run. Usage: bash ci/check-kernel-differences.sh [KERNEL_REPORTS...], each a
# folder `netfault matrix` wrote for one kernel (reports/<kernel-release>, holding
# <group>/<scenario>/result.json); default: every kernel's folder under reports/. Needs jq.
set -euo pipefail
cd "$(dirname "$0")/.."
kernels=("$@")
[ ${#kernels[@]} -gt 0 ] || kernels=(reports/*/)
command -v jq >/dev/null || { echo "ci/check-kernel-differences.sh: jq not found (apt-get install jq)" >&2; exit 2; }
for folder in "${kernels[@]}"; do
  [ -d "$folder" ] || { echo "ci/check-kernel-differences.sh: no reports in $folder (run netfault matrix first)" >&2; exit 2; }
done
reports="${kernels[*]}"

# The table's rows: "kernels|scenario scenario ..." (scenario names as the links give them, without .yaml).
rows="$(awk '/^### Kernel differences the matrix found/ { inside = 1; next } /^##/ { inside = 0 } inside && /^\| / && !/^\| what/' README.md |
  while IFS= read -r row; do
    kernels="$(echo "$row" | awk -F'|' '{ print $3 }')"
    scenarios="$(echo "$row" | grep -o '](scenarios/[^)]*\.yaml)' | sed 's|](scenarios/||; s|\.yaml)||' | tr '\n' ' ')"
    echo "$kernels|$scenarios"
  done)"
[ -n "$rows" ] || { echo "ci/check-kernel-differences.sh: README.md has no kernel differences table" >&2; exit 2; }

# What the run measured: "scenario major.minor" for each scenario with something not applicable on a kernel.
measured="$(find "${kernels[@]}" -mindepth 3 -maxdepth 3 -name result.json -print0 |
  xargs -0 --no-run-if-empty jq -r 'select(.status == "not-applicable" or ((.not_applicable // []) | length > 0))
    | "\(.scenario) \(.kernel.release | capture("^(?<v>[0-9]+\\.[0-9]+)").v)"' | sort -u)"
[ -n "$measured" ] || { echo "ci/check-kernel-differences.sh: no result.json in $reports says anything was not applicable" >&2; exit 2; }

problems=0
while read -r scenario version; do
  named=0
  while IFS='|' read -r kernels scenarios; do
    case " $scenarios " in *" $scenario "*) ;; *) continue ;; esac
    named=1
    if ! echo "$kernels" | grep -Eq "(^|[^0-9.])${version//./\\.}([^0-9.]|$)"; then
      echo "README: the row naming $scenario does not name kernel $version, where part of it was not applicable" >&2
      problems=$((problems + 1))
    fi
  done <<< "$rows"
  if [ "$named" -eq 0 ]; then
    echo "README: $scenario differs on kernel $version (not applicable there, in whole or in part) but no kernel difference names it" >&2
    problems=$((problems + 1))
  fi
done <<< "$measured"
while IFS='|' read -r kernels scenarios; do
  differs=0
  for scenario in $scenarios; do
    grep -q "^$scenario " <<< "$measured" && differs=1
  done
  if [ "$differs" -eq 0 ]; then
    echo "README: no scenario of the row for kernels$kernels ($scenarios) differed in the run in $reports" >&2
    problems=$((problems + 1))
  fi
done <<< "$rows"
if [ "$problems" -gt 0 ]; then
  echo "ci/check-kernel-differences.sh: $problems mismatch(es) between README.md and $reports" >&2
  exit 1
fi
echo "ci/check-kernel-differences.sh: README.md's kernel differences match $reports ($(wc -l <<< "$measured") scenario-kernel pairs, $(wc -l <<< "$rows") rows)"
