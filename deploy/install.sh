#!/bin/sh
# Installs ws-gateway and wechat-callback as systemd services.
# Run `deploy/install.sh --help` for the options. Safe to run again: it never
# overwrites an edited config or an existing secret, and starts nothing.
set -eu

NAME=wechat-scan-login
USER_NAME=wechat-scan-login
BINARIES="ws-gateway wechat-callback"
CONFIGS="gateway.toml callback.toml"

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

prefix=/usr/local
from=
unitdir=
sysusersdir=
tmpfilesdir=
destdir=${DESTDIR:-}
generate=

usage() {
    cat <<EOF
Usage: deploy/install.sh [OPTION]...

Installs the release binaries, the systemd units (ws-gateway.service and the
template wechat-callback@.service), the sysusers.d/tmpfiles.d files, example
configs in /etc/$NAME/ and the root-only credentials directory
/etc/$NAME/credentials/. Starts nothing; prints the next steps.

An existing config that differs from the example is kept: the new example is
written next to it as NAME.toml.new. Existing secrets are never touched.

Options:
  --prefix DIR         install binaries in DIR/bin, docs in DIR/share/doc
                       (default: /usr/local; the units' ExecStart follows it)
  --from DIR           take the binaries from DIR (default: target/release of
                       this checkout; build them with \`cargo build --release\`)
  --destdir DIR        stage everything under DIR, for packaging (same as the
                       DESTDIR environment variable). No user is created and
                       systemctl is not run.
  --unitdir DIR        where the units go (default: /etc/systemd/system, or
                       /usr/lib/systemd/system when --prefix is /usr)
  --sysusersdir DIR    default: /etc/sysusers.d (/usr/lib/sysusers.d for /usr)
  --tmpfilesdir DIR    default: /etc/tmpfiles.d (/usr/lib/tmpfiles.d for /usr)
  --generate-secrets   create random notify_secret and login_token_secret
                       credentials if missing (default without DESTDIR)
  --no-generate-secrets
                       do not (default with DESTDIR: a package must not ship
                       one secret to every machine)
  -h, --help           show this help

Examples:
  sudo deploy/install.sh
  DESTDIR=/tmp/pkg deploy/install.sh --prefix /usr
EOF
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

need_arg() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then
        die "$1 needs a value (see --help)"
    fi
}

while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --prefix) need_arg "$@"; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --from) need_arg "$@"; from=$2; shift 2 ;;
        --from=*) from=${1#*=}; shift ;;
        --destdir) need_arg "$@"; destdir=$2; shift 2 ;;
        --destdir=*) destdir=${1#*=}; shift ;;
        --unitdir) need_arg "$@"; unitdir=$2; shift 2 ;;
        --unitdir=*) unitdir=${1#*=}; shift ;;
        --sysusersdir) need_arg "$@"; sysusersdir=$2; shift 2 ;;
        --sysusersdir=*) sysusersdir=${1#*=}; shift ;;
        --tmpfilesdir) need_arg "$@"; tmpfilesdir=$2; shift 2 ;;
        --tmpfilesdir=*) tmpfilesdir=${1#*=}; shift ;;
        --generate-secrets) generate=yes; shift ;;
        --no-generate-secrets) generate=no; shift ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

case $prefix in
    /*) prefix=${prefix%/}; [ -n "$prefix" ] || prefix=/ ;;
    *) die "--prefix must be an absolute path, not '$prefix'" ;;
esac
case $prefix in
    *[!A-Za-z0-9._/-]*) die "--prefix '$prefix' has characters a unit's ExecStart= cannot take unquoted" ;;
esac
if [ -n "$destdir" ]; then
    case $destdir in
        /*) ;;
        *) destdir=$(pwd)/$destdir ;;
    esac
    destdir=${destdir%/}
fi

if [ "$prefix" = /usr ]; then
    vendor=/usr/lib
else
    vendor=/etc
fi
: "${unitdir:=$vendor/systemd/system}"
: "${sysusersdir:=$vendor/sysusers.d}"
: "${tmpfilesdir:=$vendor/tmpfiles.d}"
: "${from:=$repo/target/release}"
if [ -z "$generate" ]; then
    if [ -n "$destdir" ]; then generate=no; else generate=yes; fi
fi
bindir=${prefix%/}/bin
docdir=${prefix%/}/share/doc/$NAME
confdir=/etc/$NAME
creddir=$confdir/credentials

if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo deploy/install.sh), or stage into a directory with DESTDIR=... / --destdir"
fi

for b in $BINARIES; do
    [ -x "$from/$b" ] || die "$from/$b not found or not executable: build it first (cargo build --release) or point --from at the binaries"
done

umask 022

# Prints what happened to one file: "installed", "updated" or "unchanged".
# Usage: put MODE SRC DEST (DEST is the final path, without DESTDIR).
put() {
    mode=$1 src=$2 dest=$destdir$3
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"
        echo "unchanged  $3"
        return
    fi
    if [ -e "$dest" ]; then what=updated; else what=installed; fi
    mkdir -p "$(dirname "$dest")"
    # Write beside, then rename: a running binary or a reader never sees
    # half a file.
    cp "$src" "$dest.tmp.$$"
    chmod "$mode" "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"
    echo "$what  $3"
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/$NAME-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# Binaries.
for b in $BINARIES; do
    put 0755 "$from/$b" "$bindir/$b"
done

# Units, with the binary and doc paths of this prefix.
for u in ws-gateway.service wechat-callback@.service; do
    sed -e "s|/usr/local/bin/|$bindir/|g" \
        -e "s|/usr/local/share/doc/$NAME/|$docdir/|g" \
        "$here/$u" >"$tmp/$u"
    put 0644 "$tmp/$u" "$unitdir/$u"
done
put 0644 "$here/sysusers.d/$NAME.conf" "$sysusersdir/$NAME.conf"
put 0644 "$here/tmpfiles.d/$NAME.conf" "$tmpfilesdir/$NAME.conf"

# Docs and the examples an admin copies from later.
put 0644 "$here/README.md" "$docdir/README.md"
put 0644 "$here/nginx.conf" "$docdir/examples/nginx.conf"
put 0644 "$here/wechat-callback@.service.d/aes-key-rotation.conf" "$docdir/examples/aes-key-rotation.conf"
for c in $CONFIGS; do
    put 0644 "$here/config/$c" "$docdir/examples/$c"
done

# The system user (before anything is chowned to its group).
if [ -z "$destdir" ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$sysusersdir/$NAME.conf"
    elif ! getent passwd "$USER_NAME" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home \
            --home-dir "/var/lib/$NAME" --shell /usr/sbin/nologin \
            --comment "WeChat scan login daemons" "$USER_NAME"
    fi
    getent group "$USER_NAME" >/dev/null 2>&1 || die "group $USER_NAME was not created"
fi

# Configs: never overwrite an edited one.
mkdir -p "$destdir$confdir"
chmod 0750 "$destdir$confdir"
new_configs=
for c in $CONFIGS; do
    dest=$confdir/$c
    if [ -e "$destdir$dest" ] && ! cmp -s "$here/config/$c" "$destdir$dest"; then
        put 0640 "$here/config/$c" "$dest.new"
        new_configs="$new_configs $dest"
    else
        put 0640 "$here/config/$c" "$dest"
    fi
done

# Credentials: a root-only directory, read by systemd (LoadCredential=).
mkdir -p "$destdir$creddir"
chmod 0700 "$destdir$creddir"
if [ "$generate" = yes ]; then
    for s in notify_secret login_token_secret; do
        f=$destdir$creddir/$s
        if [ -e "$f" ]; then
            echo "kept       $creddir/$s"
            continue
        fi
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$f.tmp.$$" && mv "$f.tmp.$$" "$f")
        echo "generated  $creddir/$s"
    done
fi

if [ -z "$destdir" ]; then
    chgrp "$USER_NAME" "$confdir"
    for c in $CONFIGS; do
        for f in "$confdir/$c" "$confdir/$c.new"; do
            if [ -e "$f" ]; then chgrp "$USER_NAME" "$f"; fi
        done
    done
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create "$tmpfilesdir/$NAME.conf"
    fi
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload
    fi
fi

missing=
for s in app_secret token encoding_aes_key notify_secret login_token_secret; do
    [ -s "$destdir$creddir/$s" ] || missing="$missing $s"
done

echo
if [ -n "$new_configs" ]; then
    for c in $new_configs; do
        echo "NOTE: $c was edited, so it was kept; the new example is $c.new."
        echo "      Compare them: diff -u $c $c.new"
    done
    echo
fi
if [ -n "$destdir" ]; then
    echo "Staged into $destdir. Nothing was started; no user was created (run"
    echo "systemd-sysusers and systemd-tmpfiles --create when the package is installed)."
    exit 0
fi
cat <<EOF
Installed. Nothing was started. Next steps (details: $docdir/README.md):

 1. Put each secret in its own file, written with umask 077 so only root
    can read it, e.g.
      (umask 077; printf '%s' 'THE-APP-SECRET' > $creddir/app_secret)
EOF
if [ -n "$missing" ]; then
    echo "    Still missing in $creddir/:$missing"
fi
cat <<EOF
 2. Set app_id in $confdir/gateway.toml and $confdir/callback.toml.
 3. Start:  systemctl enable --now ws-gateway wechat-callback@8081 wechat-callback@8082
    Check:  systemctl status ws-gateway 'wechat-callback@*'; journalctl -u ws-gateway
 4. Put nginx in front: $docdir/examples/nginx.conf
 5. WeChat admin console: Server URL https://YOUR-DOMAIN/wechat, the same
    Token and EncodingAESKey as in the credential files.
EOF
