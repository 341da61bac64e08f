"""Retention: pruning the result rows of old scans, and old scans whole.

Two horizons, both counted back from the database's clock (so every instance of a fleet
agrees on them):

- results: the ``scan_results`` and ``scan_failures`` rows of scans finished before it go;
  the scan record and its stage timings stay, so history stays complete. The scan is stamped
  ``results_pruned_at`` before its first row goes, so a reader sees 410 Gone, never a
  half-deleted page; ``results_prune_done`` once its last row went, so a prune stopped midway
  is finished by the next one.
- timings: scans finished before it go whole (record, ``stage_timings``,
  ``eta_checkpoints``, and any rows left), since a scan record without its timings tells
  nothing the history can use. It is never nearer than the results horizon (settings).

Why in batches: a day of a 100,000-symbol scan every 15 minutes is ~10 million result rows.
Each statement deletes at most ``batch_rows`` rows in its own short transaction, with a pause
between, so no lock is held for long and scans saving their results (COPY into the same
table, row locks on their own scans only) are never waited on. A session advisory lock lets
one process of a fleet prune at a time; the others skip the round.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from uuid import UUID

import asyncpg
from technic.storage._pg import db_call
from technic.storage.errors import StorageError

# the tables pruning removes rows from, in the order a report lists them
PRUNED_TABLES: Final = (
    "scan_results",
    "scan_failures",
    "stage_timings",
    "eta_checkpoints",
    "scans",
)
DEFAULT_BATCH_ROWS: Final = 5000
# scans whose results are marked pruned per statement: ~100 x 100,000 rows for large scans
RESULT_SCANS_PER_BATCH: Final = 100
# whole scans deleted per statement: each takes 4 stage timings and up to 5 checkpoints
SCANS_PER_BATCH: Final = 500
DEFAULT_PAUSE_S: Final = 0.05
# the first 8 bytes of sha256("technic.prune")
PRUNE_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"technic.prune").digest()[:8], "big", signed=True
)

# The statements, here so that the tests and tests/bench/bench_prune.py EXPLAIN what runs.

# $1 days -> the horizon on the database's clock
CUTOFF_SQL: Final = "SELECT now() - make_interval(days => $1::integer)"

# $1 horizon, $2 how many: the oldest finished scans whose results are not all gone, stamped
# (once) as pruned; an index range of scans_results_to_prune_idx
MARK_RESULTS_PRUNED_SQL: Final = """
    UPDATE scans SET results_pruned_at = coalesce(results_pruned_at, now())
    WHERE id IN (
        SELECT id FROM scans
        WHERE finished_at IS NOT NULL AND NOT results_prune_done AND finished_at < $1
        ORDER BY finished_at, id
        LIMIT $2)
    RETURNING id
"""
# $1 a scan id -> the last rank (seq) of its rows; then $1, $2 and $3 delete one batch, the
# ranks above $2 up to $3. Ranks and seqs run 1..n, so each batch is one range of the primary
# key: never a scan of the table, nor of the dead rows of the batches before it.
LAST_RESULT_SQL: Final = "SELECT max(rank) FROM scan_results WHERE scan_id = $1"
DELETE_RESULTS_SQL: Final = (
    "DELETE FROM scan_results WHERE scan_id = $1 AND rank > $2 AND rank <= $3"
)
LAST_FAILURE_SQL: Final = "SELECT max(seq) FROM scan_failures WHERE scan_id = $1"
DELETE_FAILURES_SQL: Final = (
    "DELETE FROM scan_failures WHERE scan_id = $1 AND seq > $2 AND seq <= $3"
)
RESULTS_PRUNE_DONE_SQL: Final = (
    "UPDATE scans SET results_prune_done = true WHERE id = ANY($1::uuid[])"
)

# $1 horizon, $2 how many: the oldest finished scans, deleted whole; each table's count of
# removed rows. Results and failures normally went with the results horizon already; any left
# go with the scan (its trigger and foreign keys).
DELETE_SCANS_SQL: Final = """
    WITH doomed AS (
        SELECT id FROM scans
        WHERE finished_at IS NOT NULL AND finished_at < $1
        ORDER BY finished_at, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED),
    results AS (DELETE FROM scan_results r USING doomed d WHERE r.scan_id = d.id RETURNING 1),
    failures AS (DELETE FROM scan_failures f USING doomed d WHERE f.scan_id = d.id RETURNING 1),
    timings AS (DELETE FROM stage_timings t USING doomed d WHERE t.scan_id = d.id RETURNING 1),
    checkpoints AS (
        DELETE FROM eta_checkpoints e USING doomed d WHERE e.scan_id = d.id RETURNING 1),
    gone AS (DELETE FROM scans s USING doomed d WHERE s.id = d.id RETURNING 1)
    SELECT (SELECT count(*) FROM results) AS scan_results,
           (SELECT count(*) FROM failures) AS scan_failures,
           (SELECT count(*) FROM timings) AS stage_timings,
           (SELECT count(*) FROM checkpoints) AS eta_checkpoints,
           (SELECT count(*) FROM gone) AS scans
"""

# --dry-run: what the statements above would remove, counted the same way ($1 the horizon)
COUNT_RESULTS_SQL: Final = """
    WITH due AS (
        SELECT id FROM scans
        WHERE finished_at IS NOT NULL AND NOT results_prune_done AND finished_at < $1)
    SELECT (SELECT count(*) FROM due) AS scans,
           (SELECT count(*) FROM scan_results r JOIN due ON r.scan_id = due.id) AS scan_results,
           (SELECT count(*) FROM scan_failures f JOIN due ON f.scan_id = due.id) AS scan_failures
