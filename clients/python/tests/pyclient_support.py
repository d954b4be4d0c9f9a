"""Helpers of the client's tests: the REAL daemon binary, a real Redis, real Docker.

:func:`start_daemon` starts ``$WS_DAEMON_BIN ... serve`` with a stream
prefix of its own (``wstest-py-<random>``), its HTTP API on a free port with
three tokens (admin, read, submit) and waits for ``/healthz``;
:func:`teardown_daemon` stops it and removes every container and volume of
its prefix. (A module of its own, not conftest.py, so that the tests can
import it whatever other conftest.py files pytest loads beside it.)
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import redis

from workers_spawner_client import Client, HttpClient, RedisClient

REPO_ROOT = Path(__file__).resolve().parents[3]
PREFIX_LABEL = "io.workers-spawner.stream-prefix"
START_TIMEOUT = 30.0

_used_ports: "set[int]" = set()


def free_port() -> int:
    """A port in 20000-32000 (below the ephemeral range) that binds on 0.0.0.0."""
    for _ in range(1000):
        port = random.randint(20000, 32000)
        if port in _used_ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _used_ports.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


def rand_hex(n: int = 8) -> str:
    """``n`` random hex characters."""
    return secrets.token_hex((n + 1) // 2)[:n]


def redis_url() -> str:
    url = os.environ.get("WS_TEST_REDIS_URL", "")
    if not url:
        pytest.fail(
            "WS_TEST_REDIS_URL is not set: run the tests through scripts/python-tests.sh "
            "after '. scripts/test-env.sh' (scripts/test.sh does), which starts the private "
            "redis-server these tests need",
            pytrace=False,
        )
    return url


def daemon_bin() -> Path:
    raw = os.environ.get("WS_DAEMON_BIN") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "debug" / "workers-spawner"
    )
    p = Path(raw)
    if not p.is_absolute():
        p = REPO_ROOT / p
    if not os.access(p, os.X_OK):
        pytest.fail(
            f"the daemon binary {p} does not exist or is not executable: build it "
            "(cargo build) or point WS_DAEMON_BIN at it",
            pytrace=False,
        )
    return p


def docker(*args: str, check: bool = True) -> str:
    """Runs ``docker ARGS`` and returns its stdout; fails the test with stderr when it fails."""
    try:
        cp = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pytest.fail("the docker CLI is not installed: these tests need the real Docker engine")
    if check and cp.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp.stdout


def prefix_containers(prefix: str) -> List[str]:
    """``ID NAME STATE`` of every container (any state) of ``prefix``."""
    out = docker(
        "ps", "-a", "--filter", f"label={PREFIX_LABEL}={prefix}",
        "--format", "{{.ID}} {{.Names}} {{.State}}",
    )
    return [line for line in out.splitlines() if line.strip()]


def prefix_volumes(prefix: str) -> List[str]:
    """Names of the volumes of ``prefix`` (session volumes)."""
    out = docker("volume", "ls", "-q", "--filter", f"label={PREFIX_LABEL}={prefix}")
    return [line for line in out.splitlines() if line.strip()]


@dataclass
class Daemon:
    """One running daemon and how to reach it."""

    redis_url: str
    prefix: str
    instance_id: str
    http_addr: str
    api_url: str
    #: Tokens by role: ``admin``, ``read``, ``submit``.
    tokens: Dict[str, str]
    proc: "subprocess.Popen[bytes]"
    stderr_path: Path
    #: ``None`` when the binary has the HTTP API, else why not.
    api_missing: Optional[str] = None
    _clients: List[Client] = field(default_factory=list)

    def redis_client(self) -> RedisClient:
        """A Redis-transport client of this daemon's prefix."""
        c = Client.redis(self.redis_url, prefix=self.prefix)
        assert isinstance(c, RedisClient)
        self._clients.append(c)
        return c

    def http_client(self, role: Optional[str] = "admin", **kwargs: object) -> HttpClient:
        """An HTTP client with the token of ``role`` (``None``: no token)."""
        if self.api_missing is not None:
            pytest.fail(self.api_missing, pytrace=False)
        token = None if role is None else self.tokens[role]
        c = HttpClient(self.api_url, token=token, **kwargs)  # type: ignore[arg-type]
        self._clients.append(c)
        return c

    def client(self, transport: str) -> Client:
        """``redis_client()`` or ``http_client("admin")``."""
        return self.redis_client() if transport == "redis" else self.http_client("admin")

    def raw_redis(self) -> Any:
        """A plain redis-py connection (decoded strings)."""
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def stream(self, name: str) -> str:
        """``<prefix>:<name>``."""
        return f"{self.prefix}:{name}"

    def stderr_tail(self, n: int = 60) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no stderr)"
        return "\n".join(lines[-n:])


def _http_status(url: str, timeout: float = 2.0) -> Optional[int]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return None


