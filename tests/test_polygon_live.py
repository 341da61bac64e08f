"""``--provider polygon`` as a user runs it: ``technic scan`` and ``technic serve`` as real
subprocesses, with ``POLYGON_BASE_URL`` pointing at the stand-in of the API.

Done when: the same symbols rank with the same ratings as ``--provider sample`` wherever
the API has every bar, through the CLI and through ``POST /scan/start``; and the key is in
no output, log line, response or database row.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.live_server import Server, running_server
from tests.polygon_standin import StandIn, assert_same_ratings

KEY = "pk_LIVE_7Hd2Qw9Ez4Rt"
AS_OF = dt.date(2017, 8, 11)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def standin() -> Any:
    with StandIn(KEY) as server:
        yield server


def polygon_env(standin: StandIn, data_dir: Path, key: str | None = KEY) -> dict[str, str]:
    """The settings a user sets; an empty key is no key (whatever this machine has set)."""
    return {
        "TECHNIC_DATA_DIR": str(data_dir),
        "POLYGON_BASE_URL": standin.url,
        "POLYGON_RATE_LIMIT": "60000",
        "POLYGON_API_KEY": key or "",
        "MASSIVE_API_KEY": "",
    }


def technic_scan(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "technic.cli", "scan", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def test_technic_scan_with_polygon_ranks_like_the_sample(standin: StandIn, tmp_path: Path) -> None:
    env = polygon_env(standin, tmp_path)
    common = ("--as-of", AS_OF.isoformat(), "--max-symbols", "50", "--format", "json")
    polygon = technic_scan(env, "--provider", "polygon", *common)
    assert polygon.returncode == 0, polygon.stderr
    sample = technic_scan(env, "--provider", "sample", *common)
    assert sample.returncode == 0, sample.stderr
    rows = json.loads(polygon.stdout)["results"]
    complete = standin.complete_symbols(AS_OF, 504)
    assert len(complete & {r["symbol"] for r in rows}) >= 10
    assert_same_ratings(rows, json.loads(sample.stdout)["results"], complete)
    assert len(standin.bar_requests()) == 50
    assert "[INFO] Starting stage: data_fetching" in polygon.stderr
    # Massive is the same API: the alias scans the same bars, from the store
    standin.reset_log()
    massive = technic_scan(env, "--provider", "massive", *common)
    assert massive.returncode == 0, massive.stderr
    assert json.loads(massive.stdout)["results"] == rows
    assert standin.bar_requests() == []
    for text in (polygon.stdout, polygon.stderr, massive.stdout, massive.stderr):
        assert KEY not in text


def test_technic_scan_without_a_key_or_with_a_wrong_one_says_which_setting(
    standin: StandIn, tmp_path: Path
) -> None:
    missing = technic_scan(polygon_env(standin, tmp_path, key=None), "--provider", "polygon")
    assert missing.returncode == 2
    assert missing.stderr.startswith("technic scan: error: POLYGON_API_KEY is not set")
    assert standin.log == []
    wrong_key = "pk_WRONG_5Jm3"
    wrong = technic_scan(
        polygon_env(standin, tmp_path, key=wrong_key),
        "--provider",
        "polygon",
        "--max-symbols",
        "5",
        "--no-progress",
    )
    assert wrong.returncode == 2
    assert "HTTP 401: Unknown API Key" in wrong.stderr
    assert "check POLYGON_API_KEY" in wrong.stderr
    assert wrong_key not in wrong.stderr + wrong.stdout


def _wait(service: Server, scan_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = service.api("GET", f"/scan/progress/{scan_id}")
        if progress["status"] in ("completed", "failed", "cancelled"):
            return progress
        time.sleep(0.1)
    raise AssertionError(f"scan {scan_id} did not finish")


def _database_text(database_url: str) -> str:
    async def dump() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            rows = []
            for table in ("scans", "stage_timings", "scan_results", "scan_failures"):
                rows += await conn.fetch(f"SELECT t::text AS row FROM {table} t")
            return "\n".join(r["row"] for r in rows)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, dump()).result()


def test_post_scan_start_with_polygon_on_technic_serve(
    standin: StandIn, tmp_path: Path, pg_server_url: str
) -> None:
    env = polygon_env(standin, tmp_path)
    env["LOG_LEVEL"] = "DEBUG"
    seen: list[Any] = []
    with running_server(pg_server_url, tmp_path, "polygon_serve.log", **env) as service:
        body = {"as_of": AS_OF.isoformat(), "max_symbols": 50}
        polygon_id = service.start_scan(provider="polygon", **body)
        sample_id = service.start_scan(provider="sample", **body)
        seen.append(_wait(service, polygon_id))
        seen.append(_wait(service, sample_id))
        assert [p["status"] for p in seen] == ["completed", "completed"]
        fetching = seen[0]["stages"]["data_fetching"]
        assert fetching["current"] == fetching["total"] == 50  # requests
        polygon = service.api("GET", f"/scan/results/{polygon_id}?limit=100")
        sample = service.api("GET", f"/scan/results/{sample_id}?limit=100")
        seen += [polygon, sample]
        complete = standin.complete_symbols(AS_OF, 504)
        assert_same_ratings(polygon["results"], sample["results"], complete)
        assert {
            "symbol": "AMT",
            "reason": "no bars from the provider between 2015-08-13 and 2017-08-11",
        } in polygon["failures"]
        # a key the provider refuses fails the scan at once, naming the setting only
        standin.api_key = "rotated"
        refused_id = service.start_scan(provider="massive", as_of="2017-06-01", max_symbols=5)
        refused = _wait(service, refused_id)
        seen.append(refused)
        assert refused["status"] == "failed"
        assert "check POLYGON_API_KEY" in refused["error"]
        assert "HTTP 401" in refused["error"]
        seen.append(service.api("GET", "/scans"))
        seen.append(service.api("GET", "/universe?provider=polygon"))
        database_url = service.env["DATABASE_URL"]
        stored = _database_text(database_url)
        assert "polygon" in stored
        log = service.log_path.read_text()
    assert KEY not in json.dumps(seen)
    assert KEY not in stored
    assert "polygon" in log and KEY not in log
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_server_without_a_key_refuses_polygon_scans_with_a_400(
    standin: StandIn, tmp_path: Path, pg_server_url: str
) -> None:
    env = polygon_env(standin, tmp_path, key=None)
    with running_server(pg_server_url, tmp_path, "polygon_nokey.log", **env) as service:
        with pytest.raises(urllib.error.HTTPError) as refused:
            service.start_scan(provider="polygon", max_symbols=5)
        assert refused.value.code == 400
        body = json.loads(refused.value.read())
        assert body["field"] == "provider"
        assert body["error"].startswith("POLYGON_API_KEY is not set")
        # the sample still scans on that server
        assert _wait(service, service.start_scan(max_symbols=5))["status"] == "completed"
    assert standin.log == []
