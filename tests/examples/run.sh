#!/usr/bin/env bash
# Runs the examples in examples/ against the real binaries:
#   1. starts wechat-sim, wechat-callback and ws-gateway from target/debug
#      (or $SCAN_LOGIN_BIN_DIR) on free loopback ports;
#   2. logs a page in end to end (page.mjs: WebSocket → qrcode_url → the
#      simulator's phone scans → wechat-callback → bus → scan_success) and
#      takes the login token from scan_success;
#   3. runs the backend verifiers on that token: examples/backend/python
#      (PyJWT) and examples/backend/node (jsonwebtoken) must each accept it
#      once with iss and aud checked, and refuse a replay, a wrong audience
#      and a token signed with another secret (and a few more);
#   4. runs examples/handler-sends-bus-line against the gateway's notify
#      port: notify.py's notify_login and the wechatpy handler.
# Needs node >= 20, npm, python3 with PyJWT and wechatpy, curl
# (scripts/install-test-deps.sh). `npm ci` is run here. Every step is bounded;
# all processes started here are stopped on exit.
# Prints `N passed, 0 failed` last when every check passed; exits 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")"
HERE="$PWD"
ROOT="$(cd ../.. && pwd)"
BIN_DIR="${SCAN_LOGIN_BIN_DIR:-$ROOT/target/debug}"

export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ in examples/

