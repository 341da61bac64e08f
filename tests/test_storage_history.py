"""History queries: stage_stats and accuracy_stats against figures computed here with numpy,
the ETA history of a scan kind, and the accuracy record of a scan."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import numpy as np
import pytest
from technic.engine.eta import CHECKPOINTS, EtaCheckpoint, ScanAccuracy
from technic.storage import STAGES, InvalidInput, Repository, ScanNotFound, SizeBucket

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
            (
                scan["id"], scan["status"], scan.get("config", {}), finished, finished, finished,
                finished, scan["size"],
            )
        )  # fmt: skip
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
                "id", "status", "config", "created_at", "updated_at", "started_at",
                "finished_at", "universe_size",
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


# -- ETA accuracy and history ---------------------------------------------------------------


def scan_of(provider: str, size: int | None, finished_at: datetime, stages: dict) -> dict:
    return {"id": uuid4(), "status": "completed", "size": size, "finished_at": finished_at,
            "config": {"provider": provider}, "stages": stages}  # fmt: skip


def accuracy_with(
    errors: dict[int, float | None],
    time_linearity: float | None = 0.99,
    overall_linearity: float | None = 0.7,
    time_stall_s: float = 0.5,
    overall_stall_s: float = 3.0,
) -> ScanAccuracy:
    """An accuracy record whose checkpoints have these signed errors (None: no time was left)."""
    checkpoints = []
    for checkpoint, error in errors.items():
        actual = 0.0 if error is None else 10.0 * (100 - checkpoint) / 90  # 10 s at 10 %
        predicted = 1.5 if error is None else actual + actual * error / 100
        checkpoints.append(EtaCheckpoint(checkpoint, checkpoint / 10, predicted, actual))
    return ScanAccuracy(
        tuple(checkpoints), time_linearity, overall_linearity, time_stall_s, overall_stall_s
    )


async def stored_accuracy(repo: Repository, scan_id: UUID) -> tuple[dict, list[dict]]:
    async with repo.pool.acquire() as conn:
        scan = await conn.fetchrow(
            "SELECT eta_kind, cache_hit_ratio, time_linearity, overall_linearity, time_stall_s,"
            " overall_stall_s FROM scans WHERE id = $1",
            scan_id,
        )
        rows = await conn.fetch(
            "SELECT checkpoint, elapsed_s, predicted_remaining_s, actual_remaining_s, error_pct,"
            " finished_at, provider, universe_size FROM eta_checkpoints WHERE scan_id = $1"
            " ORDER BY checkpoint",
            scan_id,
        )
    return dict(scan), [dict(r) for r in rows]


async def test_record_accuracy_stores_the_record_and_replaces_it(
    module_repository: Repository,
) -> None:
    repo = module_repository
    scan = scan_of("polygon", 2500, NOW - timedelta(hours=1), {})
    await seed(repo, [scan])
    first = accuracy_with({10: 12.5, 25: -4.0, 50: 1.0, 75: 0.0, 90: None}, 0.98, -0.25)
    await repo.record_accuracy(scan["id"], first, kind="polygon@300/min", cache_hit_ratio=0.25)
    await repo.record_accuracy(scan["id"], first, kind="polygon@300/min", cache_hit_ratio=0.25)
    columns, rows = await stored_accuracy(repo, scan["id"])
    assert columns == {
        "eta_kind": "polygon@300/min", "cache_hit_ratio": 0.25, "time_linearity": 0.98,
        "overall_linearity": -0.25, "time_stall_s": 0.5, "overall_stall_s": 3.0,
    }  # fmt: skip
    assert [r["checkpoint"] for r in rows] == list(CHECKPOINTS)  # a repeat adds nothing
    for row, point in zip(rows, first.checkpoints, strict=True):
        assert (row["elapsed_s"], row["predicted_remaining_s"], row["actual_remaining_s"]) == (
            point.elapsed_s, point.predicted_remaining_s, point.actual_remaining_s,
        )  # fmt: skip
        assert row["error_pct"] == point.error_pct
        assert (row["finished_at"], row["provider"], row["universe_size"]) == (
            scan["finished_at"], "polygon", 2500,
        )  # fmt: skip
    assert rows[0]["error_pct"] == pytest.approx(12.5) and rows[-1]["error_pct"] is None

    second = accuracy_with({10: -30.0, 50: 2.0}, None, None, 0.0, 0.0)
    await repo.record_accuracy(scan["id"], second, kind="polygon@5/min", cache_hit_ratio=None)
    columns, rows = await stored_accuracy(repo, scan["id"])
    assert columns == {
        "eta_kind": "polygon@5/min", "cache_hit_ratio": None, "time_linearity": None,
        "overall_linearity": None, "time_stall_s": 0.0, "overall_stall_s": 0.0,
    }  # fmt: skip
    assert [(r["checkpoint"], r["error_pct"]) for r in rows] == [
        (10, pytest.approx(-30.0)), (50, pytest.approx(2.0)),
    ]  # fmt: skip


def bad_accuracies() -> list[tuple[str, dict, str]]:
    """(what is wrong, keyword arguments of record_accuracy, the field the error names)."""
    good = accuracy_with({10: 5.0})
    point = good.checkpoints[0]

    def with_point(**changes: float) -> ScanAccuracy:
        return dataclasses.replace(good, checkpoints=(dataclasses.replace(point, **changes),))

    return [
        ("another provider's kind", {"kind": "polygon@300/min"}, "kind"),
        ("a provider's name as a prefix", {"kind": "samples"}, "kind"),
        ("an empty kind", {"kind": ""}, "kind"),
        ("a NUL in the kind", {"kind": "sample\x00"}, "kind"),
        ("a kind of 101 characters", {"kind": "sample@" + "9" * 94}, "kind"),
        ("a ratio above 1", {"cache_hit_ratio": 1.5}, "cache_hit_ratio"),
        ("a NaN ratio", {"cache_hit_ratio": math.nan}, "cache_hit_ratio"),
        ("a boolean ratio", {"cache_hit_ratio": True}, "cache_hit_ratio"),
        ("a linearity above 1", {"accuracy": dataclasses.replace(good, time_linearity=1.01)},
         "time_linearity"),
        ("an infinite linearity",
         {"accuracy": dataclasses.replace(good, overall_linearity=-math.inf)},
         "overall_linearity"),
        ("a negative stall", {"accuracy": dataclasses.replace(good, time_stall_s=-1.0)},
         "time_stall_s"),
        ("a NaN stall", {"accuracy": dataclasses.replace(good, overall_stall_s=math.nan)},
         "overall_stall_s"),
        ("an unknown checkpoint", {"accuracy": with_point(checkpoint=33)},
         "accuracy.checkpoints[0].checkpoint"),
        ("a checkpoint twice",
         {"accuracy": dataclasses.replace(good, checkpoints=(point, point))},
         "accuracy.checkpoints[1].checkpoint"),
        ("a negative elapsed time", {"accuracy": with_point(elapsed_s=-1.0)},
         "accuracy.checkpoints[0].elapsed_s"),
        ("a NaN prediction", {"accuracy": with_point(predicted_remaining_s=math.nan)},
         "accuracy.checkpoints[0].predicted_remaining_s"),
        ("an error too large for a number",
         {"accuracy": with_point(predicted_remaining_s=1e8, actual_remaining_s=1e-300)},
         "accuracy.checkpoints[0].error_pct"),
        ("not a ScanAccuracy", {"accuracy": {"checkpoints": []}}, "accuracy"),
        ("checkpoints that are not EtaCheckpoints",
         {"accuracy": dataclasses.replace(good, checkpoints=({"checkpoint": 10},))},
         "accuracy.checkpoints[0]"),
    ]  # fmt: skip


async def test_record_accuracy_refuses_bad_input_and_writes_nothing(
    module_repository: Repository,
) -> None:
    repo = module_repository
    scan = scan_of("sample", 300, NOW - timedelta(hours=1), {})
    no_provider = {**scan_of("sample", 300, NOW, {}), "config": {}}
    await seed(repo, [scan, no_provider])
    running = await repo.create_scan(uuid4(), {"provider": "sample"}, universe_size=300)
    await repo.transition(running.id, "running")
    good = {"accuracy": accuracy_with({10: 5.0}), "kind": "sample", "cache_hit_ratio": 0.5}

    for what, changes, field in bad_accuracies():
        with pytest.raises(InvalidInput) as refused:
            await repo.record_accuracy(scan["id"], **{**good, **changes})
        assert refused.value.field == field, what
    with pytest.raises(InvalidInput, match="is running; only a completed scan") as refused:
        await repo.record_accuracy(running.id, **good)
    assert refused.value.field == "scan_id"
    with pytest.raises(InvalidInput, match="names no provider"):
        await repo.record_accuracy(no_provider["id"], **good)
    for unknown in (uuid4(), "not-a-uuid"):
        with pytest.raises(ScanNotFound):
            await repo.record_accuracy(unknown, **good)

    async with repo.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM eta_checkpoints") == 0
        assert await conn.fetchval("SELECT count(*) FROM scans WHERE eta_kind IS NOT NULL") == 0
    await repo.record_accuracy(scan["id"], **good)  # the same scan takes a good record
    assert (await stored_accuracy(repo, scan["id"]))[0]["eta_kind"] == "sample"


async def test_eta_history_is_the_last_completed_scans_of_the_kind(
    module_repository: Repository,
) -> None:
    """The priors of a kind learn from its own scans only: a polygon scan under 5 requests a
    minute fetches a hundred times slower than one under 300, and a scan finished before
    accuracy was recorded (no kind) teaches nothing."""
    repo = module_repository
    rng = np.random.default_rng(11)

    def stages() -> dict:
        out = {}
        for stage in STAGES:
            size = int(rng.integers(100, 5000))
            out[stage] = ("completed", float(rng.uniform(0.1, 30.0)), size)
        return out

    fast = [scan_of("polygon", 500, NOW - timedelta(hours=i), stages()) for i in range(6)]
    fast[1]["stages"]["finalization"] = ("failed", 4.0, 10)  # did not complete: not a prior
    fast[2]["stages"]["data_fetching"] = ("completed", 2.0, None)  # no units: not a prior
    slow = [scan_of("polygon", 500, NOW - timedelta(minutes=30 + i), stages()) for i in range(2)]
    sample = [scan_of("sample", 500, NOW - timedelta(minutes=5), stages())]
    unrecorded = [scan_of("polygon", 500, NOW, stages())]
    await seed(repo, fast + slow + sample + unrecorded)
    for scans, kind in ((fast, "polygon@300/min"), (slow, "polygon@5/min"), (sample, "sample")):
        for scan in scans:
            await repo.record_accuracy(scan["id"], accuracy_with({10: 1.0}), kind=kind,
                                       cache_hit_ratio=None)  # fmt: skip

    def want(scans: list[dict]) -> dict[str, list[tuple[int, float, float | None]]]:
        newest_first = sorted(scans, key=lambda s: s["finished_at"], reverse=True)
        out: dict[str, list[tuple[int, float, float | None]]] = {}
        for stage in STAGES:
            runs = [s["stages"][stage] for s in newest_first]
            used = [
                (u, d, None) for status, d, u in runs if status == "completed" and u is not None
            ]
            if used:
                out[stage] = used
        return out

    assert await repo.eta_history("polygon@300/min") == want(fast)
    three = await repo.eta_history("polygon@300/min", last_n=3)
    assert three == want(fast[:3])
    assert len(three["data_fetching"]) == 2 and len(three["finalization"]) == 2
    assert await repo.eta_history("polygon@5/min") == want(slow)
    assert await repo.eta_history("sample", last_n=1) == want(sample)
    assert await repo.eta_history("synthetic") == {}
    assert list(await repo.eta_history("polygon@300/min")) == list(STAGES)


async def test_eta_history_argument_checks(module_repository: Repository) -> None:
    repo = module_repository
    for last_n in (0, 1001, "10", 2.0, True):
        with pytest.raises(InvalidInput, match="last_n"):
            await repo.eta_history("sample", last_n=last_n)  # type: ignore[arg-type]
    for kind in (None, 5, "sample\x00"):
        with pytest.raises(InvalidInput, match="kind"):
            await repo.eta_history(kind)  # type: ignore[arg-type]


def random_accuracy_history(
    rng: np.random.Generator, n: int
) -> list[tuple[dict, str, ScanAccuracy]]:
    """Completed scans over the last 14 days, each with the kind and accuracy recorded."""
    kinds = (("sample", "sample"), ("synthetic", "synthetic"), ("polygon", "polygon@300/min"),
             ("polygon", "polygon@5/min"))  # fmt: skip
    history = []
    for _ in range(n):
        provider, kind = kinds[int(rng.integers(len(kinds)))]
        size = None if rng.random() < 0.03 else int(rng.choice([5, 40, 300, 2500, 12000]))
        finished = NOW - timedelta(seconds=float(rng.uniform(0, 14 * 86400)))
        errors: dict[int, float | None] = {}
        for checkpoint in CHECKPOINTS:
            if rng.random() < 0.9:
                # an ETA is at best 100 % short (it said no time was left)
                spread = 12 + 30 * (checkpoint == 10)
                errors[checkpoint] = max(float(rng.normal(0, spread)), -100.0)
                if checkpoint == 90 and rng.random() < 0.1:
                    errors[checkpoint] = None  # it finished before the ETA was taken
        linearity = None if rng.random() < 0.05 else float(rng.uniform(-0.5, 1.0))
        record = accuracy_with(
            errors, linearity, float(rng.uniform(-2.0, 1.0)), float(rng.exponential(2.0))
        )
        history.append((scan_of(provider, size, finished, {}), kind, record))
    return history


def median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def expected_accuracy(history: list[tuple[dict, str, ScanAccuracy]]) -> list[dict]:
    groups: dict[tuple[str, SizeBucket | None], list[tuple[dict, ScanAccuracy]]] = {}
    for scan, _, record in history:
        key = (scan["config"]["provider"], digits_bucket(scan["size"]))
        groups.setdefault(key, []).append((scan, record))
    out = []
    for provider, bucket in sorted(groups, key=lambda k: (k[0], k[1] is None, k[1] and k[1].low)):
        members = groups[(provider, bucket)]
        checkpoints = []
        for checkpoint in CHECKPOINTS:
            errors = np.array([
                p.error_pct for _, r in members for p in r.checkpoints
                if p.checkpoint == checkpoint and p.error_pct is not None
            ])  # fmt: skip
            if len(errors) == 0:
                checkpoints.append((checkpoint, 0, None, None, None))
                continue
            median_abs, p90_abs = np.percentile(np.abs(errors), [50, 90])
            checkpoints.append(
                (checkpoint, len(errors), median_abs, p90_abs, float(np.median(errors)))
            )
        at_10 = [p.error_pct for _, r in members for p in r.checkpoints
                 if p.checkpoint == 10 and p.error_pct is not None]  # fmt: skip
        out.append({
            "provider": provider,
            "bucket": bucket,
            "scans": len(members),
            "checkpoints": checkpoints,
            "median_time_linearity": median_or_none([r.time_linearity for _, r in members]),
            "median_overall_linearity": median_or_none([r.overall_linearity for _, r in members]),
            "median_time_stall_s": median_or_none([r.time_stall_s for _, r in members]),
            "within_10pct_at_10": sum(abs(e) <= 10 for e in at_10) / len(at_10) if at_10 else None,
        })  # fmt: skip
    return out


def check_accuracy(groups: list, want: list[dict]) -> None:
    assert [(g.provider, g.bucket, g.scans) for g in groups] == [
        (w["provider"], w["bucket"], w["scans"]) for w in want
    ]
    for group, w in zip(groups, want, strict=True):
        got = [
            (c.checkpoint, c.count, c.median_abs_error_pct, c.p90_abs_error_pct, c.median_error_pct)
            for c in group.checkpoints
        ]
        assert got == [
            tuple(v if v is None or isinstance(v, int) else pytest.approx(v, rel=1e-9) for v in c)
            for c in w["checkpoints"]
        ]
        for key in ("median_time_linearity", "median_overall_linearity", "median_time_stall_s",
                    "within_10pct_at_10"):  # fmt: skip
            value = getattr(group, key)
            assert value == (None if w[key] is None else pytest.approx(w[key], rel=1e-9)), key


async def test_accuracy_stats_match_numpy(module_repository: Repository) -> None:
    repo = module_repository
    rng = np.random.default_rng(20241201)
    history = random_accuracy_history(rng, 300)
    plain = [scan_of("sample", 300, NOW - timedelta(days=1), {})]  # no accuracy recorded
    await seed(repo, [scan for scan, _, _ in history] + plain)
    for scan, kind, record in history:
        await repo.record_accuracy(scan["id"], record, kind=kind, cache_hit_ratio=0.5)

    since, until = NOW - timedelta(days=7), NOW - timedelta(hours=12)
    inside = [h for h in history if since <= h[0]["finished_at"] < until]
    assert 100 < len(inside) < 200  # the window really cuts the data
    stats = await repo.accuracy_stats(since, until, recent=20)
    assert (stats.since, stats.until) == (since, until)
    check_accuracy(stats.groups, expected_accuracy(inside))
    assert {g.provider for g in stats.groups} == {"polygon", "sample", "synthetic"}

    newest = sorted(inside, key=lambda h: (h[0]["finished_at"], h[0]["id"]), reverse=True)[:20]
    assert [r.scan_id for r in stats.recent] == [scan["id"] for scan, _, _ in newest]
    for row, (scan, _, record) in zip(stats.recent, newest, strict=True):
        errors = {p.checkpoint: p.error_pct for p in record.checkpoints}
        assert row.error_pct == {c: errors.get(c) for c in CHECKPOINTS}
        assert (row.finished_at, row.provider, row.universe_size) == (
            scan["finished_at"], scan["config"]["provider"], scan["size"],
        )  # fmt: skip
        assert (row.time_linearity, row.overall_linearity) == (
            record.time_linearity, record.overall_linearity,
        )  # fmt: skip

    polygon = await repo.accuracy_stats(since, until, provider="polygon", recent=5)
    check_accuracy(
        polygon.groups, expected_accuracy([h for h in inside if h[1].startswith("polygon@")])
    )
    assert {r.provider for r in polygon.recent} == {"polygon"} and len(polygon.recent) == 5
    bucket = SizeBucket.parse("1000-9999")
    sized = await repo.accuracy_stats(since, until, bucket=bucket, recent=0)
    check_accuracy(
        sized.groups,
        expected_accuracy([h for h in inside if digits_bucket(h[0]["size"]) == bucket]),
    )
    assert sized.recent == []
    unknown = await repo.accuracy_stats(since, until, provider="nasdaq")
    assert unknown.groups == [] and unknown.recent == []


async def test_accuracy_stats_window_edges_and_empty(module_repository: Repository) -> None:
    repo = module_repository
    at = NOW - timedelta(days=1)
    scans = [scan_of("sample", 300, at, {}), scan_of("sample", 300, at + timedelta(hours=1), {})]
    await seed(repo, scans)
    await repo.record_accuracy(scans[0]["id"], accuracy_with({10: 10.0, 25: None}), kind="sample",
                               cache_hit_ratio=None)  # fmt: skip
    await repo.record_accuracy(scans[1]["id"], accuracy_with({10: 50.0}), kind="sample",
                               cache_hit_ratio=None)  # fmt: skip
    stats = await repo.accuracy_stats(at, at + timedelta(hours=1))  # [since, until)
    [group] = stats.groups
    assert (group.provider, group.bucket, group.scans) == ("sample", SizeBucket(100, 999), 1)
    ten, twenty_five = group.checkpoints[:2]
    assert ten.count == 1 and ten.median_error_pct == pytest.approx(10.0)
    assert group.within_10pct_at_10 == 1.0  # exactly 10 % off counts as within
    assert twenty_five.count == 0 and twenty_five.median_abs_error_pct is None
    assert [c.checkpoint for c in group.checkpoints] == list(CHECKPOINTS)
    both = await repo.accuracy_stats(at, at + timedelta(hours=2))
    assert both.groups[0].scans == 2 and both.groups[0].within_10pct_at_10 == 0.5
    assert [r.scan_id for r in both.recent] == [scans[1]["id"], scans[0]["id"]]
    empty = await repo.accuracy_stats(NOW - timedelta(minutes=1))
    assert empty.groups == [] and empty.recent == []


async def test_accuracy_stats_argument_checks(module_repository: Repository) -> None:
    repo = module_repository
    day_ago = NOW - timedelta(days=1)
    with pytest.raises(InvalidInput, match="since"):
        await repo.accuracy_stats(datetime(2024, 1, 1))
    with pytest.raises(InvalidInput, match="since"):
        await repo.accuracy_stats("7d")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="until"):
        await repo.accuracy_stats(NOW, NOW - timedelta(days=1))
    with pytest.raises(InvalidInput, match="bucket"):
        await repo.accuracy_stats(day_ago, bucket="1000-9999")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="provider"):
        await repo.accuracy_stats(day_ago, provider="sample\x00")
    for recent in (-1, 1001, "5", 2.5):
        with pytest.raises(InvalidInput, match="recent"):
            await repo.accuracy_stats(day_ago, recent=recent)  # type: ignore[arg-type]
