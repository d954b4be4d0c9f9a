"""Fixtures of the client's tests (see pyclient_support.py for the daemon harness).

``daemon`` is a real daemon of its own per test; ``client`` a client of it,
once per transport (``[redis]``, ``[http]``). A test that passed but left a
container of its prefix behind fails in teardown. Nothing here skips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Generator, Iterator, List, Optional

import pytest

from workers_spawner_client import Client

from pyclient_support import Daemon, start_daemon, teardown_daemon


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:  # type: ignore[type-arg]
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"_ws_rep_{rep.when}", rep)


def _passed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "_ws_rep_call", None)
    return rep is not None and rep.passed


@pytest.fixture
def daemon_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Generator[Callable[..., Daemon], None, None]:
    """``daemon_factory(extra_env={...})`` starts a daemon with extra settings."""
    started: List[Daemon] = []

    def make(extra_env: Optional[Dict[str, str]] = None) -> Daemon:
        sub = tmp_path / f"d{len(started)}"
        sub.mkdir()
        d = start_daemon(sub, extra_env)
        started.append(d)
        return d

    yield make
    failures: List[str] = []
    for d in started:
        try:
            teardown_daemon(d, _passed(request))
        except pytest.fail.Exception as e:
            failures.append(str(e))
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A daemon of its own (fresh prefix), with its HTTP API and tokens."""
    return daemon_factory()


@pytest.fixture(params=["redis", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once per transport."""
    return str(request.param)


@pytest.fixture
def client(daemon: Daemon, transport: str) -> Client:
    """A client of ``daemon`` over ``transport`` (HTTP with the admin token)."""
    return daemon.client(transport)