say() { printf 'examples: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

for b in wechat-sim wechat-callback ws-gateway; do
  [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b is missing (cargo build --workspace --bins, or set SCAN_LOGIN_BIN_DIR)"
done
for c in node npm python3 curl; do
  command -v "$c" >/dev/null || die "$c is required (scripts/install-test-deps.sh)"
done
python3 -c 'import jwt; jwt.PyJWTError' 2>/dev/null || die "PyJWT is missing: python3 -m pip install PyJWT (scripts/install-test-deps.sh)"
python3 -c 'import wechatpy' 2>/dev/null || die "wechatpy is missing (scripts/install-test-deps.sh)"

say "npm ci (tests/examples, examples/backend/node)"
(cd "$HERE" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >/dev/null)
(cd "$ROOT/examples/backend/node" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >/dev/null)

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    for log in "$TMP"/*.log; do
      [[ -f "$log" ]] || continue
      say "--- last lines of $(basename "$log")"
      tail -n 30 "$log" >&2 || true
    done
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Four ports that are free now, drawn below the kernel's ephemeral range
# (a bind(0) port comes from that range, where outgoing connections may
# take it before the daemon binds it), as the Rust test kit does.
read -r P_SIM P_CB P_GW P_BUS < <(python3 -c '
import random, socket
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except OSError:
    low = 32768
ports = []
for _ in range(256):
    if len(ports) == 4:
        break
    p = random.randrange(10000, low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        if p not in ports:
            ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
assert len(ports) == 4, "no free ports"
print(*ports)')

APP_ID=wxexample000000001
APP_SECRET=s3cr3t
WECHAT_TOKEN_VALUE=tok
LOGIN_SECRET="examples-login-token-secret-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
ISSUER=wechat-scan-login
AUDIENCE=https://site.test
OPENID=oExample0000000000000000Ex01
SIM="http://127.0.0.1:$P_SIM"

"$BIN_DIR/wechat-sim" --listen "127.0.0.1:$P_SIM" --app-id "$APP_ID" --app-secret "$APP_SECRET" \
  --token "$WECHAT_TOKEN_VALUE" --callback-url "http://127.0.0.1:$P_CB/wechat" >"$TMP/wechat-sim.log" 2>&1 &
PIDS+=($!)
WECHAT_TOKEN="$WECHAT_TOKEN_VALUE" WECHAT_APP_SECRET="$APP_SECRET" LOGIN_TOKEN_SECRET="$LOGIN_SECRET" \
  "$BIN_DIR/wechat-callback" --listen "127.0.0.1:$P_CB" --app-id "$APP_ID" --wechat-api-base "$SIM" \
  --notify-addr "127.0.0.1:$P_BUS" --db "$TMP/x.db" --login-token-audience "$AUDIENCE" \
  >"$TMP/wechat-callback.log" 2>&1 &
PIDS+=($!)
WECHAT_APP_SECRET="$APP_SECRET" "$BIN_DIR/ws-gateway" --listen "127.0.0.1:$P_GW" \
  --notify-listen "127.0.0.1:$P_BUS" --app-id "$APP_ID" --wechat-api-base "$SIM" \
  --qrcode-image-base "$SIM/cgi-bin/showqrcode?ticket=" >"$TMP/ws-gateway.log" 2>&1 &
PIDS+=($!)

# Each daemon's /healthz must answer 200 within 30 s (and the process live).
i=0
for name_port in "wechat-sim:$P_SIM" "wechat-callback:$P_CB" "ws-gateway:$P_GW"; do
  name="${name_port%%:*}" port="${name_port##*:}" pid="${PIDS[$i]}"
  i=$((i + 1))
  for try in $(seq 300); do
    if curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null; then break; fi
    kill -0 "$pid" 2>/dev/null || die "$name exited before it was healthy"
    [[ $try -lt 300 ]] || die "$name: /healthz not 200 within 30 s"
    sleep 0.1
  done
done
say "stack up: sim :$P_SIM, callback :$P_CB, gateway :$P_GW, bus :$P_BUS"

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok - $*"; }
not_ok() { FAIL=$((FAIL + 1)); echo "not ok - $*"; }
# Runs a checker that prints `ok - ...` / `not ok - ...` lines and counts
# them; a checker that fails without saying why counts as one failure.
run_checker() {
  local label="$1"; shift
  local out rc=0
  out="$("$@" 2>"$TMP/checker.err")" || rc=$?
  [[ -n "$out" ]] && echo "$out"
  local p f
  p=$(grep -c '^ok - ' <<<"$out" || true)
  f=$(grep -c '^not ok - ' <<<"$out" || true)
  PASS=$((PASS + p))
  FAIL=$((FAIL + f))
  if [[ $rc -ne 0 && $f -eq 0 ]]; then
    not_ok "$label exited $rc: $(tail -n 5 "$TMP/checker.err" | tr '\n' ' ')"
  elif [[ -s "$TMP/checker.err" ]]; then
    sed 's/^/    /' "$TMP/checker.err" >&2
  fi
}

# --- 1. a real login token, end to end -----------------------------------------
TOKEN=""
if page_out="$(PAGE_TIMEOUT_MS=20000 timeout 30 node page.mjs "ws://127.0.0.1:$P_GW/ws" "$SIM" --scan "$OPENID" 2>"$TMP/page.err")"; then
  frame="$(sed -n 's/^scan_success //p' <<<"$page_out")"
  sim_answer="$(sed -n 's/^sim //p' <<<"$page_out")"
  # field JSON KEY: the string KEY of a JSON object, "" when anything is off.
  field() { python3 -c 'import json,sys
try: print(json.loads(sys.argv[1]).get(sys.argv[2]) or "")
except Exception: print("")' "$1" "$2"; }
  TOKEN="$(field "$frame" token)"
  frame_openid="$(field "$frame" openid)"
  reply="$(field "$sim_answer" reply)"
  if [[ "$frame_openid" == "$OPENID" && "$TOKEN" == *.*.* ]]; then
    ok "end to end: the page got scan_success for $OPENID with a token"
  else
    not_ok "end to end: unexpected scan_success frame: $frame"
  fi
  if [[ "$reply" == *"login successful"* ]]; then
    ok "end to end: the phone was told \"$reply\""
  else
    not_ok "end to end: the phone's reply was \"$reply\""
  fi
else
  not_ok "end to end: no scan_success: $(tr '\n' ' ' <"$TMP/page.err") $page_out"
fi

# --- 2. the backend verifiers on that token ----------------------------------------
if [[ -n "$TOKEN" ]]; then
  run_checker "python verifier" timeout 60 python3 check_python_verifier.py \
    "$TOKEN" "$LOGIN_SECRET" "$ISSUER" "$AUDIENCE" "$OPENID"
  run_checker "node verifier" timeout 60 node check-node-verifier.mjs \
    "$TOKEN" "$LOGIN_SECRET" "$ISSUER" "$AUDIENCE" "$OPENID"
else
  not_ok "verifiers: skipped, no token"
fi

# --- 3. an account's own handler sends the bus line ----------------------------
run_checker "bus line" env LOGIN_TOKEN_SECRET="$LOGIN_SECRET" EXPECT_ISSUER="$ISSUER" \
  EXPECT_AUDIENCE="$AUDIENCE" WECHAT_TOKEN="$WECHAT_TOKEN_VALUE" \
  timeout 120 python3 check_bus_line.py "ws://127.0.0.1:$P_GW/ws" "$SIM" "$P_BUS"

echo
if [[ $FAIL -eq 0 && $PASS -gt 0 ]]; then
  echo "$PASS passed, 0 failed"
else
  echo "FAILED: $PASS passed, $FAIL failed"
  exit 1
fi
