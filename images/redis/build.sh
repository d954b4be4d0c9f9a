#!/usr/bin/env bash
# Build a Redis image for docker-compose.yml without a registry.
#
# usage: images/redis/build.sh [--tag TAG] [--base IMAGE] [--force]
#
#   --tag TAG     image tag (default: redis:7, the name docker-compose.yml uses)
#   --base IMAGE  base image (default: ws-debian-base:bookworm, created with
#                 images/debian-base/build.sh when missing)
#   --force       rebuild even when TAG already carries the same inputs hash
#
# Installs Debian's redis-server package (downloaded on the host with
# `apt-get download`, so the build itself needs no network) on the base.
# The entrypoint appends `--protected-mode no` to the command, so the compose
# file's `command:` (which replaces CMD) still gets it. Skipped when TAG
# carries the same inputs hash (base id, package versions, these files).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
tag="redis:7"
base="ws-debian-base:bookworm"
force=0
# redis-server and what the base lacks of its dependencies.
packages=(redis-server redis-tools libjemalloc2 liblzf1 libatomic1)

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --tag=*) tag="${1#*=}"; shift ;;
        --base) base="${2:?--base needs a value}"; shift 2 ;;
        --base=*) base="${1#*=}"; shift ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "redis/build.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { echo "[redis-image] $*" >&2; }

if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [ "$base" = ws-debian-base:bookworm ]; then
        "$repo_root/images/debian-base/build.sh" --tag "$base"
    else
        log "base image $base not found (no registry to pull it from)"
        exit 1
    fi
fi
base_id="$(docker image inspect -f '{{.Id}}' "$base")"

# The versions apt would download, from the host's package lists.
versions="$(apt-cache show --no-all-versions "${packages[@]}" | grep -E '^(Package|Version|SHA256):')" || {
    log "apt-cache knows no ${packages[*]} (run apt-get update)"
    exit 1
}
inputs_hash="$(
    {
        echo "base=$base@$base_id"
        echo "$versions"
        sha256sum < "$here/Dockerfile"
        sha256sum < "$here/docker-entrypoint.sh"
    } | sha256sum | cut -c1-32
)"
have="$(docker image inspect -f '{{ index .Config.Labels "io.workers-spawner.inputs-hash" }}' \
    "$tag" 2>/dev/null || true)"
if [ "$force" != 1 ] && [ "$have" = "$inputs_hash" ]; then
    log "$tag is up to date (inputs hash $inputs_hash)"
    exit 0
fi

ctx="$(mktemp -d "${TMPDIR:-/tmp}/ws-redis-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/debs"
cp "$here/Dockerfile" "$here/docker-entrypoint.sh" "$ctx/"
log "apt-get download ${packages[*]}"
# apt drops to the _apt user for downloads: give it the folder.
chmod 0755 "$ctx"; chmod 0777 "$ctx/debs"
(cd "$ctx/debs" && apt-get download -q "${packages[@]}" 2>&1 | grep -v '^Get:' >&2 || true)
for p in "${packages[@]}"; do
    ls "$ctx/debs/${p}_"*.deb >/dev/null 2>&1 || { log "download of $p failed"; exit 1; }
done
log "building $tag from $base (inputs hash $inputs_hash)"
start=$SECONDS
docker build -q \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "INPUTS_HASH=$inputs_hash" \
    -t "$tag" "$ctx" >/dev/null
log "built $tag in $((SECONDS - start))s"
