#!/usr/bin/env bash
# Real-browser test: Debian's Chromium, driven by playwright-core, against the
# built ws-gateway and wechat-sim (run `cargo build --workspace` first; set
# SCAN_LOGIN_BIN_DIR to use binaries from elsewhere than target/debug).
# Needs node >= 20 and /usr/bin/chromium (bus lines go over node's own
# sockets). Screenshots and logs land in artifacts/browser/.
set -euo pipefail
cd "$(dirname "$0")"

chromium_bin="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium_bin" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run.sh: installing chromium with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
if [ ! -x "$chromium_bin" ]; then
  echo "run.sh: $chromium_bin not found (apt-get install chromium)" >&2
  exit 1
fi

npm install --no-audit --no-fund
# The spec report for people, and a TAP copy whose summary is checked: a
# run of zero tests (no test file found, every test filtered out) exits 0
# in node, and so would a skipped or todo test; none of that is a pass.
tap=$(mktemp "${TMPDIR:-/tmp}/browser-test.XXXXXX.tap")
trap 'rm -f "$tap"' EXIT
node --test \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$tap"
count() { # count NAME: N from the last "# NAME N" line of the TAP summary
  sed -n "s/^# $1 \([0-9][0-9]*\)\$/\1/p" "$tap" | tail -n 1
}
tests=$(count tests) pass=$(count pass)
if [ -z "$tests" ] || [ -z "$pass" ]; then
  echo "run.sh: FAIL: no test summary in node's TAP output" >&2
  exit 1
fi
if [ "$tests" -eq 0 ]; then
  echo "run.sh: FAIL: node --test ran 0 tests" >&2
  exit 1
fi
if [ "$pass" -ne "$tests" ]; then
  echo "run.sh: FAIL: $pass of $tests tests passed (skipped $(count skipped), todo $(count todo), cancelled $(count cancelled), failed $(count fail))" >&2
  exit 1
fi
echo "run.sh: $pass of $tests browser tests passed"
