#!/usr/bin/env bash
# Installs what scripts/test.sh needs beyond Rust, on Debian/Ubuntu (root):
# netcat-openbsd (the contract's `nc -N` example), chromium (browser test),
# nginx and openssl (deploy/check.sh), node and npm (browser test driver),
# python3 with wechatpy (the forwarding tests' account handler) and PyJWT
# (tests/examples), g++ and cargo-fuzz (scripts/fuzz.sh), PostgreSQL's
# server and client (the store tests and the multi-host test start
# throwaway clusters; the distribution's service is not used), iproute2
# (`ip netns` for the multi-host test), and the rustfmt/clippy components.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(netcat-openbsd chromium nginx openssl curl ca-certificates procps iproute2 util-linux)
# The store tests start throwaway clusters with initdb/postgres.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs+=(postgresql postgresql-client)
# scripts/fuzz.sh: libfuzzer-sys compiles libFuzzer (C++).
command -v c++ >/dev/null || pkgs+=(g++)
command -v node >/dev/null || pkgs+=(nodejs)
command -v npm >/dev/null || pkgs+=(npm)
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# The forwarding tests run an account handler written with wechatpy.
command -v python3 >/dev/null || { apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null; }
python3 -c 'import wechatpy' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore wechatpy==1.8.18 cryptography \
  || python3 -m pip install --quiet --break-system-packages wechatpy==1.8.18 cryptography
# tests/examples/run.sh: the backend token-verifier example uses PyJWT.
python3 -c 'import jwt; jwt.PyJWTError' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'PyJWT>=2.8,<3' \
  || python3 -m pip install --quiet --break-system-packages 'PyJWT>=2.8,<3'
# scripts/fuzz.sh: cargo-fuzz (it runs on stable with `-s none`); fuzz.sh
# installs it too, for a user whose cargo is not root's.
if command -v cargo >/dev/null && ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version '^0.13' --locked --quiet
fi
if command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
echo "test dependencies installed"
