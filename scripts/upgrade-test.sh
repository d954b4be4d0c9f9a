#!/usr/bin/env bash
# Upgrade check: a daemon built from this checkout adopts the containers an
# older daemon started (docs/operations.md, "Upgrading: containers of an
# older daemon").
#
#     scripts/upgrade-test.sh [--from COMMIT] [--only a,b,...] [--keep]
#
# It builds the old daemon from COMMIT (default 1d62f61, the commit before
# the #15 restructuring) in a throwaway git worktree with a target dir of
# its own (WS_UPGRADE_TARGET, default /work/target-old; the binary is kept
# there per commit and reused), builds the new one from this checkout
# (`cargo build --bin workers-spawner`, honouring CARGO_TARGET_DIR), sets up
# the test environment (scripts/test-env.sh: a private redis-server and the
# test image) and runs, each on a stream prefix of its own
# (wsupgrade<random>-<scenario>), with the same settings for both daemons:
#
#   a  one-shot, same instance id: the old daemon starts an ~8 s agent, is
#      SIGKILLed while it runs, the new daemon starts with the same settings
#      (an operator restarting the service) and must finish it; then a new
#      request must run on the new daemon;
#   b  session, same instance id: the old daemon runs the session's first
#      task, is SIGKILLed, the new daemon must run the second task in the
#      very same container (same container id, sees the first task's file);
#   c  one-shot, new instance id: as a, but the new daemon has another
#      instance id and starts once the old one's heartbeat expired (the
#      worker has finished meanwhile: its result comes from the new daemon);
#   d  session, new instance id: as b, after the old heartbeat expired;
#   e  the old daemon's workers call `orchestrator respond` through the new
#      daemon's gateway (a one-shot mid-run, a session's next task); needs
#      universal-worker-base:latest (WS_UPGRADE_UNIVERSAL_IMAGE), else SKIP.
#   f  session, same instance id, the old daemon SIGKILLed while a session
#      task runs: the task must be answered once, `interrupted`, never run
#      again (daemons before the fix in model::triage answered it
#      too_many_deliveries after ~60 s, with a dead letter);
#   g  warm pool, same instance id: the old daemon is SIGKILLed while a
#      pooled request runs; the new one answers it once (interrupted: never
#      run again), replaces the old pool and serves the next pooled request.
#
# Requests, controls and every check go through the wire contract only
# (redis-cli on <prefix>:spawn/result/events/control, the docker CLI for
# labels and engine events). Per scenario: exactly one result per request
# id, `succeeded`, the expected output, one container start per request,
# no event seq used twice, adoption logged by the new daemon, nothing
# pending or dead-lettered, and no managed container of the prefix left at
# the end. Prints PASS/FAIL per scenario; exits non-zero on any failure.
# Every wait is bounded; every process it starts is stopped on exit.
#
# Baselines: WS_UPGRADE_OLD_BIN / WS_UPGRADE_NEW_BIN name a binary to use
# instead of building (e.g. the old binary as both, to tell an upgrade
# incompatibility from behaviour both versions share).
#
# Needs: git, cargo, docker, jq, curl (redis-server/redis-cli come with
# scripts/test-env.sh). Run from anywhere inside the repository.

set -uo pipefail

FROM=1d62f61
ONLY="a,b,c,d,e,f,g"
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --from) FROM="${2:?--from needs a commit}"; shift 2 ;;
        --from=*) FROM="${1#--from=}"; shift ;;
        --only) ONLY="${2:?--only needs a list like a,b}"; shift 2 ;;
        --only=*) ONLY="${1#--only=}"; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,54p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T0=$SECONDS
