#!/usr/bin/env bash
# CI check of deploy/: systemd units, nginx example, sysusers/tmpfiles files,
# example configs and install.sh. Run from anywhere (it finds the repo root);
# `.ci/run` runs it after `cargo build --workspace`. Takes a few seconds.
# Root is needed for the one-time `apt-get install` of missing tools and for
# step 5 (skipped without root).
#
# What it does, in order (each step prints "ok", prints "SKIPPED: <why>" for
# what it could not check, or fails the script; with CI=true a skip fails):
#  1. tools: nginx, openssl, systemd-analyze, python3 (apt-get installed if
#     missing)
#  2. install.sh --help; install.sh into a DESTDIR root with fake binaries,
#     for --prefix /usr/local (default) and --prefix /usr
#  3. systemd-analyze verify --root=ROOT for ws-gateway.service and the
#     template as instances wechat-callback@8081/@8082 (with the key-rotation
#     drop-in): the units' ExecStart paths exist in ROOT, nothing on the host
#     is touched. Any warning counts as a failure.
#  4. systemd-analyze security --offline=true --threshold=20 (exposure <= 2.0;
#     the threshold is the exposure level x10)
#  5. systemd-sysusers / systemd-tmpfiles --root=ROOT: the user is created and
#     the config/credential permissions come out right (SKIPPED without root)
#  6. nginx -t on deploy/nginx.conf and deploy/two-hosts/nginx.conf inside a
#     minimal main config, with a self-signed certificate made on the fly;
#     any [warn] (on stderr or in the error log) counts as a failure, and a
#     config with a known warning proves the check notices one
#  7. install.sh idempotence: two runs leave identical trees; a third run after
#     editing a config keeps the edit and writes NAME.toml.new
#  8. example configs: valid TOML, no secrets, and (when the daemons are built,
#     newest of target/debug and target/release; SKIPPED when they are not)
#     the keys are exactly the
#     daemon's flags (minus secrets) and each commented default is the one
#     --help shows; the built daemon's --check-config accepts the example the
#     way the unit runs it, with made-up secrets in $CREDENTIALS_DIRECTORY.
#     deploy/two-hosts/*.toml: valid TOML, no secrets, keys a subset of
#     deploy/config's, node ids and the callbacks' notify_addr agree
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cd "$repo"

step() { printf '== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
fail() {
    printf 'deploy/check.sh: FAIL: %s\n' "$*" >&2
    exit 1
}
# A check that could not run: said loudly, and never allowed in CI.
skipped=0
skip() {
    printf '   SKIPPED: %s\n' "$*"
    skipped=$((skipped + 1))
    if [ "${CI:-}" = true ]; then
        fail "skipped with CI=true: $*"
    fi
}
# Syntax check with the interpreter the script's #! line names, and only it.
syntax_check() { # syntax_check FILE
    local shebang
    IFS= read -r shebang <"$1" || true
    case $shebang in
    '#!/bin/sh' | '#!/usr/bin/env sh') sh -n "$1" ;;
    '#!/bin/bash' | '#!/usr/bin/env bash') bash -n "$1" ;;
    *) fail "$1: unknown #! line '$shebang' (expected /bin/sh or bash)" ;;
    esac
}

T=$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")
trap 'rm -rf "$T"' EXIT
trap 'fail "line $LINENO: \`$BASH_COMMAND\` failed"' ERR
started=$SECONDS

# -- 1. tools --------------------------------------------------------------
step "tools"
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
python3 -c 'import tomllib' >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and no apt-get to install them"
    [ "$(id -u)" = 0 ] || fail "missing ${missing[*]}; run as root to apt-get install them"
    echo "   installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq >"$T/apt.log" 2>&1 || { cat "$T/apt.log" >&2; fail "apt-get update"; }
    timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$T/apt.log" 2>&1 \
        || { cat "$T/apt.log" >&2; fail "apt-get install ${missing[*]}"; }
fi
PATH=$PATH:/usr/sbin:/sbin
ok "$(nginx -v 2>&1), $(openssl version), $(systemd-analyze --version | head -n1)"

