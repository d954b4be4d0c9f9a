#!/usr/bin/env bash
# HTTP API benchmarks of workers-spawner (issue #21): event delivery to 100
# concurrent SSE followers against a direct XREAD consumer (latency p50/p99,
# the daemon's CPU and RSS), and POST /v1/requests to result against XADD
# to result.
#
#   scripts/bench-api.sh            # full run: 100 followers, 30 rounds
#   scripts/bench-api.sh --smoke    # 5 followers, 3 rounds, debug build
#   scripts/bench-api.sh [--smoke] [driver flags...]   # e.g. --followers 50
#
# It sources scripts/test-env.sh (a private redis-server and the test
# images; no second engine), builds the daemon and the driver
# (examples/api_bench.rs; release, or debug for --smoke), runs the driver,
# which starts the daemon and prints a markdown report on stdout, then
# removes the run's containers and stops Redis. BENCH_PROFILE and BENCH_KEEP
# as in scripts/bench-workspace.sh.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

smoke=0
driver_args=()
for a in "$@"; do
    if [ "$a" = "--smoke" ]; then smoke=1; driver_args+=("$a"); else driver_args+=("$a"); fi
done

log() { echo "[bench-api] $*" >&2; }

while IFS= read -r v; do
    unset "$v"
done < <(compgen -e | grep '^WORKERS_SPAWNER_' || true)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_root/target}"
profile="${BENCH_PROFILE:-$([ "$smoke" = 1 ] && echo debug || echo release)}"
log "building ($profile)"
if [ "$profile" = release ]; then
    cargo build --release --bin workers-spawner --example api_bench
else
    cargo build --bin workers-spawner --example api_bench
fi
bindir="$CARGO_TARGET_DIR/$profile"

work="$(mktemp -d /tmp/ws-bench-api.XXXXXX)"
env_up=0
cleanup() {
    local ids
    ids="$(docker ps -a --filter "label=io.workers-spawner.stream-prefix" \
        --format '{{.ID}} {{.Label "io.workers-spawner.stream-prefix"}}' 2>/dev/null \
        | awk 'index($2, "wsapi-") == 1 { print $1 }')" || true
    [ -n "$ids" ] && echo "$ids" | xargs -r docker rm -f -v >/dev/null 2>&1 || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
    if [ "$env_up" = 1 ]; then ws_test_env_down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

export WS_TEST_ENGINE_B=0
# shellcheck source=scripts/test-env.sh
. "$repo_root/scripts/test-env.sh"
env_up=1

"$bindir/examples/api_bench" --daemon-bin "$bindir/workers-spawner" \
    --work "$work" ${driver_args[@]+"${driver_args[@]}"}
