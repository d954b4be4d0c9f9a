#!/usr/bin/env bash
# The Python tests: the client in clients/python, the dashboard in a real
# headless Chromium (tests/browser) and the HTTP API against its OpenAPI
# document with schemathesis (tests/openapi), with pytest, against the real
# daemon binary, a real redis-server and the real Docker engine.
#
# Called by scripts/test.sh AFTER `. scripts/test-env.sh` (which exports
# WS_TEST_REDIS_URL and builds the test images). By hand:
#
#     (. scripts/test-env.sh && scripts/python-tests.sh; ws_test_env_down)
#
# Environment:
#   WS_DAEMON_BIN   the daemon binary (default ${CARGO_TARGET_DIR:-target}/debug/workers-spawner)
#   WS_PY_VENV      the venv (default ${XDG_CACHE_HOME:-$HOME/.cache}/workers-spawner/py-venv),
#                   made once with python3 -m venv and kept
# Extra arguments go to pytest (e.g. -k cancel, -x).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

log() { echo "[python-tests] $*" >&2; }

if [ -z "${WS_TEST_REDIS_URL:-}" ]; then
    log "WS_TEST_REDIS_URL is not set: run this after '. scripts/test-env.sh' (scripts/test.sh does)"
    exit 2
fi

export WS_DAEMON_BIN="${WS_DAEMON_BIN:-${CARGO_TARGET_DIR:-target}/debug/workers-spawner}"
case "$WS_DAEMON_BIN" in
    /*) ;;
    *) WS_DAEMON_BIN="$repo_root/$WS_DAEMON_BIN" ;;
esac
if [ ! -x "$WS_DAEMON_BIN" ]; then
    log "the daemon binary $WS_DAEMON_BIN does not exist or is not executable (cargo build first, or set WS_DAEMON_BIN)"
    exit 2
fi

# What the venv holds; a change of this list makes a new venv.
requirements=(
    "pytest>=9,<10"
    "redis>=8,<9"
    "selenium>=4,<5"
    "schemathesis>=4,<5"
    "hatchling>=1.18,<2"
    "editables>=0.5,<1"
)
venv="${WS_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/workers-spawner/py-venv}"
stamp="$venv/.ws-requirements"
want="$(printf '%s\n' "$(python3 --version 2>&1)" "${requirements[@]}")"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "making the venv $venv (${requirements[*]})"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]}"
    printf '%s' "$want" > "$stamp"
fi
# The client itself, editable from this checkout (quick, offline: hatchling
# is in the venv already). Re-done every run: the checkout may have moved.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    -e "$repo_root/clients/python"

# No __pycache__ or .pytest_cache in the checkout.
export PYTHONDONTWRITEBYTECODE=1

targets=(clients/python/tests tests/browser tests/openapi)

log "pytest ${targets[*]} (daemon $WS_DAEMON_BIN)"
rc=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider "${targets[@]}" "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
    log "FAILED (pytest exit $rc)"
fi
exit "$rc"