log() { printf '[upgrade %4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { log "ERROR: $*"; FAILED=1; exit 2; }

for tool in git cargo docker jq curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ws-upgrade.XXXXXX")" || die "mktemp failed"
RUN_ID="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
BASE_PREFIX="wsupgrade${RUN_ID}"
OLD_TARGET="${WS_UPGRADE_TARGET:-/work/target-old}"
WORKTREE=""
ENV_UP=0
DAEMON_PIDS=()
WATCH_PIDS=()
PREFIXES=()
FAILED=0

# ---------------------------------------------------------------- cleanup

remove_prefix_containers() {
    local p="$1" ids
    ids="$(docker ps -aq --filter label=io.workers-spawner.managed=true \
        --filter "label=io.workers-spawner.stream-prefix=$p" 2>/dev/null)"
    [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
    ids="$(docker volume ls -q --filter label=io.workers-spawner.managed=true \
        --filter "label=io.workers-spawner.stream-prefix=$p" 2>/dev/null)"
    [ -n "$ids" ] && docker volume rm $ids >/dev/null 2>&1
    return 0
}

cleanup() {
    local pid p
    for pid in "${DAEMON_PIDS[@]}"; do
        kill -9 "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    for pid in "${WATCH_PIDS[@]}"; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    for p in "${PREFIXES[@]}"; do remove_prefix_containers "$p"; done
    if [ "$ENV_UP" = 1 ]; then ws_test_env_down; fi
    if [ -n "$WORKTREE" ] && [ -d "$WORKTREE" ]; then
        git -C "$ROOT" worktree remove --force "$WORKTREE" >/dev/null 2>&1 || rm -rf "$WORKTREE"
        git -C "$ROOT" worktree prune >/dev/null 2>&1
    fi
    if [ "$KEEP" = 1 ] || [ "$FAILED" != 0 ]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----------------------------------------------------------------- builds

OLD_SHA="$(git -C "$ROOT" rev-parse --verify --quiet "${FROM}^{commit}")" \
    || die "--from $FROM is not a commit of this repository"
OLD_CACHE="$OLD_TARGET/upgrade-bin/workers-spawner-$OLD_SHA"
OLD_LABEL="${OLD_SHA:0:10}"
if [ -n "${WS_UPGRADE_OLD_BIN:-}" ]; then
    # A baseline (e.g. the new binary against itself): no build.
    OLD_CACHE="$WS_UPGRADE_OLD_BIN"
    OLD_LABEL="$WS_UPGRADE_OLD_BIN"
    log "old daemon: $WS_UPGRADE_OLD_BIN (WS_UPGRADE_OLD_BIN, no build)"
elif [ -x "$OLD_CACHE" ]; then
    log "old daemon ${OLD_SHA:0:10}: reusing $OLD_CACHE"
else
    WORKTREE="$(mktemp -d "${TMPDIR:-/tmp}/ws-upgrade-old.XXXXXX")" || die "mktemp failed"
    rmdir "$WORKTREE"
    git -C "$ROOT" worktree add --detach "$WORKTREE" "$OLD_SHA" >/dev/null 2>&1 \
        || die "git worktree add $WORKTREE $OLD_SHA failed"
    log "old daemon ${OLD_SHA:0:10}: building in $WORKTREE (CARGO_TARGET_DIR=$OLD_TARGET)"
    if ! (cd "$WORKTREE" && CARGO_TARGET_DIR="$OLD_TARGET" cargo build --bin workers-spawner) \
            >"$WORK/build-old.log" 2>&1; then
        tail -n 30 "$WORK/build-old.log" >&2
        FAILED=1
        die "building the old daemon failed (log: $WORK/build-old.log)"
    fi
    mkdir -p "$(dirname "$OLD_CACHE")"
    cp "$OLD_TARGET/debug/workers-spawner" "$OLD_CACHE.tmp" && mv "$OLD_CACHE.tmp" "$OLD_CACHE" \
        || die "could not keep the old binary in $OLD_CACHE"
    git -C "$ROOT" worktree remove --force "$WORKTREE" >/dev/null 2>&1
    WORKTREE=""
fi
OLD_BIN="$WORK/workers-spawner-old"
cp "$OLD_CACHE" "$OLD_BIN" || die "copy of the old binary failed"

NEW_BIN="$WORK/workers-spawner-new"
if [ -n "${WS_UPGRADE_NEW_BIN:-}" ]; then
    # A baseline (e.g. the old binary against itself) or a prebuilt binary.
    cp "$WS_UPGRADE_NEW_BIN" "$NEW_BIN" || die "no binary at WS_UPGRADE_NEW_BIN=$WS_UPGRADE_NEW_BIN"
    NEW_LABEL="$WS_UPGRADE_NEW_BIN"
    log "new daemon: $WS_UPGRADE_NEW_BIN (WS_UPGRADE_NEW_BIN, no build)"
else
    NEW_SHA="$(git -C "$ROOT" rev-parse HEAD)"
    NEW_LABEL="${NEW_SHA:0:10}"
    [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src crates shim build.rs Cargo.toml Cargo.lock 2>/dev/null)" ] \
        && NEW_LABEL+=" + uncommitted changes"
    log "new daemon $NEW_LABEL: cargo build --bin workers-spawner"
    if ! (cd "$ROOT" && cargo build --bin workers-spawner) >"$WORK/build-new.log" 2>&1; then
        tail -n 30 "$WORK/build-new.log" >&2
        die "building the new daemon failed (log: $WORK/build-new.log)"
    fi
    NEW_TARGET="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null | jq -r .target_directory)"
    [ -x "$NEW_TARGET/debug/workers-spawner" ] || die "no binary at $NEW_TARGET/debug/workers-spawner"
    # A copy: the checkout may be rebuilt while the scenarios run.
    cp "$NEW_TARGET/debug/workers-spawner" "$NEW_BIN" || die "copy of the new binary failed"
fi
BUILD_DONE=$SECONDS

# ------------------------------------------------------- test environment

# shellcheck source=scripts/test-env.sh
. "$ROOT/scripts/test-env.sh" || die "scripts/test-env.sh failed"
ENV_UP=1
IMAGE="${WS_TEST_IMAGE:-ws-test-busybox:latest}"
command -v redis-cli >/dev/null 2>&1 || die "redis-cli missing after test-env.sh"

rcli() { timeout 10 redis-cli -h 127.0.0.1 -p "$WS_TEST_REDIS_PORT" "$@"; }

# Each daemon reads the catalog of its own version, as in a real upgrade
# where the files ship with the binary: the old one its commit's skills and
# templates, the new one this checkout's. Both without `conversation` (#16),
# which these `sh -c` agents could not take (docs/sessions.md).
CATALOG_OLD="$WORK/catalog-old"
CATALOG_NEW="$WORK/catalog-new"
mkdir -p "$CATALOG_OLD" "$CATALOG_NEW"
git -C "$ROOT" archive "$FROM" templates skills | tar -x -C "$CATALOG_OLD" \
    || die "cannot read the catalog of $FROM"
cp -r "$ROOT/templates" "$ROOT/skills" "$CATALOG_NEW/"
for f in "$CATALOG_OLD"/templates/*/agent.json "$CATALOG_NEW"/templates/*/agent.json; do
    jq 'del(.conversation)' "$f" > "$f.new" && mv "$f.new" "$f"
done
# catalog_of BIN: the catalog directory of that daemon.
catalog_of() { case "$1" in *-old) echo "$CATALOG_OLD" ;; *) echo "$CATALOG_NEW" ;; esac; }

# The presets, as an admin drops them: one JSON file per preset.
PRESETS="$WORK/presets"
mkdir -p "$PRESETS"
cat >"$PRESETS/upgrade_oneshot_v1.json" <<EOF
{
  "id": "upgrade_oneshot_v1",
  "name": "Upgrade check: a one-shot agent that runs about 8 s",
  "image": "$IMAGE",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "echo start; sleep 8; echo done", "{prompt}"] },
  "allowed_tools": ["respond"],
  "has_internet": false,
  "limits": { "cpu": 0.5, "memory": "128m", "timeout_sec": 120, "ttl_sec": 600, "pids": 64 }
}
EOF
cat >"$PRESETS/upgrade_session_v1.json" <<EOF
{
  "id": "upgrade_session_v1",
  "name": "Upgrade check: a session agent that runs its prompt as a script",
  "image": "$IMAGE",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"] },
  "allowed_tools": ["respond"],
  "has_internet": false,
  "limits": { "cpu": 0.5, "memory": "128m", "timeout_sec": 120, "ttl_sec": 600, "pids": 64 }
}
EOF
UNIVERSAL="${WS_UPGRADE_UNIVERSAL_IMAGE:-universal-worker-base:latest}"
HAVE_UNIVERSAL=0
if docker image inspect "$UNIVERSAL" >/dev/null 2>&1; then
    HAVE_UNIVERSAL=1
    cat >"$PRESETS/upgrade_cli_v1.json" <<EOF
{
  "id": "upgrade_cli_v1",
  "name": "Upgrade check: the orchestrator CLI through the gateway",
  "image": "$UNIVERSAL",
  "agent": { "type": "claude-code", "command": ["bash", "-c", "{prompt}"] },
  "allowed_tools": ["respond"],
  "has_internet": false,
  "limits": { "cpu": 0.5, "memory": "256m", "timeout_sec": 120, "ttl_sec": 600, "pids": 128 }
}
EOF
fi
# The pool preset has a directory of its own: a daemon keeps a warm pool
# for every pooled preset it knows, which the other scenarios do not want.
POOL_PRESETS="$WORK/presets-pool"
mkdir -p "$POOL_PRESETS"
cat >"$POOL_PRESETS/upgrade_pool_v1.json" <<EOF
{
  "id": "upgrade_pool_v1",
  "name": "Upgrade check: a preset with a warm pool",
  "image": "$IMAGE",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"] },
  "allowed_tools": ["respond"],
  "has_internet": false,
  "limits": { "cpu": 0.5, "memory": "128m", "timeout_sec": 120, "ttl_sec": 600, "pids": 64 },
  "pool": { "size": 1 }
}
EOF
for which in old new; do
    bin="$WORK/workers-spawner-$which"
    cat_dir="$(catalog_of "$bin")"
    dirs=(--skills-dir "$cat_dir/skills" --templates-dir "$cat_dir/templates")
    if ! { "$bin" "${dirs[@]}" presets validate "$PRESETS" && "$bin" "${dirs[@]}" presets validate "$POOL_PRESETS"; } >"$WORK/validate-$which.log" 2>&1; then
        cat "$WORK/validate-$which.log" >&2
        FAILED=1
        die "the $which daemon rejects the test presets"
    fi
