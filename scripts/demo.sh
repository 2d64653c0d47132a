#!/usr/bin/env bash
# Runs the whole scan-login flow on this machine, with wechat-sim standing
# in for WeChat:
#
#   browser ──ws──> ws-gateway :1099 ──QR API──> wechat-sim :9000
#                       ^ notify :9999                │ "phone" scan
#                       └──────── wechat-callback :8080 <─┘ signed callback
#
# Usage: scripts/demo.sh [--smoke] [--no-build]
#   --smoke     start everything, check that each process answers (plus one
#               simulated scan through wechat-callback), stop, exit 0/1
#   --no-build  use the binaries already in target/release
#
# Ports and host can be changed with DEMO_HOST, DEMO_SIM_PORT,
# DEMO_CALLBACK_PORT, DEMO_GATEWAY_PORT and DEMO_NOTIFY_PORT. Logs go to a
# temporary directory (and, unless --smoke, to the terminal, prefixed).
# Ctrl-C stops all three processes; so does any one of them dying.
set -euo pipefail

SMOKE=0
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HOST="${DEMO_HOST:-127.0.0.1}"
SIM_PORT="${DEMO_SIM_PORT:-9000}"
CALLBACK_PORT="${DEMO_CALLBACK_PORT:-8080}"
GATEWAY_PORT="${DEMO_GATEWAY_PORT:-1099}"
NOTIFY_PORT="${DEMO_NOTIFY_PORT:-9999}"

APP_ID="wxdemo0000000000"
APP_SECRET="demo-secret"
WECHAT_TOKEN_VALUE="demo-token"
SIM_URL="http://$HOST:$SIM_PORT"
CALLBACK_URL="http://$HOST:$CALLBACK_PORT"
GATEWAY_URL="http://$HOST:$GATEWAY_PORT"
HEALTH_WAIT_TENTHS=150   # 15 s per process

BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"

