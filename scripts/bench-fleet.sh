#!/usr/bin/env bash
# Fleet benchmarks of workers-spawner (the "fleet" issue): throughput with
# two engines vs one, the time from a host loss to the last lost request
# answered or restarted, and the warm-pool hit ratio on a fleet.
#
#   scripts/bench-fleet.sh             # full run (~10 min after the build)
#   scripts/bench-fleet.sh --smoke     # small sizes, debug build
#   scripts/bench-fleet.sh [--smoke] [driver flags...]  # e.g. --only loss --loss-rounds 3
#   BENCH_OUT=/tmp/fleet.md scripts/bench-fleet.sh      # also write the report there
#   BENCH_KEEP=1 scripts/bench-fleet.sh --smoke         # keep the work dir (daemon logs)
#
# It sources scripts/test-env.sh (a private redis-server, the test images,
# a second Docker engine in a netns of its own), builds the daemon and the
# driver (examples/fleet_bench.rs; release, or debug for --smoke), runs the
# driver, which starts and kills the daemons itself, prints its markdown
# report on stdout, removes every container of the run's stream prefixes
# on both engines and stops Redis and the second engine.
#
# The second engine is NOT the tests' one: WS_ENGINE_B_NAME (default
# ws-engine-f), WS_ENGINE_B_SUBNET (10.213.0.12/30) and WS_ENGINE_B_VETH
# (wsf) give it a name, subnet and veth of its own, so that this runs while
# the tests use theirs (ws-engine-b). BENCH_PROFILE=release|debug overrides
# the build profile.
# Exits non-zero when the driver reports a failure (a request without a
# result or with more than one, an unexpected result, a daemon that did not
# come up or died) or the environment could not be set up.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

smoke=0
driver_args=()
for a in "$@"; do
    if [ "$a" = "--smoke" ]; then smoke=1; else driver_args+=("$a"); fi
done

log() { echo "[bench-fleet] $*" >&2; }

export WS_ENGINE_B_NAME="${WS_ENGINE_B_NAME:-ws-engine-f}"
export WS_ENGINE_B_SUBNET="${WS_ENGINE_B_SUBNET:-10.213.0.12/30}"
export WS_ENGINE_B_VETH="${WS_ENGINE_B_VETH:-wsf}"
if [ "$WS_ENGINE_B_NAME" = ws-engine-b ] || [ "$WS_ENGINE_B_VETH" = wsb ] \
        || [ "$WS_ENGINE_B_SUBNET" = 10.213.0.0/30 ]; then
    log "refusing to use the tests' second engine (ws-engine-b, wsb, 10.213.0.0/30): set all three WS_ENGINE_B_* apart"
    exit 2
fi
# Hermetic: the driver gives each daemon its settings.
while IFS= read -r v; do
    unset "$v"
done < <(compgen -e | grep '^WORKERS_SPAWNER_' || true)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_root/target}"
profile="${BENCH_PROFILE:-$([ "$smoke" = 1 ] && echo debug || echo release)}"
log "building ($profile)"
if [ "$profile" = release ]; then
    cargo build --release --bin workers-spawner --example fleet_bench
else
    cargo build --bin workers-spawner --example fleet_bench
fi
bindir="$CARGO_TARGET_DIR/$profile"

PREFIX_LABEL="io.workers-spawner.stream-prefix"
run_id="$(date +%s | tail -c 7)$$"
work=""
env_up=0

# remove_leftovers DOCKER_HOST: the run's containers and volumes there.
remove_leftovers() {
    local host=$1 ids
    ids="$(docker -H "$host" ps -a --filter "label=$PREFIX_LABEL" \
        --format "{{.ID}} {{.Label \"$PREFIX_LABEL\"}}" 2>/dev/null \
        | awk -v p="fb-$run_id-" 'index($2, p) == 1 { print $1 }')" || true
    if [ -n "$ids" ]; then
        log "removing $(echo "$ids" | wc -l) leftover container(s) on $host"
        echo "$ids" | xargs -r docker -H "$host" rm -f -v >/dev/null 2>&1 || true
    fi
    ids="$(docker -H "$host" volume ls --filter "label=$PREFIX_LABEL" \
        --format "{{.Name}} {{.Label \"$PREFIX_LABEL\"}}" 2>/dev/null \
        | awk -v p="fb-$run_id-" 'index($2, p) == 1 { print $1 }')" || true
    if [ -n "$ids" ]; then
        echo "$ids" | xargs -r docker -H "$host" volume rm >/dev/null 2>&1 || true
    fi
}

cleanup() {
    local rc=$?
    set +e
    if [ "$env_up" = 1 ]; then
        remove_leftovers "${DOCKER_HOST:-unix:///var/run/docker.sock}"
        if [ -n "${WS_ENGINE_B_HOST:-}" ]; then
            # A run that failed in the middle of a host loss: boot it to clean up.
            if ! scripts/second-engine.sh status >/dev/null 2>&1; then
                scripts/second-engine.sh start >/dev/null 2>&1
            fi
            remove_leftovers "$WS_ENGINE_B_HOST"
        fi
    fi
    if [ "$rc" -ne 0 ] && [ -n "$work" ]; then
        for f in "$work"/*/daemon.log; do
            [ -f "$f" ] || continue
            log "last lines of $f:"
            tail -n 15 "$f" >&2
        done
    fi
    if declare -F ws_test_env_down >/dev/null; then ws_test_env_down; fi
    # Engine "f" is this script's own: never left up.
    scripts/second-engine.sh down >/dev/null 2>&1
    if [ -n "$work" ] && [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept $work (daemon logs in */daemon.log)"
    elif [ -n "$work" ]; then
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT

log "engine B: $WS_ENGINE_B_NAME ($WS_ENGINE_B_SUBNET, veth $WS_ENGINE_B_VETH)"
# shellcheck source=scripts/test-env.sh
. "$repo_root/scripts/test-env.sh"
env_up=1

work="$(mktemp -d "${TMPDIR:-/tmp}/ws-fbench.XXXXXX")"
# A private name: someone's clean-up by process name (pkill workers-spawner)
# must not stop a daemon in the middle of a measurement.
cp "$bindir/workers-spawner" "$work/ws-fleet-daemon"

invocation="scripts/bench-fleet.sh"
[ "$smoke" = 1 ] && invocation="$invocation --smoke"
[ ${#driver_args[@]} -gt 0 ] && invocation="$invocation ${driver_args[*]}"
smoke_flag=()
[ "$smoke" = 1 ] && smoke_flag=(--smoke)

rc=0
start=$SECONDS
"$bindir/examples/fleet_bench" \
    --daemon "$work/ws-fleet-daemon" --repo-root "$repo_root" --work-dir "$work" \
    --run-id "$run_id" --image "$WS_TEST_IMAGE" --invocation "$invocation" \
    ${smoke_flag[@]+"${smoke_flag[@]}"} ${driver_args[@]+"${driver_args[@]}"} \
    > "$work/report.md" || rc=$?
cat "$work/report.md"
if [ -n "${BENCH_OUT:-}" ]; then
    cp "$work/report.md" "$BENCH_OUT"
fi
if [ "$rc" -ne 0 ]; then
    log "FAILED (driver exit code $rc) after $((SECONDS - start)) s"
    exit "$rc"
fi
log "done in $((SECONDS - start)) s${BENCH_OUT:+; report also in $BENCH_OUT}"
