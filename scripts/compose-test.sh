#!/usr/bin/env bash
# The whole compose stack on a machine without a registry, end to end.
#
# usage: scripts/compose-test.sh [--keep]
#
#   --keep   leave the stack up for a look (then: docker-compose -p NAME down -v)
#
# Builds the local Redis image (images/redis/build.sh, Debian's redis-server
# package) and the daemon image from the debug binaries in CARGO_TARGET_DIR
# (scripts/build-daemon-image.sh --debug); both are skipped when their
# inputs hash label matches. Needs universal-worker-base:latest (built by
# scripts/test.sh before this step; built here only when missing).
#
# Then runs docker-compose.yml as it is, under a project name of its own,
# with an override file that only renames what would clash with other
# stacks on this engine: the images (test tags), the worker networks, the
# stream prefix and instance id, the host port (127.0.0.1, a free one), and
# mounts a presets folder holding one preset. One request runs a worker that
# calls the gateway (`orchestrator respond`); its result and its `respond`
# event are checked, then `docker-compose down -v`. On any failure the
# stack, its worker containers, networks and volume are removed too.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
keep=0
[ "${1:-}" = --keep ] && keep=1

log() { echo "[compose-test] $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    fail "neither 'docker compose' nor docker-compose is installed"
fi
command -v python3 >/dev/null 2>&1 || fail "python3 is needed to read the streams"

redis_image="ws-redis:compose-test"
daemon_image="workers-spawner:compose-test"
worker_image="universal-worker-base:latest"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

start=$SECONDS
images/redis/build.sh --tag "$redis_image"
scripts/build-daemon-image.sh --debug --tag "$daemon_image"
if ! docker image inspect "$worker_image" >/dev/null 2>&1; then
    images/universal-worker/build.sh --orchestrator "$target_dir/debug/orchestrator"
fi
log "images ready in $((SECONDS - start))s"

# ------------------------------------------------------------ the project
run_id="$(date +%s)$$$RANDOM"
project="wscompose${run_id}"
prefix="$project"
work="$(mktemp -d "${TMPDIR:-/tmp}/ws-compose-test.XXXXXX")"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
docker_root="$(docker info --format '{{.DockerRootDir}}')"
cmd=("${compose[@]}" -p "$project" -f "$repo_root/docker-compose.yml" -f "$work/override.yml")
export DOCKER_GID="$(stat -c %g /var/run/docker.sock)"
export WORKERS_SPAWNER_PORT="127.0.0.1:$port"

cleanup() {
    local rc=$?
    set +e
    if [ "$keep" = 1 ] && [ $rc -eq 0 ]; then
        log "left up: ${cmd[*]} down -v"
        return
    fi
    if [ $rc -ne 0 ] && [ -f "$work/override.yml" ]; then
        log "daemon log (last 40 lines):"
        "${cmd[@]}" logs --no-color --tail 40 workers-spawner >&2 2>/dev/null
    fi
    # Workers are the daemon's, not compose's: remove them before the
    # networks they sit on.
    local ids
    ids="$(docker ps -aq --filter "label=io.workers-spawner.stream-prefix=$prefix")"
    # shellcheck disable=SC2086
    [ -n "$ids" ] && docker rm -f -v $ids >/dev/null
    [ -f "$work/override.yml" ] && "${cmd[@]}" down -v --remove-orphans >/dev/null 2>&1
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/presets"
cat > "$work/presets/compose_shell_v1.json" <<JSON
{
  "id": "compose_shell_v1",
  "name": "Compose test: runs the prompt as a shell script",
  "image": "$worker_image",
  "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"] },
  "allowed_tools": ["respond"],
  "has_internet": false,
  "limits": { "cpu": 1.0, "memory": "256m", "timeout_sec": 60, "ttl_sec": 600, "pids": 64 }
}
JSON
chmod 0755 "$work" "$work/presets"
chmod 0644 "$work/presets/compose_shell_v1.json"
cat > "$work/override.yml" <<YAML
version: "3.8"
services:
  redis:
    image: $redis_image
  workers-spawner:
    image: $daemon_image
    environment:
      WORKERS_SPAWNER_WORKER_NETWORK: $project-workers
      WORKERS_SPAWNER_STREAM_PREFIX: $prefix
      WORKERS_SPAWNER_INSTANCE_ID: $project
      WORKERS_SPAWNER_EGRESS_HOST_DIR: $docker_root/volumes/$project-egress/_data
    volumes:
      - $work/presets:/app/presets:ro
volumes:
  egress:
    name: $project-egress
networks:
  workers:
    name: $project-workers
  workers-internal:
    name: $project-workers-internal
YAML

log "${compose[*]} -p $project up -d --no-build"
up=$SECONDS
"${cmd[@]}" up -d --no-build
ready=0
for _ in $(seq 1 300); do
    if python3 - "$port" <<'PY' 2>/dev/null; then ready=1; break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2).read()
PY
    sleep 0.2
done
[ "$ready" = 1 ] || fail "the daemon did not become ready on 127.0.0.1:$port"
log "stack ready in $((SECONDS - up))s"

redis_cli() { "${cmd[@]}" exec -T redis redis-cli "$@"; }

rid="compose-$run_id"
message="hello from compose $run_id"
# The worker has no interface but lo: the gateway is reached through its
# egress socket on the shared volume.
script="orchestrator respond '$message'; echo respond_rc=\$?; echo ifaces=\$(ls /sys/class/net | tr '\\n' ' ')"
request="$(python3 -c 'import json, sys; print(json.dumps({"request_id": sys.argv[1], "worker_config_id": "compose_shell_v1", "task": {"prompt": sys.argv[2]}}))' "$rid" "$script")"
redis_cli XADD "$prefix:spawn" '*' data "$request" >/dev/null

# Entries of a stream with data.request_id == rid, as JSON lines.
entries_of() {
    redis_cli --raw XRANGE "$1" - + | python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if v.get("request_id") == sys.argv[1]:
            print(json.dumps(v))
' "$rid"
}

result=""
for _ in $(seq 1 450); do
    result="$(entries_of "$prefix:result")"
    [ -n "$result" ] && break
    sleep 0.2
done
[ -n "$result" ] || fail "no result for $rid within 90 s"
echo "$result" | python3 -c '
import json, sys
r = json.loads(sys.stdin.readline())
assert r["status"] == "succeeded", r
assert "respond_rc=0" in r["output"], r["output"]
assert "ifaces=lo\n" in r["output"], r["output"]
' || fail "result: $result"

events=""
for _ in $(seq 1 150); do
    events="$(entries_of "$prefix:events")"
    grep -q '"type": "removed"' <<<"$events" && break
    sleep 0.2
done
echo "$events" | python3 -c '
import json, sys
events = [json.loads(l) for l in sys.stdin if l.strip()]
kinds = [e["type"] for e in events]
responds = [e for e in events if e["type"] == "respond"]
assert len(responds) == 1, kinds
assert responds[0]["data"]["message"] == sys.argv[1], responds[0]
assert "removed" in kinds, kinds
' "$message" || fail "events: $events"
log "request $rid: succeeded, one respond event, container removed"


if [ "$keep" = 0 ]; then
    "${cmd[@]}" down -v --remove-orphans
    left="$(docker ps -aq --filter "label=com.docker.compose.project=$project")"
    [ -z "$left" ] || fail "containers of $project remain: $left"
    for n in "$project-workers" "$project-workers-internal"; do
        ! docker network inspect "$n" >/dev/null 2>&1 || fail "network $n remains"
    done
fi
log "OK in $((SECONDS - start))s"
