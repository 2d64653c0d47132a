#!/usr/bin/env bash
# The whole test suite, as the README's quick start runs it:
#   1. cargo test for every crate (unit tests, each daemon's integration
#      tests against its spawned binary, the end-to-end suite over all three);
#   2. deploy/check.sh (systemd units, nginx config, install.sh);
#   3. the browser test (headless Chromium against the real gateway);
#   4. every benchmark in its tiny configuration (no timing is asserted).
#   5. the examples (token verifiers in Python and Node, the bus-line
#      handler example) against the real binaries.
# What is missing (netcat-openbsd, chromium, nginx, node/npm, python3 with
# wechatpy and PyJWT, PostgreSQL, iproute2) is installed first by scripts/install-test-deps.sh,
# as root or through `sudo -n`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
nc -h 2>&1 | grep -q -- '-N' || missing+=("netcat-openbsd (nc with -N)")
command -v chromium >/dev/null || missing+=("chromium")
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=("nginx")
command -v npm >/dev/null || missing+=("npm")
python3 -c 'import wechatpy, jwt' 2>/dev/null || missing+=("python3 with wechatpy and PyJWT")
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=("postgresql")
command -v ip >/dev/null || missing+=("iproute2")
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing missing test prerequisites: ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then
    bash scripts/install-test-deps.sh
  elif sudo -n true 2>/dev/null; then
    sudo -n bash scripts/install-test-deps.sh
  else
    echo "cannot install them without root: run sudo scripts/install-test-deps.sh" >&2
    exit 1
  fi
fi

step() { printf '\n=== %s\n' "$*"; }
# Where cargo puts the debug binaries (CARGO_TARGET_DIR is honoured).
bin_dir="$(cd "${CARGO_TARGET_DIR:-target}" 2>/dev/null && pwd || echo "$PWD/target")/debug"

step "cargo build (debug binaries for the tests)"
cargo build --workspace --bins --locked

step "cargo test"
# The output is kept to check that each test binary really ran tests: one
# that runs none (all filtered out, a harness mix-up, a renamed target)
# still says "test result: ok".
cargo_log=$(mktemp "${TMPDIR:-/tmp}/cargo-test.XXXXXX.log")
trap 'rm -f "$cargo_log"' EXIT
# (Colours as on a terminal when there is one, though the output goes
# through tee.)
color=()
if [ -t 1 ]; then color=(--color always); fi
cargo test --workspace --locked "${color[@]}" -- "${color[@]}" 2>&1 | tee "$cargo_log"
# Integration test binaries that must exist and pass at least one test; any
# other integration test binary must pass at least one too.
expected_bins=(e2e callback gateway sim)
check_test_counts() { # check_test_counts LOG
    local line kind= bin= b bad=0
    local -A passed=()
    while IFS= read -r line; do
        if [[ $line =~ ^[[:space:]]+Running\ (unittests\ )?.*/deps/([A-Za-z0-9_]+)-[0-9a-f]+\)$ ]]; then
            bin=${BASH_REMATCH[2]}
            if [ -n "${BASH_REMATCH[1]}" ]; then kind=unit; else kind=integration; fi
        elif [[ $line =~ ^[[:space:]]+Doc-tests\  ]]; then
            kind=doc bin=
        elif [[ $line =~ test\ result:\ ok\.\ ([0-9]+)\ passed ]] && [ "$kind" = integration ]; then
            passed[$bin]=$((${passed[$bin]:-0} + BASH_REMATCH[1]))
        fi
    done < <(sed -E 's/\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9])//g' "$1") # colours off
    for b in "${expected_bins[@]}"; do
        if [ -z "${passed[$b]:-}" ]; then
            echo "cargo test: the integration test binary '$b' did not run (no 'test result: ok' for it)" >&2
            bad=1
        fi
    done
    for b in "${!passed[@]}"; do
        if [ "${passed[$b]}" -eq 0 ]; then
            echo "cargo test: the integration test binary '$b' ran 0 tests" >&2
            bad=1
        fi
    done
    [ "$bad" = 0 ] || return 1
    printf 'tests passed per integration test binary:'
    for b in $(printf '%s\n' "${!passed[@]}" | LC_ALL=C sort); do
        printf ' %s %s' "$b" "${passed[$b]}"
    done
    echo
}
# Totals of every cargo test binary, for the closing line.
cargo_passed=$(sed 's/\x1b\[[0-9;]*m//g' "$cargo_log" | awk '/^test result: /{for(i=1;i<=NF;i++) if($i=="passed;") p+=$(i-1)} END{print p+0}')
check_test_counts "$cargo_log" || {
    echo "cargo test passed, but a test binary ran no tests: see above" >&2
    exit 1
}

step "deploy/check.sh"
bash deploy/check.sh

step "browser test"
SCAN_LOGIN_BIN_DIR="$bin_dir" bash tests/browser/run.sh

step "examples (backend token verifiers, handler sending the bus line)"
SCAN_LOGIN_BIN_DIR="$bin_dir" bash tests/examples/run.sh

if [ -d bench ]; then
  step "benchmarks, tiny configuration (functional check only)"
  cargo run --quiet --locked -p scan-bench -- all --tiny --runs 1 --bin-dir "$bin_dir"
fi
echo
echo "all tests passed"
echo "cargo: ${cargo_passed} passed, 0 failed"
