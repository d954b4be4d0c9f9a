"""The HTTP API against its own OpenAPI document, with schemathesis.

The real daemon (its binary, a real redis-server, the real Docker engine)
serves /v1/openapi.json; schemathesis generates requests from it for every
operation and checks that none answers 5xx and that every response matches
the document (status codes, content types, bodies), and that invalid
input is refused. The SSE route is checked too: its unknown ids are
answered 404 at once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "clients" / "python" / "tests"))

import pyclient_support as support  # noqa: E402


def test_every_operation_matches_the_openapi_document(tmp_path: Path) -> None:
    # A high rate: schemathesis sends many requests with one token.
    d = support.start_daemon(tmp_path, {"WORKERS_SPAWNER_API_RATE_PER_MINUTE": "100000"})
    passed = False
    try:
        st = Path(sys.executable).parent / "schemathesis"
        token = d.tokens["admin"]
        cmd = [
            str(st),
            "run",
            f"{d.api_url}/v1/openapi.json",
            "--url",
            d.api_url,
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {token}",
            # Schema-valid bodies the daemon's own rules refuse (an unknown
            # preset, an override its policy forbids) are 400 by design:
            # the check that calls those "valid data rejected" is left out;
            # every other check (no 5xx, statuses, content types, response
            # bodies, invalid data rejected, ...) runs.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "10",
            "--request-timeout",
            "20",
            "--generation-deterministic",
            "--no-color",
        ]
        # Its own files (reports, caches) in the test's folder, not the checkout.
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        report = out.stdout + out.stderr
        assert out.returncode == 0, report[-8000:]
        # It really ran every operation.
        assert "12 selected / 12 total" in report, report[-4000:]
        assert "Test cases:" in report, report[-4000:]
        print(report[-2500:])
        passed = True
    finally:
        support.teardown_daemon(d, passed)