# -- 2. install into DESTDIR roots -----------------------------------------
step "install.sh"
syntax_check "$here/install.sh" || fail "install.sh has a syntax error"
"$here/install.sh" --help >"$T/help.txt" || fail "install.sh --help exits non-zero"
grep -q -- '--prefix' "$T/help.txt" || fail "install.sh --help does not document --prefix"
if "$here/install.sh" --no-such-option >/dev/null 2>&1; then
    fail "install.sh accepts an unknown option"
fi

# Fake binaries: the check needs files at the units' ExecStart paths, not the
# real daemons (and must not depend on a release build).
mkdir -p "$T/bin"
for b in ws-gateway wechat-callback; do
    printf '#!/bin/sh\nexit 0\n' >"$T/bin/$b"
    chmod 0755 "$T/bin/$b"
done

# ROOT: a throwaway file system root holding the installed files plus the
# host's own units (sysinit.target, network-online.target, ...), so that
# `systemd-analyze verify --root=ROOT` resolves every dependency and checks
# ExecStart= against ROOT/usr/local/bin, never the host's /usr/local/bin.
make_root() { # make_root DIR [install.sh options]
    local root=$1
    shift
    mkdir -p "$root/usr/lib/systemd"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/system" 2>/dev/null \
        || cp -a /lib/systemd/system "$root/usr/lib/systemd/system"
    "$here/install.sh" --destdir "$root" --from "$T/bin" "$@" >"$root.log" 2>&1 \
        || { cat "$root.log" >&2; fail "install.sh --destdir $root $* failed"; }
}
R=$T/root
make_root "$R"
RU=$T/root-usr
make_root "$RU" --prefix /usr
ok "installed into DESTDIR roots (--prefix /usr/local and --prefix /usr)"

# The units exactly as documented.
want_gw='ExecStart=/usr/local/bin/ws-gateway --config /etc/wechat-scan-login/gateway.toml'
want_cb='ExecStart=/usr/local/bin/wechat-callback --config /etc/wechat-scan-login/callback.toml --listen 127.0.0.1:%i'
grep -qxF "$want_gw" "$R/etc/systemd/system/ws-gateway.service" || fail "ws-gateway.service: expected '$want_gw'"
grep -qxF "$want_cb" "$R/etc/systemd/system/wechat-callback@.service" || fail "wechat-callback@.service: expected '$want_cb'"
grep -qxF "${want_gw//\/usr\/local\//\/usr\/}" "$RU/usr/lib/systemd/system/ws-gateway.service" \
    || fail "--prefix /usr: ws-gateway.service does not run /usr/bin/ws-gateway"
[ -x "$RU/usr/bin/wechat-callback" ] || fail "--prefix /usr: no /usr/bin/wechat-callback"
for u in "$here/ws-gateway.service" "$here/wechat-callback@.service"; do
    for key in Type=notify NotifyAccess=main WatchdogSec=30s Restart=on-failure User=wechat-scan-login; do
        grep -qxF "$key" "$u" || fail "$(basename "$u"): missing $key"
    done
    grep -q '^ExecStartPre=.* --check-config$' "$u" || fail "$(basename "$u"): no ExecStartPre= ... --check-config"
    # Secrets only through LoadCredential=, never in the unit text. The one
    # Environment= allowed is glibc's allocator tuning (MALLOC_*, no secret).
    if grep -vE '^Environment=MALLOC_[A-Z_]+=[0-9]+$' "$u" \
        | grep -nEi '^(Environment|SetCredential|UnsetEnvironment|PassEnvironment)|SECRET=|TOKEN=|AES_KEY='; then
        fail "$(basename "$u"): secrets or environment in the unit; use LoadCredential="
    fi
    grep -q '^LoadCredential=[a-z_]*:/etc/wechat-scan-login/credentials/' "$u" || fail "$(basename "$u"): no LoadCredential="
done
grep -qxF 'StateDirectory=wechat-scan-login' "$here/wechat-callback@.service" || fail "callback: no shared StateDirectory"
ok "unit contents"

