#!/usr/bin/env bash
# The main job, end to end, on a machine with Docker:
#
#   scripts/demo.sh [PROMPT]
#
# 1. sets up redis-server, busybox and the test image (scripts/test-env.sh:
#    installs what is missing, starts a private redis on a free port);
# 2. builds the binary (cargo build);
# 3. starts `workers-spawner serve` in the background with the fixture
#    presets and stream prefix `demo`;
# 4. runs `workers-spawner spawn --preset echo_v1 --prompt ... --follow`,
#    which prints the request's events and its result (one JSON per line);
# 5. stops the daemon and redis.
#
# Exit code: that of `spawn` (0 only when the worker succeeded).
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root" || exit 1
prompt="${1:-Hello from workers-spawner}"

say() { printf '\n[demo] %s\n' "$*" >&2; }

daemon_pid=""
logdir="$(mktemp -d "${TMPDIR:-/tmp}/ws-demo.XXXXXX")"
cleanup() {
    local rc=$?
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        say "stopping the daemon (pid $daemon_pid)"
        kill -TERM "$daemon_pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if declare -F ws_test_env_down >/dev/null; then
        say "stopping redis"
        ws_test_env_down
    fi
    rm -rf "$logdir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "setting up redis-server, busybox and the test image"
# shellcheck source=scripts/test-env.sh
# The demo needs one engine only.
export WS_TEST_ENGINE_B=0
. "$repo_root/scripts/test-env.sh" || { say "environment setup failed"; exit 1; }

say "building workers-spawner"
cargo build || { say "cargo build failed"; exit 1; }
bin="${CARGO_TARGET_DIR:-$repo_root/target}/debug/workers-spawner"
[ -x "$bin" ] || { say "binary not found at $bin"; exit 1; }

port="$(_ws_free_port)" || { say "no free port"; exit 1; }
common=(--redis-url "$WS_TEST_REDIS_URL" --stream-prefix demo)

say "starting the daemon (prefix demo, http 127.0.0.1:$port, log $logdir/daemon.log)"
# Its artifact store (the result lists the transcript there, served on the
# HTTP port) and repository cache in the demo's own folder.
WS_TEST_SECRET="demo-secret-$RANDOM$RANDOM" \
    WORKERS_SPAWNER_ARTIFACTS_DIR="$logdir/artifacts" \
    WORKERS_SPAWNER_REPO_CACHE_DIR="$logdir/repos" \
    "$bin" "${common[@]}" \
    --presets-dir tests/fixtures/presets --skills-dir skills --templates-dir templates \
    --http-addr "127.0.0.1:$port" --instance-id "demo-$$" --max-concurrent 4 \
    serve 2>"$logdir/daemon.log" &
daemon_pid=$!

healthy=""
for _ in $(seq 1 100); do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then break; fi
    if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
        printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3
        if head -n 1 <&3 | grep -q ' 200 '; then healthy=1; fi
        exec 3<&- 3>&-
        [ -n "$healthy" ] && break
    fi
    sleep 0.1
done
if [ -z "$healthy" ]; then
    say "the daemon did not come up; its log:"
    cat "$logdir/daemon.log" >&2
    exit 1
fi

say "workers-spawner spawn --preset echo_v1 --prompt \"$prompt\" --follow"
"$bin" "${common[@]}" spawn --preset echo_v1 --prompt "$prompt" --follow
rc=$?
if [ $rc -eq 0 ]; then
    say "the worker succeeded"
else
    say "spawn exited with $rc; daemon log:"
    tail -n 30 "$logdir/daemon.log" >&2
fi
exit $rc