def _start(tmp: Path, extra_env: Optional[Dict[str, str]], with_api: bool) -> Daemon:
    url = redis_url()
    binary = daemon_bin()
    prefix = f"wstest-py-{rand_hex()}"
    instance_id = f"py-{rand_hex()}"
    http_addr = f"127.0.0.1:{free_port()}"
    api_port = free_port()
    tokens = {"admin": f"adm-{rand_hex(24)}", "read": f"rd-{rand_hex(24)}", "submit": f"sub-{rand_hex(24)}"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERS_SPAWNER_")}
    env.update(
        {
            "WORKERS_SPAWNER_BLOCK": "1s",
            "WORKERS_SPAWNER_GATEWAY_PORT": str(free_port()),
            "WORKERS_SPAWNER_ARTIFACTS_DIR": str(tmp / "artifacts"),
            "WORKERS_SPAWNER_REPO_CACHE_DIR": str(tmp / "repos"),
            "WS_TEST_SECRET": f"secret-{rand_hex(16)}",
        }
    )
    env.setdefault("RUST_LOG", "info")
    if with_api:
        env.update(
            {
                "WORKERS_SPAWNER_API_ADDR": f"127.0.0.1:{api_port}",
                "WORKERS_SPAWNER_API_TOKENS": (
                    '[{name="admin",role="admin",token={from_env="WS_API_ADMIN"}},'
                    '{name="reader",role="read",token={from_env="WS_API_READ"}},'
                    '{name="submitter",role="submit",token={from_env="WS_API_SUBMIT"}}]'
                ),
                "WS_API_ADMIN": tokens["admin"],
                "WS_API_READ": tokens["read"],
                "WS_API_SUBMIT": tokens["submit"],
            }
        )
    env.update(extra_env or {})
    stderr_path = tmp / f"daemon-{prefix}.stderr"
    cmd = [
        str(binary),
        "--redis-url", url,
        "--stream-prefix", prefix,
        "--presets-dir", "tests/fixtures/presets",
        "--skills-dir", "skills",
        "--templates-dir", "templates",
        "--http-addr", http_addr,
        "--instance-id", instance_id,
        "--max-concurrent", "4",
        "serve",
    ]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err,
        )
    d = Daemon(
        redis_url=url, prefix=prefix, instance_id=instance_id, http_addr=http_addr,
        api_url=f"http://127.0.0.1:{api_port}", tokens=tokens, proc=proc,
        stderr_path=stderr_path,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        rc = proc.poll()
        if rc is not None:
            raise _StartFailed(rc, d.stderr_tail())
        if _http_status(f"http://{http_addr}/healthz") == 200:
            break
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(
                f"the daemon did not answer /healthz on {http_addr} within {START_TIMEOUT:g} s; "
                f"stderr:\n{d.stderr_tail()}",
                pytrace=False,
            )
        time.sleep(0.05)
    if with_api:
        while _http_status(f"{d.api_url}/v1/openapi.json") is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(
                    f"the daemon's HTTP API did not answer on {d.api_url} within "
                    f"{START_TIMEOUT:g} s; stderr:\n{d.stderr_tail()}",
                    pytrace=False,
                )
            time.sleep(0.05)
    return d


class _StartFailed(Exception):
    def __init__(self, rc: int, stderr: str) -> None:
        self.rc = rc
        self.stderr = stderr
        super().__init__(f"the daemon exited during start-up with {rc}; stderr:\n{stderr}")


def _stop(proc: "subprocess.Popen[bytes]", grace: float = 15.0) -> None:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def start_daemon(tmp: Path, extra_env: Optional[Dict[str, str]] = None) -> Daemon:
    """Starts a daemon with its HTTP API.

    A binary built before the HTTP API existed refuses the ``api_*``
    settings; it is then started without them, so the Redis tests still
    run, and every HTTP test fails saying why.
    """
    try:
        return _start(tmp, extra_env, with_api=True)
    except _StartFailed as e:
        if "unknown field" in e.stderr and "API_" in e.stderr:
            d = _start(tmp, extra_env, with_api=False)
            d.api_missing = (
                f"the daemon binary {daemon_bin()} has no HTTP API (docs/api.md): it refused "
                f"the api_addr / api_tokens settings:\n{e.stderr.strip()[-600:]}"
            )
            return d
        pytest.fail(str(e), pytrace=False)
        raise  # unreachable


def teardown_daemon(d: Daemon, passed: bool) -> None:
    """Stops ``d``, removes its containers, volumes and keys; fails when a passed test left containers."""
    for c in d._clients:
        try:
            c.close()
        except Exception:
            pass
    left: List[str] = []
    if passed:
        # A finished worker's container goes right after its result: give
        # the (still running) daemon a moment to remove it.
        deadline = time.monotonic() + 15
        while True:
            left = prefix_containers(d.prefix)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    _stop(d.proc)
    remaining = prefix_containers(d.prefix)
    if remaining:
        docker("rm", "-f", "-v", *[line.split()[0] for line in remaining], check=False)
    vols = prefix_volumes(d.prefix)
    if vols:
        docker("volume", "rm", "-f", *vols, check=False)
    try:
        r = d.raw_redis()
        keys = list(r.scan_iter(match=f"{d.prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.close()
    except redis.RedisError:
        pass
    if not passed:
        print(f"---- daemon {d.prefix} stderr (last 80 lines) ----\n{d.stderr_tail(80)}")
    if left:
        pytest.fail(
            f"containers of prefix {d.prefix} were left after the test completed "
            f"(removed now): {left}",
            pytrace=False,
        )
