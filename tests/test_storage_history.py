"""History queries: stage_stats against figures computed here with numpy, and eta_priors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import numpy as np
import pytest
from technic.storage import STAGES, InvalidInput, Repository, SizeBucket

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Timing:
    scan_id: UUID
    stage: str
    status: str
    finished_at: datetime
    duration_s: float
    units_done: int | None
    universe_size: int | None


async def seed(repo: Repository, scans: list[dict]) -> list[Timing]:
    """Insert finished scans and their timings in bulk; returns the timings as seeded."""
    scan_rows, timing_rows, timings = [], [], []
    for scan in scans:
        finished = scan["finished_at"]
        scan_rows.append(
            (scan["id"], scan["status"], finished, finished, finished, finished, scan["size"])
        )
        for stage, (status, duration, units) in scan["stages"].items():
            end = scan.get("stage_end", {}).get(stage, finished)
            timing_rows.append(
                (
                    scan["id"],
                    stage,
                    status,
                    end - timedelta(seconds=duration),
                    end,
                    duration,
                    units,
                    units,
                    units / duration if units is not None and duration > 0 else None,
                    scan["size"],
                )
            )
            timings.append(Timing(scan["id"], stage, status, end, duration, units, scan["size"]))
    async with repo.pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table(
            "scans",
            records=scan_rows,
            columns=[
                "id", "status", "created_at", "updated_at", "started_at", "finished_at",
                "universe_size",
            ],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "stage_timings",
            records=timing_rows,
            columns=[
                "scan_id", "stage", "status", "started_at", "finished_at", "duration_s",
                "units_done", "units_total", "throughput", "universe_size",
            ],
        )  # fmt: skip
    return timings


def random_history(rng: np.random.Generator, n: int) -> list[dict]:
    base_s = {"universe_loading": 0.05, "data_fetching": 0.8, "symbol_scanning": 3.0,
              "finalization": 0.1}  # fmt: skip
    scans = []
    for _ in range(n):
        size = int(rng.choice([5, 40, 300, 800, 2500, 7000, 12000]))
        finished = NOW - timedelta(seconds=float(rng.uniform(0, 14 * 86400)))
        stages = {}
        for stage in STAGES:
            duration = float(base_s[stage] * size / 500 * rng.lognormal(0, 0.5))
            status = str(rng.choice(["completed"] * 8 + ["failed", "skipped"]))
            units = None if rng.random() < 0.05 else size
            if rng.random() < 0.02:
                duration = 0.0
            stages[stage] = (status, duration, units)
        scans.append(
            {"id": uuid4(), "status": "completed", "size": size, "finished_at": finished,
             "stages": stages}
        )  # fmt: skip
    return scans


def expected(rows: list[Timing]) -> dict[str, dict[str, float | int | None]]:
    out: dict[str, dict[str, float | int | None]] = {}
    total_all = sum(r.duration_s for r in rows)
    for stage in STAGES:
        mine = [r for r in rows if r.stage == stage]
        if not mine:
            continue
        d = np.array([r.duration_s for r in mine])
        p50, p90, p99 = np.percentile(d, [50, 90, 99])  # numpy's default: linear interpolation
        rated = [r for r in mine if r.duration_s > 0 and r.units_done is not None]
        out[stage] = {
            "count": len(mine),
            "mean_s": float(d.mean()),
            "p50_s": float(p50),
            "p90_s": float(p90),
            "p99_s": float(p99),
            "total_s": float(d.sum()),
            "symbols_per_s": sum(r.units_done for r in rated) / sum(r.duration_s for r in rated)
            if rated
            else None,
            "share": float(d.sum()) / total_all,
        }
    return out


def check(stats_rows: list, want: dict) -> None:
    assert [r.stage for r in stats_rows] == [s for s in STAGES if s in want]
    for row in stats_rows:
        w = want[row.stage]
        assert row.count == w["count"]
        for key in ("mean_s", "p50_s", "p90_s", "p99_s", "total_s", "share"):
            assert getattr(row, key) == pytest.approx(w[key], rel=1e-9), key
        if w["symbols_per_s"] is None:
            assert row.symbols_per_s is None
        else:
            assert row.symbols_per_s == pytest.approx(w["symbols_per_s"], rel=1e-9)
    top = max(want, key=lambda s: want[s]["total_s"])
    assert [r.stage for r in stats_rows if r.dominant] == [top]


def digits_bucket(size: int | None) -> SizeBucket | None:
    return None if size is None else SizeBucket.of(size)


async def test_stage_stats_match_numpy(module_repository: Repository) -> None:
    repo = module_repository
    rng = np.random.default_rng(20240601)
    timings = await seed(repo, random_history(rng, 400))
    since, until = NOW - timedelta(days=7), NOW - timedelta(hours=12)
    inside = [t for t in timings if t.status == "completed" and since <= t.finished_at < until]
    assert 300 < len(inside) < 1200  # the window really cuts the data

    stats = await repo.stage_stats(since=since, until=until)
    assert stats.since == since and stats.until == until and not stats.by_bucket
    assert all(r.bucket is None for r in stats.stages)
    want = expected(inside)
    check(stats.stages, want)
    assert stats.dominant_stage == "symbol_scanning"

    grouped = await repo.stage_stats(since=since, until=until, by_bucket=True)
    buckets = sorted({digits_bucket(t.universe_size) for t in inside}, key=lambda b: b.low)
    assert sorted({r.bucket for r in grouped.stages}, key=lambda b: b.low) == buckets
    assert [r.bucket for r in grouped.stages] == sorted(
        (r.bucket for r in grouped.stages), key=lambda b: b.low
    )
    for bucket in buckets:
        rows = [r for r in grouped.stages if r.bucket == bucket]
        check(rows, expected([t for t in inside if digits_bucket(t.universe_size) == bucket]))
        only = await repo.stage_stats(since=since, until=until, bucket=bucket)
        assert all(r.bucket == bucket for r in only.stages)
        check(
            only.stages, expected([t for t in inside if digits_bucket(t.universe_size) == bucket])
        )


async def test_stage_stats_window_edges_and_empty(module_repository: Repository) -> None:
    repo = module_repository
    at = NOW - timedelta(days=1)
    one = {"universe_loading": ("completed", 2.0, 100)}
    await seed(
        repo,
        [
            {"id": uuid4(), "status": "completed", "size": 100, "finished_at": at, "stages": one},
            {"id": uuid4(), "status": "completed", "size": 100,
             "finished_at": at + timedelta(hours=1),
             "stages": {"universe_loading": ("completed", 4.0, 100)}},
        ],
    )  # fmt: skip
    stats = await repo.stage_stats(since=at, until=at + timedelta(hours=1))  # [since, until)
    assert [(r.stage, r.count, r.mean_s) for r in stats.stages] == [("universe_loading", 1, 2.0)]
    assert stats.stages[0].share == 1.0 and stats.stages[0].symbols_per_s == 50.0
    empty = await repo.stage_stats(since=NOW - timedelta(minutes=1))
    assert empty.stages == [] and empty.dominant_stage is None
    none_in_bucket = await repo.stage_stats(since=at, bucket=SizeBucket.parse("10000-99999"))
    assert none_in_bucket.stages == []


async def test_stage_stats_sees_live_stage_records(module_repository: Repository) -> None:
    repo = module_repository
    scan = await repo.create_scan(uuid4(), {}, universe_size=None)
    await repo.transition(scan.id, "running")
    await repo.start_stage(scan.id, "universe_loading")
    await repo.finish_stage(scan.id, "universe_loading", units_done=2500, duration_s=0.5)
    await repo.update_scan(scan.id, universe_size=2500)  # known only after loading
    await repo.start_stage(scan.id, "data_fetching")
    await repo.finish_stage(scan.id, "data_fetching", units_done=2500, duration_s=2.0)
    await repo.start_stage(scan.id, "symbol_scanning")  # still running: not counted
    grouped = await repo.stage_stats(since=NOW - timedelta(hours=1), by_bucket=True)
    assert [(r.stage, r.bucket, r.count) for r in grouped.stages] == [
        ("universe_loading", SizeBucket(1000, 9999), 1),
        ("data_fetching", SizeBucket(1000, 9999), 1),
    ]
    assert grouped.stages[1].dominant and grouped.stages[1].share == pytest.approx(0.8)
    assert grouped.stages[1].symbols_per_s == 1250.0


async def test_stage_stats_argument_checks(module_repository: Repository) -> None:
    repo = module_repository
    with pytest.raises(InvalidInput, match="since"):
        await repo.stage_stats(since=datetime(2024, 1, 1))
    with pytest.raises(InvalidInput, match="since"):
        await repo.stage_stats(since="7d")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="until"):
        await repo.stage_stats(since=NOW, until=NOW - timedelta(days=1))
    with pytest.raises(InvalidInput, match="bucket"):
        await repo.stage_stats(since=NOW - timedelta(days=1), bucket="1000-9999")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="by_bucket"):
        await repo.stage_stats(since=NOW - timedelta(days=1), by_bucket="yes")  # type: ignore[arg-type]


async def test_size_buckets() -> None:
    assert SizeBucket.of(0) == SizeBucket(0, 9) == SizeBucket.of(9)
    assert SizeBucket.of(10) == SizeBucket(10, 99)
    assert SizeBucket.of(2500).label == "1000-9999"
    assert SizeBucket.parse("2500") == SizeBucket.parse("1000-9999") == SizeBucket.parse("1,000")
    for bad in ("1000-5000", "abc", "-5", "", "10-", "' OR 1=1 --"):
        with pytest.raises(ValueError):
            SizeBucket.parse(bad)
    with pytest.raises(ValueError):
        SizeBucket.of(-1)


async def test_eta_priors(module_repository: Repository) -> None:
    repo = module_repository
    rng = np.random.default_rng(7)
    similar = []
    for i in range(15):
        size = int(rng.integers(400, 700))
        stages = {stage: ("completed", float(rng.uniform(0.1, 5.0)), size) for stage in STAGES}
        similar.append(
            {"id": uuid4(), "status": "completed", "size": size,
             "finished_at": NOW - timedelta(hours=15 - i), "stages": stages}
        )  # fmt: skip
    similar[-1]["stages"]["finalization"] = ("completed", 9.0, 0)  # no units: ignored
    others = [
        {"id": uuid4(), "status": "completed", "size": 5000, "finished_at": NOW,
         "stages": {s: ("completed", 100.0, 5000) for s in STAGES}},  # too big
        {"id": uuid4(), "status": "failed", "size": 500, "finished_at": NOW,
         "stages": {s: ("completed", 100.0, 500) for s in STAGES}},  # did not complete
    ]  # fmt: skip
    await seed(repo, similar + others)

    recent = similar[-10:]
    want = {}
    for stage in STAGES:
        used = [s["stages"][stage] for s in recent if s["stages"][stage][2]]
        want[stage] = sum(d for _, d, _ in used) / sum(u for _, _, u in used)
    got = await repo.eta_priors(500, last_n=10)
    assert list(got) == list(STAGES)
    for stage in STAGES:
        assert got[stage] == pytest.approx(want[stage], rel=1e-12)

    three = await repo.eta_priors(500, last_n=3)
    first = sum(s["stages"]["data_fetching"][1] for s in similar[-3:])
    units = sum(s["stages"]["data_fetching"][2] for s in similar[-3:])
    assert three["data_fetching"] == pytest.approx(first / units)
    assert await repo.eta_priors(50_000) == {}
    assert await repo.eta_priors(3) == {}
    assert (await repo.eta_priors(4000))["symbol_scanning"] == pytest.approx(100 / 5000)


async def test_eta_priors_argument_checks(module_repository: Repository) -> None:
    repo = module_repository
    for size in (-1, None, "500", 1.5):
        with pytest.raises(InvalidInput, match="universe_size"):
            await repo.eta_priors(size)  # type: ignore[arg-type]
    for last_n in (0, 10_000, "10"):
        with pytest.raises(InvalidInput, match="last_n"):
            await repo.eta_priors(500, last_n=last_n)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="size_ratio"):
        await repo.eta_priors(500, size_ratio=0.5)


async def test_eta_priors_come_from_scans_of_the_same_provider(
    module_repository: Repository,
) -> None:
    """A polygon scan fetches at the provider's rate limit (12 s a request on the free plan):
    its data_fetching must not become the prior of a sample scan, nor the other way round."""
    repo = module_repository
    scans = [
        {"id": uuid4(), "status": "completed", "size": 50,
         "finished_at": NOW - timedelta(minutes=i), "stages": {
             "data_fetching": ("completed", seconds, 50)}}
        for i, seconds in enumerate((600.0, 0.05))
    ]  # fmt: skip
    await seed(repo, scans)
    async with repo.pool.acquire() as conn:
        for scan, provider in zip(scans, ("polygon", "sample"), strict=True):
            sql = "UPDATE scans SET config = $2 WHERE id = $1"
            await conn.execute(sql, scan["id"], {"provider": provider})
    sample = await repo.eta_priors(50, provider="sample")
    polygon = await repo.eta_priors(50, provider="polygon")
    assert sample["data_fetching"] == pytest.approx(0.05 / 50)
    assert polygon["data_fetching"] == pytest.approx(600.0 / 50)
