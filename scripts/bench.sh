#!/usr/bin/env bash
# THE benchmark command for workers-spawner.
#
#   scripts/bench.sh            # full run (~15-20 min), writes docs/benchmarks.md
#   scripts/bench.sh --smoke    # CI-sized run (< 2 min), prints the report, writes nothing
#   scripts/bench.sh [--smoke] [driver flags...]   # e.g. --samples 50 --concurrency 1,8
#   BENCH_OUT=/tmp/x.md scripts/bench.sh --scenario session   # one scenario, elsewhere
#
# It sources scripts/test-env.sh (private redis-server, test image
# ws-test-busybox:latest), builds the daemon and the driver
# (examples/bench.rs; release, or debug for --smoke), starts two daemons
# on their own stream prefixes:
#   A: --max-concurrent 250, output_lines_per_sec 1000000 (forwarding capacity)
#   B: the default output bound (2000 lines/s per worker), for the drop count
# both with stream_maxlen 1000000, then runs the driver, stops the daemons,
# removes every container carrying their prefixes and stops redis.
# BENCH_PROFILE=release|debug overrides the build profile.
# Exits non-zero when the driver reports a failure (a request without a
# result, lines neither delivered nor counted as dropped, a daemon died).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

smoke=0
driver_args=()
for a in "$@"; do
    if [ "$a" = "--smoke" ]; then smoke=1; else driver_args+=("$a"); fi
done

log() { echo "[bench] $*" >&2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_root/target}"
# Release for realistic figures; the smoke run is about not rotting, debug will do.
profile="${BENCH_PROFILE:-$([ "$smoke" = 1 ] && echo debug || echo release)}"
log "building ($profile)"
if [ "$profile" = release ]; then
    cargo build --release --bin workers-spawner --example bench
else
    cargo build --bin workers-spawner --example bench
fi
bindir="$CARGO_TARGET_DIR/$profile"

PREFIX_LABEL="io.workers-spawner.stream-prefix"
work=""
pids=()
prefixes=()

cleanup() {
    local rc=$?
    set +e
    local p i
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null
    done
    for p in "${pids[@]}"; do
        for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
    done
    for p in "${prefixes[@]}"; do
        docker ps -aq --filter "label=$PREFIX_LABEL=$p" | xargs -r docker rm -f -v >/dev/null 2>&1
        docker volume ls -q --filter "label=$PREFIX_LABEL=$p" | xargs -r docker volume rm >/dev/null 2>&1
    done
    if [ "$rc" -ne 0 ] && [ -n "$work" ]; then
        for f in "$work"/daemon-*.log; do
            [ -f "$f" ] || continue
            log "last lines of $f:"
            tail -n 20 "$f" >&2
        done
    fi
    if declare -F ws_test_env_down >/dev/null; then ws_test_env_down; fi
    [ -n "$work" ] && rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

# One engine is measured: no second engine idling beside it.
export WS_TEST_ENGINE_B=0
# shellcheck source=scripts/test-env.sh
. "$repo_root/scripts/test-env.sh"

work="$(mktemp -d "${TMPDIR:-/tmp}/ws-bench.XXXXXX")"
mkdir -p "$work/presets"
cat > "$work/presets/bench_v1.json" <<EOF
{
  "id": "bench_v1",
  "name": "Benchmark: echo the prompt",
  "image": "$WS_TEST_IMAGE",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "echo \$0", "{prompt}"] },
  "allowed_tools": [],
  "has_internet": false,
  "limits": { "cpu": 1.0, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600 }
}
EOF
# The three kinds of worker of the egress issue (#18), each like bench_v1.
cat > "$work/presets/bench_tools_v1.json" <<EOF
{
  "id": "bench_tools_v1",
  "name": "Benchmark: echo the prompt, offline with a tool (egress socket)",
  "image": "$WS_TEST_IMAGE",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "echo \$0", "{prompt}"] },
  "allowed_tools": ["respond"],
  "has_internet": false,
  "limits": { "cpu": 1.0, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600 }
}
EOF
cat > "$work/presets/bench_net_v1.json" <<EOF
{
  "id": "bench_net_v1",
  "name": "Benchmark: echo the prompt, internet through an allow-list",
  "image": "$WS_TEST_IMAGE",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "echo \$0", "{prompt}"] },
  "allowed_tools": ["respond"],
  "has_internet": true,
  "egress": { "allow": ["big.test", "*.githubusercontent.com"] },
  "limits": { "cpu": 1.0, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600 }
}
EOF
cat > "$work/presets/bench_proxy_v1.json" <<EOF
{
  "id": "bench_proxy_v1",
  "name": "Benchmark: a shell with internet (big.test) and a model route",
  "image": "$WS_TEST_IMAGE",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"] },
  "allowed_tools": [],
  "has_internet": true,
  "egress": { "allow": ["big.test"] },
  "model_api": { "anthropic": { "key": { "from_env": "WS_BENCH_MODEL_KEY" } } },
  "limits": { "cpu": 1.0, "memory": "64m", "timeout_sec": 300, "ttl_sec": 600 }
}
EOF
# The driver's local upstream: big.test and the model route point at it.
upstream_port="$(_ws_free_port)"
cat > "$work/settings.toml" <<EOF
[egress_resolve]
"big.test" = "127.0.0.1"
[model_upstreams]
anthropic = "http://127.0.0.1:$upstream_port"
EOF
cat > "$work/presets/bench_pool_v1.json" <<EOF
{
  "id": "bench_pool_v1",
  "name": "Benchmark: echo the prompt, from a warm pool",
  "image": "$WS_TEST_IMAGE",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "echo \$0", "{prompt}"] },
  "allowed_tools": [],
  "has_internet": false,
  "limits": { "cpu": 1.0, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600 },
  "pool": { "size": 4 }
}
EOF
cat > "$work/presets/bench_fresh_v1.json" <<EOF
{
  "id": "bench_fresh_v1",
  "name": "Benchmark: echo the prompt on an image made anew each round",
  "image": "ws-bench-fresh:latest",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "echo \$0", "{prompt}"] },
  "allowed_tools": [],
  "has_internet": false,
  "limits": { "cpu": 1.0, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600 }
}
EOF
cat > "$work/presets/bench_session_v1.json" <<EOF
{
  "id": "bench_session_v1",
  "name": "Benchmark: the test agent, one conversation per session",
  "image": "$WS_TEST_IMAGE",
  "agent": { "type": "claude-code", "command": ["test-agent", "{prompt}"] },
  "allowed_tools": [],
  "has_internet": false,
  "limits": { "cpu": 1.0, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600 }
}
EOF
cat > "$work/presets/bench_shell_v1.json" <<EOF
{
  "id": "bench_shell_v1",
  "name": "Benchmark: run the prompt as a shell script",
  "image": "$WS_TEST_IMAGE",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"] },
  "allowed_tools": [],
  "has_internet": false,
  "limits": { "cpu": 1.0, "memory": "64m", "timeout_sec": 1200, "ttl_sec": 1800 }
}
EOF
# The daemon runs under a private name: on a shared machine, someone
# else's clean-up by process name (pkill workers-spawner) must not stop it
# in the middle of a measurement.
cp "$bindir/workers-spawner" "$work/ws-bench-daemon"
common=(--skills-dir "$repo_root/skills" --templates-dir "$repo_root/templates"
        --presets-dir "$work/presets" --redis-url "$WS_TEST_REDIS_URL")
