"""Retention in the running service: the background prune of ``technic serve`` (real server
on a real socket, real PostgreSQL), the 410 of a pruned scan's results, the /metrics counter,
and ``technic prune`` as a user runs it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from technic.storage import Repository

from tests.test_openapi import contract_of
from tests.test_retention import seed_scan, table_counts
from tests.test_server import Service, serve, settings_for

on_session_loop = pytest.mark.asyncio(loop_scope="session")
RESULTS = "/scan/results/{scan_id}"


async def until_gone(service: Service, scan_id: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await service.get(f"/scan/results/{scan_id}")).status != 410:
        assert asyncio.get_running_loop().time() < deadline, f"{scan_id} never pruned"
        await asyncio.sleep(0.1)


@on_session_loop
async def test_serve_prunes_in_the_background_and_answers_410(
    repository: Repository, database_url: str, tmp_path: Path
) -> None:
    expired = await seed_scan(repository, age_days=31, results=25, failures=2)
    empty = await seed_scan(repository, age_days=1, results=0, failures=0)
    fresh = await seed_scan(repository, age_days=1, results=5, failures=1)

    async with serve(settings_for(database_url, tmp_path, prune_interval_s=1)) as service:
        await until_gone(service, str(expired.id))
        contract = await contract_of(service)

        gone = await contract.check(await service.get(f"/scan/results/{expired.id}"), RESULTS)
        body = await gone.json()
        assert body["field"] == "scan_id" and body["status"] == "completed"
        assert "were pruned on" in body["error"]
        assert "RESULTS_RETENTION_DAYS, now 30 days" in body["error"]
        assert "its record and stage timings are kept" in body["error"]
        csv = await service.get(f"/scan/results/{expired.id}?format=csv")
        assert csv.status == 410 and (await csv.json())["error"] == body["error"]

        # a scan that had no results is not a pruned one, and recent results stay
        none = await contract.check(await service.get(f"/scan/results/{empty.id}"), RESULTS)
        assert none.status == 200 and (await none.json())["results"] == []
        kept = await (await service.get(f"/scan/results/{fresh.id}")).json()
        assert kept["total"] == 5 and len(kept["failures"]) == 1

        # the pruned scan is still listed, with its stage timings
        progress = await (await service.get(f"/scan/progress/{expired.id}")).json()
        assert progress["status"] == "completed"
        assert (await table_counts(repository, expired.id))["stage_timings"] == 4

        metrics = await (await service.get("/metrics")).text()
        assert 'technic_pruned_rows_total{table="scan_results"} 25.0' in metrics
        assert 'technic_pruned_rows_total{table="scan_failures"} 2.0' in metrics


def technic(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("technic")
    return subprocess.run(
        [str(command), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@on_session_loop
async def test_technic_prune_says_what_it_removed(
    repository: Repository, database_url: str, tmp_path: Path
) -> None:
    expired = await seed_scan(repository, age_days=40, results=12, failures=3)
    await seed_scan(repository, age_days=400, results=2, failures=0, checkpoints=True)
    env = {"DATABASE_URL": database_url, "TECHNIC_DATA_DIR": str(tmp_path)}

    dry = await asyncio.to_thread(technic, "prune", "--dry-run", **env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("prune would remove 27 rows (scan_results 14, scan_failures 3,"
                                 " stage_timings 4, eta_checkpoints 5, scans 1)")  # fmt: skip
    assert "2 scans lost their results" in dry.stdout
    assert "horizons: results of scans finished before 20" in dry.stdout
    assert (await table_counts(repository, expired.id))["scan_results"] == 12

    real = await asyncio.to_thread(technic, "prune", **env)
    assert real.returncode == 0, real.stderr
    assert real.stdout.startswith("prune removed 27 rows (scan_results 14,")
    assert (await table_counts(repository, expired.id))["scan_results"] == 0

    again = await asyncio.to_thread(technic, "prune", **env)
    assert again.stdout.startswith("prune removed 0 rows")


@pytest.mark.parametrize("command", [("prune",), ("serve", "--port", "0")])
def test_bad_retention_settings_stop_the_command(command: tuple[str, ...], tmp_path: Path) -> None:
    run = technic(
        *command,
        RESULTS_RETENTION_DAYS="30",
        TIMINGS_RETENTION_DAYS="7",
        TECHNIC_DATA_DIR=str(tmp_path),
    )
    assert run.returncode == 2
    assert "TIMINGS_RETENTION_DAYS: must be 0 (keep forever) or at least" in run.stderr


def test_prune_without_a_database_fails_with_one_line(tmp_path: Path) -> None:
    run = technic(
        "prune",
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/none",
        TECHNIC_DATA_DIR=str(tmp_path),
    )
    assert run.returncode == 1
    assert run.stderr.startswith("technic prune: error:") and run.stderr.count("\n") == 1
