"""ETAs learned and measured by the running service: real server, real PostgreSQL, real
worker processes. The tracker's arithmetic is in tests/test_progress.py; the fit of priors
in tests/test_eta.py; the queries in tests/test_storage_history.py."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from technic.engine.eta import CHECKPOINTS
from technic.server.app import DATABASE

from tests.test_server import Service, serve, settings_for, ws_snapshots

pytestmark = pytest.mark.asyncio(loop_scope="session")

SMALL_SCAN = {"max_symbols": 120}


@pytest.fixture
async def service(database_url: str, tmp_path: Path):
    async with serve(settings_for(database_url, tmp_path)) as running:
        yield running


async def test_a_completed_scan_records_how_right_its_eta_was(service: Service) -> None:
    scan_id = await service.start(SMALL_SCAN)
    snapshots, close_code = await ws_snapshots(service, scan_id)
    assert close_code == 1000
    bars = [snap["time_progress"] for snap in snapshots]
    assert bars == sorted(bars), "time_progress went back"
    final = snapshots[-1]
    assert final["status"] == "completed" and final["time_progress"] == 100
    await service.settled()

    repository = service.app[DATABASE].repository
    history = await repository.eta_history("sample")
    assert set(history) == {"universe_loading", "data_fetching", "symbol_scanning", "finalization"}
    assert history["symbol_scanning"][0][0] == 120
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    stats = await repository.accuracy_stats(since)
    (recent,) = stats.recent
    assert str(recent.scan_id) == scan_id
    assert recent.time_linearity is not None and recent.overall_linearity is not None
    async with repository.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT checkpoint, elapsed_s, actual_remaining_s FROM eta_checkpoints"
            " WHERE scan_id = $1 ORDER BY checkpoint",
            uuid.UUID(scan_id),
        )
    assert [row["checkpoint"] for row in rows] == list(CHECKPOINTS)
    for row in rows:
        # the time that remained after each checkpoint adds up to the scan's own duration
        total = row["elapsed_s"] + row["actual_remaining_s"]
        assert total == pytest.approx(final["elapsed_seconds"], rel=1e-6)
    metrics = await (await service.get("/metrics")).text()
    assert 'technic_eta_abs_error_percent_count{checkpoint="10"} 1.0' in metrics


async def test_a_scan_first_eta_comes_from_the_history_of_its_kind(service: Service) -> None:
    """Plant a history in which sample scans took 1,000 s: a new scan's first ETA says so,
    long before its own work could."""
    repository = service.app[DATABASE].repository
    async with repository.pool.acquire() as conn:
        for age in range(3):
            planted = uuid.uuid4()
            finished = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10 * (age + 1))
            await conn.execute(
                "INSERT INTO scans (id, status, config, started_at, finished_at, universe_size,"
                " eta_kind) VALUES ($1, 'completed', '{\"provider\": \"sample\"}', $2, $3, 120,"
                " 'sample')",
                planted,
                finished - dt.timedelta(seconds=1000),
                finished,
            )
            await conn.execute(
                "INSERT INTO stage_timings (scan_id, stage, status, started_at, finished_at,"
                " duration_s, units_done, units_total, universe_size) VALUES"
                " ($1, 'symbol_scanning', 'completed', $2, $3, 1000, 120, 120, 120)",
                planted,
                finished - dt.timedelta(seconds=1000),
                finished,
            )
    scan_id = await service.start(SMALL_SCAN)
    snapshots, _ = await ws_snapshots(service, scan_id)
    first_eta = next(s["overall_eta"] for s in snapshots if s["overall_eta"] is not None)
    assert first_eta > 500, f"the first ETA ({first_eta} s) ignored the kind's history"
    assert snapshots[-1]["status"] == "completed"
