#!/bin/sh
# Entrypoint of the Natter image (deploy/Dockerfile). The same image runs either binary:
#
#   natter-login [--data-dir DIR] [--config FILE] serve [FLAGS]
#       Before serving, writes this login server's address, NATTER_LOGIN_ANNOUNCE followed by
#       /p2p/<its peer id> (from `natter-login info --json`), to NATTER_LOGIN_ADDR_FILE, so
#       that nodes sharing that volume can register against it. Skipped when
#       NATTER_LOGIN_ANNOUNCE is unset.
#
#   natter [--home DIR] [--config FILE] up [FLAGS]
#       On first start (no identity.json in the home dir yet), certifies this device for
#       the account NATTER_USER: `natter register`, or `natter login` when the name already
#       exists. The password is the first line of the file NATTER_PASSWORD_FILE (e.g. a docker
#       secret, /run/secrets/...) or, failing that, NATTER_PASSWORD. The login address is
#       NATTER_LOGIN_ADDR, or else read from NATTER_LOGIN_ADDR_FILE (waiting up to
#       NATTER_LOGIN_WAIT seconds for it to appear). Later starts skip all of this: the device
#       key and certificate are in the home dir, and `natter up` renews the certificate itself.
#
#   anything else
#       Run as given (e.g. `natter status`, `natter-login user list`).
#
# Environment (the image sets NATTER_HOME and NATTER_LOGIN_DATA to /var/lib/natter):
#   NATTER_LOGIN_ANNOUNCE   login server: its address as nodes reach it, without /p2p/,
#                           e.g. /dns4/login/tcp/4747
#   NATTER_LOGIN_ADDR_FILE  where the login address is written and read
#                           (default /var/lib/natter-shared/login.addr)
#   NATTER_USER             node: account name to register or log in as
#   NATTER_PASSWORD_FILE    node: file whose first line is the password (preferred)
#   NATTER_PASSWORD         node: the password itself (visible in `docker inspect`)
#   NATTER_LOGIN_ADDR       node: login address, ending in /p2p/<peer id>
#   NATTER_LOGIN_WAIT       node: seconds to wait for the login server (default 60)
# The programs' own variables (NATTER_LOG, NATTER_CONFIG, NATTER_ROLE, NATTER_LISTEN,
# NATTER_LOGIN_REGISTRATION, ...: deploy/*.env.example) pass through to them unchanged.
set -eu

ADDR_FILE=${NATTER_LOGIN_ADDR_FILE:-/var/lib/natter-shared/login.addr}

log() { printf 'docker-entrypoint: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Prints the subcommand of a natter or natter-login command line ($2...: the program, then
# its arguments): the first word after the program that is not an option, skipping the value
# of the global options that take one: $1 (--home or --data-dir) and --config.
subcommand() {
    opt=$1
    shift 2
    while [ $# -gt 0 ]; do
        case $1 in
        "$opt" | --config) shift ;;
        -*) ;;
        *)
            printf '%s' "$1"
            return
            ;;
        esac
        [ $# -gt 0 ] && shift
    done
}

# Prints the value of the global option $1 (`--opt VALUE` or `--opt=VALUE`) in the command
# line $2..., if given.
option() {
    opt=$1
    shift 2
    while [ $# -gt 0 ]; do
        case $1 in
        "$opt")
            [ $# -gt 1 ] && printf '%s' "$2"
            return
            ;;
        "$opt"=*)
            printf '%s' "${1#"$opt"=}"
            return
            ;;
        esac
        shift
    done
}