# -- 3. systemd-analyze verify -----------------------------------------------
step "systemd-analyze verify"
mkdir -p "$R/etc/systemd/system/wechat-callback@.service.d"
cp "$here/wechat-callback@.service.d/aes-key-rotation.conf" "$R/etc/systemd/system/wechat-callback@.service.d/"
units=(ws-gateway.service wechat-callback@8081.service wechat-callback@8082.service)
verify() { # verify ROOT UNIT...
    local root=$1 out
    shift
    if ! out=$(cd "$T" && timeout 60 systemd-analyze verify --root="$root" "$@" 2>&1) || [ -n "$out" ]; then
        printf '%s\n' "$out" >&2
        fail "systemd-analyze verify --root=$root $*"
    fi
}
verify "$R" "${units[@]}"
verify "$RU" "${units[@]}"
# The check must catch a unit whose ExecStart= is missing.
rm "$RU/usr/bin/ws-gateway"
if (cd "$T" && systemd-analyze verify --root="$RU" ws-gateway.service) >/dev/null 2>&1; then
    fail "systemd-analyze verify --root does not notice a missing ExecStart binary; this check is blind"
fi
ok "${units[*]} (with aes-key-rotation.conf), for /usr/local and /usr"

# -- 4. systemd-analyze security ---------------------------------------------
step "systemd-analyze security (exposure <= 2.0)"
for u in "${units[@]}"; do
    if ! out=$(cd "$T" && timeout 60 systemd-analyze security --offline=true --threshold=20 --no-pager --root="$R" "$u" 2>&1); then
        printf '%s\n' "$out" | grep -E '✗|Overall' >&2 || printf '%s\n' "$out" >&2
        fail "$u: exposure above 2.0"
    fi
    ok "$(printf '%s\n' "$out" | grep -o 'Overall exposure level.*' | sed 's/ *[^ ]*$//')"
done

# -- 5. sysusers.d / tmpfiles.d ----------------------------------------------
step "sysusers.d and tmpfiles.d"
check_mode() { # check_mode PATH MODE UID GID
    local got
    [ -e "$1" ] || fail "$1 is missing"
    got=$(stat -c '%a %u %g' "$1")
    [ "$got" = "$2 $3 $4" ] || fail "$1: mode/uid/gid $got, expected $2 $3 $4"
}
if [ "$(id -u)" = 0 ]; then
    timeout 30 systemd-sysusers --root="$R" "$R/etc/sysusers.d/wechat-scan-login.conf" >/dev/null 2>"$T/sysusers.err" \
        || { cat "$T/sysusers.err" >&2; fail "systemd-sysusers"; }
    grep -q '^wechat-scan-login:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$' "$R/etc/passwd" || fail "sysusers.d did not create the system user"
    touch "$R/etc/wechat-scan-login/credentials/token"
    chmod 0644 "$R/etc/wechat-scan-login/credentials/token" "$R/etc/wechat-scan-login/gateway.toml"
    chmod 0755 "$R/etc/wechat-scan-login/credentials"
    timeout 30 systemd-tmpfiles --root="$R" --create "$R/etc/tmpfiles.d/wechat-scan-login.conf" 2>"$T/tmpfiles.err" \
        || { cat "$T/tmpfiles.err" >&2; fail "systemd-tmpfiles"; }
    gid=$(awk -F: '$1 == "wechat-scan-login" { print $3 }' "$R/etc/group")
    check_mode "$R/etc/wechat-scan-login" 750 0 "$gid"
    check_mode "$R/etc/wechat-scan-login/gateway.toml" 640 0 "$gid"
    check_mode "$R/etc/wechat-scan-login/credentials" 700 0 0
    check_mode "$R/etc/wechat-scan-login/credentials/token" 600 0 0
    ok "user created; /etc/wechat-scan-login 0750 root:group, *.toml 0640, credentials/ 0700 root, secrets 0600"
else
    skip "sysusers.d and tmpfiles.d not checked: systemd-sysusers/systemd-tmpfiles --root need root to chown"
fi

# -- 6. nginx -t -------------------------------------------------------------
step "nginx -t"
N=$T/nginx
mkdir -p "$N"
timeout 30 openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=example.com \
    -keyout "$N/key.pem" -out "$N/cert.pem" >/dev/null 2>&1 || fail "openssl could not make a test certificate"
