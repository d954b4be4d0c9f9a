#!/usr/bin/env bash
# Workspace benchmarks of workers-spawner (issue #20): time to first agent
# output with a repository (cold and warm mirror cache) against without one,
# the time and bytes of reading the change back, and the two ways of
# delivering a checkout and of reading a change, on the bare engine.
#
#   scripts/bench-workspace.sh            # full run: a 50 MiB repository, 10 rounds
#   scripts/bench-workspace.sh --smoke    # 4 MiB, 2 rounds, debug build
#   scripts/bench-workspace.sh [--smoke] [driver flags...]   # e.g. --rounds 5 --repo-mib 100
#
# It sources scripts/test-env.sh (a private redis-server and the test
# images; no second engine), builds the daemon and the driver
# (examples/workspace_bench.rs; release, or debug for --smoke), runs the
# driver, which makes the repository, serves it with `git daemon`, starts the
# daemon and prints a markdown report on stdout, then removes the run's
# containers and stops Redis. BENCH_PROFILE=release|debug overrides the
# build profile; BENCH_KEEP=1 keeps the work folder (the daemon's log).
# Exits non-zero when a request failed or the environment could not be set up.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

smoke=0
driver_args=()
for a in "$@"; do
    if [ "$a" = "--smoke" ]; then smoke=1; driver_args+=("$a"); else driver_args+=("$a"); fi
done

log() { echo "[bench-workspace] $*" >&2; }

while IFS= read -r v; do
    unset "$v"
done < <(compgen -e | grep '^WORKERS_SPAWNER_' || true)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_root/target}"
profile="${BENCH_PROFILE:-$([ "$smoke" = 1 ] && echo debug || echo release)}"
log "building ($profile)"
if [ "$profile" = release ]; then
    cargo build --release --bin workers-spawner --example workspace_bench
else
    cargo build --bin workers-spawner --example workspace_bench
fi
bindir="$CARGO_TARGET_DIR/$profile"

work="$(mktemp -d /tmp/ws-bench-workspace.XXXXXX)"
env_up=0
cleanup() {
    local ids
    ids="$(docker ps -a --filter "label=io.workers-spawner.stream-prefix" \
        --format '{{.ID}} {{.Label "io.workers-spawner.stream-prefix"}}' 2>/dev/null \
        | awk 'index($2, "wsb-") == 1 { print $1 }')" || true
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

"$bindir/examples/workspace_bench" --daemon-bin "$bindir/workers-spawner" \
    --work "$work" ${driver_args[@]+"${driver_args[@]}"}
