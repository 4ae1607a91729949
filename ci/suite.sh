#!/usr/bin/env bash
# The main job: set up the machine, then run the scenario suite in parallel, writing reports/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
cargo build --release --locked -p netfault
exec target/release/netfault run "$@"
