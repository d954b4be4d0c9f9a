#!/usr/bin/env bash
# THE test command for workers-spawner.
#
#   scripts/test.sh [extra cargo test args...]
#
# Sets up the test environment (scripts/test-env.sh: apt deps, test image
# ws-test-busybox:latest, private redis), builds, runs the whole test suite
# and checks that the tests left no managed containers behind.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

section() { printf '\n==================== %s ====================\n' "$*"; }

MANAGED_LABEL="io.workers-spawner.managed=true"
PREFIX_LABEL="io.workers-spawner.stream-prefix"

# Managed containers as "ID<TAB>NAME<TAB>STREAM_PREFIX" lines.
managed_containers() {
    docker ps -a --filter "label=$MANAGED_LABEL" \
        --format "{{.ID}}	{{.Names}}	{{.Label \"$PREFIX_LABEL\"}}" 2>/dev/null || true
}

# Managed volumes (session volumes) as "NAME<TAB>STREAM_PREFIX" lines.
managed_volumes() {
    docker volume ls --filter "label=$MANAGED_LABEL" \
        --format "{{.Name}}	{{.Label \"$PREFIX_LABEL\"}}" 2>/dev/null || true
}

# Remove leftover test containers: managed ones whose stream prefix starts with "wstest".
remove_test_containers() {
    local ids
    ids="$(managed_containers | awk -F'\t' '$3 ~ /^wstest/ { print $1 }')"
    if [ -n "$ids" ]; then
        echo "removing leftover test containers: $(echo "$ids" | tr '\n' ' ')" >&2
        # shellcheck disable=SC2086
        docker rm -f -v $ids >/dev/null 2>&1 || true
    fi
    ids="$(managed_volumes | awk -F'\t' '$2 ~ /^wstest/ { print $1 }')"
    if [ -n "$ids" ]; then
        echo "removing leftover test volumes: $(echo "$ids" | tr '\n' ' ')" >&2
        # shellcheck disable=SC2086
        docker volume rm $ids >/dev/null 2>&1 || true
    fi
}

cleanup() {
    local rc=$?
    set +e
    remove_test_containers
    if declare -F ws_test_env_down >/dev/null; then ws_test_env_down; fi
    exit "$rc"
}
trap cleanup EXIT

section "test environment"
# shellcheck source=scripts/test-env.sh
. "$repo_root/scripts/test-env.sh"
echo "redis:  $WS_TEST_REDIS_URL (dir $WS_TEST_REDIS_DIR)"
echo "image:  $WS_TEST_IMAGE"
echo "docker: $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"

# The host firewall chain of the workers' bridges, as a sorted list of rules
# with the gateway rules' expiry times left out (a daemon running beside the
# suite rewrites its own rules with a new expiry).
firewall_chain() {
    iptables -w -S WS-WORKERS 2>/dev/null | sed -E 's/ --datestop [^ ]+//' | sort || true
}
fw_before="$(firewall_chain)"

# Managed containers that existed before the run (e.g. a real daemon on a dev
# machine) are not blamed on the tests.
preexisting="$(managed_containers | cut -f1 | sort)"
preexisting_volumes="$(managed_volumes | cut -f1 | sort)"
if [ -n "$preexisting" ]; then
    echo "note: managed containers present before the tests (ignored by the leak check):"
    managed_containers
fi

compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
fi
if [ -f docker-compose.yml ] && [ ${#compose[@]} -gt 0 ]; then
    section "${compose[*]} config"
    "${compose[@]}" -f docker-compose.yml config -q
    echo "docker-compose.yml OK"
fi
# The compose stack itself runs below (scripts/compose-test.sh), once the
# debug binaries and the universal worker image it uses exist.

section "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

section "cargo fmt --all --check, cargo clippy --workspace --all-targets"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

section "layers depend only downwards; the CLI crate links no daemon runtime"
bash scripts/check-layers.sh
if cargo tree -p orchestrator -e normal --prefix none | grep -E '^(tokio|bollard|redis) '; then
    echo "FAIL: the orchestrator crate depends on the daemon's runtime" >&2
    exit 1
fi
echo "orchestrator: no tokio, bollard or redis in its dependency tree"

section "universal worker image (debootstrap base, orchestrator CLI)"
images/universal-worker/build.sh --orchestrator "${CARGO_TARGET_DIR:-target}/debug/orchestrator"

if [ -f docker-compose.yml ] && [ ${#compose[@]} -gt 0 ]; then
    section "compose stack without a registry (scripts/compose-test.sh)"
    bash scripts/compose-test.sh
fi

# Extra args go to cargo test; args after a "--" go to the test harness,
# together with --test-threads=2.
cargo_args=()
harness_args=(--test-threads=2)
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; harness_args+=("$@"); break; fi
    cargo_args+=("$1"); shift
done
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

section "benchmark harness smoke run (scripts/bench.sh --smoke)"
bash scripts/bench.sh --smoke

section "fleet benchmark smoke run (scripts/bench-fleet.sh --smoke)"
# Its own second engine (ws-engine-f), beside the tests' engine B.
bash scripts/bench-fleet.sh --smoke

section "workspace benchmark smoke run (scripts/bench-workspace.sh --smoke)"
bash scripts/bench-workspace.sh --smoke

section "HTTP API benchmark smoke run (scripts/bench-api.sh --smoke)"
bash scripts/bench-api.sh --smoke

section "cargo test --workspace --all-targets ${cargo_args[*]:-} -- ${harness_args[*]}"
cargo test --no-fail-fast --workspace --all-targets ${cargo_args[@]+"${cargo_args[@]}"} -- "${harness_args[@]}"

section "Python client, dashboard in headless Chromium, OpenAPI with schemathesis (scripts/python-tests.sh)"
bash scripts/python-tests.sh

# leak_check WHAT HEADER LISTED PREEXISTING: fails when a line of LISTED
# (tab-separated, its first field the object's id or name) is not in
# PREEXISTING.
leak_check() {
    local what=$1 header=$2 listed=$3 pre=$4 leaked
    leaked="$(echo "$listed" | awk -F'\t' -v pre="$(echo "$pre" | tr '\n' ' ')" '
        BEGIN { n = split(pre, a, " "); for (i = 1; i <= n; i++) seen[a[i]] = 1 }
        NF && !($1 in seen) { print }')"
    if [ -n "$leaked" ]; then
        echo "FAIL: $what labelled $MANAGED_LABEL remain after the tests:" >&2
        printf '%s\n%s\n' "$header" "$leaked" >&2
        exit 1
    fi
    echo "no managed $what left behind"
}

section "leftover container check"
leak_check containers "$(printf 'ID\tNAME\tSTREAM_PREFIX')" "$(managed_containers)" "$preexisting"

section "leftover volume check"
leak_check volumes "$(printf 'NAME\tSTREAM_PREFIX')" "$(managed_volumes)" "$preexisting_volumes"

section "leftover check on engine B (the fleet tests' second engine)"
b_left="$(DOCKER_HOST="$WS_ENGINE_B_HOST" managed_containers)
$(DOCKER_HOST="$WS_ENGINE_B_HOST" managed_volumes)"
leak_check "containers or volumes on engine B" "$(printf 'ID/NAME\t...')" "$b_left" ""

section "firewall chain check"
# Every rule the tests' daemons added must be gone: gateway holes outlive no
# daemon. Only the chain itself and the per-bridge DROP rules (which keep
# workers off the host while no daemon runs) may remain.
fw_added="$(comm -13 <(echo "$fw_before") <(firewall_chain) \
    | grep -v -E '^-N WS-WORKERS$|^-A WS-WORKERS -i [^ ]+ -j DROP$' || true)"
if [ -n "$fw_added" ]; then
    echo "FAIL: rules the tests added remain in the WS-WORKERS chain:" >&2
    echo "$fw_added" >&2
    exit 1
fi
echo "the WS-WORKERS chain is as the tests found it"

section "all tests passed"
