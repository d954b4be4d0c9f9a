# shellcheck shell=bash
# Test environment for workers-spawner. SOURCE it, don't run it:
#
#     . scripts/test-env.sh        # sets up everything, exports WS_TEST_*
#     ...
#     ws_test_env_down             # stops the private redis, removes its dir
#
# It:
#   * installs redis-server, busybox-static, debootstrap, git, python3-venv,
#     chromium and chromium-driver via apt if missing;
#   * builds the test image ws-test-busybox:latest from images/test-busybox
#     (skipped when an image with the same inputs hash label exists), and the
#     unprepared images ws-test-stock, ws-test-noshell and ws-test-node;
#   * starts a second Docker engine in a netns of its own (scripts/second-engine.sh,
#     for the fleet tests), copies the test images to it and exports WS_ENGINE_B_*;
#   * starts a private redis-server on a free 127.0.0.1 port (AOF on, no RDB),
#     also bound to engine B's side of the veth (WS_ENGINE_B_HOST_ADDR);
#   * installs moto's S3 server (PyPI) in a venv under ~/.cache, exports
#     WS_TEST_MOTO_SERVER (the artifact store's S3 tests);
#   * exports WS_TEST_REDIS_URL, WS_TEST_REDIS_PORT, WS_TEST_REDIS_DIR,
#     WS_TEST_REDIS_PIDFILE, WS_TEST_IMAGE.
# Returns non-zero (never exits the caller's shell) when something fails.

_ws_log() { echo "[test-env] $*" >&2; }

_ws_as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else _ws_log "need root for: $*"; return 1
    fi
}

_ws_pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

_ws_install_deps() {
    local missing=() p
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 \
        || missing+=(redis-server)
    { _ws_pkg_installed busybox-static && [ -x /bin/busybox ]; } || missing+=(busybox-static)
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
    # git: the daemon's own (workspaces) and the tests' servers (git daemon, http-backend).
    command -v git >/dev/null 2>&1 || missing+=(git)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    # The dashboard's browser test: Debian's Chromium and its driver.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    # gcc -static for the shell-less test image; a static libc also for the
    # daemon's build script, which links its delivery shim statically.
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/aarch64-linux-gnu/libc.a ] \
        || _ws_pkg_installed libc6-dev || missing+=(libc6-dev)
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        _ws_log "missing ${missing[*]} and no apt-get to install them"
        return 1
    fi
    _ws_log "installing ${missing[*]}"
    _ws_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    _ws_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null || return 1
    # Debian starts the packaged redis on 6379; we don't need it.
    for p in "${missing[@]}"; do
        if [ "$p" = redis-server ]; then
            _ws_as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
        fi
    done
    return 0
}

_ws_build_test_image() {
    local src="$WS_TEST_REPO_ROOT/images/test-busybox" hash have ctx rc
    local busybox=/bin/busybox
    hash="$(
        {
            sha256sum < "$src/Dockerfile"
            sha256sum < "$src/fake-agent"
            sha256sum < "$src/test-agent"
            sha256sum < "$src/passwd"
            sha256sum < "$src/group"
            sha256sum < "$busybox"
        } | sha256sum | cut -c1-32
    )" || return 1
    have="$(docker image inspect -f '{{ index .Config.Labels "io.workers-spawner.inputs-hash" }}' \
        "$WS_TEST_IMAGE" 2>/dev/null || true)"
    if [ "$have" = "$hash" ]; then
        _ws_log "$WS_TEST_IMAGE is up to date ($hash)"
        return 0
    fi
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/ws-test-busybox.XXXXXX")" || return 1
    cp "$src/Dockerfile" "$src/fake-agent" "$src/test-agent" "$src/passwd" "$src/group" "$ctx/" \
        && cp "$busybox" "$ctx/busybox" \
        && chmod 0755 "$ctx/busybox" "$ctx/fake-agent" "$ctx/test-agent" \
        || { rm -rf "$ctx"; return 1; }
    _ws_log "building $WS_TEST_IMAGE ($hash)"
    local start=$SECONDS
    local out
    out="$(docker build --label "io.workers-spawner.inputs-hash=$hash" -t "$WS_TEST_IMAGE" "$ctx" 2>&1)"
    rc=$?
    rm -rf "$ctx"
    if [ $rc -ne 0 ]; then
        echo "$out" >&2
        _ws_log "docker build of $WS_TEST_IMAGE failed"
        return 1
    fi
    _ws_log "built $WS_TEST_IMAGE in $((SECONDS - start))s"
}