say() { printf 'demo: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v curl >/dev/null || die "curl is required"

if [[ $BUILD == 1 ]]; then
  say "building release binaries (cargo build --release --bins -p ws-gateway -p wechat-callback -p wechat-sim)"
  cargo build --release --bins -p ws-gateway -p wechat-callback -p wechat-sim
fi
for b in wechat-sim wechat-callback ws-gateway; do
  [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b is missing (run without --no-build)"
done

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
for spec in "DEMO_SIM_PORT:$SIM_PORT" "DEMO_CALLBACK_PORT:$CALLBACK_PORT" \
            "DEMO_GATEWAY_PORT:$GATEWAY_PORT" "DEMO_NOTIFY_PORT:$NOTIFY_PORT"; do
  if port_busy "${spec#*:}"; then
    die "port ${spec#*:} on $HOST is already in use (set ${spec%%:*} to another port)"
  fi
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/scan-login-demo.XXXXXX")"
NAMES=()
PIDS=()
STOPPING=0

# Settings files or env meant for a real deployment must not leak in.
unset SCAN_LOGIN_CONFIG WECHAT_APP_SECRET WECHAT_TOKEN WECHAT_ENCODING_AES_KEY \
      NOTIFY_SECRET LOGIN_TOKEN_SECRET CREDENTIALS_DIRECTORY
export RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1

cleanup() {
  local status=$?
  trap - INT TERM EXIT
  STOPPING=1
  local i pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Give them the daemons' 5 s grace, then insist.
  for _ in $(seq 1 60); do
    local alive=0
    for pid in "${PIDS[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for i in "${!PIDS[@]}"; do
    if kill -0 "${PIDS[$i]}" 2>/dev/null; then
      say "${NAMES[$i]} did not stop in time; killing it"
      kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    fi
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  rm -rf "$TMP"
  exit "$status"
}
trap cleanup EXIT
trap 'say "stopping..."; exit 0' INT TERM

# show_log NAME: the end of NAME's log (already on the terminal unless --smoke).
show_log() {
  [[ $SMOKE == 1 ]] || return 0
  say "last lines of $1's log:"
  tail -n 25 "$TMP/$1.log" >&2 || true
}

# start NAME ARGS...: runs target/release/NAME in the background, logging to
# $TMP/NAME.log (and to the terminal, prefixed, unless --smoke).
start() {
  local name=$1; shift
  : > "$TMP/$name.log"
  if [[ $SMOKE == 1 ]]; then
    "$BIN_DIR/$name" "$@" >>"$TMP/$name.log" 2>&1 &
  else
    # The log pipe ignores Ctrl-C so the daemons' shutdown lines still show.
    "$BIN_DIR/$name" "$@" > >(trap '' INT; tee -a "$TMP/$name.log" | sed -u "s/^/[$name] /" >&2) 2>&1 &
  fi
  PIDS+=("$!")
  NAMES+=("$name")
}

# wait_healthy NAME URL: polls URL/healthz while the process lives.
wait_healthy() {
  local name=$1 url=$2 pid=${PIDS[-1]}
  for _ in $(seq 1 "$HEALTH_WAIT_TENTHS"); do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log "$name"
      die "$name exited during startup"
    fi
    if curl -sf -o /dev/null --max-time 1 "$url/healthz"; then
      say "$name is up at $url"
      return 0
    fi
    sleep 0.1
  done
  show_log "$name"
  die "$name did not answer $url/healthz in $((HEALTH_WAIT_TENTHS / 10)) s"
}

start wechat-sim \
  --listen "$HOST:$SIM_PORT" \
  --app-id "$APP_ID" --app-secret "$APP_SECRET" --token "$WECHAT_TOKEN_VALUE" \
  --callback-url "$CALLBACK_URL/wechat"
wait_healthy wechat-sim "$SIM_URL"

start wechat-callback \
  --listen "$HOST:$CALLBACK_PORT" \
  --token "$WECHAT_TOKEN_VALUE" --app-id "$APP_ID" --app-secret "$APP_SECRET" \
  --wechat-api-base "$SIM_URL" \
  --notify-addr "$HOST:$NOTIFY_PORT" \
  --db "$TMP/scan-login.db" \
  --login-token-secret demo-jwt-secret-not-for-production-use
wait_healthy wechat-callback "$CALLBACK_URL"

start ws-gateway \
  --listen "$HOST:$GATEWAY_PORT" \
  --notify-listen "$HOST:$NOTIFY_PORT" \
  --app-id "$APP_ID" --app-secret "$APP_SECRET" \
  --wechat-api-base "$SIM_URL" \
  --qrcode-image-base "$SIM_URL/cgi-bin/showqrcode?ticket=" \
  --demo-sim-url "$SIM_URL"
wait_healthy ws-gateway "$GATEWAY_URL"

if [[ $SMOKE == 1 ]]; then
  for url in "$SIM_URL" "$CALLBACK_URL" "$GATEWAY_URL"; do
    curl -sf --max-time 5 "$url/healthz" >/dev/null || die "$url/healthz failed"
  done
  curl -sf --max-time 5 -o /dev/null "$GATEWAY_URL/" || die "$GATEWAY_URL/ (login page) failed"

  # One scan through the real callback: sim → wechat-callback (signature,
  # user/info against the sim) → gateway (no browser holds this fd, so the
  # reply asks the user to scan again) → reply back to the "phone".
  token_json=$(curl -sf --max-time 5 -X POST "$SIM_URL/cgi-bin/stable_token" \
    -d "{\"grant_type\":\"client_credential\",\"appid\":\"$APP_ID\",\"secret\":\"$APP_SECRET\",\"force_refresh\":false}") \
    || die "stable_token failed"
  access_token=$(sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' <<<"$token_json")
  [[ -n $access_token ]] || die "no access_token in $token_json"
  qr_json=$(curl -sf --max-time 5 -X POST "$SIM_URL/cgi-bin/qrcode/create?access_token=$access_token" \
    -d "{\"expire_seconds\":120,\"action_name\":\"QR_SCENE\",\"action_info\":{\"scene\":{\"scene_id\":$((RANDOM * 32768 + RANDOM + 1))}}}") \
    || die "qrcode/create failed"
  ticket=$(sed -n 's/.*"ticket":"\([^"]*\)".*/\1/p' <<<"$qr_json")
  [[ -n $ticket ]] || die "no ticket in $qr_json"
  if ! reply=$("$BIN_DIR/wechat-sim" scan --ticket "$ticket" --sim "$SIM_URL" 2>"$TMP/scan.err"); then
    cat "$TMP/scan.err" >&2
    show_log wechat-callback
    die "a simulated scan through wechat-callback failed"
  fi
  [[ -n $reply ]] || { show_log wechat-callback; die "the simulated scan got no reply text"; }
  say "a signed scan went wechat-sim -> wechat-callback -> ws-gateway and back"
  say "(no page holds that code, so the phone is asked to scan again: \"$reply\")"
  say "smoke test passed: all three daemons answer and a scan goes all the way through"
  exit 0
fi

scan_hint="$BIN_DIR/wechat-sim scan --ticket <ticket>"
scan_hint="${scan_hint#"$ROOT/"}"
[[ $SIM_URL == "http://127.0.0.1:9000" ]] || scan_hint+=" --sim $SIM_URL"
echo
echo "Open $GATEWAY_URL/ and press 'Simulate scan' (or run: $scan_hint,"
echo "or paste the nc line the page shows)."
echo "Press Ctrl-C to stop."
echo

# Watch the children; if one dies, stop the rest.
while :; do
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      [[ $STOPPING == 1 ]] && exit 0
      code=0
      wait "${PIDS[$i]}" || code=$?
      say "${NAMES[$i]} exited (status $code); stopping the others"
      show_log "${NAMES[$i]}"
      exit 1
    fi
  done
  sleep 0.5 &
  wait $! || true
done
