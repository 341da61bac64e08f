"""GET /stats/stages/trend and Repository.stage_trend on the real PostgreSQL: months of seeded
stage timings with a planted regression and a noisy but steady stage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import numpy as np
import orjson
import pytest
from technic.engine.trend import interval_start
from technic.storage import InvalidInput, Repository, SizeBucket
from technic.storage.repository import INTERVAL_ORIGIN, STAGE_TREND_SQL

from tests.test_server import serve, settings_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

TODAY = interval_start(datetime.now(UTC), "1d")
ONSET = TODAY - timedelta(days=5)
DAYS = 75


async def seed_history(repo: Repository) -> None:
    """12 scans a day for DAYS full days (every 2 h): symbol_scanning 40 % slower from ONSET,
    data_fetching noisy (lognormal, sigma 0.25) throughout, 3 polygon scans a day."""
    rng = np.random.default_rng(14)
    scans, timings = [], []
    for day in range(DAYS, 0, -1):
        start = TODAY - timedelta(days=day)
        for k in range(12):
            finished = start + timedelta(hours=2 * k, minutes=30)
            scan_id, provider = uuid4(), "polygon" if k % 4 == 0 else "sample"
            scans.append((scan_id, "completed", orjson.dumps({"provider": provider}).decode(),
                          finished, finished, finished, finished, 500))  # fmt: skip
            scanning = 10.0 * rng.uniform(0.97, 1.03) * (1.4 if start >= ONSET else 1.0)
            fetching = 2.0 * rng.lognormal(0, 0.25)
            for stage, seconds in (("symbol_scanning", scanning), ("data_fetching", fetching)):
                begun = finished - timedelta(seconds=seconds)
                timings.append((scan_id, stage, "completed", begun, finished, seconds, 500, 500,
                                500 / seconds, 500, provider))  # fmt: skip
    async with repo.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL timezone = 'UTC'")
        await conn.copy_records_to_table(
            "scans",
            records=[(*s[:2], orjson.loads(s[2]), *s[3:]) for s in scans],
            columns=["id", "status", "config", "created_at", "updated_at", "started_at",
                     "finished_at", "universe_size"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "stage_timings",
            records=timings,
            columns=["scan_id", "stage", "status", "started_at", "finished_at", "duration_s",
                     "units_done", "units_total", "throughput", "universe_size", "provider"],
        )  # fmt: skip


async def test_the_planted_regression_is_found_with_its_onset(
    repository: Repository, database_url: str, tmp_path: Path
) -> None:
    await seed_history(repository)
    trend = await repository.stage_trend(since=TODAY - timedelta(days=60), interval="1d")
    scanning = trend.stages["symbol_scanning"]
    assert len(scanning) == 60 and all(p.count == 12 and p.complete for p in scanning)
    assert scanning[-1].p50_s == pytest.approx(14.0, rel=0.06)
    assert scanning[-1].symbols_per_s == pytest.approx(500 / 14.0, rel=0.04)
    assert "universe_loading" not in trend.stages  # no completed run there

    async with serve(settings_for(database_url, tmp_path)) as service:
        body = await (await service.get("/stats/stages/trend?since=60d")).json()
    verdicts = {s["stage"]: s["verdict"] for s in body["stages"]}
    assert verdicts["symbol_scanning"]["trend"] == "slower"
    assert verdicts["symbol_scanning"]["since"] == ONSET.isoformat()
    assert verdicts["symbol_scanning"]["change_pct"] == pytest.approx(40, abs=6)
    assert verdicts["data_fetching"]["trend"] == "steady"
    assert verdicts["data_fetching"]["latest"] == (TODAY - timedelta(days=1)).isoformat()


async def test_filters_and_the_rollup_follow_later_writes(repository: Repository) -> None:
    await seed_history(repository)
    since = TODAY - timedelta(days=3)
    polygon = await repository.stage_trend(
        since=since, interval="1d", stage="data_fetching", provider="polygon"
    )
    assert list(polygon.stages) == ["data_fetching"]
    assert sum(p.count for p in polygon.stages["data_fetching"]) == 3 * 3
    big = SizeBucket.parse("1000-9999")
    assert (await repository.stage_trend(since=since, interval="1h", bucket=big)).stages == {}
    async with repository.pool.acquire() as conn:
        await conn.execute("UPDATE scans SET universe_size = 5000 WHERE finished_at >= $1", since)
        await conn.execute(
            "UPDATE stage_timings SET universe_size = 5000 WHERE finished_at >= $1", since
        )
    moved = await repository.stage_trend(since=since, interval="1h", bucket=big)
    assert sum(p.count for p in moved.stages["symbol_scanning"]) == 3 * 12
    async with repository.pool.acquire() as conn:
        await conn.execute("DELETE FROM scans WHERE finished_at >= $1", since)
    assert (await repository.stage_trend(since=since, interval="1d")).stages == {}


async def test_a_scan_run_through_the_repository_counts_under_its_provider(
    repository: Repository,
) -> None:
    scan = await repository.create_scan(uuid4(), {"provider": "synthetic"}, universe_size=40)
    await repository.start_stage(scan.id, "finalization")
    await repository.finish_stage(scan.id, "finalization", duration_s=0.5, units_done=40)
    trend = await repository.stage_trend(
        since=datetime.now(UTC) - timedelta(hours=1), interval="1h", provider="synthetic"
    )
    (point,) = trend.stages["finalization"]
    assert (point.count, point.complete) == (1, False)
    assert point.p50_s == pytest.approx(0.5, rel=0.025)


async def test_the_trend_reads_the_rollup_index(repository: Repository) -> None:
    await seed_history(repository)
    async with repository.pool.acquire() as conn:
        await conn.execute("ANALYZE stage_timing_rollup")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                f"EXPLAIN {STAGE_TREND_SQL}",
                ["symbol_scanning", "data_fetching", "finalization", "universe_loading"],
                TODAY - timedelta(days=30),
                TODAY,
                timedelta(days=1),
                INTERVAL_ORIGIN,
                None,
                None,
            )
        )
    assert "stage_timing_rollup_pkey" in plan, plan
    assert "Seq Scan" not in plan.replace("Function Scan", ""), plan
    assert "stage_timings" not in plan.replace("stage_timing_rollup", ""), plan


@pytest.mark.parametrize(
    ("query", "field"),
    [("interval=2d", "interval"), ("stage=warp", "stage"), ("since=forever", "since"),
     ("bucket=1000-5000", "bucket")],
)  # fmt: skip
async def test_bad_inputs_are_400_naming_the_field(
    database_url: str, tmp_path: Path, query: str, field: str
) -> None:
    async with serve(settings_for(database_url, tmp_path)) as service:
        response = await service.get(f"/stats/stages/trend?{query}")
        assert (response.status, (await response.json())["field"]) == (400, field)


async def test_the_repository_refuses_an_unknown_interval(repository: Repository) -> None:
    with pytest.raises(InvalidInput, match="interval"):
        await repository.stage_trend(since=TODAY, interval="2d")  # type: ignore[arg-type]


async def test_scans_can_be_listed_between_two_moments(
    repository: Repository, database_url: str, tmp_path: Path
) -> None:
    """The page lists an interval's scans with since and until: one day of the 2-hourly seed
    holds 12 scans wherever the day starts."""
    await seed_history(repository)
    async with serve(settings_for(database_url, tmp_path)) as service:
        before = datetime.now(UTC)
        body = await (await service.get("/scans?since=3d&until=2d&limit=500")).json()
        after = datetime.now(UTC)
        late = await service.get("/scans?since=2d&until=3d")
        bad = await service.get("/scans?since=3d&until=forever")
    created = [datetime.fromisoformat(scan["created_at"]) for scan in body["scans"]]
    assert len(created) == 12 and body["next_cursor"] is None
    assert all(before - timedelta(days=3) <= c < after - timedelta(days=2) for c in created)
    assert (await late.json())["scans"] == []  # until before since: nothing, not an error
    assert (bad.status, (await bad.json())["field"]) == (400, "until")