# The examples: the single-host one and deploy/two-hosts'.
nginx_examples=("$here/nginx.conf" "$here/two-hosts/nginx.conf")
site_conf() { # site_conf EXAMPLE: $N/site.conf is EXAMPLE with the test certificate
    grep -q 'ssl_certificate  *.*fullchain.pem;' "$1" || fail "${1#"$repo"/}: no ssl_certificate"
    sed -e "s|^\( *ssl_certificate \).*;|\1$N/cert.pem;|" \
        -e "s|^\( *ssl_certificate_key \).*;|\1$N/key.pem;|" \
        "$1" >"$N/site.conf"
}
cat >"$N/nginx.conf" <<EOF
pid $N/nginx.pid;
error_log $N/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $N/tmp-body;
    proxy_temp_path $N/tmp-proxy;
    fastcgi_temp_path $N/tmp-fastcgi;
    uwsgi_temp_path $N/tmp-uwsgi;
    scgi_temp_path $N/tmp-scgi;
    include $N/site.conf;
}
EOF
nginx_e=()
nginx -h 2>&1 | grep -q -- '^ *-e ' && nginx_e=(-e "$N/error.log") # nginx >= 1.19.5
nginx_clean() { # nginx_clean CONF: nginx -t passes with no warning at all
    local out log=
    rm -f "$N/error.log"
    out=$(timeout 30 nginx -t -p "$N" "${nginx_e[@]}" -c "$1" 2>&1) || {
        printf '%s\n' "$out" >&2
        return 1
    }
    # nginx -t reports on stderr, or (with -e) in the error log: both count.
    if [ -f "$N/error.log" ]; then log=$(cat "$N/error.log"); fi
    if grep -qE '\[(warn|emerg|alert|crit|error)\]' <<<"$out"$'\n'"$log"; then
        printf '%s\n%s\n' "$out" "$log" >&2
        return 1
    fi
}
for conf in "${nginx_examples[@]}"; do
    site_conf "$conf"
    nginx_clean "$N/nginx.conf" || fail "nginx -t on ${conf#"$repo"/}"
done
# The check must catch a warning: the same config plus a conflicting
# server_name, which nginx -t accepts with a [warn].
sed -e '$d' "$N/nginx.conf" >"$N/warn.conf"
cat >>"$N/warn.conf" <<EOF
    server { listen 127.0.0.1:9; server_name warn.invalid; }
    server { listen 127.0.0.1:9; server_name warn.invalid; }
}
EOF
if nginx_clean "$N/warn.conf" 2>/dev/null; then
    fail "nginx -t's warnings are not noticed (a conflicting server_name passed); this check is blind"
