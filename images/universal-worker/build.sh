#!/usr/bin/env bash
# Build the universal worker image.
#
# usage: images/universal-worker/build.sh [--orchestrator PATH] [--tag TAG]
#                                         [--agent-install CMD] [--with-registry] [--force]
#
#   --orchestrator PATH  prebuilt orchestrator binary (default: target/debug/orchestrator)
#   --tag TAG            image tag (default: universal-worker-base:latest)
#   --agent-install CMD  shell command run at build time to install agent CLIs
#                        (needs network/registry access, e.g. npm)
#   --with-registry      build FROM debian:bookworm-slim (pulled from a registry)
#                        instead of the local debootstrap base ws-debian-base:bookworm
#   --force              rebuild even when an image with the same inputs hash exists
#
# Without --with-registry, the base image ws-debian-base:bookworm is created once
# by images/debian-base/build.sh (debootstrap + `docker import`; needs root,
# debootstrap and access to a Debian mirror; DEBIAN_MIRROR overrides
# http://deb.debian.org/debian).
# The final image is skipped when TAG already carries the same inputs hash label.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"

orchestrator="$repo_root/target/debug/orchestrator"
tag="universal-worker-base:latest"
agent_install=""
with_registry=0
force=0
local_base="ws-debian-base:bookworm"
registry_base="debian:bookworm-slim"
base_packages="python3,python3-pip,python3-venv,git,curl,jq,ca-certificates,procps,tini"

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --orchestrator) orchestrator="${2:?--orchestrator needs a path}"; shift 2 ;;
        --orchestrator=*) orchestrator="${1#*=}"; shift ;;
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --tag=*) tag="${1#*=}"; shift ;;
        --agent-install) agent_install="${2?--agent-install needs a command}"; shift 2 ;;
        --agent-install=*) agent_install="${1#*=}"; shift ;;
        --with-registry) with_registry=1; shift ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { echo "[universal-worker] $*" >&2; }

if [ ! -f "$orchestrator" ]; then
    log "orchestrator binary not found: $orchestrator"
    log "build it first (cargo build -p orchestrator) or pass --orchestrator PATH"
    exit 1
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

image_label() { # image label -> value (empty if image or label missing)
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null | sed 's/^<no value>$//' || true
}

# ---------------------------------------------------------------- base image
if [ "$with_registry" = 1 ]; then
    base="$registry_base"
    if ! docker image inspect "$base" >/dev/null 2>&1; then
        log "pulling $base"
        docker pull "$base"
    fi
else
    base="$local_base"
    if ! docker image inspect "$base" >/dev/null 2>&1; then
        "$repo_root/images/debian-base/build.sh" --tag "$base" --packages "$base_packages"
    fi
fi
base_id="$(docker image inspect -f '{{.Id}}' "$base")"

# --------------------------------------------------------------- inputs hash
inputs_hash="$(
    {
        echo "base=$base@$base_id"
        echo "agent_install=$agent_install"
        sha256sum < "$here/Dockerfile"
        sha256sum < "$here/fake-agent"
        sha256sum < "$orchestrator"
    } | sha256sum | cut -c1-32
)"

if [ "$force" != 1 ] && [ "$(image_label "$tag" io.workers-spawner.inputs-hash)" = "$inputs_hash" ]; then
    log "$tag is up to date (inputs hash $inputs_hash), skipping build"
    exit 0
fi

# ------------------------------------------------------------------- build
ctx="$(mktemp -d "${TMPDIR:-/tmp}/ws-universal-worker.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$ctx/Dockerfile"
cp "$here/fake-agent" "$ctx/fake-agent"
cp "$orchestrator" "$ctx/orchestrator"
chmod 0755 "$ctx/fake-agent" "$ctx/orchestrator"

log "building $tag from $base (inputs hash $inputs_hash)"
start=$SECONDS
docker build \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "AGENT_INSTALL=$agent_install" \
    --build-arg "INPUTS_HASH=$inputs_hash" \
    --label "io.workers-spawner.inputs-hash=$inputs_hash" \
    -t "$tag" "$ctx"
log "built $tag in $((SECONDS - start))s"
