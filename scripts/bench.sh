#!/usr/bin/env bash
# Builds the release binaries and runs every benchmark scenario against them
# (see BENCHMARKS.md). Extra arguments go to `scan-bench all`, e.g.
#   scripts/bench.sh --tiny          # seconds (CI runs --tiny from scripts/test.sh)
#   scripts/bench.sh --runs 5
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/release/scan-bench" all "$@"