fi
# What the examples must (not) publish.
for conf in "${nginx_examples[@]}"; do
    name=${conf#"$repo"/}
    grep -Eq '^\s*location /ws \{' "$conf" || fail "$name: no location /ws"
    grep -Eq '^\s*location = /wechat \{' "$conf" || fail "$name: no location /wechat"
    # shellcheck disable=SC2016 # nginx variables, literally
    grep -qF 'proxy_set_header Upgrade $http_upgrade;' "$conf" || fail "$name: no Upgrade header"
    # shellcheck disable=SC2016
    grep -qF 'X-Forwarded-For $proxy_add_x_forwarded_for' "$conf" || fail "$name: no X-Forwarded-For"
    grep -q 'client_max_body_size 1m;' "$conf" || fail "$name: no 1m body limit on /wechat"
    # The site's own `location /` is the site's: the gateway gets only its paths.
    root_block=$(awk '/^[[:space:]]*location \/ \{/ {inside = 1} inside {print} inside && /^[[:space:]]*\}/ {exit}' "$conf")
    [ -n "$root_block" ] || fail "$name: no location / for the site"
    if grep -q 'proxy_pass' <<<"$root_block"; then
        if grep -q 'scan_login' <<<"$root_block"; then
            fail "$name: location / proxies the whole site to a scan-login daemon"
        fi
    fi
    grep -Eq '^\s*location [^#]*scan-login\\\.m\?js' "$conf" || fail "$name: /scan-login.js not proxied"
    if grep -nE '^[^#]*(9999|notify)' "$conf"; then
        fail "$name must never proxy the notify bus"
    fi
done
ok "nginx -t is clean on deploy/nginx.conf and deploy/two-hosts/nginx.conf; /ws, /scan-login.js and /wechat proxied; / is the site's; notify port, /metrics, /healthz not public"

# -- 7. install.sh idempotence -----------------------------------------------
step "install.sh idempotence"
D=$T/destdir
snapshot() { # everything that matters: paths, modes, contents
    (cd "$D" && find . -print0 | LC_ALL=C sort -z | xargs -0 stat -c '%n %a %F %s' \
        && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
}
run_install() {
    DESTDIR=$D "$here/install.sh" --from "$T/bin" --generate-secrets >"$T/install.$1.log" 2>&1 \
        || { cat "$T/install.$1.log" >&2; fail "install.sh run $1 failed"; }
}
run_install 1
snapshot >"$T/snap.1"
run_install 2
snapshot >"$T/snap.2"
diff -u "$T/snap.1" "$T/snap.2" >&2 || fail "a second install.sh run changed the tree"
find "$D" -name '*.new' | grep -q . && fail "a second run wrote .new files"
check_mode "$D/etc/wechat-scan-login/credentials" 700 "$(id -u)" "$(id -g)"
check_mode "$D/etc/wechat-scan-login/credentials/notify_secret" 600 "$(id -u)" "$(id -g)"
check_mode "$D/etc/wechat-scan-login/gateway.toml" 640 "$(id -u)" "$(id -g)"
check_mode "$D/usr/local/bin/ws-gateway" 755 "$(id -u)" "$(id -g)"
[ "$(wc -c <"$D/etc/wechat-scan-login/credentials/notify_secret")" -ge 32 ] || fail "generated notify_secret is too short"
[ ! -e "$D/etc/wechat-scan-login/credentials/token" ] || fail "install.sh must not invent the WeChat token"
grep -q 'unchanged' "$T/install.2.log" || fail "second run does not say what it left alone"
# An admin edits a config; a reinstall must keep it.
gw=$D/etc/wechat-scan-login/gateway.toml
echo 'app_id = "wx-edited-by-check"' >>"$gw"
cp "$gw" "$T/gateway.edited"
run_install 3
cmp -s "$gw" "$T/gateway.edited" || fail "install.sh overwrote an edited gateway.toml"
cmp -s "$gw.new" "$here/config/gateway.toml" || fail "install.sh did not write the new example as gateway.toml.new"
[ ! -e "$D/etc/wechat-scan-login/callback.toml.new" ] || fail "callback.toml was not edited but got a .new"
grep -q 'gateway.toml.new' "$T/install.3.log" || fail "install.sh did not say it wrote gateway.toml.new"
ok "2nd run changes nothing; 3rd run keeps the edited gateway.toml and writes gateway.toml.new"

# -- 8. example configs --------------------------------------------------------
step "example configs"
python3 -c 'import tomllib' 2>/dev/null || fail "python3 >= 3.11 (tomllib) is needed to check the example configs"
newest_binary() { # newest_binary NAME: the most recently built one, if any
    local f best= t=${CARGO_TARGET_DIR:-target}
    for f in "$t/debug/$1" "$t/release/$1"; do
        [ -x "$f" ] || continue
        if [ -z "$best" ] || [ "$f" -nt "$best" ]; then best=$f; fi
    done
    printf '%s' "$best"
}
for pair in gateway:ws-gateway callback:wechat-callback; do
    c=${pair%%:*} bin=${pair#*:}
    exe=$(newest_binary "$bin")
    help=
    if [ -n "$exe" ]; then
        case $exe in /*) ;; *) exe=$repo/$exe ;; esac
        # Built: the comparison always runs, so --help must work.
        help=$(timeout 10 "$exe" --help 2>&1) || {
            printf '%s\n' "$help" >&2
            fail "$exe --help exits non-zero"
        }
        grep -q -- '--config' <<<"$help" || fail "$exe --help shows no --config"
        grep -q -- '--check-config' <<<"$help" || fail "$exe --help shows no --check-config (the units run it)"
    else
        skip "deploy/config/$c.toml keys and --check-config not compared with $bin: not built (looked in ${CARGO_TARGET_DIR:-target}/{debug,release})"
    fi
    HELP=$help python3 - "$here/config/$c.toml" "$bin" <<'PY' || fail "deploy/config/$c.toml (see above)"
import os, re, sys, tomllib

path, binary = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
problems = []
secrets = {"app_secret", "token", "encoding_aes_key", "encoding_aes_key_previous",
           "notify_secret", "login_token_secret"}

try:
    tomllib.loads(text)
except tomllib.TOMLDecodeError as e:
    problems.append(f"not valid TOML: {e}")

# `key = value` lines, set or commented out ("# key = value": a default).
keys = {}
for line in text.splitlines():
    m = re.match(r"^(# ?)?([a-z_]+) = (.*)$", line)
    if not m:
        continue
    key, commented = m.group(2), bool(m.group(1))
    try:
        value = tomllib.loads(f"v = {m.group(3)}")["v"]
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{key}: value is not valid TOML: {e}")
        continue
    keys[key] = (commented, value)
    if key in secrets:
        problems.append(f"{key}: secrets belong in /etc/wechat-scan-login/credentials/, not in the TOML")

help_text = os.environ.get("HELP", "")
if help_text:
    # clap's --help: "      --foo-bar <FOO_BAR>\n          text [env: X=] [default: v]"
    flags = {}
    # (one line per flag when clap fits it, or the text on following lines)
    for m in re.finditer(r"^\s+(?:-\w, )?--([a-z0-9-]+)([^\n]*\n?(?:\s{8,}[^\n]*\n?)*)", help_text, re.M):
        d = re.search(r"\[default: (.*?)\]\s*$", m.group(2).strip())
        flags[m.group(1).replace("-", "_")] = d.group(1) if d else None
    ignored = {"config", "check_config", "help", "version"} | secrets
    for key in sorted(set(flags) - ignored - set(keys)):
        default = flags[key]
        if default is None:
            shown = "..."
        elif re.fullmatch(r'-?[0-9]+|true|false|".*"', default):
            shown = default
        else:
            shown = f'"{default}"'
        hint = f"# {key} = {shown}"
        problems.append(f"missing key {key} (a flag of {binary}); add it, commented, with its default: {hint}")
    for key in sorted(set(keys) - set(flags)):
        problems.append(f"key {key} is not a flag of {binary} (the daemon rejects unknown keys)")
    for key, (commented, value) in keys.items():
        default = flags.get(key)
        if not commented or default is None:
            continue
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        if default.strip('"') != shown:
            problems.append(f"{key}: commented default {shown!r} but {binary} --help says [default: {default}]")

for p in problems:
    print(f"   {os.path.basename(path)}: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
checked = f"every flag of {binary} is a key, defaults match" if help_text else \
    f"keys not compared ({binary} not built, see SKIPPED above)"
print(f"   ok: {os.path.basename(path)}: valid TOML, no secrets; {checked}")
PY
    # The daemon itself accepts the example, the way the unit runs it (with
    # app_id set, as README.md says, and made-up secrets as credentials).
    if grep -q -- '--check-config' <<<"$help"; then
        C=$T/check-config-$c
        mkdir -p "$C/credentials"
        for s in app_secret token notify_secret login_token_secret; do
            od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$C/credentials/$s"
        done
        # A well-formed EncodingAESKey: 43 characters of base64, no padding.
        printf '%s' "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')abcdefghijk" >"$C/credentials/encoding_aes_key"
        sed -e "s|^db = .*|db = \"$C/scan-login.db\"|" "$here/config/$c.toml" >"$C/$c.toml"
        echo 'app_id = "wx0123456789abcdef"' >>"$C/$c.toml"
        args=(--config "$C/$c.toml")
        [ "$c" = callback ] && args+=(--listen 127.0.0.1:8081)
        if ! out=$(cd "$C" && env -i PATH=/usr/bin:/bin CREDENTIALS_DIRECTORY="$C/credentials" \
            timeout 20 "$exe" "${args[@]}" --check-config 2>&1); then
            printf '%s\n' "$out" >&2
            fail "$exe --config (deploy/config/$c.toml + app_id) --check-config rejects the example"
        fi
        ok "$exe --check-config accepts the example $c.toml with credentials from \$CREDENTIALS_DIRECTORY"
    fi
done

# deploy/two-hosts: per-host configs that set only some keys. Valid TOML,
# no secrets (and no password in db), every key one of deploy/config's
# (those list exactly the daemon's flags, compared with --help above when
# built), and the gateways' node_id/notify_listen match the callbacks'
# notify_addr list.
python3 - "$here/config" "$here/two-hosts" <<'PY' || fail "deploy/two-hosts/*.toml (see above)"
import glob, ipaddress, os, re, sys, tomllib
from urllib.parse import parse_qs, urlsplit

config_dir, dir_ = sys.argv[1], sys.argv[2]
secrets = {"app_secret", "token", "encoding_aes_key", "encoding_aes_key_previous",
           "notify_secret", "login_token_secret"}
problems = []

def keys_of(path):  # set keys, and "# key = value" lines (commented defaults)
    text = open(path, encoding="utf-8").read()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{os.path.basename(path)}: not valid TOML: {e}")
        data = {}
    listed = {m.group(1) for m in re.finditer(r"^(?:# ?)?([a-z_]+) = ", text, re.M)}
    return data, listed | set(data)

flags = {c: keys_of(os.path.join(config_dir, f"{c}.toml"))[1] for c in ("gateway", "callback")}
gateways, callbacks = {}, []
for path in sorted(glob.glob(os.path.join(dir_, "*.toml"))):
    name = os.path.basename(path)
    m = re.fullmatch(r"gateway-node([0-9]+)\.toml", name)
    daemon = "gateway" if m else "callback" if name.startswith("callback") else None
    if daemon is None:
        problems.append(f"{name}: name it gateway-nodeN.toml or callback*.toml")
        continue
    data, keys = keys_of(path)
    for key in sorted(keys & secrets):
        problems.append(f"{name}: {key}: secrets belong in /etc/wechat-scan-login/credentials/, not in the TOML")
    for key in sorted(keys - secrets - flags[daemon]):
        problems.append(f"{name}: key {key} is not in deploy/config/{daemon}.toml, so not a flag")
    if m:
        gateways[name] = (int(m.group(1)), data)
    else:
        callbacks.append((name, data))
        db = data.get("db", "")
        if re.match(r"postgres(ql)?://", db, re.I):
            url = urlsplit(db)
            if url.password or "password" in parse_qs(url.query):
                problems.append(f"{name}: db has a password: put the URL in the EnvironmentFile (README)")

buses = {}
for name, (node, data) in gateways.items():
    if data.get("node_id") != node:
        problems.append(f"{name}: node_id = {data.get('node_id')!r}, expected {node} (the file name)")
    bus = data.get("notify_listen", "127.0.0.1:9999")
    try:
        loopback = ipaddress.ip_address(bus.rsplit(":", 1)[0].strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if len(gateways) > 1 and loopback:
        problems.append(f"{name}: notify_listen {bus} is loopback: the other hosts' callbacks cannot reach it")
    buses[node] = bus
for name, data in callbacks:
    listed = {}
    for entry in data.get("notify_addr", "127.0.0.1:9999").split(","):
        node, sep, addr = entry.strip().rpartition("=")
        listed[int(node) if sep and node.isdigit() else node if sep else None] = addr
    default = listed.pop(None, None)  # a bare ADDR serves every node not listed
    if default is not None:
        listed = {node: listed.get(node, default) for node in buses} | listed
    if listed != buses:
        problems.append(f"{name}: notify_addr maps {listed}, but the gateways are {buses}")

for p in problems:
    print(f"   two-hosts/{p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"   ok: deploy/two-hosts: {len(gateways)} gateway and {len(callbacks)} callback config(s): "
      "valid TOML, no secrets, keys are flags, node ids and notify_addr agree")
PY

if [ "$skipped" -gt 0 ]; then
    echo "deploy/check.sh: passed in $((SECONDS - started))s, but $skipped check(s) SKIPPED (see above)"
else
    echo "deploy/check.sh: all checks passed in $((SECONDS - started))s"
fi
