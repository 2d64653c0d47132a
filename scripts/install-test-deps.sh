#!/usr/bin/env bash
# Installs what scripts/test.sh needs beyond Rust, on Debian/Ubuntu (root):
# netcat-openbsd (the contract's `nc -N` example), chromium (browser test),
# nginx and openssl (deploy/check.sh), node and npm (browser test driver),
# and the rustfmt/clippy components.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(netcat-openbsd chromium nginx openssl curl ca-certificates procps)
command -v node >/dev/null || pkgs+=(nodejs)
command -v npm >/dev/null || pkgs+=(npm)
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
if command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
echo "test dependencies installed"