"$work/ws-bench-daemon" "${common[@]}" presets validate "$work/presets" >&2

run_id="$(date +%s)-$$"
# start_daemon NAME PREFIX OUTPUT_LINES_PER_SEC: sets daemon_pid and daemon_http.
start_daemon() {
    local name=$1 prefix=$2 lps=$3 http gw i
    http="127.0.0.1:$(_ws_free_port)"
    gw="$(_ws_free_port)"
    prefixes+=("$prefix")
    WORKERS_SPAWNER_OUTPUT_LINES_PER_SEC="$lps" \
    WORKERS_SPAWNER_STREAM_MAXLEN=1000000 \
    WORKERS_SPAWNER_GATEWAY_PORT="$gw" \
    WORKERS_SPAWNER_API_ADDR="127.0.0.1:$(_ws_free_port)" \
    WORKERS_SPAWNER_CONFIG="$work/settings.toml" \
    WS_BENCH_MODEL_KEY="sk-bench-model-key-not-real" \
    RUST_LOG="${RUST_LOG:-info}" \
        "$work/ws-bench-daemon" "${common[@]}" \
        --stream-prefix "$prefix" --instance-id "bench-$name-$$" \
        --max-concurrent 250 --http-addr "$http" \
        serve 2> "$work/daemon-$name.log" &
    daemon_pid=$!
    pids+=("$daemon_pid")
    daemon_http=$http
    for i in $(seq 1 300); do
        if curl -sf "http://$http/healthz" >/dev/null 2>&1; then
            log "daemon $name: pid $daemon_pid, prefix $prefix, http $http, output bound $lps lines/s"
            return 0
        fi
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.1
    done
    log "daemon $name did not come up"
    return 1
}

start_daemon a "bench-a-$run_id" 1000000
pid_a=$daemon_pid http_a=$daemon_http
start_daemon b "bench-b-$run_id" 2000
pid_b=$daemon_pid

if [ "$smoke" = 1 ]; then
    out="$work/benchmarks.md"
    invocation="scripts/bench.sh --smoke"
else
    # BENCH_OUT: write elsewhere (a partial run must not replace the report).
    out="${BENCH_OUT:-$repo_root/docs/benchmarks.md}"
    invocation="scripts/bench.sh"
fi
[ ${#driver_args[@]} -gt 0 ] && invocation="$invocation ${driver_args[*]}"

smoke_flag=()
[ "$smoke" = 1 ] && smoke_flag=(--smoke)
rc=0
"$bindir/examples/bench" \
    --redis-url "$WS_TEST_REDIS_URL" --image "$WS_TEST_IMAGE" \
    --prefix "bench-a-$run_id" --daemon-pid "$pid_a" --metrics-addr "$http_a" \
    --pool-preset bench_pool_v1 --pool-size 4 --upstream-port "$upstream_port" \
    --bounded-prefix "bench-b-$run_id" --bounded-daemon-pid "$pid_b" --bounded-lines-per-sec 2000 \
    --invocation "$invocation" --out "$out" \
    ${smoke_flag[@]+"${smoke_flag[@]}"} ${driver_args[@]+"${driver_args[@]}"} || rc=$?

if [ "$smoke" = 1 ] && [ -f "$out" ]; then
    cat "$out"
fi
if [ "$rc" -ne 0 ]; then
    log "FAILED (driver exit code $rc)"
    exit "$rc"
fi
log "done${smoke_flag[*]:+ (smoke)}; report: $([ "$smoke" = 1 ] && echo printed above || echo "$out")"
