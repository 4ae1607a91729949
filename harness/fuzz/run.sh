#!/bin/sh
# Seeds the corpus and fuzzes the parse target for SECONDS (default 1800) in one process that goes on after a
# finding (-fork=1 -ignore_*). Findings land in artifacts/parse/; the grown corpus stays in corpus/parse/.
# Needs cargo-fuzz (cargo install cargo-fuzz); RUSTC_BOOTSTRAP=1 lets the stable toolchain take its nightly flags.
set -eu
cd "$(dirname "$0")"
./seed.sh
cd ..
RUSTC_BOOTSTRAP=1 exec cargo fuzz run parse -- \
    -dict=fuzz/parse.dict \
    -max_len=16384 \
    -timeout=2 \
    -rss_limit_mb=1024 \
    -max_total_time="${1:-1800}" \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -print_final_stats=1
