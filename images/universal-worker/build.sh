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
# with debootstrap + `docker import` (needs root, debootstrap and access to a
# Debian mirror; DEBIAN_MIRROR overrides http://deb.debian.org/debian).
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
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base_packages="python3,python3-pip,python3-venv,git,curl,jq,ca-certificates,procps,tini"

usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

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
    log "build it first (cargo build --bin orchestrator) or pass --orchestrator PATH"
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
        if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
            log "installing debootstrap"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
        fi
        rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/ws-debian-base.XXXXXX")"
        cleanup_rootfs() { as_root rm -rf --one-file-system "$rootfs"; }
        trap cleanup_rootfs EXIT
        log "debootstrap bookworm ($base_packages) from $mirror into $rootfs"
        start=$SECONDS
        as_root env PATH="/usr/sbin:/sbin:$PATH" debootstrap --variant=minbase \
            --include="$base_packages" bookworm "$rootfs" "$mirror"
        as_root sh -c "rm -rf '$rootfs'/var/lib/apt/lists/* '$rootfs'/var/cache/apt/*.bin \
            '$rootfs'/var/cache/apt/archives/*.deb '$rootfs'/var/cache/apt/archives/partial/* \
            '$rootfs'/var/log/*.log '$rootfs'/var/log/apt/* '$rootfs'/debootstrap; \
            : > '$rootfs'/etc/hostname; : > '$rootfs'/etc/resolv.conf"
        log "importing rootfs as $base"
        as_root tar --numeric-owner -C "$rootfs" -c . | docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["/bin/bash"]' \
            --change "LABEL io.workers-spawner.image=debian-base io.workers-spawner.base-packages=$base_packages" \
            - "$base" >/dev/null
        cleanup_rootfs
        trap - EXIT
        log "base image $base ready in $((SECONDS - start))s"
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