done
log "presets valid for both daemons; redis $WS_TEST_REDIS_URL; image $IMAGE"

# ---------------------------------------------------------------- helpers

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null \
        || echo $((20000 + RANDOM % 40000))
}

# wait_for SECONDS CMD...: runs CMD every 0.5 s until it succeeds; 1 on timeout.
wait_for() {
    local limit=$1 end
    shift
    end=$((SECONDS + limit))
    while [ $SECONDS -lt $end ]; do
        "$@" && return 0
        sleep 0.5
    done
    "$@"
}

# Daemon state of the scenario running now.
D_PID=""
D_HTTP=""
D_LOG=""

# start_daemon BIN INSTANCE PREFIX LOGFILE: starts `serve`, waits for /healthz.
start_daemon() {
    local bin="$1" instance="$2" prefix="$3" logfile="$4" http gw cat_dir
    http="127.0.0.1:$(free_port)"
    cat_dir="$(catalog_of "$bin")"
    # Same settings across the restart: the gateway port is the scenario's
    # (containers carry ORCHESTRATOR_API_URL with it).
    gw="${S_GW:-$(free_port)}"
    (
        cd "$ROOT" || exit 1
        for v in $(compgen -e | grep '^WORKERS_SPAWNER_'); do unset "$v"; done
        export WORKERS_SPAWNER_BLOCK=1s WORKERS_SPAWNER_GATEWAY_PORT="$gw"
        # A binary with the HTTP API (it has `artifacts` too) gets a port of its own.
        if "$bin" artifacts --help >/dev/null 2>&1; then
            export WORKERS_SPAWNER_API_ADDR="127.0.0.1:$(free_port)"
        fi
        export RUST_LOG="${RUST_LOG:-info}"
        exec "$bin" --redis-url "$WS_TEST_REDIS_URL" --stream-prefix "$prefix" \
            --presets-dir "${S_PRESETS:-$PRESETS}" --skills-dir "$cat_dir/skills" --templates-dir "$cat_dir/templates" \
            --http-addr "$http" --instance-id "$instance" --max-concurrent 4 serve
    ) </dev/null >/dev/null 2>>"$logfile" &
    D_PID=$!
    D_HTTP="$http"
    D_LOG="$logfile"
    DAEMON_PIDS+=("$D_PID")
    local end=$((SECONDS + 30))
    while [ $SECONDS -lt $end ]; do
        if ! kill -0 "$D_PID" 2>/dev/null; then
            log "daemon $instance exited during start-up:"
            tail -n 20 "$logfile" >&2
            return 1
        fi
        curl -fsS -m 2 "http://$http/healthz" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "daemon $instance did not answer /healthz within 30 s"
    return 1
}

kill_daemon() {
    local pid="$1" p rest=()
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    for p in "${DAEMON_PIDS[@]}"; do [ "$p" = "$pid" ] || rest+=("$p"); done
    DAEMON_PIDS=("${rest[@]}")
}

# JSON bodies of a stream (one per line).
stream_json() { rcli XRANGE "$1" - + | grep '^{' ; }
results_for() { stream_json "$P:result" | jq -c --arg r "$1" 'select(.request_id == $r)'; }
result_count() { results_for "$1" | grep -c . ; }
has_result() { [ "$(result_count "$1")" -ge 1 ]; }
events_for() { stream_json "$P:events" | jq -c --arg r "$1" 'select(.request_id == $r)'; }
has_event() { events_for "$1" | jq -se --arg t "$2" 'any(.[]; .type == $t)' >/dev/null 2>&1; }
session_ended() {
    stream_json "$P:events" \
        | jq -se --arg s "$1" 'any(.[]; .type == "session_expired" and .data.session_id == $s)' >/dev/null 2>&1
}
containers_of_prefix() {
    docker ps -aq --filter label=io.workers-spawner.managed=true \
        --filter "label=io.workers-spawner.stream-prefix=$P"
}
no_containers() { [ -z "$(containers_of_prefix)" ]; }
no_pending() {
    local n
    n="$(rcli XPENDING "$P:spawn" workers-spawner 2>/dev/null | head -n 1)"
    [ "${n:-0}" = 0 ]
}
heartbeat_gone() { [ "$(rcli EXISTS "$P:instance:$1")" = 0 ]; }

publish_spawn() { rcli XADD "$P:spawn" '*' data "$1" >/dev/null; }
publish_control() { rcli XADD "$P:control" '*' data "$1" >/dev/null; }

