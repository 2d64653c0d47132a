#!/usr/bin/env bash
# Coverage-guided fuzzing of the wire formats (fuzz/, a cargo-fuzz project
# outside the workspace): builds every target and runs each in turn for
# SECONDS_PER_TARGET (default 20) from the committed seed corpus.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Runs on the stable toolchain: `cargo fuzz ... -s none` (no sanitizer;
# the code under test has no `unsafe`) passes rustc only stable flags
# (-Cpasses=sancov-module and -Cllvm-args=-sanitizer-coverage-*), so
# libFuzzer gets its coverage feedback without nightly.
#
# The fuzzers work on a temporary copy of fuzz/corpus/<target>: what they
# find is not written into the repository. A crash (a panic, a failed
# invariant, a hang over 10 s, or over 2 GiB of memory) leaves its input
# in fuzz/artifacts/<target>/, printed at the end, and the exit status is 1.
# Reproduce one with `cd fuzz && cargo fuzz run -s none <target> <file>`.
#
# FUZZ_LOG_DIR=<dir> keeps each target's full libFuzzer log there (its
# status lines show when coverage stopped growing).
#
# One fuzzer at a time, one job each. Installs cargo-fuzz if it is missing
# (scripts/install-test-deps.sh does too).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
shift || true
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "=== installing cargo-fuzz"
  cargo install cargo-fuzz --version '^0.13' --locked
fi
command -v c++ >/dev/null || { echo "libfuzzer-sys needs a C++ compiler (g++)" >&2; exit 1; }

cd fuzz
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "=== cargo fuzz build -s none (${#targets[@]} targets)"
start=$(date +%s)
cargo fuzz build -s none
echo "built in $(( $(date +%s) - start )) s"

work="$(mktemp -d "${TMPDIR:-/tmp}/scan-login-fuzz.XXXXXX")"
# The config target rewrites one settings file per input: in memory where
# /dev/shm is there (five times the runs of a disk-backed /tmp).
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  cfg="$(mktemp -d /dev/shm/scan-login-fuzz.XXXXXX)"
else
  cfg="$work/config"
  mkdir -p "$cfg"
fi
trap 'rm -rf "$work" "$cfg"' EXIT
export FUZZ_CONFIG_DIR="$cfg"

crashes=()
summary=()
for t in "${targets[@]}"; do
  if [ ! -d "corpus/$t" ]; then
    echo "no seed corpus fuzz/corpus/$t" >&2
    exit 1
  fi
  mkdir -p "$work/corpus/$t" "artifacts/$t"
  cp -R "corpus/$t/." "$work/corpus/$t/"
  log="$work/$t.log"
  echo "=== $t: ${seconds} s"
  # Artifacts are named after the target; anything already in its folder
  # is from an earlier run.
  before="$(ls "artifacts/$t" | sort)"
  status=0
  cargo fuzz run -s none "$t" "$work/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  # The last status line libFuzzer printed: runs, coverage, corpus.
  last="$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)"
  rate="$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' || true)"
  echo "$last"
  if [ -n "${FUZZ_LOG_DIR:-}" ]; then
    mkdir -p "$FUZZ_LOG_DIR"
    cp "$log" "$FUZZ_LOG_DIR/$t.log"
  fi
  summary+=("$(printf '%-12s %s exec/s=%s' "$t" "${last:-no status line}" "${rate:-?}")")
  new="$(comm -13 <(echo "$before") <(ls "artifacts/$t" | sort) | sed '/^$/d' || true)"
  if [ "$status" -ne 0 ] || [ -n "$new" ]; then
    # What the fuzzer said about it: the panic and the input's path.
    grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written|timeout|out-of-memory" "$log" | head -n 20 >&2 || true
    if [ -n "$new" ]; then
      while read -r f; do crashes+=("fuzz/artifacts/$t/$f"); done <<<"$new"
    else
      crashes+=("$t: exit status $status, no artifact (log below)")
      tail -n 40 "$log" >&2
    fi
  fi
done

echo
echo "=== summary (${seconds} s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#crashes[@]} -gt 0 ]; then
  echo
  echo "fuzzing found ${#crashes[@]} crash(es):" >&2
  printf '  %s\n' "${crashes[@]}" >&2
  exit 1
fi
echo "no crash"