# Images the project did NOT prepare (no /workspace, no /home/worker, no
# user 1000, no shell...): the daemon must run workers on them unchanged.
#   ws-test-stock:latest    busybox applets in /bin and a /tmp, nothing else
#   ws-test-noshell:latest  FROM scratch, one static binary (images/test-noshell/agent.c)
#   ws-test-node:latest     uid 1000 is "node" with /home/node; ships a root-owned /workspace
_ws_build_unprepared_image() {
    local name="$1" src="$WS_TEST_REPO_ROOT/images/$2" hash have ctx rc out
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/ws-$2.XXXXXX")" || return 1
    cp -r "$src/." "$ctx/" || { rm -rf "$ctx"; return 1; }
    if [ -f "$ctx/agent.c" ]; then
        gcc -static -O2 -o "$ctx/ws-agent" "$ctx/agent.c" || { rm -rf "$ctx"; return 1; }
        rm -f "$ctx/agent.c"
    else
        cp /bin/busybox "$ctx/busybox" && chmod 0755 "$ctx/busybox" || { rm -rf "$ctx"; return 1; }
    fi
    hash="$( (cd "$ctx" && find . -type f | LC_ALL=C sort | xargs sha256sum; sha256sum < "$src/Dockerfile") \
        | sha256sum | cut -c1-32)"
    [ -f "$src/agent.c" ] && hash="$(printf '%s' "$hash" | cat - "$src/agent.c" | sha256sum | cut -c1-32)"
    have="$(docker image inspect -f '{{ index .Config.Labels "io.workers-spawner.inputs-hash" }}' \
        "$name" 2>/dev/null || true)"
    if [ "$have" = "$hash" ]; then
        rm -rf "$ctx"
        return 0
    fi
    _ws_log "building $name ($hash)"
    out="$(docker build --label "io.workers-spawner.inputs-hash=$hash" -t "$name" "$ctx" 2>&1)"
    rc=$?
    rm -rf "$ctx"
    if [ $rc -ne 0 ]; then
        echo "$out" >&2
        _ws_log "docker build of $name failed"
        return 1
    fi
}

_ws_build_unprepared_images() {
    _ws_build_unprepared_image ws-test-stock:latest test-stock || return 1
    _ws_build_unprepared_image ws-test-noshell:latest test-noshell || return 1
    _ws_build_unprepared_image ws-test-node:latest test-node || return 1
}

_ws_free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' \
            2>/dev/null && return 0
    fi
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}

# A second Docker engine (scripts/second-engine.sh: its own netns, veth and
# data root) standing in for a second host in the fleet tests; the images
# its tests use are copied to it.
_ws_start_engine_b() {
    local out
    # One started by an enclosing script (test.sh around bench.sh) is
    # reused, and left to it to stop.
    WS_ENGINE_B_OWNED=1
    if "$WS_TEST_REPO_ROOT/scripts/second-engine.sh" status >/dev/null 2>&1; then
        WS_ENGINE_B_OWNED=0
    fi
    out="$("$WS_TEST_REPO_ROOT/scripts/second-engine.sh" up)" || return 1
    eval "$out"
    "$WS_TEST_REPO_ROOT/scripts/second-engine.sh" load "$WS_TEST_IMAGE" ws-test-stock:latest \
        || return 1
    _ws_log "engine B on $WS_ENGINE_B_HOST (netns $WS_ENGINE_B_NETNS, host side $WS_ENGINE_B_HOST_ADDR)"
}

_ws_start_redis() {
    local attempt port root i bind="127.0.0.1"
    # Daemons of engine B reach it from their netns at the host side of the veth.
    if [ -n "${WS_ENGINE_B_HOST_ADDR:-}" ]; then
        bind="127.0.0.1 $WS_ENGINE_B_HOST_ADDR"
    fi
    for attempt in 1 2 3 4 5; do
        port="$(_ws_free_port)" || { _ws_log "no free port found"; return 1; }
        root="$(mktemp -d "${TMPDIR:-/tmp}/ws-test-redis.XXXXXX")" || return 1
        mkdir -p "$root/data"
        # shellcheck disable=SC2086
        if redis-server --port "$port" --bind $bind --protected-mode no --dir "$root/data" \
                --appendonly yes --save '' --daemonize yes \
                --pidfile "$root/redis.pid" --logfile "$root/redis.log" >/dev/null 2>&1; then
            for i in $(seq 1 100); do
                if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
                    for i in $(seq 1 50); do [ -s "$root/redis.pid" ] && break; sleep 0.1; done
                    WS_TEST_REDIS_ROOT="$root"
                    WS_TEST_REDIS_PORT="$port"
                    WS_TEST_REDIS_DIR="$root/data"
                    WS_TEST_REDIS_PIDFILE="$root/redis.pid"
                    WS_TEST_REDIS_URL="redis://127.0.0.1:$port/"
                    export WS_TEST_REDIS_ROOT WS_TEST_REDIS_PORT WS_TEST_REDIS_DIR \
                        WS_TEST_REDIS_PIDFILE WS_TEST_REDIS_URL
                    _ws_log "redis on $WS_TEST_REDIS_URL (dir $WS_TEST_REDIS_DIR)"
                    return 0
                fi
                sleep 0.1
            done
        fi
        _ws_log "redis did not come up on port $port (attempt $attempt):"
        tail -n 5 "$root/redis.log" >&2 2>/dev/null || true
        if [ -s "$root/redis.pid" ]; then kill "$(cat "$root/redis.pid")" 2>/dev/null || true; fi
        rm -rf "$root"
    done
    return 1
}

