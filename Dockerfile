# workers-spawner daemon image (needs a registry for the base images).
#
#   docker build -t workers-spawner:local .
#   docker compose up            # see docker-compose.yml and docs/operations.md
#
# Machines without a registry: scripts/build-daemon-image.sh builds the same
# layout from host-built binaries and the local ws-debian-base:bookworm image.
#
# The daemon talks to the Docker engine through /var/run/docker.sock (or
# DOCKER_HOST). It runs as uid 10001, so that user needs access to the
# socket: add the socket's group (`stat -c %g /var/run/docker.sock`) with
# `group_add` in compose / `--group-add` with `docker run`, or point
# DOCKER_HOST at a TCP endpoint / socket proxy.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ------------------------------------------------------------------ builder
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# crates/orchestrator is the in-container CLI; it ships with the daemon
# image so that operators can copy it into worker images.
RUN cargo build --release --locked --workspace --bin workers-spawner --bin orchestrator \
    && mkdir -p /out \
    && cp target/release/workers-spawner target/release/orchestrator /out/

# ------------------------------------------------------------------ runtime
FROM ${RUNTIME_IMAGE}
# git: the daemon checks workers' repositories out and reads their changes back.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd -g 10001 spawner \
    && useradd -u 10001 -g 10001 -M -d /app -s /usr/sbin/nologin spawner \
    && mkdir -p /app /var/lib/workers-spawner/egress /var/lib/workers-spawner/artifacts /var/lib/workers-spawner/repos \
    && chown 10001:10001 /var/lib/workers-spawner/egress /var/lib/workers-spawner/artifacts /var/lib/workers-spawner/repos
COPY --from=builder /out/workers-spawner /out/orchestrator /usr/local/bin/
COPY presets/ /app/presets/
COPY skills/ /app/skills/
COPY templates/ /app/templates/
COPY schema/ /app/schema/

WORKDIR /app
ENV WORKERS_SPAWNER_PRESETS_DIR=/app/presets \
    WORKERS_SPAWNER_SKILLS_DIR=/app/skills \
    WORKERS_SPAWNER_TEMPLATES_DIR=/app/templates \
    WORKERS_SPAWNER_HTTP_ADDR=0.0.0.0:9090 \
    RUST_LOG=info

LABEL org.opencontainers.image.title="workers-spawner" \
      org.opencontainers.image.description="Runs CLI coding agents in Docker containers from Redis stream requests"

USER 10001
EXPOSE 9090
# No curl in the image: bash's /dev/tcp asks /healthz (liveness only; use
# /readyz from the outside for "Redis and Docker reachable").
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${WORKERS_SPAWNER_HTTP_ADDR##*:} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["workers-spawner"]
CMD ["serve"]