"""
COUNT_SCANS_SQL: Final = """
    WITH due AS (SELECT id FROM scans WHERE finished_at IS NOT NULL AND finished_at < $1)
    SELECT (SELECT count(*) FROM due) AS scans,
           (SELECT count(*) FROM stage_timings t JOIN due ON t.scan_id = due.id)
               AS stage_timings,
           (SELECT count(*) FROM eta_checkpoints e JOIN due ON e.scan_id = due.id)
               AS eta_checkpoints
"""


class PruneInProgress(StorageError):
    """Another process holds the prune lock; this round was skipped."""

    def __init__(self) -> None:
        super().__init__("another technic process is pruning this database right now")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days after a scan finished that its results, and the scan itself, are kept; 0 keeps
    them forever (config/settings.py checks that timings never go before results)."""

    results_days: int
    timings_days: int


@dataclass(slots=True)
class PruneReport:
    """What one prune removed (or, dry, would remove): rows per table, and the horizons."""

    dry_run: bool
    results_cutoff: datetime | None
    timings_cutoff: datetime | None
    # scans whose results (and failures) were pruned; their records stay
    results_pruned_scans: int = 0
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PRUNED_TABLES, 0))
    duration_s: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


# called after every batch with the table and the rows it removed (the /metrics counter)
OnRows = Callable[[str, int], None]


class Retention:
    """Prunes a database by a policy; see the module docstring for how and why."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        policy: RetentionPolicy,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        pause_s: float = DEFAULT_PAUSE_S,
        on_rows: OnRows | None = None,
    ) -> None:
        self._pool = pool
        self.policy = policy
        self._batch_rows = batch_rows
        self._pause_s = pause_s
        self._on_rows = on_rows

    @db_call("prune")
    async def prune(self, *, dry_run: bool = False) -> PruneReport:
        """Remove what the policy says has expired; with ``dry_run``, only count it.

        Raises ``PruneInProgress`` when another process is pruning (a dry run never waits).
        """
        started = time.perf_counter()
        async with self._pool.acquire() as conn:
            results_cutoff = await _cutoff(conn, self.policy.results_days)
            timings_cutoff = await _cutoff(conn, self.policy.timings_days)
            report = PruneReport(dry_run, results_cutoff, timings_cutoff)
            if dry_run:
                await _count(conn, report)
            else:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK_KEY):
                    raise PruneInProgress
                try:
                    if results_cutoff is not None:
                        await self._prune_results(conn, results_cutoff, report)
                    if timings_cutoff is not None:
                        await self._prune_scans(conn, timings_cutoff, report)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK_KEY)
        report.duration_s = time.perf_counter() - started
        return report

    async def _prune_results(
        self, conn: asyncpg.Connection, cutoff: datetime, report: PruneReport
    ) -> None:
        while marked := await conn.fetch(MARK_RESULTS_PRUNED_SQL, cutoff, RESULT_SCANS_PER_BATCH):
            ids = [record["id"] for record in marked]
            for scan_id in ids:
                await self._delete_rows(
                    conn, scan_id, report, "scan_results", LAST_RESULT_SQL, DELETE_RESULTS_SQL
                )
                await self._delete_rows(
                    conn, scan_id, report, "scan_failures", LAST_FAILURE_SQL, DELETE_FAILURES_SQL
                )
            await conn.execute(RESULTS_PRUNE_DONE_SQL, ids)
            report.results_pruned_scans += len(ids)

    async def _delete_rows(
        self,
        conn: asyncpg.Connection,
        scan_id: UUID,
        report: PruneReport,
        table: str,
        last_sql: str,
        delete_sql: str,
    ) -> None:
        last = await conn.fetchval(last_sql, scan_id)
        below = 0
        while last is not None and below < last:
            upto = below + self._batch_rows
            self._count(
                report, table, _row_count(await conn.execute(delete_sql, scan_id, below, upto))
            )
            below = upto
            if below < last:
                await asyncio.sleep(self._pause_s)

    async def _prune_scans(
        self, conn: asyncpg.Connection, cutoff: datetime, report: PruneReport
    ) -> None:
        while True:
            counts = await conn.fetchrow(DELETE_SCANS_SQL, cutoff, SCANS_PER_BATCH)
            for table in PRUNED_TABLES:
                self._count(report, table, counts[table])
            if counts["scans"] < SCANS_PER_BATCH:
                return
            await asyncio.sleep(self._pause_s)

    def _count(self, report: PruneReport, table: str, removed: int) -> None:
        report.rows[table] += removed
        if removed and self._on_rows is not None:
            self._on_rows(table, removed)


async def _cutoff(conn: asyncpg.Connection, days: int) -> datetime | None:
    return None if days == 0 else await conn.fetchval(CUTOFF_SQL, days)


async def _count(conn: asyncpg.Connection, report: PruneReport) -> None:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if report.results_cutoff is not None:
            due = await conn.fetchrow(COUNT_RESULTS_SQL, report.results_cutoff)
            report.results_pruned_scans = due["scans"]
            report.rows["scan_results"] = due["scan_results"]
            report.rows["scan_failures"] = due["scan_failures"]
        if report.timings_cutoff is not None:
            due = await conn.fetchrow(COUNT_SCANS_SQL, report.timings_cutoff)
            for table in ("scans", "stage_timings", "eta_checkpoints"):
                report.rows[table] = due[table]


def _row_count(status: str) -> int:
    # asyncpg answers a DELETE with its command tag, "DELETE <rows>"
    return int(status.rsplit(" ", 1)[-1])
