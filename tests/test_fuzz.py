"""schemathesis against a live ``technic serve`` on the real PostgreSQL: the requests it
generates from ``/openapi.json`` must all be answered as the document says.

Phases: examples (the document's own), coverage (boundary and invalid values of every
parameter), fuzzing (random valid and invalid requests) and stateful (chains that follow
the document's links: start a scan, then read its progress, results and stream, or cancel
it). Checks: no 5xx, every status, content type and body as documented.

Bounded: ``MAX_TIME_S`` for the whole run (fuzzing and stateful repeat until it is spent),
so the test takes about that plus the server's start. The server is sized so that fuzzing
``POST /scan/start`` cannot load the machine: one scan at a time, two waiting (the rest get
429), at most 50 symbols each. Deselect with ``-m "not fuzz"``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.live_server import OUTPUT, running_server

MAX_TIME_S = 90
TOKEN = "fuzz-token"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
FUZZED_SERVER = {
    "MAX_CONCURRENT_SCANS": "1",
    "MAX_QUEUED_SCANS": "2",
    "MAX_SYMBOLS_CAP": "50",
    "MAX_WORKERS": "1",
    "TECHNIC_API_TOKEN": TOKEN,
}


@pytest.mark.fuzz
@pytest.mark.timeout(MAX_TIME_S + 240)
def test_schemathesis_finds_nothing(pg_server_url: str, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("st")
    report = OUTPUT / "schemathesis.txt"
    with running_server(pg_server_url, tmp_path, "fuzz-server.log", **FUZZED_SERVER) as server:
        started = time.monotonic()
        run = subprocess.run(
            [
                str(schemathesis),
                "run",
                f"{server.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {TOKEN}",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--checks",
                ",".join(CHECKS),
                "--max-examples",
                "100",
                "--max-time",
                str(MAX_TIME_S),
                "--request-timeout",
                "60",
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--no-color",
            ],
            cwd=tmp_path,  # schemathesis keeps a cache of failures in ./.schemathesis
            capture_output=True,
            text=True,
            timeout=MAX_TIME_S + 180,
            check=False,
        )
        took_s = time.monotonic() - started
        server_log = server.log()
    report.write_text(f"{run.stdout}\n{run.stderr}\ntook {took_s:.0f} s\n")
    assert run.returncode == 0, (
        f"schemathesis found failures (full report in {report}):\n{run.stdout[-12000:]}\n"
        f"{run.stderr[-2000:]}\nserver log:\n{server_log}"
    )