publish_login_addr() {
    [ -n "${NATTER_LOGIN_ANNOUNCE:-}" ] || return 0
    dir=$(option --data-dir "$@")
    # `info` creates the keys on first use, exactly as `serve` would.
    if [ -n "$dir" ]; then
        info=$(natter-login --data-dir "$dir" info --json)
    else
        info=$(natter-login info --json)
    fi
    peer_id=$(printf '%s\n' "$info" | sed -n 's/^ *"peer_id": *"\([^"]*\)".*/\1/p')
    [ -n "$peer_id" ] || die "no peer id in the output of natter-login info --json"
    addr="${NATTER_LOGIN_ANNOUNCE%/}/p2p/$peer_id"
    mkdir -p "$(dirname "$ADDR_FILE")"
    printf '%s\n' "$addr" >"$ADDR_FILE.tmp"
    mv "$ADDR_FILE.tmp" "$ADDR_FILE"
    log "login address: $addr (written to $ADDR_FILE)"
}

login_addr() {
    if [ -n "${NATTER_LOGIN_ADDR:-}" ]; then
        printf '%s' "$NATTER_LOGIN_ADDR"
        return
    fi
    wait=${NATTER_LOGIN_WAIT:-60}
    while [ ! -s "$ADDR_FILE" ]; do
        [ "$wait" -gt 0 ] || die "no login address: set NATTER_LOGIN_ADDR, or start the login server with NATTER_LOGIN_ANNOUNCE and share $ADDR_FILE"
        sleep 1
        wait=$((wait - 1))
    done
    head -n 1 "$ADDR_FILE"
}

# Runs `natter ... register|login NAME --login ADDR` with the password on stdin; its stderr
# is left in $out.
certify() {
    verb=$1
    shift
    if [ -n "${NATTER_PASSWORD_FILE:-}" ]; then
        [ -r "$NATTER_PASSWORD_FILE" ] || die "cannot read NATTER_PASSWORD_FILE=$NATTER_PASSWORD_FILE (uid $(id -u) needs read access)"
        out=$(natter "$@" "$verb" "$NATTER_USER" --login "$addr" <"$NATTER_PASSWORD_FILE" 2>&1) || return 1
    else
        out=$(printf '%s\n' "$NATTER_PASSWORD" | natter "$@" "$verb" "$NATTER_USER" --login "$addr" 2>&1) || return 1
    fi
    log "$out"
}

# True when the last error says the login server could not be reached (worth retrying).
unreachable() {
    case $out in
    *unreachable* | *"did not answer"*) return 0 ;;
    *) return 1 ;;
    esac
}

first_start() {
    home=$(option --home "$@")
    home=${home:-${NATTER_HOME:-}}
    [ -n "$home" ] || die "no home dir: pass --home or set NATTER_HOME"
    [ -f "$home/identity.json" ] && return 0

    [ -n "${NATTER_USER:-}" ] || die "$home is not logged in yet: set NATTER_USER (and NATTER_PASSWORD_FILE) for the first start"
    if [ -z "${NATTER_PASSWORD_FILE:-}" ] && [ -z "${NATTER_PASSWORD:-}" ]; then
        die "$home is not logged in yet: set NATTER_PASSWORD_FILE (or NATTER_PASSWORD) for $NATTER_USER"
    fi
    addr=$(login_addr)
    set -- --home "$home"

    deadline=$(($(date +%s) + ${NATTER_LOGIN_WAIT:-60}))
    while :; do
        if certify register "$@"; then
            return 0
        fi
        if ! unreachable; then
            log "register $NATTER_USER: $out; trying login"
            if certify login "$@"; then
                return 0
            fi
            unreachable || die "login $NATTER_USER: $out"
        fi
        [ "$(date +%s)" -lt "$deadline" ] || die "giving up after ${NATTER_LOGIN_WAIT:-60} s: $out"
        log "login server not reachable yet ($out); retrying"
        sleep 3
    done
}

case ${1:-} in
natter-login | */natter-login)
    if [ "$(subcommand --data-dir "$@")" = serve ]; then
        publish_login_addr "$@"
    fi
    ;;
natter | */natter)
    if [ "$(subcommand --home "$@")" = up ]; then
        first_start "$@"
    fi
    ;;
esac

exec "$@"
