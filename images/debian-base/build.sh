#!/usr/bin/env bash
# Build the local Debian base image without a registry: debootstrap a
# bookworm rootfs and `docker import` it.
#
# usage: images/debian-base/build.sh [--tag TAG] [--packages LIST] [--force]
#
#   --tag TAG        image tag (default: ws-debian-base:bookworm)
#   --packages LIST  comma-separated packages added to the minbase variant
#                    (default: the universal worker's basics, see below)
#   --force          rebuild even when TAG already exists
#
# Needs root (or sudo), debootstrap (installed via apt when missing) and a
# reachable Debian mirror (DEBIAN_MIRROR, default http://deb.debian.org/debian).
# Used by images/universal-worker/build.sh and scripts/build-daemon-image.sh.
set -euo pipefail

tag="ws-debian-base:bookworm"
packages="python3,python3-pip,python3-venv,git,curl,jq,ca-certificates,procps,tini"
force=0
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --tag=*) tag="${1#*=}"; shift ;;
        --packages) packages="${2?--packages needs a list}"; shift 2 ;;
        --packages=*) packages="${1#*=}"; shift ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "debian-base/build.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { echo "[debian-base] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "$force" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    log "$tag exists, skipping (use --force to rebuild)"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    log "installing debootstrap"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/ws-debian-base.XXXXXX")"
cleanup_rootfs() { as_root rm -rf --one-file-system "$rootfs"; }
trap cleanup_rootfs EXIT

include=()
[ -n "$packages" ] && include=(--include="$packages")
log "debootstrap bookworm (${packages:-minbase only}) from $mirror into $rootfs"
start=$SECONDS
as_root env PATH="/usr/sbin:/sbin:$PATH" debootstrap --variant=minbase \
    "${include[@]}" bookworm "$rootfs" "$mirror"
as_root sh -c "rm -rf '$rootfs'/var/lib/apt/lists/* '$rootfs'/var/cache/apt/*.bin \
    '$rootfs'/var/cache/apt/archives/*.deb '$rootfs'/var/cache/apt/archives/partial/* \
    '$rootfs'/var/log/*.log '$rootfs'/var/log/apt/* '$rootfs'/debootstrap; \
    : > '$rootfs'/etc/hostname; : > '$rootfs'/etc/resolv.conf"
log "importing rootfs as $tag"
as_root tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL io.workers-spawner.image=debian-base io.workers-spawner.base-packages=$packages" \
    - "$tag" >/dev/null
cleanup_rootfs
trap - EXIT
log "base image $tag ready in $((SECONDS - start))s"
