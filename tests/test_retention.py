"""Retention on the real PostgreSQL: what pruning removes and keeps, dry runs, the prune lock,
a prune stopped midway, the indexes the statements use, and the settings that drive it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest
from technic.config import Settings, SettingsError
from technic.storage import STAGES, Repository
from technic.storage.retention import (
    DELETE_RESULTS_SQL,
    DELETE_SCANS_SQL,
    MARK_RESULTS_PRUNED_SQL,
    PRUNE_LOCK_KEY,
    PruneInProgress,
    Retention,
    RetentionPolicy,
)

# the database fixtures run on the session loop (tests/conftest.py)
on_session_loop = pytest.mark.asyncio(loop_scope="session")

POLICY = RetentionPolicy(results_days=30, timings_days=365)


@dataclass(frozen=True)
class Seeded:
    id: UUID
    results: int
    failures: int


def result_rows(count: int) -> list[dict[str, object]]:
    return [
        {"symbol": f"S{i:05d}", "sector": "Tech", "signal": "Buy", "tech_rating": 10.0 - i * 1e-3}
        for i in range(count)
    ]


async def seed_scan(
    repo: Repository, *, age_days: float, results: int, failures: int, checkpoints: bool = False
) -> Seeded:
    """A scan run through the repository as the server runs one, then moved ``age_days`` back."""
    scan_id = uuid4()
    await repo.create_scan(scan_id, {"provider": "sample"}, universe_size=results + failures)
    await repo.transition(scan_id, "running")
    for stage in STAGES:
        await repo.start_stage(scan_id, stage)
        await repo.finish_stage(scan_id, stage, units_done=results + failures)
    await repo.save_results(scan_id, result_rows(results))
    await repo.save_failures(
        scan_id, [{"symbol": f"F{i}", "reason": "no data"} for i in range(failures)]
    )
    await repo.transition(scan_id, "completed")
    async with repo.pool.acquire() as conn, conn.transaction():
        shift = timedelta(days=age_days)
        await conn.execute(
            "UPDATE scans SET created_at = created_at - $2::interval,"
            " started_at = started_at - $2::interval, finished_at = finished_at - $2::interval"
            " WHERE id = $1",
            scan_id,
            shift,
        )
        await conn.execute(
            "UPDATE stage_timings SET started_at = started_at - $2::interval,"
            " finished_at = finished_at - $2::interval WHERE scan_id = $1",
            scan_id,
            shift,
        )
        if checkpoints:
            await conn.execute(
                "INSERT INTO eta_checkpoints (scan_id, checkpoint, elapsed_s,"
                " predicted_remaining_s, actual_remaining_s, error_pct, finished_at, provider)"
                " SELECT $1, c, 1, 1, 1, 0, now() - $2::interval, 'sample'"
                " FROM unnest(ARRAY[10, 25, 50, 75, 90]) AS c",
                scan_id,
                shift,
            )
    return Seeded(scan_id, results, failures)


async def table_counts(repo: Repository, scan_id: UUID) -> dict[str, int]:
    async with repo.pool.acquire() as conn:
        return {
            table: await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {key} = $1", scan_id)
            for table, key in (
                ("scan_results", "scan_id"),
                ("scan_failures", "scan_id"),
                ("stage_timings", "scan_id"),
                ("eta_checkpoints", "scan_id"),
                ("scans", "id"),
            )
        }


@on_session_loop
async def test_prune_removes_old_results_keeps_records_and_timings(repository: Repository) -> None:
    fresh = await seed_scan(repository, age_days=2, results=7, failures=2)
    expired = await seed_scan(repository, age_days=31, results=12, failures=3)
    ancient = await seed_scan(repository, age_days=400, results=5, failures=1, checkpoints=True)

    # tiny batches, so that every kind of row goes in several statements
    report = await Retention(repository.pool, POLICY, batch_rows=4, pause_s=0).prune()

    assert await table_counts(repository, fresh.id) == {
        "scan_results": 7, "scan_failures": 2, "stage_timings": 4, "eta_checkpoints": 0,
        "scans": 1,
    }  # fmt: skip
    assert await table_counts(repository, expired.id) == {
        "scan_results": 0, "scan_failures": 0, "stage_timings": 4, "eta_checkpoints": 0,
        "scans": 1,
    }  # fmt: skip
    assert set((await table_counts(repository, ancient.id)).values()) == {0}
    assert report.rows == {
        "scan_results": 12 + 5, "scan_failures": 3 + 1, "stage_timings": 4,
        "eta_checkpoints": 5, "scans": 1,
    }  # fmt: skip
    assert report.results_pruned_scans == 2
    kept = await repository.get_scan(expired.id)
    assert kept is not None and kept.results_pruned_at is not None
    assert kept.result_count == 12  # the record still says how many results it had
    assert [t.duration_s is not None for t in kept.stages] == [True] * 4
    recent = await repository.get_scan(fresh.id)
    assert recent is not None and recent.results_pruned_at is None

    again = await Retention(repository.pool, POLICY).prune()
    assert again.total_rows == 0 and again.results_pruned_scans == 0


@on_session_loop
async def test_dry_run_counts_what_a_prune_removes_and_changes_nothing(
    repository: Repository,
) -> None:
    await seed_scan(repository, age_days=1, results=3, failures=0)
    await seed_scan(repository, age_days=45, results=9, failures=4)
    await seed_scan(repository, age_days=500, results=2, failures=2, checkpoints=True)
    async with repository.pool.acquire() as conn:
        before = await conn.fetch("SELECT * FROM scans ORDER BY id")

    dry = await Retention(repository.pool, POLICY).prune(dry_run=True)

    async with repository.pool.acquire() as conn:
        assert await conn.fetch("SELECT * FROM scans ORDER BY id") == before
    real = await Retention(repository.pool, POLICY).prune()
    assert dry.dry_run and not real.dry_run
    assert dry.rows == real.rows
    assert dry.results_pruned_scans == real.results_pruned_scans == 2
    assert dry.results_cutoff is not None and real.results_cutoff is not None
    assert abs((real.results_cutoff - dry.results_cutoff).total_seconds()) < 60


@on_session_loop
async def test_zero_days_keeps_forever(repository: Repository) -> None:
    old = await seed_scan(repository, age_days=3000, results=4, failures=1)
    report = await Retention(repository.pool, RetentionPolicy(0, 0)).prune()
    assert report.total_rows == 0
    assert report.results_cutoff is None and report.timings_cutoff is None
    assert (await table_counts(repository, old.id))["scan_results"] == 4


@on_session_loop
async def test_a_prune_stopped_midway_is_finished_by_the_next(repository: Repository) -> None:
    scan = await seed_scan(repository, age_days=40, results=10, failures=0)
    async with repository.pool.acquire() as conn:
        # what a process killed after marking the scan and deleting some rows leaves behind
        await conn.execute("UPDATE scans SET results_pruned_at = now() WHERE id = $1", scan.id)
        await conn.execute("DELETE FROM scan_results WHERE scan_id = $1 AND rank <= 4", scan.id)
        stamped = await conn.fetchval("SELECT results_pruned_at FROM scans WHERE id = $1", scan.id)

    report = await Retention(repository.pool, POLICY).prune()

    assert report.rows["scan_results"] == 6
    async with repository.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT results_pruned_at, results_prune_done FROM scans WHERE id = $1", scan.id
        )
    assert row["results_prune_done"] and row["results_pruned_at"] == stamped


@on_session_loop
async def test_one_pruner_at_a_time(repository: Repository, database_url: str) -> None:
    await seed_scan(repository, age_days=40, results=3, failures=0)
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", PRUNE_LOCK_KEY)
        with pytest.raises(PruneInProgress, match="another technic process is pruning"):
            await Retention(repository.pool, POLICY).prune()
        await other.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK_KEY)
    finally:
        await other.close()
    assert (await Retention(repository.pool, POLICY).prune()).rows["scan_results"] == 3


@on_session_loop
@pytest.mark.parametrize(
    ("sql", "arguments", "index"),
    [
        (
            MARK_RESULTS_PRUNED_SQL,
            ("now() - interval '30 days'", "100"),
            "scans_results_to_prune_idx",
        ),
        (DELETE_RESULTS_SQL, (f"'{uuid4()}'::uuid", "0", "5000"), "scan_results_pkey"),
        (DELETE_SCANS_SQL, ("now() - interval '365 days'", "500"), "scans_finished_idx"),
    ],
)
async def test_prune_statements_use_their_index(
    repository: Repository, sql: str, arguments: tuple[str, ...], index: str
) -> None:
    """With sequential scans priced out the planner shows which index serves each statement
    (tests/bench/bench_prune.py prints the plans over 10 million rows, where it chooses so)."""
    async with repository.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        literal = sql
        for number, argument in enumerate(arguments, start=1):
            literal = literal.replace(f"${number}", argument)
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {literal}"))
        assert index in plan, plan
        assert "Seq Scan" not in plan, plan


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RESULTS_RETENTION_DAYS": "-1"}, "RESULTS_RETENTION_DAYS: must be between 0 and 36500"),
        ({"RESULTS_RETENTION_DAYS": "a month"}, "RESULTS_RETENTION_DAYS: must be a whole number"),
        (
            {"RESULTS_RETENTION_DAYS": "30", "TIMINGS_RETENTION_DAYS": "7"},
            "TIMINGS_RETENTION_DAYS: must be 0 (keep forever) or at least RESULTS_RETENTION_DAYS"
            " (30), got 7",
        ),
        (
            {"RESULTS_RETENTION_DAYS": "0", "TIMINGS_RETENTION_DAYS": "365"},
            "at least RESULTS_RETENTION_DAYS (0, which keeps results forever), got 365",
        ),
        ({"PRUNE_INTERVAL_S": "0"}, "PRUNE_INTERVAL_S: must be between 1 and 86400"),
    ],
)
def test_bad_retention_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert message in str(caught.value)


def test_retention_defaults_and_keep_forever() -> None:
    defaults = Settings.from_env({})
    assert (defaults.results_retention_days, defaults.timings_retention_days) == (30, 365)
    assert defaults.prune_interval_s == 3600
    forever = Settings.from_env({"RESULTS_RETENTION_DAYS": "0", "TIMINGS_RETENTION_DAYS": "0"})
    assert (forever.results_retention_days, forever.timings_retention_days) == (0, 0)
    results_only = Settings.from_env({"RESULTS_RETENTION_DAYS": "7", "TIMINGS_RETENTION_DAYS": "0"})
    assert (results_only.results_retention_days, results_only.timings_retention_days) == (7, 0)
