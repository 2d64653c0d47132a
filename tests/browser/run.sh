#!/usr/bin/env bash
# Real-browser test: Debian's Chromium, driven by playwright-core, against the
# built ws-gateway and wechat-sim (run `cargo build --workspace` first; set
# SCAN_LOGIN_BIN_DIR to use binaries from elsewhere than target/debug).
# Needs node >= 20 and /usr/bin/chromium; nc (netcat-openbsd) is used when
# present. Screenshots and logs land in artifacts/browser/.
set -euo pipefail
cd "$(dirname "$0")"

chromium_bin="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium_bin" ] || ! command -v nc >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run.sh: installing chromium and netcat-openbsd with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium netcat-openbsd >/dev/null
  fi
fi
if [ ! -x "$chromium_bin" ]; then
  echo "run.sh: $chromium_bin not found (apt-get install chromium)" >&2
  exit 1
fi

npm install --no-audit --no-fund
node --test