# Stop the private redis (SHUTDOWN NOSAVE, wait for exit) and remove its dir.
# Safe to call more than once.
ws_test_env_down() {
    local pid="" i
    if [ -n "${WS_TEST_REDIS_PIDFILE:-}" ] && [ -s "$WS_TEST_REDIS_PIDFILE" ]; then
        pid="$(cat "$WS_TEST_REDIS_PIDFILE" 2>/dev/null || true)"
    fi
    if [ -n "${WS_TEST_REDIS_PORT:-}" ]; then
        redis-cli -h 127.0.0.1 -p "$WS_TEST_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    fi
    if [ -n "$pid" ]; then
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            _ws_log "redis (pid $pid) still running, killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    if [ -n "${WS_TEST_REDIS_ROOT:-}" ] && [ -d "$WS_TEST_REDIS_ROOT" ]; then
        rm -rf "$WS_TEST_REDIS_ROOT"
    fi
    unset WS_TEST_REDIS_ROOT WS_TEST_REDIS_PORT WS_TEST_REDIS_DIR WS_TEST_REDIS_PIDFILE WS_TEST_REDIS_URL
    # Only the shell that started it stops it (not a child that inherited
    # its exports, nor one that found it running).
    if [ -n "${WS_ENGINE_B_HOST:-}" ] && [ "${WS_ENGINE_B_OWNED:-0}" = 1 ]; then
        "${WS_TEST_REPO_ROOT:-.}/scripts/second-engine.sh" down >/dev/null 2>&1 || true
    fi
    unset WS_ENGINE_B_OWNED
    unset WS_ENGINE_B_HOST WS_ENGINE_B_NETNS WS_ENGINE_B_HOST_ADDR WS_ENGINE_B_NS_ADDR WS_ENGINE_B_STATE \
        WS_ENGINE_B_TCP WS_ENGINE_B_TLS_CA WS_ENGINE_B_TLS_CERT WS_ENGINE_B_TLS_KEY
    return 0
}

# An S3-compatible server for the artifact store's tests: moto's server
# from PyPI, in a venv kept under the user's cache (made once).
_ws_install_moto() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/workers-spawner/moto-venv"
    if [ ! -x "$venv/bin/moto_server" ]; then
        _ws_log "installing moto's S3 server (PyPI) into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" >/dev/null || return 1
        "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]>=5,<6" >/dev/null || return 1
    fi
    WS_TEST_MOTO_SERVER="$venv/bin/moto_server"
    export WS_TEST_MOTO_SERVER
}

_ws_test_env_up() {
    WS_TEST_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    WS_TEST_IMAGE="ws-test-busybox:latest"
    export WS_TEST_REPO_ROOT WS_TEST_IMAGE
    _ws_install_deps || { _ws_log "installing dependencies failed"; return 1; }
    if ! docker info >/dev/null 2>&1; then
        _ws_log "docker engine is not reachable"
        return 1
    fi
    _ws_build_test_image || return 1
    _ws_build_unprepared_images || return 1
    _ws_install_moto || { _ws_log "installing moto's S3 server failed"; return 1; }
    # WS_TEST_ENGINE_B=0: no second engine (benchmarks of one engine, the demo).
    if [ "${WS_TEST_ENGINE_B:-1}" != 0 ]; then
        _ws_start_engine_b || { _ws_log "could not start the second engine"; return 1; }
    fi
    _ws_start_redis || { _ws_log "could not start redis-server"; return 1; }
}

_ws_test_env_up || { _ws_log "test environment setup FAILED"; return 1 2>/dev/null || exit 1; }