# Checks of the scenario running now.
S_FAILS=()
S_NOTES=()
fail() { S_FAILS+=("$*"); log "  check failed: $*"; }
note() { S_NOTES+=("$*"); log "  note: $*"; }
check() {
    local what="$1"
    shift
    if "$@"; then log "  ok: $what"; else fail "$what"; fi
}

# The one result of RID must be `succeeded` (after a few seconds more, so a
# second result would show up).
check_one_result() {
    local rid="$1" n status
    sleep 3
    n="$(result_count "$rid")"
    [ "$n" = 1 ] || { fail "$rid has $n results (want exactly 1)"; return 1; }
    status="$(results_for "$rid" | jq -r .status)"
    [ "$status" = succeeded ] \
        || { fail "$rid result is $status: $(results_for "$rid" | jq -c '{status, error, exit_code}')"; return 1; }
    log "  ok: exactly one result for $rid, succeeded"
}

# The event seqs of RID: no number twice (gaps are only noted).
check_seqs() {
    local rid="$1" seqs dups
    seqs="$(events_for "$rid" | jq -r .seq | sort -n)"
    dups="$(printf '%s\n' "$seqs" | uniq -d | tr '\n' ' ')"
    [ -z "$dups" ] || fail "$rid: event seq numbers used twice: $dups ($(events_for "$rid" | jq -r '"\(.seq):\(.type)"' | tr '\n' ' '))"
    local prev=0 s gaps=""
    for s in $seqs; do
        [ "$s" -gt $((prev + 1)) ] && gaps+="$((prev + 1))..$((s - 1)) "
        prev=$s
    done
    [ -z "$gaps" ] || note "$rid: event seq gaps $gaps(events lost across the kill)"
    [ -z "$dups$gaps" ] && log "  ok: $rid event seqs 1..$prev, each once ($(events_for "$rid" | jq -r .type | tr '\n' ' '))"
    local twice
    twice="$(events_for "$rid" | jq -r 'select(.type == "output") | .data.text' | sort | uniq -d | tr '\n' ' ')"
    [ -z "$twice" ] || note "$rid: output lines published twice as events (old and new daemon): $twice"
}

# The engine's container starts of the scenario's prefix, watched from its
# beginning (the engine keeps only a short backlog of past events).
# Each line: <request-id>|<session-id>|<kind>|<build> (labels).
ENGINE_PID=""
watch_engine() {
    timeout 900 docker events --filter type=container --filter event=start \
        --filter "label=io.workers-spawner.stream-prefix=$P" \
        --format '{{index .Actor.Attributes "io.workers-spawner.request-id"}}|{{index .Actor.Attributes "io.workers-spawner.session-id"}}|{{index .Actor.Attributes "io.workers-spawner.kind"}}|{{index .Actor.Attributes "io.workers-spawner.build"}}' \
        >"$WORK/$1-engine.log" 2>/dev/null &
    ENGINE_PID=$!
    WATCH_PIDS+=("$ENGINE_PID")
    sleep 0.5
}
# engine_starts FIELD VALUE: starts whose FIELD (1 request id, 2 session id) is VALUE.
engine_starts() {
    awk -F'|' -v f="$1" -v v="$2" '$f == v' "$WORK/$S_KEY-engine.log" 2>/dev/null | grep -c .
}

check_adopted_logged() {
    local pattern="$1" metric
    if grep -q "$pattern" "$D_LOG"; then
        log "  ok: the new daemon logged \"$pattern\""
    else
        fail "the new daemon did not log \"$pattern\""
    fi
    metric="$(curl -fsS -m 3 "http://$D_HTTP/metrics" 2>/dev/null | grep -E '^workers_spawner_adopted(_total)? ' | awk '{print $2}')"
    if [ -n "$metric" ] && [ "${metric%%.*}" -ge 1 ] 2>/dev/null; then
        log "  ok: metric workers_spawner_adopted = $metric"
    else
        note "metric workers_spawner_adopted is '${metric:-absent}'"
    fi
}

# The end of every scenario: no entry pending, none dead-lettered, no
# container of the prefix left.
check_clean_end() {
    check "no spawn entry left pending (XPENDING $P:spawn)" wait_for 30 no_pending
    local dead
    dead="$(rcli XLEN "$P:spawn:dead")"
    [ "${dead:-0}" = 0 ] || fail "$dead dead letter(s) on $P:spawn:dead: $(stream_json "$P:spawn:dead" | head -c 600)"
    if wait_for 30 no_containers; then
        log "  ok: no managed container of $P left"
    else
        fail "containers of $P left: $(docker ps -a --filter "label=io.workers-spawner.stream-prefix=$P" --format '{{.Names}} {{.Status}}' | tr '\n' ';')"
    fi
}

