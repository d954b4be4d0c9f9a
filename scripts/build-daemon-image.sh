#!/usr/bin/env bash
# Build the daemon image on a machine WITHOUT a registry.
#
# usage: scripts/build-daemon-image.sh [--tag TAG] [--base IMAGE] [--debug] [--force]
#
#   --tag TAG     image tag (default: workers-spawner:local)
#   --base IMAGE  base image (default: ws-debian-base:bookworm, created with
#                 images/debian-base/build.sh when missing)
#   --debug       package debug binaries instead of `cargo build --release`
#   --force       rebuild even when TAG already carries the same inputs hash
#
# Builds workers-spawner (and orchestrator, when crates/orchestrator exists)
# with cargo on the host, honouring CARGO_TARGET_DIR, and packages
# them with presets/, skills/, templates/ and schema/ via
# images/daemon/Dockerfile.local. The result is what `docker build .` makes
# on a machine with a registry; run it with `docker-compose up --no-build`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="workers-spawner:local"
base="ws-debian-base:bookworm"
profile=release
force=0

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --tag=*) tag="${1#*=}"; shift ;;
        --base) base="${2:?--base needs a value}"; shift 2 ;;
        --base=*) base="${1#*=}"; shift ;;
        --debug) profile=debug; shift ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-daemon-image.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { echo "[daemon-image] $*" >&2; }
cd "$repo_root"

# --------------------------------------------------------------- binaries
bins=(workers-spawner)
if [ -f crates/orchestrator/Cargo.toml ]; then
    bins+=(orchestrator)
else
    log "crates/orchestrator not found; packaging workers-spawner only"
fi
# --workspace: the binaries are in two packages (the root and crates/orchestrator).
cargo_args=(build --locked --workspace)
[ "$profile" = release ] && cargo_args+=(--release)
for b in "${bins[@]}"; do cargo_args+=(--bin "$b"); done
log "cargo ${cargo_args[*]}"
start=$SECONDS
cargo "${cargo_args[@]}"
log "binaries built in $((SECONDS - start))s"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

# ------------------------------------------------------------- base image
if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [ "$base" = ws-debian-base:bookworm ]; then
        "$repo_root/images/debian-base/build.sh" --tag "$base"
    else
        log "base image $base not found (no registry to pull it from)"
        exit 1
    fi
fi
base_id="$(docker image inspect -f '{{.Id}}' "$base")"

# ------------------------------------------------------------ build context
ctx="$(mktemp -d "${TMPDIR:-/tmp}/ws-daemon-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/app"
for b in "${bins[@]}"; do
    install -m 0755 "$target_dir/$profile/$b" "$ctx/bin/$b"
done
cp -r presets skills templates schema "$ctx/app/"
cp images/daemon/Dockerfile.local "$ctx/Dockerfile"

inputs_hash="$(
    cd "$ctx"
    {
        echo "base=$base@$base_id"
        find . -type f -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-32
)"
have="$(docker image inspect -f '{{ index .Config.Labels "io.workers-spawner.inputs-hash" }}' \
    "$tag" 2>/dev/null || true)"
if [ "$force" != 1 ] && [ "$have" = "$inputs_hash" ]; then
    log "$tag is up to date (inputs hash $inputs_hash)"
    exit 0
fi

log "building $tag from $base (${bins[*]}, $profile, inputs hash $inputs_hash)"
docker build \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "INPUTS_HASH=$inputs_hash" \
    -t "$tag" "$ctx"
log "built $tag"
