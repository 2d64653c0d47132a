#!/usr/bin/env bash
# The whole test suite, as the README's quick start runs it:
#   1. cargo test for every crate (unit tests, each daemon's integration
#      tests against its spawned binary, the end-to-end suite over all three);
#   2. deploy/check.sh (systemd units, nginx config, install.sh);
#   3. the browser test (headless Chromium against the real gateway);
#   4. every benchmark in its tiny configuration (no timing is asserted).
# Needs netcat-openbsd, chromium, nginx and node/npm: `sudo scripts/install-test-deps.sh`
# installs them on Debian/Ubuntu (.ci/run does that, then runs this).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
nc -h 2>&1 | grep -q -- '-N' || missing+=("netcat-openbsd (nc with -N)")
command -v chromium >/dev/null || missing+=("chromium")
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=("nginx")
command -v npm >/dev/null || missing+=("npm")
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing test prerequisites: ${missing[*]}" >&2
  echo "install them with: sudo scripts/install-test-deps.sh" >&2
  exit 1
fi

step() { printf '\n=== %s\n' "$*"; }
# Where cargo puts the debug binaries (CARGO_TARGET_DIR is honoured).
bin_dir="$(cd "${CARGO_TARGET_DIR:-target}" 2>/dev/null && pwd || echo "$PWD/target")/debug"

step "cargo build (debug binaries for the tests)"
cargo build --workspace --bins --locked

step "cargo test"
cargo test --workspace --locked

step "deploy/check.sh"
bash deploy/check.sh

step "browser test"
SCAN_LOGIN_BIN_DIR="$bin_dir" bash tests/browser/run.sh

if [ -d bench ]; then
  step "benchmarks, tiny configuration (functional check only)"
  cargo run --quiet --locked -p scan-bench -- all --tiny --runs 1 --bin-dir "$bin_dir"
fi
echo
echo "all tests passed"