SUMMARY=()
begin_scenario() {
    S_NAME="$1"
    S_KEY="$2"
    S_FAILS=()
    S_NOTES=()
    S_T0=$SECONDS
    P="${BASE_PREFIX}-$2"
    S_GW="$(free_port)"
    S_PRESETS="$PRESETS"
    PREFIXES+=("$P")
    log "scenario $S_NAME (prefix $P)"
    watch_engine "$2"
}
end_scenario() {
    local took=$((SECONDS - S_T0)) f line
    for pid in "${DAEMON_PIDS[@]}"; do kill_daemon "$pid"; done
    if [ -n "$ENGINE_PID" ]; then
        kill "$ENGINE_PID" 2>/dev/null && wait "$ENGINE_PID" 2>/dev/null
        WATCH_PIDS=()
        ENGINE_PID=""
    fi
    remove_prefix_containers "$P"
    if [ ${#S_FAILS[@]} -eq 0 ]; then
        line="PASS  $S_NAME  (${took}s)"
    else
        FAILED=1
        line="FAIL  $S_NAME  (${took}s)"
        for f in "${S_FAILS[@]}"; do line+=$'\n'"        - $f"; done
        for f in "$WORK/$1"-*.log; do
            [ -f "$f" ] || continue
            log "last lines of $f:"
            tail -n 25 "$f" >&2
        done
    fi
    for f in "${S_NOTES[@]}"; do line+=$'\n'"        note: $f"; done
    SUMMARY+=("$line")
    echo "$line"
}

# ---------------------------------------------------------------- one-shot

# scenario_oneshot KEY SAME_ID(1|0)
scenario_oneshot() {
    local key="$1" same="$2" old_id new_id rid cid running
    begin_scenario "$key: one-shot, old daemon SIGKILLed mid-run, new daemon $( [ "$same" = 1 ] && echo 'with the same instance id' || echo 'with a new instance id after the old heartbeat expired')" "$key"
    old_id="${P}-host"
    if [ "$same" = 1 ]; then new_id="$old_id"; else new_id="${P}-host2"; fi
    rid="oneshot-${RUN_ID}-$key"
    start_daemon "$OLD_BIN" "$old_id" "$P" "$WORK/$key-old.log" || { fail "old daemon did not start"; end_scenario "$key"; return; }
    local old_pid=$D_PID
    publish_spawn "$(jq -cn --arg r "$rid" \
        '{request_id: $r, worker_config_id: "upgrade_oneshot_v1", task: {user_id: "upgrade-check", prompt: "upgrade check"}}')"
    if ! wait_for 120 has_event "$rid" started; then
        fail "the old daemon did not start $rid within 120 s (events: $(events_for "$rid" | jq -r .type | tr '\n' ' '))"
        end_scenario "$key"; return
    fi
    cid="$(docker ps -q --no-trunc --filter "label=io.workers-spawner.request-id=$rid" --filter "label=io.workers-spawner.stream-prefix=$P")"
    running="$(docker inspect -f '{{.State.Running}}' "$cid" 2>/dev/null)"
    [ "$running" = true ] || fail "the old daemon's container of $rid is not running when the old daemon is killed"
    has_result "$rid" && fail "$rid already has a result before the kill (agent too fast?)"
    log "  old daemon runs $rid in ${cid:0:12} ($(docker inspect -f '{{.Name}}' "$cid" 2>/dev/null)); SIGKILL"
    docker inspect -f '{{json .Config.Labels}}' "$cid" >"$WORK/$key-labels.json" 2>/dev/null
    kill_daemon "$old_pid"
    if [ "$same" = 0 ]; then
        if wait_for 45 heartbeat_gone "$old_id"; then
            log "  old heartbeat $P:instance:$old_id expired"
        else
            fail "heartbeat key $P:instance:$old_id still there 45 s after the kill"
        fi
    fi
    start_daemon "$NEW_BIN" "$new_id" "$P" "$WORK/$key-new.log" || { fail "new daemon did not start"; end_scenario "$key"; return; }
    log "  new daemon up as $new_id"
    if ! wait_for 90 has_result "$rid"; then
        fail "no result for $rid within 90 s of the new daemon's start (events: $(events_for "$rid" | jq -r .type | tr '\n' ' '))"
        end_scenario "$key"; return
    fi
    if check_one_result "$rid"; then
        local out inst
        out="$(results_for "$rid" | jq -r .output)"
        inst="$(results_for "$rid" | jq -r .worker.instance)"
        if printf '%s\n' "$out" | grep -qx start && printf '%s\n' "$out" | grep -qx 'done'; then
            log "  ok: output holds both lines (start, done); answered by $inst"
        else
            fail "output of $rid lacks a line: $(printf '%s' "$out" | head -c 300 | jq -Rs .)"
        fi
        [ "$inst" = "$new_id" ] || note "result names instance $inst (new daemon is $new_id)"
    fi
    check_seqs "$rid"
    local starts
    sleep 1
    starts="$(engine_starts 1 "$rid")"
    [ "$starts" = 1 ] && log "  ok: the engine started one container for $rid" \
        || fail "the engine started $starts containers for $rid (want 1: the old daemon's, adopted)"
    check_adopted_logged "adopting container"
    # New work on the same streams after the upgrade, on the same prepared image.
    local fresh="fresh-${RUN_ID}-$key" old_build new_build
    publish_spawn "$(jq -cn --arg r "$fresh" \
        '{request_id: $r, worker_config_id: "upgrade_session_v1", task: {user_id: "upgrade-check", prompt: "echo fresh-ok"}}')"
    if wait_for 120 has_result "$fresh" && check_one_result "$fresh"; then
        results_for "$fresh" | jq -r .output | grep -qx fresh-ok || fail "$fresh output lacks fresh-ok"
        old_build="$(jq -r '."io.workers-spawner.build" // empty' "$WORK/$key-labels.json" 2>/dev/null)"
        new_build="$(awk -F'|' -v v="$fresh" '$1 == v {print $4}' "$WORK/$key-engine.log" | head -n 1)"
        log "  ok: a new request after the upgrade succeeded"
        log "  prepared image (build label): old daemon ${old_build:-?}, new daemon ${new_build:-?}"
        if [ -n "$new_build" ] && [ -n "$old_build" ] && [ "$new_build" != "$old_build" ]; then
            note "the new daemon runs on another prepared image ($new_build, the old one used $old_build): a one-time build after the upgrade"
        fi
    else
        fail "a new request after the upgrade did not succeed within 120 s"
    fi
    check_clean_end
    end_scenario "$key"
}

# ----------------------------------------------------------------- session

# scenario_session KEY SAME_ID(1|0)
scenario_session() {
    local key="$1" same="$2" old_id new_id sid r1 r2 cid1 name1 cid2
    begin_scenario "$key: session, first task by the old daemon, SIGKILL, second task by the new daemon $( [ "$same" = 1 ] && echo 'with the same instance id' || echo 'with a new instance id after the old heartbeat expired')" "$key"
    old_id="${P}-host"
    if [ "$same" = 1 ]; then new_id="$old_id"; else new_id="${P}-host2"; fi
    sid="sess-${RUN_ID}-$key"
    r1="task1-${RUN_ID}-$key"
    r2="task2-${RUN_ID}-$key"
    start_daemon "$OLD_BIN" "$old_id" "$P" "$WORK/$key-old.log" || { fail "old daemon did not start"; end_scenario "$key"; return; }
    local old_pid=$D_PID
    publish_spawn "$(jq -cn --arg r "$r1" --arg s "$sid" \
        '{request_id: $r, worker_config_id: "upgrade_session_v1", task: {user_id: "upgrade-check", session_id: $s, prompt: "echo written-by-the-old-daemon > /workspace/mark; echo task1-ok"}}')"
    if ! wait_for 120 has_result "$r1"; then
        fail "no result for $r1 from the old daemon within 120 s (events: $(events_for "$r1" | jq -r .type | tr '\n' ' '))"
        end_scenario "$key"; return
    fi
    check_one_result "$r1" || { end_scenario "$key"; return; }
    results_for "$r1" | jq -r .output | grep -qx task1-ok || fail "$r1 output lacks task1-ok"
    cid1="$(docker ps -q --no-trunc --filter "label=io.workers-spawner.session-id=$sid" --filter "label=io.workers-spawner.stream-prefix=$P")"
    [ "$(printf '%s\n' "$cid1" | grep -c .)" = 1 ] || { fail "want one running session container of $sid after task 1, found: '$cid1'"; end_scenario "$key"; return; }
    name1="$(docker inspect -f '{{.Name}}' "$cid1" | tr -d /)"
    docker inspect -f '{{json .Config.Labels}}' "$cid1" >"$WORK/$key-labels.json" 2>/dev/null
    [ "$(results_for "$r1" | jq -r .worker.container)" = "$name1" ] \
        || note "$r1 result names container $(results_for "$r1" | jq -r .worker.container), the session container is $name1"
    log "  old daemon's session container $name1 (${cid1:0:12}); SIGKILL"
    kill_daemon "$old_pid"
    if [ "$same" = 0 ]; then
        if wait_for 45 heartbeat_gone "$old_id"; then
            log "  old heartbeat $P:instance:$old_id expired"
        else
            fail "heartbeat key $P:instance:$old_id still there 45 s after the kill"
        fi
    fi
    start_daemon "$NEW_BIN" "$new_id" "$P" "$WORK/$key-new.log" || { fail "new daemon did not start"; end_scenario "$key"; return; }
    log "  new daemon up as $new_id; sending the session's second task"
    publish_spawn "$(jq -cn --arg r "$r2" --arg s "$sid" \
        '{request_id: $r, worker_config_id: "upgrade_session_v1", task: {user_id: "upgrade-check", session_id: $s, prompt: "cat /workspace/mark; echo task2-ok"}}')"
    if ! wait_for 90 has_result "$r2"; then
        fail "no result for $r2 within 90 s (events: $(events_for "$r2" | jq -r .type | tr '\n' ' '))"
        end_scenario "$key"; return
    fi
    if check_one_result "$r2"; then
        local out
        out="$(results_for "$r2" | jq -r .output)"
        if printf '%s\n' "$out" | grep -qx written-by-the-old-daemon && printf '%s\n' "$out" | grep -qx task2-ok; then
            log "  ok: task 2 saw the file task 1 wrote"
        else
            fail "$r2 output is not the old session's file + task2-ok: $(printf '%s' "$out" | head -c 300 | jq -Rs .)"
        fi
    fi
    local rname
    rname="$(results_for "$r2" | jq -r .worker.container)"
    [ "$rname" = "$name1" ] && log "  ok: $r2 ran in $name1" || fail "$r2 ran in container '$rname', not the old session container $name1"
    cid2="$(docker ps -q --no-trunc --filter "label=io.workers-spawner.session-id=$sid" --filter "label=io.workers-spawner.stream-prefix=$P")"
    [ "$cid2" = "$cid1" ] && log "  ok: the session container is still ${cid1:0:12} (same id)" \
        || fail "session containers of $sid now: '$(printf '%s' "$cid2" | cut -c1-12 | tr '\n' ' ')', was ${cid1:0:12}"
    [ "$(results_for "$r1" | grep -c .)" = 1 ] || fail "$r1 got another result after the upgrade"
    check_seqs "$r1"
    check_seqs "$r2"
    check_adopted_logged "adopting session container"
    # End the session (PROTOCOL.md section 9) and see its container go.
    publish_control "$(jq -cn --arg s "$sid" '{command: "cancel", session_id: $s}')"
    if wait_for 30 session_ended "$sid"; then
        log "  ok: session_expired event after the cancel"
    else
        fail "no session_expired event for $sid within 30 s of the cancel"
    fi
    local starts
    sleep 1
    starts="$(engine_starts 2 "$sid")"
    [ "$starts" = 1 ] && log "  ok: one session container started in all" || fail "$starts session containers started for $sid (want 1)"
    check_clean_end
    end_scenario "$key"
}

# ----------------------------------------------------------------- gateway

# A respond event of RID with MESSAGE.
has_respond() {
    events_for "$1" | jq -se --arg m "$2" 'any(.[]; .type == "respond" and .data.message == $m)' >/dev/null 2>&1
}
session_cid() {
    docker ps -q --no-trunc --filter "label=io.workers-spawner.session-id=$1" \
        --filter "label=io.workers-spawner.stream-prefix=$P"
}

# e: workers of the old daemon call `orchestrator respond` after the new
# daemon took over (same instance id and settings): a one-shot that calls
# it after the kill, and a session's second task.
scenario_gateway() {
    local key="$1" inst rid sid r1 r2 cid out
    begin_scenario "$key: old workers reach the new daemon's gateway (orchestrator respond), one-shot and session, same instance id" "$key"
    if [ "$HAVE_UNIVERSAL" != 1 ]; then
        S_NOTES+=("skipped: no $UNIVERSAL image (images/universal-worker)")
        end_scenario "$key" >/dev/null
        SUMMARY[${#SUMMARY[@]}-1]="${SUMMARY[${#SUMMARY[@]}-1]/PASS/SKIP}"
        echo "${SUMMARY[${#SUMMARY[@]}-1]}"
        return
    fi
    inst="${P}-host"
    rid="cli-oneshot-${RUN_ID}-$key"
    sid="cli-sess-${RUN_ID}-$key"
    r1="cli-task1-${RUN_ID}-$key"
    r2="cli-task2-${RUN_ID}-$key"
    start_daemon "$OLD_BIN" "$inst" "$P" "$WORK/$key-old.log" || { fail "old daemon did not start"; end_scenario "$key"; return; }
    local old_pid=$D_PID
    publish_spawn "$(jq -cn --arg r "$r1" --arg s "$sid" \
        '{request_id: $r, worker_config_id: "upgrade_cli_v1", task: {user_id: "upgrade-check", session_id: $s, prompt: "orchestrator respond before-upgrade; echo respond_rc=$?"}}')"
    if ! wait_for 180 has_result "$r1"; then
        fail "the old daemon did not answer $r1 within 180 s (events: $(events_for "$r1" | jq -r .type | tr '\n' ' '))"
        end_scenario "$key"; return
    fi
    check_one_result "$r1"
    if results_for "$r1" | jq -r .output | grep -qx respond_rc=0 && has_respond "$r1" before-upgrade; then
        log "  ok: respond works under the old daemon"
    else
        fail "respond under the old daemon failed: $(results_for "$r1" | jq -c '{status, output}' | head -c 400)"
    fi
    cid="$(session_cid "$sid")"
    publish_spawn "$(jq -cn --arg r "$rid" \
        '{request_id: $r, worker_config_id: "upgrade_cli_v1", task: {user_id: "upgrade-check", prompt: "echo start; sleep 10; orchestrator respond from-a-oneshot-after-upgrade; echo respond_rc=$?"}}')"
    if ! wait_for 60 has_event "$rid" started; then
        fail "the old daemon did not start $rid within 60 s (events: $(events_for "$rid" | jq -r .type | tr '\n' ' '))"
        end_scenario "$key"; return
    fi
    has_result "$rid" && fail "$rid already has a result before the kill"
    log "  SIGKILL the old daemon while $rid sleeps"
    kill_daemon "$old_pid"
    start_daemon "$NEW_BIN" "$inst" "$P" "$WORK/$key-new.log" || { fail "new daemon did not start"; end_scenario "$key"; return; }
    log "  new daemon up as $inst (same gateway port $S_GW)"
    publish_spawn "$(jq -cn --arg r "$r2" --arg s "$sid" \
        '{request_id: $r, worker_config_id: "upgrade_cli_v1", task: {user_id: "upgrade-check", session_id: $s, prompt: "orchestrator respond from-a-session-after-upgrade; echo respond_rc=$?"}}')"
    if wait_for 90 has_result "$rid" && check_one_result "$rid"; then
        out="$(results_for "$rid" | jq -r .output)"
        if printf '%s\n' "$out" | grep -qx respond_rc=0 && has_respond "$rid" from-a-oneshot-after-upgrade; then
            log "  ok: the adopted one-shot's respond reached the new daemon (respond event published)"
        else
            fail "the adopted one-shot's respond failed: output $(printf '%s' "$out" | head -c 400 | jq -Rs .), respond events: $(events_for "$rid" | jq -c 'select(.type == "respond")' | tr '\n' ' ')"
        fi
    else
        fail "no single succeeded result for $rid within 90 s"
    fi
    if wait_for 90 has_result "$r2" && check_one_result "$r2"; then
        out="$(results_for "$r2" | jq -r .output)"
        if printf '%s\n' "$out" | grep -qx respond_rc=0 && has_respond "$r2" from-a-session-after-upgrade; then
            log "  ok: the adopted session's second task reached the new daemon's gateway"
        else
            fail "respond of $r2 failed: output $(printf '%s' "$out" | head -c 400 | jq -Rs .)"
        fi
        [ "$(session_cid "$sid")" = "$cid" ] || fail "the session container changed across the upgrade"
    else
        fail "no single succeeded result for $r2 within 90 s"
    fi
    check_adopted_logged "adopting container"
    publish_control "$(jq -cn --arg s "$sid" '{command: "cancel", session_id: $s}')"
    wait_for 30 session_ended "$sid" || fail "no session_expired event for $sid within 30 s of the cancel"
    check_clean_end
    end_scenario "$key"
}

# ---------------------------------------------------- session task at kill

# f: the old daemon is SIGKILLed while a session's task runs (the task's
# entry is still pending, acknowledged only with its result); the new
# daemon starts with the same instance id. The contract: exactly one
# result for that task, the task never run a second time, and the session
# (same container) runs the next task.
scenario_session_midtask() {
    local key="$1" inst sid r1 r2 r3 cid status out
    begin_scenario "$key: session, old daemon SIGKILLed while a session task runs, same instance id" "$key"
    inst="${P}-host"
    sid="sess-mid-${RUN_ID}-$key"
    r1="mid-task1-${RUN_ID}-$key"
    r2="mid-task2-${RUN_ID}-$key"
    r3="mid-task3-${RUN_ID}-$key"
    start_daemon "$OLD_BIN" "$inst" "$P" "$WORK/$key-old.log" || { fail "old daemon did not start"; end_scenario "$key"; return; }
    local old_pid=$D_PID
    publish_spawn "$(jq -cn --arg r "$r1" --arg s "$sid" \
        '{request_id: $r, worker_config_id: "upgrade_session_v1", task: {user_id: "upgrade-check", session_id: $s, prompt: "echo task1-ok"}}')"
    wait_for 120 has_result "$r1" || { fail "no result for $r1 within 120 s"; end_scenario "$key"; return; }
    check_one_result "$r1"
    cid="$(session_cid "$sid")"
    publish_spawn "$(jq -cn --arg r "$r2" --arg s "$sid" \
        '{request_id: $r, worker_config_id: "upgrade_session_v1", task: {user_id: "upgrade-check", session_id: $s, prompt: "echo run >> /workspace/runs; echo t2-start; sleep 8; echo t2-done"}}')"
    wait_for 60 has_event "$r2" started || { fail "$r2 did not start within 60 s"; end_scenario "$key"; return; }
    sleep 1
    has_result "$r2" && fail "$r2 already has a result before the kill"
    log "  SIGKILL the old daemon while $r2 runs in the session container ${cid:0:12}"
    kill_daemon "$old_pid"
    start_daemon "$NEW_BIN" "$inst" "$P" "$WORK/$key-new.log" || { fail "new daemon did not start"; end_scenario "$key"; return; }
    log "  new daemon up as $inst"
    if wait_for 90 has_result "$r2"; then
        sleep 3
        local n
        n="$(result_count "$r2")"
        [ "$n" = 1 ] || fail "$r2 has $n results (want exactly 1)"
        status="$(results_for "$r2" | head -n 1 | jq -c '{status, error: .error.code, instance: .worker.instance}')"
        log "  $r2 answered: $status"
        S_NOTES+=("interrupted task $r2 answered $status")
    else
        fail "no result for $r2 within 90 s of the new daemon's start (events: $(events_for "$r2" | jq -r .type | tr '\n' ' '))"
    fi
    publish_spawn "$(jq -cn --arg r "$r3" --arg s "$sid" \
        '{request_id: $r, worker_config_id: "upgrade_session_v1", task: {user_id: "upgrade-check", session_id: $s, prompt: "sleep 9; echo runs=$(wc -l < /workspace/runs)"}}')"
    if wait_for 90 has_result "$r3" && check_one_result "$r3"; then
        out="$(results_for "$r3" | jq -r .output)"
        if printf '%s\n' "$out" | grep -qx 'runs=1'; then
            log "  ok: the interrupted task ran once; the session runs the next task"
        else
            fail "after the upgrade the session's interrupted task ran more than once (or the file is gone): $(printf '%s' "$out" | head -c 200 | jq -Rs .)"
        fi
        [ "$(session_cid "$sid")" = "$cid" ] || fail "the session container changed across the upgrade"
    else
        fail "no single succeeded result for $r3 within 90 s"
    fi
    check_seqs "$r2"
    publish_control "$(jq -cn --arg s "$sid" '{command: "cancel", session_id: $s}')"
    wait_for 30 session_ended "$sid" || fail "no session_expired event for $sid within 30 s of the cancel"
    check_clean_end
    end_scenario "$key"
}

# -------------------------------------------------------------- warm pool

# g: a preset with a warm pool. The old daemon fills the pool and runs a
# request in a pool container; it is SIGKILLed mid-run and the new daemon
# starts with the same instance id. The old pool containers must go (an
# idle one is remade, the one serving the request is answered for through
# its run mark: one result, never run again), the new daemon refills the
# pool and serves the next pooled request.
pool_cids_of() { # INSTANCE
    docker ps -q --filter label=io.workers-spawner.kind=pool \
        --filter "label=io.workers-spawner.stream-prefix=$P" --filter "label=io.workers-spawner.instance=$1"
}
no_pool_of() { [ -z "$(pool_cids_of "$1")" ]; }
pool_ready_of() { [ "$(pool_cids_of "$1" | grep -c .)" -ge 1 ]; }
scenario_pool() {
    local key="$1" inst rid fresh status n
    begin_scenario "$key: warm pool, old daemon SIGKILLed while a pooled request runs, same instance id" "$key"
    S_PRESETS="$POOL_PRESETS"
    inst="${P}-host"
    rid="pooled-${RUN_ID}-$key"
    fresh="pooled-fresh-${RUN_ID}-$key"
    start_daemon "$OLD_BIN" "$inst" "$P" "$WORK/$key-old.log" || { fail "old daemon did not start"; end_scenario "$key"; return; }
    local old_pid=$D_PID
    if ! wait_for 120 pool_ready_of "$inst"; then
        fail "the old daemon made no pool container within 120 s"
        end_scenario "$key"; return
    fi
    publish_spawn "$(jq -cn --arg r "$rid" \
        '{request_id: $r, worker_config_id: "upgrade_pool_v1", task: {user_id: "upgrade-check", prompt: "echo run >> /tmp/runs; echo pooled-start; sleep 8; echo pooled-done"}}')"
    wait_for 60 has_event "$rid" started || { fail "$rid did not start within 60 s"; end_scenario "$key"; return; }
    sleep 1
    has_result "$rid" && fail "$rid already has a result before the kill"
    log "  SIGKILL the old daemon while $rid runs in a pool container"
    kill_daemon "$old_pid"
    start_daemon "$NEW_BIN" "$inst" "$P" "$WORK/$key-new.log" || { fail "new daemon did not start"; end_scenario "$key"; return; }
    if wait_for 90 has_result "$rid"; then
        sleep 3
        n="$(result_count "$rid")"
        [ "$n" = 1 ] || fail "$rid has $n results (want exactly 1)"
        status="$(results_for "$rid" | head -n 1 | jq -c '{status, error: .error.code, output}')"
        log "  $rid answered: $status"
        S_NOTES+=("pooled request interrupted by the kill answered $status")
    else
        fail "no result for $rid within 90 s of the new daemon's start (events: $(events_for "$rid" | jq -r .type | tr '\n' ' '))"
    fi
    publish_spawn "$(jq -cn --arg r "$fresh" \
        '{request_id: $r, worker_config_id: "upgrade_pool_v1", task: {user_id: "upgrade-check", prompt: "echo fresh-ok"}}')"
    if wait_for 120 has_result "$fresh" && check_one_result "$fresh"; then
        results_for "$fresh" | jq -r .output | grep -qx fresh-ok || fail "$fresh output lacks fresh-ok"
        log "  ok: the new daemon serves pooled requests"
    else
        fail "a pooled request after the upgrade did not succeed within 120 s"
    fi
    if wait_for 30 pool_ready_of "$inst"; then log "  ok: the new daemon keeps a warm pool"; else fail "no pool container after the upgrade"; fi
    check_seqs "$rid"
    # The pool stays while the daemon runs; stop it, then nothing of the prefix may be left.
    for pid in "${DAEMON_PIDS[@]}"; do kill_daemon "$pid"; done
    remove_prefix_containers "$P"
    check_clean_end
    end_scenario "$key"
}

# ------------------------------------------------------------------- run

log "builds done in $((BUILD_DONE - T0))s; old $OLD_LABEL, new $NEW_LABEL"
case ",$ONLY," in *,a,*) scenario_oneshot a 1 ;; esac
case ",$ONLY," in *,b,*) scenario_session b 1 ;; esac
case ",$ONLY," in *,c,*) scenario_oneshot c 0 ;; esac
case ",$ONLY," in *,d,*) scenario_session d 0 ;; esac
case ",$ONLY," in *,e,*) scenario_gateway e ;; esac
case ",$ONLY," in *,f,*) scenario_session_midtask f ;; esac
case ",$ONLY," in *,g,*) scenario_pool g ;; esac

echo
echo "upgrade check: old $OLD_LABEL -> new $NEW_LABEL, $((SECONDS - T0))s in all"
for line in "${SUMMARY[@]}"; do echo "$line"; done
if [ ${#SUMMARY[@]} -eq 0 ]; then
    echo "no scenario ran (--only $ONLY)"
    FAILED=1
fi
[ "$FAILED" = 0 ] && echo "RESULT: PASS" || echo "RESULT: FAIL"
exit "$FAILED"
