"""Every read and write of scans, stage timings, results and failures.

Rules the methods follow, so the server can rely on them:

- Every value from a caller is a bound parameter; the few things that must be spliced into
  SQL text (sort column, sort direction, which filters are present) come from whitelists in
  this module, never from the caller's strings.
- Reads of an unknown (or malformed) scan id return ``None``; writes raise ``ScanNotFound``.
- Each write is one statement or one transaction: a failure leaves nothing half-written.
- Status changes lock the row, check the state machine in ``storage.models`` and raise
  ``IllegalTransition`` for a forbidden move, so two callers cannot both win a race.
- Bulk writes (results, failures) use binary ``COPY``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import math
import operator
from array import array
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import numpy as np
import orjson
from technic.engine.eta import CHECKPOINTS, HISTORY_SCANS, EtaCheckpoint, ScanAccuracy
from technic.engine.fields import SIGNALS
from technic.engine.progress import TERMINAL_STATUSES
from technic.engine.trend import (
    INTERVAL_ORIGIN,
    INTERVAL_STEPS,
    TrendInterval,
    interval_start,
    quantile,
)
from technic.storage._pg import db_call
from technic.storage.errors import (
    DatabaseUnavailable,
    IllegalTransition,
    InvalidInput,
    ScanNotFound,
)
from technic.storage.models import (
    RESULT_NUMBER_FIELDS,
    SCAN_STATUSES,
    SCAN_TRANSITIONS,
    STAGE_TRANSITIONS,
    STAGES,
    AccuracyGroup,
    AccuracyStats,
    CancelOutcome,
    CheckpointAccuracy,
    Failure,
    FleetAdmission,
    ResultPage,
    Scan,
    ScanAccuracyRecord,
    ScanPage,
    ScanStatus,
    SizeBucket,
    StageName,
    StageStat,
    StageStats,
    StageStatus,
    StageTiming,
    StageTrend,
    TrendPoint,
)

MAX_PAGE_SIZE: Final = 1000
MAX_OFFSET: Final = 10_000_000
MAX_RANK: Final = 2**31 - 1  # ranks are PostgreSQL integers
# rows an export reads per query: ~7 MB of row dicts in memory at a time, 50 queries per 100k
EXPORT_BATCH_ROWS: Final = 2000
# a scan kind is a provider name, optionally with "@" and its rate limit (eta.scan_kind)
MAX_KIND_LENGTH: Final = 100
# the accuracy goal: an ETA within this many percent of the time that actually remained
WITHIN_PCT: Final = 10.0
# how many of a window's newest scans accuracy_stats lists one by one by default (a chart's)
ACCURACY_RECENT_SCANS: Final = 50
INTERRUPTED_ERROR: Final = "interrupted: the process running this scan stopped"
# NOTIFY channels of the fleet (storage/listen.py listens): a scan was queued or released
# (payload empty), a cancel was requested (payload: the scan id)
QUEUE_CHANNEL: Final = "technic_queue"
CANCEL_CHANNEL: Final = "technic_cancel"
# serialises fleet admissions (enqueue_scan); the first 8 bytes of sha256("technic.fleet")
FLEET_ADMISSION_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"technic.fleet").digest()[:8], "big", signed=True
)

# Sort keys the results endpoint accepts -> (SQL column, SQL type of its values). The column
# names are the only caller-influenced text that reaches SQL, and only through this table.
RESULT_SORTS: Final[dict[str, tuple[str, str]]] = {
    "rank": ("rank", "integer"),
    "symbol": ("symbol", "text"),
    "sector": ("sector", "text"),
    "tech_rating": ("tech_rating", "double precision"),
    "signal": ("signal_order", "smallint"),
    "close": ("close", "double precision"),
    "rsi14": ("rsi14", "double precision"),
    "ret_21d": ("ret_21d", "double precision"),
    "rel_volume": ("rel_volume", "double precision"),
    "dollar_volume_20d": ("dollar_volume_20d", "double precision"),
    "reward_risk": ("reward_risk", "double precision"),
}

_RESULT_COLUMNS: Final = (
    "scan_id",
    "rank",
    "symbol",
    "sector",
    "signal",
    *RESULT_NUMBER_FIELDS,
    "data",
)
_FAILURE_COLUMNS: Final = ("scan_id", "seq", "symbol", "reason")
_SCAN_COLUMNS: Final = (
    "id, status, config, created_at, updated_at, started_at, finished_at, universe_size,"
    " symbols_scanned, symbols_failed, result_count, error, metrics, owner, results_pruned_at"
)
_STAGE_COLUMNS: Final = (
    "scan_id, stage, status, started_at, finished_at, duration_s, units_done, units_total,"
    " throughput, tail_s"
)


# The statements of the history reads, here rather than inside the methods so that
# tests/bench/bench_accuracy.py can EXPLAIN exactly what the methods run.

# eta_history ($1 kind, $2 last_n): an index range of scans_eta_kind_finished_idx, then each
# scan's stage rows by primary key.
ETA_HISTORY_SQL: Final = """
    WITH recent AS (
        SELECT id, finished_at FROM scans
        WHERE status = 'completed' AND eta_kind IS NOT NULL AND eta_kind = $1
        ORDER BY finished_at DESC, id DESC
        LIMIT $2
    )
    SELECT t.stage, t.units_done, t.duration_s, t.tail_s
    FROM recent r JOIN stage_timings t ON t.scan_id = r.id
    WHERE t.status = 'completed' AND t.units_done IS NOT NULL
    ORDER BY r.finished_at DESC, r.id DESC
"""

# stage_trend: $1 the stages, $2 since, $3 until, $4 the interval step, $5 its origin, $6 a
# provider and $7 a universe-size digit count (both optional). Per stage one index-only range
# scan of stage_timing_rollup_pkey over the window's hours, summed per interval and bin.
STAGE_TREND_SQL: Final = """
    SELECT s.stage, a.*
    FROM unnest($1::text[]) AS s (stage)
    CROSS JOIN LATERAL (
        SELECT date_bin($4::interval, r.hour, $5::timestamptz) AS start, r.bin,
               sum(r.n)::bigint AS n, sum(r.units)::bigint AS units, sum(r.unit_s) AS unit_s
        FROM stage_timing_rollup r
        WHERE r.stage = s.stage AND r.hour >= $2 AND r.hour < $3
          AND ($6::text IS NULL OR r.provider = $6::text)
          AND ($7::smallint IS NULL OR r.size_digits = $7::smallint)
        GROUP BY 1, 2
    ) AS a
"""

# accuracy_stats: $1 since, $2 until, $3 provider, $4 and $5 the size bucket (all optional
# but the window); the checkpoints read also takes $6 the checkpoints and $7 WITHIN_PCT, the
# newest-scans read $6 how many. Each is an index-only range scan of the window.
_ACCURACY_SCAN_FILTERS: Final = """
    s.eta_kind IS NOT NULL AND s.finished_at >= $1 AND s.finished_at < $2
    AND ($3::text IS NULL OR split_part(s.eta_kind, '@', 1) = $3::text)
    AND ($4::integer IS NULL OR s.universe_size BETWEEN $4::integer AND $5::integer)
"""
ACCURACY_CHECKPOINTS_SQL: Final = """
    SELECT c.checkpoint, a.*
    FROM unnest($6::smallint[]) AS c (checkpoint)
    CROSS JOIN LATERAL (
        SELECT e.provider,
               length(e.universe_size::text) AS digits,
               count(e.error_pct) AS n,
               percentile_cont(ARRAY[0.5, 0.9])
                   WITHIN GROUP (ORDER BY abs(e.error_pct)) AS abs_pcts,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY e.error_pct) AS median,
               count(*) FILTER (WHERE abs(e.error_pct) <= $7) AS within
        FROM eta_checkpoints e
        WHERE e.checkpoint = c.checkpoint
          AND e.finished_at >= $1 AND e.finished_at < $2
          AND ($3::text IS NULL OR e.provider = $3::text)
          AND ($4::integer IS NULL
               OR e.universe_size BETWEEN $4::integer AND $5::integer)
        GROUP BY 1, 2
    ) AS a
"""
ACCURACY_SCANS_SQL: Final = f"""
    SELECT split_part(s.eta_kind, '@', 1) AS provider,
           length(s.universe_size::text) AS digits,
           count(*) AS scans,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY s.time_linearity) AS time_r2,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY s.overall_linearity)
               AS overall_r2,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY s.time_stall_s) AS stall_s
    FROM scans s
    WHERE {_ACCURACY_SCAN_FILTERS}
    GROUP BY 1, 2
"""
ACCURACY_RECENT_SQL: Final = f"""
    WITH newest AS (
        SELECT s.id, s.finished_at, split_part(s.eta_kind, '@', 1) AS provider,
               s.universe_size, s.time_linearity, s.overall_linearity
        FROM scans s
        WHERE {_ACCURACY_SCAN_FILTERS}
        ORDER BY s.finished_at DESC, s.id DESC
        LIMIT $6
    )
    SELECT n.*,
           ARRAY(SELECT e.checkpoint FROM eta_checkpoints e
                 WHERE e.scan_id = n.id ORDER BY e.checkpoint) AS checkpoints,
           ARRAY(SELECT e.error_pct FROM eta_checkpoints e
                 WHERE e.scan_id = n.id ORDER BY e.checkpoint) AS errors
    FROM newest n
    ORDER BY n.finished_at DESC, n.id DESC
"""


# enqueue_scan: whether a fleet scan waits for an instance (a new one must not jump it),
# served by scans_fleet_queue_idx
FLEET_WAITING_SQL: Final = """
    SELECT EXISTS (SELECT 1 FROM scans WHERE fleet AND status = 'pending' AND owner IS NULL)
"""
# enqueue_scan ($1 seconds within which an owner's heartbeat makes it live): the live
# instances, and the fleet scans that hold or wait for one of their slots
FLEET_LOAD_SQL: Final = """
    WITH live AS (
        SELECT owner FROM scan_owners WHERE seen_at > now() - make_interval(secs => $1)
    )
    SELECT (SELECT count(*) FROM live) AS instances,
           (SELECT count(*) FROM scans s
            WHERE s.fleet AND s.status IN ('pending', 'running')
              AND (s.owner IS NULL OR s.owner IN (SELECT owner FROM live))) AS active
"""
# request_cancel, {columns} the scan's columns, $1 the scan id
CANCEL_UNCLAIMED_SQL: Final = """
    UPDATE scans SET status = 'cancelled', finished_at = now(), updated_at = now(),
                     cancel_requested_at = now()
    WHERE id = $1
    RETURNING {columns}
"""
REQUEST_CANCEL_SQL: Final = """
    UPDATE scans SET cancel_requested_at = coalesce(cancel_requested_at, now()),
                     updated_at = now()
    WHERE id = $1
    RETURNING {columns}
"""


class ResultExport:
    """One scan's results in a fixed order, read from storage a batch at a time.

    Made by ``Repository.export_results``. It holds the ranks in order (4 bytes a row), never
    the rows: ``batches()`` fetches them by rank, ``EXPORT_BATCH_ROWS`` per query. A scan's
    stored results do not change once it has finished, so the batches read what the order
    was taken from.
    """

    def __init__(
        self, repository: Repository, scan_id: UUID, keys: tuple[str, ...], ranks: array[int]
    ) -> None:
        self._repository = repository
        self._scan_id = scan_id
        self._keys = keys
        self._ranks = ranks

    def __len__(self) -> int:
        return len(self._ranks)

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        for start in range(0, len(self._ranks), EXPORT_BATCH_ROWS):
            ranks = self._ranks[start : start + EXPORT_BATCH_ROWS].tolist()
            yield await self._repository._rows_by_rank(self._scan_id, self._keys, ranks)


class Repository:
    """Async access to the technic tables through an asyncpg pool (see module docstring)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool underneath, for maintenance scripts and tests that seed data in bulk."""
        return self._pool

    # ------------------------------------------------------------------ scans

    @db_call("create scan")
    async def create_scan(
        self,
        scan_id: UUID,
        config: Mapping[str, Any],
        *,
        universe_size: int | None = None,
        owner: str | None = None,
    ) -> Scan:
        """Store a new pending scan and its four pending stages in one statement."""
        return await _insert_scan(self._pool, scan_id, config, universe_size, owner, fleet=False)

    @db_call("change scan status")
    async def transition(
        self,
        scan_id: UUID | str,
        to: ScanStatus,
        *,
        error: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        universe_size: int | None = None,
        symbols_scanned: int | None = None,
        symbols_failed: int | None = None,
    ) -> Scan:
        """Move a scan to ``to``; stamps started_at on running and finished_at on the end.

        The optional fields are stored in the same transaction, so a scan never appears
        completed without its metrics. ``symbols_scanned``/``symbols_failed`` default to the
        values of the same name in ``metrics``.
        """
        if to not in SCAN_STATUSES:
            raise InvalidInput("status", f"must be one of {', '.join(SCAN_STATUSES)}")
        uuid = _write_id(scan_id)
        fields = _scan_fields(error, metrics, universe_size, symbols_scanned, symbols_failed)
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval("SELECT status FROM scans WHERE id = $1 FOR UPDATE", uuid)
            if current is None:
                raise ScanNotFound(uuid)
            if to not in SCAN_TRANSITIONS[current]:
                raise IllegalTransition(f"scan {uuid}", current, to)
            record = await conn.fetchrow(
                f"""
                UPDATE scans SET
                    status = $2,
                    started_at = CASE WHEN $2 = 'running' THEN now() ELSE started_at END,
                    finished_at = CASE WHEN $3 THEN greatest(now(), started_at) END,
                    updated_at = now(),
                    error = coalesce($4, error),
                    metrics = coalesce($5, metrics),
                    universe_size = coalesce($6, universe_size),
                    symbols_scanned = coalesce($7, symbols_scanned),
                    symbols_failed = coalesce($8, symbols_failed)
                WHERE id = $1
                RETURNING {_SCAN_COLUMNS}
                """,
                uuid,
                to,
                to in TERMINAL_STATUSES,
                *fields,
            )
            await _sync_stage_sizes(conn, uuid, fields[2])
        return _scan(record)

    @db_call("update scan")
    async def update_scan(
        self,
        scan_id: UUID | str,
        *,
        universe_size: int | None = None,
        symbols_scanned: int | None = None,
        symbols_failed: int | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Scan:
        """Store facts learned while a scan runs (e.g. the universe size after loading it)."""
        uuid = _write_id(scan_id)
        fields = _scan_fields(None, metrics, universe_size, symbols_scanned, symbols_failed)
        async with self._pool.acquire() as conn, conn.transaction():
            record = await conn.fetchrow(
                f"""
                UPDATE scans SET
                    updated_at = now(),
                    metrics = coalesce($2, metrics),
                    universe_size = coalesce($3, universe_size),
                    symbols_scanned = coalesce($4, symbols_scanned),
                    symbols_failed = coalesce($5, symbols_failed)
                WHERE id = $1
                RETURNING {_SCAN_COLUMNS}
                """,
                uuid,
                *fields[1:],
            )
            if record is None:
                raise ScanNotFound(uuid)
            await _sync_stage_sizes(conn, uuid, fields[2])
        return _scan(record)

    @db_call("get scan")
    async def get_scan(self, scan_id: UUID | str) -> Scan | None:
        """The scan with its stages in pipeline order, or ``None`` if there is no such scan."""
        uuid = _read_id(scan_id)
        if uuid is None:
            return None
        async with self._pool.acquire() as conn, _snapshot(conn):
            record = await conn.fetchrow(f"SELECT {_SCAN_COLUMNS} FROM scans WHERE id = $1", uuid)
            if record is None:
                return None
            stage_rows = await conn.fetch(
                f"SELECT {_STAGE_COLUMNS} FROM stage_timings WHERE scan_id = $1", uuid
            )
        stages = sorted((_stage(r) for r in stage_rows), key=lambda s: STAGES.index(s.stage))
        return _scan(record, tuple(stages))

    @db_call("list scans")
    async def list_scans(
        self,
        *,
        status: ScanStatus | Iterable[ScanStatus] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ScanPage:
        """Scans newest first, created in ``[since, until)``, one keyset page at a time.

        Pass the returned ``next_cursor`` to get the next page; it is ``None`` on the last.
        Keyset pages stay fast and stable however deep the history, unlike offsets.
        """
        query = _Query()
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for value in statuses:
                if value not in SCAN_STATUSES:
                    raise InvalidInput("status", f"must be one of {', '.join(SCAN_STATUSES)}")
            query.where("status = ANY({}::text[])", statuses)
        if since is not None:
            query.where("created_at >= {}", _aware("since", since))
        if until is not None:
            query.where("created_at < {}", _aware("until", until))
        if cursor is not None:
            created_at, last_id = _decode_scan_cursor(cursor)
            query.where("(created_at, id) < ({}, {})", created_at, last_id)
        page_size = _limit(limit)
        sql = (
            f"SELECT {_SCAN_COLUMNS} FROM scans {query.sql_where()}"
            f" ORDER BY created_at DESC, id DESC LIMIT {query.bind(page_size + 1)}"
        )
        records = await self._pool.fetch(sql, *query.args)
        scans = [_scan(r) for r in records[:page_size]]
        next_cursor = None
        if len(records) > page_size:
            last = scans[-1]
            next_cursor = _encode_cursor([last.created_at.isoformat(), str(last.id)])
        return ScanPage(scans, next_cursor)

    @db_call("mark interrupted scans")
    async def mark_interrupted(
        self,
        *,
        owner: str | None = None,
        stale_before: datetime | None = None,
        silent_for_s: float | None = None,
        error: str = INTERRUPTED_ERROR,
    ) -> list[UUID]:
        """Mark pending and running scans ``interrupted``; return their ids.

        Scans still pending or running were left by a process that died. With several
        servers on one database, narrow it: ``silent_for_s`` takes only the scans whose
        owner (the value given to ``create_scan``) has not been seen by ``record_owner``
        for that many seconds, or that have no owner; ``owner`` takes one owner's scans,
        ``stale_before`` those with no write since then. Their running stages become
        ``failed``, and the error names the owner. A pending fleet scan is not taken: it
        has not started anywhere, and ``release_claims`` hands it to another instance.
        """
        since = None if stale_before is None else _aware("stale_before", stale_before)
        if owner is not None:
            _text("owner", owner)
        silent = None if silent_for_s is None else _seconds("silent_for_s", silent_for_s)
        _text("error", error)
        records = await self._pool.fetch(
            """
            WITH m AS (
                UPDATE scans SET
                    status = 'interrupted',
                    finished_at = greatest(now(), started_at),
                    updated_at = now(),
                    error = coalesce(error, $3 || coalesce(' (instance ' || owner || ')', ''))
                WHERE status IN ('pending', 'running')
                  AND NOT (fleet AND status = 'pending')
                  AND ($1::text IS NULL OR owner = $1)
                  AND ($2::timestamptz IS NULL OR updated_at < $2)
                  AND ($4::double precision IS NULL OR owner IS NULL OR NOT EXISTS (
                        SELECT 1 FROM scan_owners o
                        WHERE o.owner = scans.owner
                          AND o.seen_at > now() - make_interval(secs => $4)))
                RETURNING id
            ), t AS (
                UPDATE stage_timings SET status = 'failed'
                WHERE scan_id IN (SELECT id FROM m) AND status = 'running'
            )
            SELECT id FROM m
            """,
            owner,
            since,
            error,
            silent,
        )
        return [r["id"] for r in records]

    # ----------------------------------------------------------------- owners

    @db_call("record owner")
    async def record_owner(self, owner: str) -> None:
        """Say that ``owner`` is alive now (its first call registers it)."""
        await self._pool.execute(
            """
            INSERT INTO scan_owners (owner) VALUES ($1)
            ON CONFLICT (owner) DO UPDATE SET seen_at = now()
            """,
            _text("owner", owner),
        )

    @db_call("list owners")
    async def owners(self) -> list[str]:
        """Every owner recorded and not yet forgotten."""
        records = await self._pool.fetch("SELECT owner FROM scan_owners ORDER BY owner")
        return [r["owner"] for r in records]

    @db_call("forget silent owners")
    async def forget_silent_owners(self, silent_for_s: float) -> int:
        """Drop the owners not seen for ``silent_for_s`` (dead; call after
        ``mark_interrupted`` took their scans), so the table holds live owners only."""
        status = await self._pool.execute(
            "DELETE FROM scan_owners WHERE seen_at <= now() - make_interval(secs => $1)",
            _seconds("silent_for_s", silent_for_s),
        )
        return int(status.split()[-1])

    # ------------------------------------------------------------------ the fleet

    @db_call("enqueue fleet scan")
    async def enqueue_scan(
        self,
        scan_id: UUID,
        config: Mapping[str, Any],
        *,
        slots_per_instance: int,
        live_within_s: float,
        claim_for: str | None = None,
    ) -> FleetAdmission:
        """Store a pending fleet scan, unowned, and wake the fleet, unless it is full.

        ``claim_for``: the asking instance has a free slot; the scan is stored already owned
        by it (no hop to another instance for the watchers it is likely to have) unless older
        scans are waiting, which keep their turn.

        Full: the fleet's unfinished scans (pending or running, unowned or owned by a live
        instance) already number ``slots_per_instance`` (running plus queued places of one
        instance) times the live instances (heartbeat within ``live_within_s``; at least
        one, the caller). The count and the insert hold one advisory lock, so two instances
        admitting at once cannot both take the last place.
        """
        slots = _count("slots_per_instance", slots_per_instance)
        live = _seconds("live_within_s", live_within_s)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", FLEET_ADMISSION_LOCK_KEY)
            load = await conn.fetchrow(FLEET_LOAD_SQL, live)
            instances = max(1, int(load["instances"]))
            active = int(load["active"])
            if slots is None or active >= slots * instances:
                return FleetAdmission(False, active, instances)
            owner = None
            if claim_for is not None and not await conn.fetchval(FLEET_WAITING_SQL):
                owner = _text("claim_for", claim_for)
            await _insert_scan(conn, scan_id, config, None, owner, fleet=True)
            if owner is None:
                await conn.execute("SELECT pg_notify($1, '')", QUEUE_CHANNEL)
        return FleetAdmission(True, active + 1, instances, claimed=owner is not None)

    @db_call("claim fleet scan")
    async def claim_scan(self, owner: str) -> Scan | None:
        """Make ``owner`` the owner of the oldest unclaimed pending fleet scan; None if there
        is none. Rows another instance is claiming are skipped, not waited for."""
        record = await self._pool.fetchrow(
            f"""
            UPDATE scans SET owner = $1, updated_at = now()
            WHERE id = (
                SELECT id FROM scans
                WHERE fleet AND status = 'pending' AND owner IS NULL
                ORDER BY created_at, id
                LIMIT 1
                FOR UPDATE SKIP LOCKED
            )
            RETURNING {_SCAN_COLUMNS}
            """,
            _text("owner", owner),
        )
        return None if record is None else _scan(record)

    @db_call("start claimed scan")
    async def start_claimed(self, scan_id: UUID | str, owner: str) -> bool:
        """Move a claimed scan to running if ``owner`` still holds it; False if it was
        cancelled or released meanwhile (then the claimer must not run it)."""
        started = await self._pool.fetchval(
            """
            UPDATE scans SET status = 'running', started_at = now(), updated_at = now()
            WHERE id = $1 AND owner = $2 AND status = 'pending' AND cancel_requested_at IS NULL
            RETURNING id
            """,
            _write_id(scan_id),
            _text("owner", owner),
        )
        return started is not None

    @db_call("release claims")
    async def release_claims(
        self, *, owner: str | None = None, silent_for_s: float | None = None
    ) -> list[UUID]:
        """Hand back to the queue the pending fleet scans claimed by a dead owner (``owner``,
        or every owner not seen for ``silent_for_s``), and wake the fleet if there were any."""
        if owner is not None:
            _text("owner", owner)
        silent = None if silent_for_s is None else _seconds("silent_for_s", silent_for_s)
        async with self._pool.acquire() as conn, conn.transaction():
            records = await conn.fetch(
                """
                UPDATE scans SET owner = NULL, updated_at = now()
                WHERE fleet AND status = 'pending' AND owner IS NOT NULL
                  AND ($1::text IS NULL OR owner = $1)
                  AND ($2::double precision IS NULL OR NOT EXISTS (
                        SELECT 1 FROM scan_owners o
                        WHERE o.owner = scans.owner
                          AND o.seen_at > now() - make_interval(secs => $2)))
                RETURNING id
                """,
                owner,
                silent,
            )
            if records:
                await conn.execute("SELECT pg_notify($1, '')", QUEUE_CHANNEL)
        return [r["id"] for r in records]

    @db_call("cancel scan")
    async def request_cancel(self, scan_id: UUID | str) -> tuple[Scan, CancelOutcome] | None:
        """Cancel a scan from any instance; None if there is no such scan.

        An unclaimed pending fleet scan is cancelled here and now (``cancelled``). A scan an
        owner holds gets ``cancel_requested_at`` and a NOTIFY on ``CANCEL_CHANNEL`` with its
        id; the owner stops it (``requested``). A finished scan is left as it is.
        """
        uuid = _read_id(scan_id)
        if uuid is None:
            return None
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, owner, fleet FROM scans WHERE id = $1 FOR UPDATE", uuid
            )
            if row is None:
                return None
            outcome: CancelOutcome
            if row["status"] in TERMINAL_STATUSES:
                outcome, sql = "finished", "SELECT {columns} FROM scans WHERE id = $1"
            elif row["status"] == "pending" and row["fleet"] and row["owner"] is None:
                outcome, sql = "cancelled", CANCEL_UNCLAIMED_SQL
            else:
                outcome, sql = "requested", REQUEST_CANCEL_SQL
                await conn.execute("SELECT pg_notify($1, $2)", CANCEL_CHANNEL, str(uuid))
            record = await conn.fetchrow(sql.format(columns=_SCAN_COLUMNS), uuid)
        return _scan(record), outcome

    @db_call("list cancel requests")
    async def cancel_requests(self, owner: str) -> list[UUID]:
        """The unfinished scans of ``owner`` someone asked to cancel (the owner's safety net
        for a NOTIFY it missed)."""
        records = await self._pool.fetch(
            """
            SELECT id FROM scans
            WHERE owner = $1 AND status IN ('pending', 'running')
              AND cancel_requested_at IS NOT NULL
            """,
            _text("owner", owner),
        )
        return [r["id"] for r in records]

    @db_call("list active scans")
    async def active_scans(self) -> list[Scan]:
        """Every pending and running scan with its stages: running first, then pending, each
        oldest first."""
        async with self._pool.acquire() as conn, _snapshot(conn):
            records = await conn.fetch(
                f"""
                SELECT {_SCAN_COLUMNS} FROM scans
                WHERE status IN ('pending', 'running')
                ORDER BY status = 'running' DESC, created_at, id
                """
            )
            stage_rows = await conn.fetch(
                f"SELECT {_STAGE_COLUMNS} FROM stage_timings WHERE scan_id = ANY($1::uuid[])",
                [r["id"] for r in records],
            )
        stages: dict[UUID, list[StageTiming]] = {}
        for stage_row in stage_rows:
            stages.setdefault(stage_row["scan_id"], []).append(_stage(stage_row))
        return [
            _scan(
                r,
                tuple(sorted(stages.get(r["id"], ()), key=lambda t: STAGES.index(t.stage))),
            )
            for r in records
        ]

    # ----------------------------------------------------------------- stages

    @db_call("start stage")
    async def start_stage(
        self,
        scan_id: UUID | str,
        stage: StageName,
        *,
        units_total: int | None = None,
        started_at: datetime | None = None,
    ) -> StageTiming:
        """Record that a stage began (``started_at`` defaults to the database clock)."""
        uuid = _write_id(scan_id)
        _check_stage(stage)
        total = _count("units_total", units_total)
        start = None if started_at is None else _aware("started_at", started_at)
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_stage(conn, uuid, stage, "running")
            record = await conn.fetchrow(
                f"""
                UPDATE stage_timings SET
                    status = 'running',
                    started_at = coalesce($3, now()),
                    units_total = coalesce($4, units_total),
                    units_done = 0
                WHERE scan_id = $1 AND stage = $2
                RETURNING {_STAGE_COLUMNS}
                """,
                uuid,
                stage,
                start,
                total,
            )
            await _touch(conn, uuid)
        return _stage(record)

    @db_call("finish stage")
    async def finish_stage(
        self,
        scan_id: UUID | str,
        stage: StageName,
        *,
        status: StageStatus = "completed",
        units_done: int | None = None,
        units_total: int | None = None,
        finished_at: datetime | None = None,
        duration_s: float | None = None,
        tail_s: float | None = None,
    ) -> StageTiming:
        """Record a stage's end: completed or failed after running, or skipped.

        A skipped stage keeps no duration, so it never counts in the history statistics.
        ``tail_s`` is how long it ran after its last unit (engine/eta.py), at most its duration.

        ``duration_s`` defaults to finished_at - started_at; pass the caller's monotonic
        measurement when there is one, wall clocks jump. Throughput is units_done/duration_s.
        """
        uuid = _write_id(scan_id)
        _check_stage(stage)
        if status not in ("completed", "failed", "skipped"):
            raise InvalidInput("status", "must be completed, failed or skipped")
        done = _count("units_done", units_done)
        total = _count("units_total", units_total)
        end = None if finished_at is None else _aware("finished_at", finished_at)
        if duration_s is not None and not (_is_number(duration_s) and duration_s >= 0):
            raise InvalidInput("duration_s", "must be a finite number >= 0")
        if tail_s is not None and not (_is_number(tail_s) and tail_s >= 0):
            raise InvalidInput("tail_s", "must be a finite number >= 0")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await _lock_stage(conn, uuid, stage, status)
            end = end or row["now"]
            if status == "skipped":
                seconds = None
            elif duration_s is not None:
                seconds = float(duration_s)
            elif row["started_at"] is not None:
                seconds = max(0.0, (end - row["started_at"]).total_seconds())
            else:
                seconds = None
            done = done if done is not None else row["units_done"]
            rate = done / seconds if done is not None and seconds else None
            tail = None if tail_s is None or seconds is None else min(float(tail_s), seconds)
            record = await conn.fetchrow(
                f"""
                UPDATE stage_timings SET
                    status = $3, finished_at = $4, duration_s = $5, units_done = $6,
                    units_total = coalesce($7, units_total), throughput = $8, tail_s = $9
                WHERE scan_id = $1 AND stage = $2
                RETURNING {_STAGE_COLUMNS}
                """,
                uuid,
                stage,
                status,
                end,
                seconds,
                done,
                total,
                rate,
                tail,
            )
            await _touch(conn, uuid)
        return _stage(record)

    # ---------------------------------------------------------------- results

    @db_call("save results")
    async def save_results(self, scan_id: UUID | str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Replace the scan's results with ``rows``, ranked 1..n in the order given.

        The engine hands rows over best first (tech_rating descending), so the position is the
        rank. Each row is stored whole (as json: its values in the key order of the first
        row, kept once per scan) and its sortable fields in typed columns; ``fetch_results``
        gives back dicts equal to these, keys in the same order. JSON has no NaN or infinity, so a
        non-finite float comes back as None (the row contract says None for "no value").
        Returns the number of rows saved. Call it before the scan's final ``transition``.
        """
        uuid = _write_id(scan_id)
        if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
            raise InvalidInput("rows", "must be a sequence of row mappings")
        async with self._pool.acquire() as conn, conn.transaction():
            # Not waiting for this commit's WAL flush saves tens of ms of the budget and risks
            # nothing: the scan's next status change commits synchronously, which flushes
            # this transaction's WAL too (WAL is sequential), and a crash before that leaves
            # the scan unfinished (interrupted) anyway. Atomicity is unaffected.
            await conn.execute("SET LOCAL synchronous_commit = off")
            await _lock_scan(conn, uuid)
            await conn.execute("DELETE FROM scan_results WHERE scan_id = $1", uuid)
            keys = _row_keys(rows[0]) if rows else None
            if rows:
                records = _result_records(uuid, rows, keys or ())
                await _copy(conn, "scan_results", records, _RESULT_COLUMNS)
            await conn.execute(
                "UPDATE scans SET result_count = $2, result_keys = $3, updated_at = now()"
                " WHERE id = $1",
                uuid,
                len(rows),
                None if keys is None else list(keys),
            )
        return len(rows)

    @db_call("fetch results")
    async def fetch_results(
        self,
        scan_id: UUID | str,
        *,
        sort: str = "rank",
        descending: bool = False,
        limit: int = 100,
        offset: int | None = None,
        cursor: str | None = None,
        sector: str | None = None,
        signal: str | Iterable[str] | None = None,
        min_tech_rating: float | None = None,
    ) -> ResultPage | None:
        """One page of a scan's results, or ``None`` for an unknown scan.

        ``sort`` is one of ``RESULT_SORTS``; ties (and missing values, always last) are broken
        by rank. Page with ``offset`` or with the previous page's ``next_cursor``, not both.
        """
        uuid = _read_id(scan_id)
        if uuid is None:
            return None
        order = _ResultOrder.of(sort, descending)
        page_size = _limit(limit)
        if offset is not None and cursor is not None:
            raise InvalidInput("offset", "use either offset or cursor, not both")
        _offset(offset)
        query = _result_filters(uuid, sector, signal, min_tech_rating)
        filters = query.sql_where()
        filter_args = list(query.args)

        column = order.column
        if cursor is not None:
            value, last_rank = _decode_result_cursor(cursor, sort, descending, order.sql_type)
            cmp = "<" if descending else ">"
            after = query.bind(last_rank)
            if value is None:  # missing values sort last: only later ranks among them remain
                query.add(f"({column} IS NULL AND rank > {after})")
            else:
                v = query.bind(value, order.sql_type)
                query.add(
                    f"({column} {cmp} {v} OR ({column} = {v} AND rank > {after})"
                    f" OR {column} IS NULL)"
                )
        page_sql = (
            f"SELECT rank, data, {column} AS sort_value FROM scan_results {query.sql_where()}"
            f" ORDER BY {order.sql} LIMIT {query.bind(page_size + 1)}"
        )
        if offset:
            page_sql += f" OFFSET {query.bind(offset)}"

        async with self._pool.acquire() as conn, _snapshot(conn):
            head = await conn.fetchrow(
                "SELECT EXISTS (SELECT 1 FROM scans WHERE id = $1) AS known,"
                " (SELECT result_keys FROM scans WHERE id = $1) AS keys,"
                f" (SELECT count(*) FROM scan_results {filters}) AS total",
                *filter_args,
            )
            if not head["known"]:
                return None
            records = await conn.fetch(page_sql, *query.args)
        keys = head["keys"] or ()
        page = records[:page_size]
        next_cursor = None
        if len(records) > page_size:
            last = page[-1]
            next_cursor = _encode_cursor(
                {"s": sort, "d": descending, "v": last["sort_value"], "r": last["rank"]}
            )
        return ResultPage(
            rows=[_row_from(keys, r["data"]) for r in page],
            ranks=[r["rank"] for r in page],
            total=head["total"],
            next_cursor=next_cursor,
        )

    @db_call("export results")
    async def export_results(
        self,
        scan_id: UUID | str,
        *,
        sort: str = "rank",
        descending: bool = False,
        offset: int = 0,
        limit: int | None = None,
        sector: str | None = None,
        signal: str | Iterable[str] | None = None,
        min_tech_rating: float | None = None,
    ) -> ResultExport | None:
        """Every result of a scan (or ``limit`` of them after ``offset``) in the order of
        ``fetch_results``, to be read batch by batch; ``None`` for an unknown scan.

        The order is fixed here, in one snapshot, as the list of ranks (4 bytes a row); the
        rows themselves are fetched by rank a batch at a time while the caller writes them
        out, so an export of any size holds one batch of rows in memory and no database
        connection while a slow client reads.
        """
        uuid = _read_id(scan_id)
        if uuid is None:
            return None
        order = _ResultOrder.of(sort, descending)
        if limit is not None and not (_is_int(limit) and 1 <= limit <= MAX_RANK):
            raise InvalidInput("limit", f"must be a whole number from 1 to {MAX_RANK}")
        _offset(offset)
        query = _result_filters(uuid, sector, signal, min_tech_rating)
        ranks_sql = (
            f"SELECT rank FROM scan_results {query.sql_where()} ORDER BY {order.sql}"
            f" LIMIT {query.bind(limit)} OFFSET {query.bind(offset)}"
        )
        ranks = array("i")
        async with self._pool.acquire() as conn, _snapshot(conn):
            keys = await conn.fetchval("SELECT result_keys FROM scans WHERE id = $1", uuid)
            if keys is None and not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM scans WHERE id = $1)", uuid
            ):
                return None
            cursor = await conn.cursor(ranks_sql, *query.args)
            while batch := await cursor.fetch(EXPORT_BATCH_ROWS):
                ranks.extend(record[0] for record in batch)
        return ResultExport(self, uuid, tuple(keys or ()), ranks)

    @db_call("read results")
    async def _rows_by_rank(
        self, uuid: UUID, keys: Sequence[str], ranks: Sequence[int]
    ) -> list[dict[str, Any]]:
        records = await self._pool.fetch(
            "SELECT r.data FROM unnest($2::integer[]) WITH ORDINALITY AS wanted (rank, position)"
            " JOIN scan_results r ON r.scan_id = $1 AND r.rank = wanted.rank"
            " ORDER BY wanted.position",
            uuid,
            ranks,
        )
        return [_row_from(keys, record["data"]) for record in records]

    @db_call("save failures")
    async def save_failures(
        self, scan_id: UUID | str, failures: Iterable[Failure | Mapping[str, str]]
    ) -> int:
        """Append per-symbol failures (in order, after any saved before); returns the count."""
        uuid = _write_id(scan_id)
        items = [_failure(i, f) for i, f in enumerate(failures)]
        async with self._pool.acquire() as conn, conn.transaction():
            await _lock_scan(conn, uuid)
            if not items:
                return 0
            first = await conn.fetchval(
                "SELECT coalesce(max(seq), 0) + 1 FROM scan_failures WHERE scan_id = $1", uuid
            )
            records = [(uuid, first + i, f.symbol, f.reason) for i, f in enumerate(items)]
            await _copy(conn, "scan_failures", records, _FAILURE_COLUMNS)
            await _touch(conn, uuid)
        return len(items)

    @db_call("fetch failures")
    async def fetch_failures(self, scan_id: UUID | str) -> list[Failure] | None:
        """All failures of a scan in the order saved, or ``None`` for an unknown scan."""
        uuid = _read_id(scan_id)
        if uuid is None:
            return None
        async with self._pool.acquire() as conn, _snapshot(conn):
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM scans WHERE id = $1)", uuid):
                return None
            records = await conn.fetch(
                "SELECT symbol, reason FROM scan_failures WHERE scan_id = $1 ORDER BY seq", uuid
            )
        return [Failure(r["symbol"], r["reason"]) for r in records]

    # ---------------------------------------------------------------- history

    @db_call("stage statistics")
    async def stage_stats(
        self,
        *,
        since: datetime,
        until: datetime | None = None,
        by_bucket: bool = False,
        bucket: SizeBucket | None = None,
    ) -> StageStats:
        """Per-stage duration statistics of stages completed in ``[since, until)``.

        Percentiles interpolate linearly (PostgreSQL ``percentile_cont``, numpy's default).
        ``by_bucket`` splits every stage by universe-size decade; ``bucket`` keeps only scans
        of that decade. symbols_per_s is total units over total seconds, not a mean of rates,
        so one tiny scan cannot skew it.
        """
        start = _aware("since", since)
        end = datetime.now(UTC) if until is None else _aware("until", until)
        if end <= start:
            raise InvalidInput("until", "must be later than since")
        if not isinstance(by_bucket, bool):
            raise InvalidInput("by_bucket", "must be true or false")
        if bucket is not None and not isinstance(bucket, SizeBucket):
            raise InvalidInput("bucket", "must be a SizeBucket")
        query = _Query()
        stages = query.bind(list(STAGES))
        query.add("t.status = 'completed'")
        query.add("t.stage = s.stage")
        query.where("t.finished_at >= {}", start)
        query.where("t.finished_at < {}", end)
        if bucket is not None:
            query.where("t.universe_size BETWEEN {} AND {}", bucket.low, bucket.high)
        digits = "length(t.universe_size::text)" if by_bucket else "NULL::integer"
        # One lateral aggregate per stage: each is an index-only range scan of that stage's
        # window, so nothing sorts the whole window by stage first.
        sql = f"""
            SELECT s.stage, a.*
            FROM unnest({stages}::text[]) AS s (stage)
            CROSS JOIN LATERAL (
                SELECT {digits} AS digits,
                       count(*) AS n,
                       avg(t.duration_s) AS mean_s,
                       percentile_cont(ARRAY[0.5, 0.9, 0.99])
                           WITHIN GROUP (ORDER BY t.duration_s) AS pcts,
                       sum(t.duration_s) AS total_s,
                       sum(t.units_done) FILTER (WHERE t.duration_s > 0) AS units,
                       sum(t.duration_s)
                           FILTER (WHERE t.duration_s > 0 AND t.units_done IS NOT NULL) AS unit_s
                FROM stage_timings t
                {query.sql_where()}
                GROUP BY 1
            ) AS a
        """
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            # A wide window sorts hundreds of thousands of durations: keep that in memory. JIT
            # compiling this small plan costs more (~0.2 s) than it ever saves.
            await conn.execute("SET LOCAL work_mem = '64MB'; SET LOCAL jit = off")
            records = await conn.fetch(sql, *query.args)
        return StageStats(start, end, by_bucket, _stage_stat_rows(records, by_bucket, bucket))

    @db_call("stage trend")
    async def stage_trend(
        self,
        *,
        since: datetime,
        interval: TrendInterval,
        until: datetime | None = None,
        stage: StageName | None = None,
        provider: str | None = None,
        bucket: SizeBucket | None = None,
    ) -> StageTrend:
        """Per stage and interval of ``[since, until)``: count, p50, p90 and symbols/s of the
        completed runs, from the hourly rollup (migration 0005).

        ``since`` is moved back to the start of its interval, so the first one is whole; the
        interval holding ``until`` is marked incomplete unless ``until`` is its end.
        """
        if interval not in INTERVAL_STEPS:
            raise InvalidInput("interval", f"must be one of {', '.join(INTERVAL_STEPS)}")
        step = INTERVAL_STEPS[interval]
        end = datetime.now(UTC) if until is None else _aware("until", until)
        start = interval_start(_aware("since", since), interval)
        if end <= start:
            raise InvalidInput("until", "must be later than since")
        if stage is not None:
            _check_stage(stage)
        if provider is not None:
            _text("provider", provider)
        if bucket is not None and not isinstance(bucket, SizeBucket):
            raise InvalidInput("bucket", "must be a SizeBucket")
        digits = None if bucket is None else len(str(bucket.high))
        stages = list(STAGES) if stage is None else [stage]
        async with self._pool.acquire() as conn:
            records = await conn.fetch(
                STAGE_TREND_SQL, stages, start, end, step, INTERVAL_ORIGIN, provider, digits
            )
        sums: dict[tuple[str, datetime], tuple[dict[int, int], list[float]]] = {}
        for record in records:
            histogram, rate = sums.setdefault((record["stage"], record["start"]), ({}, [0, 0.0]))
            histogram[record["bin"]] = histogram.get(record["bin"], 0) + record["n"]
            rate[0] += record["units"]
            rate[1] += record["unit_s"]
        trend = StageTrend(start, end, interval)
        for (name, first), (histogram, (units, unit_s)) in sorted(
            sums.items(), key=lambda item: (STAGES.index(item[0][0]), item[0][1])
        ):
            count = sum(histogram.values())
            if count <= 0:
                continue
            trend.stages.setdefault(name, []).append(
                TrendPoint(
                    first,
                    count,
                    quantile(histogram, 0.5) or 0.0,
                    quantile(histogram, 0.9) or 0.0,
                    units / unit_s if unit_s > 0 else None,
                    first + step <= end,
                )
            )
        return trend

    # --------------------------------------------------------------- accuracy

    @db_call("record accuracy")
    async def record_accuracy(
        self,
        scan_id: UUID | str,
        accuracy: ScanAccuracy,
        *,
        kind: str,
        cache_hit_ratio: float | None,
    ) -> None:
        """Store how good a completed scan's ETAs and progress bars were, and its ``kind``
        (``eta.scan_kind``), which makes it part of that kind's ``eta_history``.

        One transaction, under the scan's row lock; recording again replaces the record (a
        checkpoint absent from the new one is removed). Only a completed scan has an accuracy
        worth learning from: any other raises ``InvalidInput`` and nothing is written. The
        kind must be the scan's provider, optionally followed by ``@`` (its rate limit), so
        the statistics can read the provider from it.
        """
        uuid = _write_id(scan_id)
        if not isinstance(accuracy, ScanAccuracy):
            raise InvalidInput("accuracy", "must be a ScanAccuracy")
        kind_text = _text("kind", kind)
        if not 1 <= len(kind_text) <= MAX_KIND_LENGTH:
            raise InvalidInput("kind", f"must be 1 to {MAX_KIND_LENGTH} characters")
        ratio = _share("cache_hit_ratio", cache_hit_ratio)
        checkpoints = _checkpoint_records(accuracy.checkpoints)
        # one array per column for unnest: checkpoint, elapsed, predicted, actual, error
        columns = [[row[i] for row in checkpoints] for i in range(5)]
        time_linearity = _r_squared("time_linearity", accuracy.time_linearity)
        overall_linearity = _r_squared("overall_linearity", accuracy.overall_linearity)
        time_stall_s = _seconds("time_stall_s", accuracy.time_stall_s)
        overall_stall_s = _seconds("overall_stall_s", accuracy.overall_stall_s)
        async with self._pool.acquire() as conn, conn.transaction():
            scan = await conn.fetchrow(
                "SELECT status, config->>'provider' AS provider FROM scans"
                " WHERE id = $1 FOR UPDATE",
                uuid,
            )
            if scan is None:
                raise ScanNotFound(uuid)
            if scan["status"] != "completed":
                raise InvalidInput(
                    "scan_id", f"scan {uuid} is {scan['status']}; only a completed scan has one"
                )
            provider = scan["provider"]
            if provider is None:
                raise InvalidInput("scan_id", f"scan {uuid} names no provider in its config")
            if kind_text.partition("@")[0] != provider:
                raise InvalidInput(
                    "kind", f"must be the scan's provider {provider!r}, optionally with @..."
                )
            await conn.execute(
                """
                UPDATE scans SET
                    eta_kind = $2, cache_hit_ratio = $3, time_linearity = $4,
                    overall_linearity = $5, time_stall_s = $6, overall_stall_s = $7,
                    updated_at = now()
                WHERE id = $1
                """,
                uuid,
                kind_text,
                ratio,
                time_linearity,
                overall_linearity,
                time_stall_s,
                overall_stall_s,
            )
            await conn.execute(
                """
                DELETE FROM eta_checkpoints
                WHERE scan_id = $1 AND checkpoint <> ALL($2::smallint[])
                """,
                uuid,
                columns[0],
            )
            await conn.execute(
                """
                INSERT INTO eta_checkpoints (
                    scan_id, checkpoint, elapsed_s, predicted_remaining_s, actual_remaining_s,
                    error_pct, finished_at, provider, universe_size)
                SELECT s.id, c.checkpoint, c.elapsed_s, c.predicted_s, c.actual_s, c.error_pct,
                       s.finished_at, s.config->>'provider', s.universe_size
                FROM scans s,
                     unnest($2::smallint[], $3::float8[], $4::float8[], $5::float8[],
                            $6::float8[])
                         AS c (checkpoint, elapsed_s, predicted_s, actual_s, error_pct)
                WHERE s.id = $1
                ON CONFLICT (scan_id, checkpoint) DO UPDATE SET
                    elapsed_s = excluded.elapsed_s,
                    predicted_remaining_s = excluded.predicted_remaining_s,
                    actual_remaining_s = excluded.actual_remaining_s,
                    error_pct = excluded.error_pct,
                    finished_at = excluded.finished_at,
                    provider = excluded.provider,
                    universe_size = excluded.universe_size
                """,
                uuid,
                *columns,
            )

    @db_call("ETA history")
    async def eta_history(
        self, kind: str, last_n: int = HISTORY_SCANS
    ) -> dict[str, list[tuple[int, float, float | None]]]:
        """Per stage, ``(units_done, duration_s, tail_s)`` of the completed runs of the last
        ``last_n`` completed scans of ``kind`` (newest finished first): what
        ``eta.fit_priors`` learns from. A stage with no completed run in them is absent.
        """
        kind_text = _text("kind", kind)
        if not (_is_int(last_n) and 1 <= last_n <= MAX_PAGE_SIZE):
            raise InvalidInput("last_n", f"must be a whole number from 1 to {MAX_PAGE_SIZE}")
        records = await self._pool.fetch(ETA_HISTORY_SQL, kind_text, last_n)
        history: dict[str, list[tuple[int, float, float | None]]] = {}
        for record in records:
            history.setdefault(record["stage"], []).append(
                (record["units_done"], record["duration_s"], record["tail_s"])
            )
        return {stage: history[stage] for stage in STAGES if stage in history}

    @db_call("accuracy statistics")
    async def accuracy_stats(
        self,
        since: datetime,
        until: datetime | None = None,
        *,
        provider: str | None = None,
        bucket: SizeBucket | None = None,
        recent: int = ACCURACY_RECENT_SCANS,
    ) -> AccuracyStats:
        """ETA error per checkpoint and progress linearity of the scans finished in
        ``[since, until)``, grouped by provider and universe-size decade, and the newest
        ``recent`` of those scans one by one (for a chart).

        Percentiles interpolate linearly (``percentile_cont``, numpy's default). Three reads
        in one snapshot, each an index range scan of the window: the checkpoints (one scan
        per checkpoint), the scans' own figures, and the newest scans with their checkpoints.
        """
        start = _aware("since", since)
        end = datetime.now(UTC) if until is None else _aware("until", until)
        if end <= start:
            raise InvalidInput("until", "must be later than since")
        if provider is not None:
            _text("provider", provider)
        if bucket is not None and not isinstance(bucket, SizeBucket):
            raise InvalidInput("bucket", "must be a SizeBucket")
        if not (_is_int(recent) and 0 <= recent <= MAX_PAGE_SIZE):
            raise InvalidInput("recent", f"must be a whole number from 0 to {MAX_PAGE_SIZE}")
        low, high = (None, None) if bucket is None else (bucket.low, bucket.high)
        window = (start, end, provider, low, high)
        async with self._pool.acquire() as conn, _snapshot(conn):
            # JIT compiling these small plans costs more (~0.2 s) than it ever saves.
            await conn.execute("SET LOCAL work_mem = '64MB'; SET LOCAL jit = off")
            checkpoint_rows = await conn.fetch(
                ACCURACY_CHECKPOINTS_SQL, *window, list(CHECKPOINTS), WITHIN_PCT
            )
            scan_rows = await conn.fetch(ACCURACY_SCANS_SQL, *window)
            recent_rows = await conn.fetch(ACCURACY_RECENT_SQL, *window, recent) if recent else []
        return AccuracyStats(
            since=start,
            until=end,
            groups=_accuracy_groups(scan_rows, checkpoint_rows),
            recent=[_recent_accuracy(r) for r in recent_rows],
        )


# ---------------------------------------------------------------------- helpers


class _Query:
    """Collects WHERE clauses whose values become ``$n`` parameters, never SQL text."""

    def __init__(self) -> None:
        self.args: list[Any] = []
        self._clauses: list[str] = []

    def bind(self, value: Any, cast: str | None = None) -> str:
        self.args.append(value)
        return f"${len(self.args)}" + (f"::{cast}" if cast else "")

    def where(self, template: str, *values: Any) -> None:
        """Add ``template`` with each ``{}`` replaced by the placeholder of the next value."""
        self._clauses.append(template.format(*(self.bind(v) for v in values)))

    def add(self, clause: str) -> None:
        """Add a clause already holding placeholders from ``bind``."""
        self._clauses.append(clause)

    def sql_where(self) -> str:
        return "WHERE " + " AND ".join(self._clauses) if self._clauses else ""


@dataclass(frozen=True, slots=True)
class _ResultOrder:
    """How results are ordered: the one definition behind every page and every export."""

    column: str
    sql_type: str
    descending: bool

    @classmethod
    def of(cls, sort: object, descending: object) -> _ResultOrder:
        if not isinstance(sort, str) or sort not in RESULT_SORTS:
            raise InvalidInput("sort", f"must be one of {', '.join(RESULT_SORTS)}")
        if not isinstance(descending, bool):
            raise InvalidInput("descending", "must be true or false")
        column, sql_type = RESULT_SORTS[sort]
        return cls(column, sql_type, descending)

    @property
    def sql(self) -> str:
        """ORDER BY text: missing values last in both directions, ties by rank."""
        direction = "DESC" if self.descending else "ASC"
        return f"{self.column} {direction} NULLS LAST, rank ASC"


def _result_filters(
    uuid: UUID,
    sector: str | None,
    signal: str | Iterable[str] | None,
    min_tech_rating: float | None,
) -> _Query:
    query = _Query()
    query.where("scan_id = {}", uuid)
    if sector is not None:
        query.where("sector = {}", _text("sector", sector))
    if signal is not None:
        signals = [signal] if isinstance(signal, str) else list(signal)
        if not signals or any(s not in SIGNALS for s in signals):
            raise InvalidInput("signal", f"must be among {', '.join(SIGNALS)}")
        query.where("signal = ANY({}::text[])", signals)
    if min_tech_rating is not None:
        if not _is_number(min_tech_rating):
            raise InvalidInput("min_tech_rating", "must be a finite number")
        query.where("tech_rating >= {}", float(min_tech_rating))
    return query


def _snapshot(conn: asyncpg.Connection) -> Any:
    # several reads that must agree with each other (a scan and its stages, a count and its page)
    return conn.transaction(isolation="repeatable_read", readonly=True)


async def _lock_scan(conn: asyncpg.Connection, uuid: UUID) -> str:
    status = await conn.fetchval("SELECT status FROM scans WHERE id = $1 FOR UPDATE", uuid)
    if status is None:
        raise ScanNotFound(uuid)
    return str(status)


async def _lock_stage(
    conn: asyncpg.Connection, uuid: UUID, stage: str, to: StageStatus
) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT status, started_at, units_done, now() AS now FROM stage_timings"
        " WHERE scan_id = $1 AND stage = $2 FOR UPDATE",
        uuid,
        stage,
    )
    if row is None:  # every scan gets all four stage rows when created
        raise ScanNotFound(uuid)
    if to not in STAGE_TRANSITIONS[row["status"]]:
        raise IllegalTransition(f"stage {stage} of scan {uuid}", row["status"], to)
    return row


async def _copy(
    conn: asyncpg.Connection, table: str, records: Iterable[tuple[Any, ...]], columns: Sequence[str]
) -> None:
    """Binary COPY that fails fast if the connection dies midway.

    asyncpg's COPY waits for a full socket buffer to drain without watching for the
    connection's loss, so a server that dies mid-COPY would hang it until the command
    timeout; the termination listener turns that into an immediate ``DatabaseUnavailable``.
    """
    lost = asyncio.get_running_loop().create_future()

    def on_lost(_: object) -> None:
        if not lost.done():
            lost.set_result(None)

    conn.add_termination_listener(on_lost)
    copy = asyncio.ensure_future(
        conn.copy_records_to_table(table, records=records, columns=list(columns))
    )
    try:
        await asyncio.wait((copy, lost), return_when=asyncio.FIRST_COMPLETED)
        if not copy.done():
            raise DatabaseUnavailable(f"copy into {table}: the connection was lost")
        copy.result()
    finally:
        conn.remove_termination_listener(on_lost)
        lost.cancel()
        if not copy.done():
            copy.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await copy


async def _insert_scan(
    conn: asyncpg.Pool | asyncpg.Connection,
    scan_id: UUID,
    config: Mapping[str, Any],
    universe_size: int | None,
    owner: str | None,
    *,
    fleet: bool,
) -> Scan:
    """A new pending scan and its four pending stages, in one statement."""
    if not isinstance(scan_id, UUID):
        raise InvalidInput("scan_id", f"must be a UUID, got {type(scan_id).__name__}")
    config_dict = _json_object("config", config)
    size = _count("universe_size", universe_size)
    if owner is not None:
        _text("owner", owner)
    try:
        record = await conn.fetchrow(
            f"""
            WITH s AS (
                INSERT INTO scans (id, config, universe_size, owner, fleet)
                VALUES ($1, $2, $3, $4, $6)
                RETURNING {_SCAN_COLUMNS}
            ), t AS (
                INSERT INTO stage_timings (scan_id, stage, universe_size, provider)
                SELECT s.id, stage, s.universe_size, s.config->>'provider'
                FROM s, unnest($5::text[]) AS stage
            )
            SELECT * FROM s
            """,
            scan_id,
            config_dict,
            size,
            owner,
            list(STAGES),
            fleet,
        )
    except asyncpg.UniqueViolationError as e:
        raise InvalidInput("scan_id", f"scan {scan_id} already exists") from e
    return _scan(record, _pending_stages(scan_id))


async def _touch(conn: asyncpg.Connection, uuid: UUID) -> None:
    await conn.execute("UPDATE scans SET updated_at = now() WHERE id = $1", uuid)


async def _sync_stage_sizes(conn: asyncpg.Connection, uuid: UUID, size: int | None) -> None:
    if size is not None:
        await conn.execute(
            "UPDATE stage_timings SET universe_size = $2 WHERE scan_id = $1", uuid, size
        )


def _read_id(value: object) -> UUID | None:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            return None
    return None


def _write_id(value: object) -> UUID:
    uuid = _read_id(value)
    if uuid is None:
        raise ScanNotFound(value)
    return uuid


def _check_stage(stage: object) -> None:
    if stage not in STAGES:
        raise InvalidInput("stage", f"must be one of {', '.join(STAGES)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(name: str, value: object) -> int | None:
    if value is None:
        return None
    if not (_is_int(value) and 0 <= value < 2**31):  # type: ignore[operator]
        raise InvalidInput(name, f"must be a whole number >= 0, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def _text(name: str, value: object) -> str:
    # PostgreSQL text cannot hold NUL; say so instead of failing inside the server
    if not isinstance(value, str) or "\x00" in value:
        raise InvalidInput(name, "must be a string without NUL characters")
    return value


def _seconds(name: str, value: object) -> float:
    if not _is_number(value) or not 0 <= value < 10**9:  # type: ignore[operator]
        raise InvalidInput(name, f"must be a number of seconds from 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _limit(value: object) -> int:
    if not (_is_int(value) and 1 <= value <= MAX_PAGE_SIZE):  # type: ignore[operator]
        raise InvalidInput("limit", f"must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return int(value)  # type: ignore[arg-type]


def _offset(value: object) -> None:
    if value is not None and not (_is_int(value) and 0 <= value <= MAX_OFFSET):  # type: ignore[operator]
        raise InvalidInput("offset", f"must be a whole number from 0 to {MAX_OFFSET}")


def _aware(name: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(name, "must be a timezone-aware datetime")
    return value


def _json_object(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(name, "must be a mapping")
    result = dict(value)
    try:
        orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as e:  # orjson.JSONEncodeError is a TypeError
        raise InvalidInput(name, f"cannot be stored as JSON: {e}") from e
    return result


def _scan_fields(
    error: object,
    metrics: Mapping[str, Any] | None,
    universe_size: object,
    symbols_scanned: object,
    symbols_failed: object,
) -> tuple[str | None, dict[str, Any] | None, int | None, int | None, int | None]:
    if error is not None:
        _text("error", error)
    metrics_dict = None if metrics is None else _json_object("metrics", metrics)
    if metrics_dict is not None:
        if symbols_scanned is None and _is_int(metrics_dict.get("symbols_scanned")):
            symbols_scanned = metrics_dict["symbols_scanned"]
        if symbols_failed is None and _is_int(metrics_dict.get("symbols_failed")):
            symbols_failed = metrics_dict["symbols_failed"]
    return (
        error,
        metrics_dict,
        _count("universe_size", universe_size),
        _count("symbols_scanned", symbols_scanned),
        _count("symbols_failed", symbols_failed),
    )


def _row_keys(row: object) -> tuple[str, ...] | None:
    """The key layout shared by a scan's rows, taken from its first row (if all are strings)."""
    if not isinstance(row, Mapping):
        return None
    keys = tuple(row)
    return keys if all(type(k) is str for k in keys) else None


def _row_from(keys: Sequence[str], data: Any) -> dict[str, Any]:
    # rows stored in the scan's layout come back as a list of values, the others as objects
    return dict(zip(keys, data, strict=True)) if isinstance(data, list) else data


def _result_records(
    uuid: UUID, rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...]
) -> Iterator[tuple[Any, ...]]:
    # A generator, so that checking rows overlaps with the server ingesting the ones already
    # sent; an invalid row aborts the COPY and the transaction. The loop checks only what the
    # typed columns need; the rest of each row goes to orjson as it is, as a list of values
    # when its keys are the scan's layout (a third fewer bytes and cheaper for the server to
    # check than an object), else as the object itself.
    seen: set[str] = set()
    pick_numbers = operator.itemgetter(*RESULT_NUMBER_FIELDS)
    for index, row in enumerate(rows):
        if type(row) is not dict:
            if not isinstance(row, Mapping):
                raise InvalidInput(f"rows[{index}]", "must be a mapping")
            row = dict(row)
        get = row.get
        symbol = get("symbol")
        if type(symbol) is not str or not symbol or "\x00" in symbol:
            raise InvalidInput(f"rows[{index}].symbol", "must be a non-empty string")
        if symbol in seen:
            raise InvalidInput(f"rows[{index}].symbol", f"{symbol} appears more than once")
        seen.add(symbol)
        sector, signal = get("sector"), get("signal")
        if sector is not None and (type(sector) is not str or "\x00" in sector):
            raise InvalidInput(f"rows[{index}].sector", "must be a string or None")
        if signal is not None and (type(signal) is not str or "\x00" in signal):
            raise InvalidInput(f"rows[{index}].signal", "must be a string or None")
        try:
            numbers = pick_numbers(row)
            total = sum(numbers)  # C calls: all present, all numbers, finite unless NaN/inf
            fast = total - total == 0.0
        except (KeyError, TypeError):  # missing, None (too little history) or a wrong type
            fast = False
        if not fast:
            numbers = tuple(_typed_number(index, name, get(name)) for name in RESULT_NUMBER_FIELDS)
        if tuple(row) == keys:
            data: Any = list(row.values())
        elif all(type(k) is str for k in row):
            data = row
        else:
            raise InvalidInput(f"rows[{index}]", "keys must be strings (JSON object keys)")
        yield (uuid, index + 1, symbol, sector, signal, *numbers, data)


def _typed_number(index: int, name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise InvalidInput(f"rows[{index}].{name}", "must be a number or None")
    number = float(value)
    # JSON has no NaN or infinity (orjson writes null), so the typed column says None too
    return number if math.isfinite(number) else None


def _failure(index: int, item: Failure | Mapping[str, str]) -> Failure:
    if isinstance(item, Failure):
        symbol, reason = item.symbol, item.reason
    elif isinstance(item, Mapping):
        symbol, reason = item.get("symbol"), item.get("reason")
    else:
        raise InvalidInput(f"failures[{index}]", "must be a Failure or a mapping")
    if not isinstance(symbol, str) or not isinstance(reason, str):
        raise InvalidInput(f"failures[{index}]", "symbol and reason must be strings")
    _text(f"failures[{index}].symbol", symbol)
    _text(f"failures[{index}].reason", reason)
    return Failure(symbol, reason)


def _encode_cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode()


def _decode_cursor(cursor: object) -> Any:
    if not isinstance(cursor, str) or len(cursor) > 2000:
        raise InvalidInput("cursor", "not a cursor returned by this API")
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as e:
        raise InvalidInput("cursor", "not a cursor returned by this API") from e


def _decode_scan_cursor(cursor: object) -> tuple[datetime, UUID]:
    payload = _decode_cursor(cursor)
    try:
        created_text, id_text = payload
        created_at = datetime.fromisoformat(created_text)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at, UUID(id_text)
    except (TypeError, ValueError) as e:
        raise InvalidInput("cursor", "not a cursor returned by this API") from e


def _decode_result_cursor(
    cursor: object, sort: str, descending: bool, sql_type: str
) -> tuple[Any, int]:
    payload = _decode_cursor(cursor)
    if not isinstance(payload, dict) or set(payload) != {"s", "d", "v", "r"}:
        raise InvalidInput("cursor", "not a cursor returned by this API")
    if payload["s"] != sort or payload["d"] is not descending:
        raise InvalidInput("cursor", "was made for another sort order; start from the top")
    value, rank = payload["v"], payload["r"]
    if not _is_int(rank):
        raise InvalidInput("cursor", "not a cursor returned by this API")
    if value is not None:
        ok = {
            "text": isinstance(value, str),
            "integer": _is_int(value),
            "smallint": _is_int(value),
            "double precision": _is_number(value),
        }[sql_type]
        if not ok:
            raise InvalidInput("cursor", "not a cursor returned by this API")
        if sql_type == "double precision":
            value = float(value)
    return value, rank


def _pending_stages(scan_id: UUID) -> tuple[StageTiming, ...]:
    return tuple(
        StageTiming(scan_id, stage, "pending", None, None, None, None, None, None)
        for stage in STAGES
    )


def _scan(record: asyncpg.Record, stages: tuple[StageTiming, ...] = ()) -> Scan:
    return Scan(
        id=record["id"],
        status=record["status"],
        config=record["config"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
        started_at=record["started_at"],
        finished_at=record["finished_at"],
        universe_size=record["universe_size"],
        symbols_scanned=record["symbols_scanned"],
        symbols_failed=record["symbols_failed"],
        result_count=record["result_count"],
        error=record["error"],
        metrics=record["metrics"],
        owner=record["owner"],
        results_pruned_at=record["results_pruned_at"],
        stages=stages,
    )


def _stage(record: asyncpg.Record) -> StageTiming:
    return StageTiming(
        scan_id=record["scan_id"],
        stage=record["stage"],
        status=record["status"],
        started_at=record["started_at"],
        finished_at=record["finished_at"],
        duration_s=record["duration_s"],
        units_done=record["units_done"],
        units_total=record["units_total"],
        throughput=record["throughput"],
        tail_s=record["tail_s"],
    )


def _stage_stat_rows(
    records: Sequence[asyncpg.Record], by_bucket: bool, only: SizeBucket | None
) -> list[StageStat]:
    groups: dict[int | None, list[asyncpg.Record]] = {}
    for record in records:
        groups.setdefault(record["digits"], []).append(record)
    rows: list[StageStat] = []
    for digits in sorted(groups, key=lambda d: (d is None, d or 0)):
        group = sorted(groups[digits], key=lambda r: STAGES.index(r["stage"]))
        bucket = _bucket_of(digits) if by_bucket else only
        group_total = sum(r["total_s"] for r in group)
        top = max(group, key=lambda r: r["total_s"])
        for r in group:
            p50, p90, p99 = r["pcts"]
            rows.append(
                StageStat(
                    stage=r["stage"],
                    bucket=bucket,
                    count=r["n"],
                    mean_s=r["mean_s"],
                    p50_s=p50,
                    p90_s=p90,
                    p99_s=p99,
                    total_s=r["total_s"],
                    symbols_per_s=r["units"] / r["unit_s"] if r["unit_s"] else None,
                    share=r["total_s"] / group_total if group_total > 0 else 0.0,
                    dominant=r is top,
                )
            )
    return rows


def _share(name: str, value: object) -> float | None:
    if value is None:
        return None
    if not (_is_number(value) and 0 <= value <= 1):  # type: ignore[operator]
        raise InvalidInput(name, f"must be a number from 0 to 1, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _r_squared(name: str, value: object) -> float | None:
    # R-squared is at most 1 and may be far below 0 for a bar worse than a flat line
    if value is None:
        return None
    if not (_is_number(value) and value <= 1):  # type: ignore[operator]
        raise InvalidInput(name, f"must be a finite number <= 1, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _checkpoint_records(
    checkpoints: object,
) -> list[tuple[int, float, float, float, float | None]]:
    if not isinstance(checkpoints, Sequence):
        raise InvalidInput("accuracy.checkpoints", "must be a sequence of EtaCheckpoint")
    records = []
    seen: set[int] = set()
    for index, item in enumerate(checkpoints):
        name = f"accuracy.checkpoints[{index}]"
        if not isinstance(item, EtaCheckpoint):
            raise InvalidInput(name, "must be an EtaCheckpoint")
        if item.checkpoint not in CHECKPOINTS or not _is_int(item.checkpoint):
            raise InvalidInput(
                f"{name}.checkpoint", f"must be one of {', '.join(map(str, CHECKPOINTS))}"
            )
        if item.checkpoint in seen:
            raise InvalidInput(f"{name}.checkpoint", f"{item.checkpoint} appears more than once")
        seen.add(item.checkpoint)
        elapsed = _seconds(f"{name}.elapsed_s", item.elapsed_s)
        predicted = _seconds(f"{name}.predicted_remaining_s", item.predicted_remaining_s)
        actual = _seconds(f"{name}.actual_remaining_s", item.actual_remaining_s)
        error = item.error_pct
        if error is not None and not math.isfinite(error):
            raise InvalidInput(f"{name}.error_pct", f"must be finite, got {error!r}")
        records.append((item.checkpoint, elapsed, predicted, actual, error))
    return records


def _bucket_of(digits: int | None) -> SizeBucket | None:
    # the queries group by the number of digits of the universe size: its decade
    return None if digits is None else SizeBucket.of(10 ** (digits - 1))


def _accuracy_groups(
    scan_rows: Sequence[asyncpg.Record], checkpoint_rows: Sequence[asyncpg.Record]
) -> list[AccuracyGroup]:
    by_group: dict[tuple[str, int | None], dict[int, asyncpg.Record]] = {}
    for record in checkpoint_rows:
        key = (record["provider"], record["digits"])
        by_group.setdefault(key, {})[record["checkpoint"]] = record
    groups = []
    ordered = sorted(
        scan_rows, key=lambda r: (r["provider"], r["digits"] is None, r["digits"] or 0)
    )
    for row in ordered:
        found = by_group.get((row["provider"], row["digits"]), {})
        checkpoints = []
        for checkpoint in CHECKPOINTS:
            record = found.get(checkpoint)
            if record is None or record["n"] == 0:
                checkpoints.append(CheckpointAccuracy(checkpoint, 0, None, None, None))
                continue
            median_abs, p90_abs = record["abs_pcts"]
            checkpoints.append(
                CheckpointAccuracy(checkpoint, record["n"], median_abs, p90_abs, record["median"])
            )
        first = found.get(CHECKPOINTS[0])
        groups.append(
            AccuracyGroup(
                provider=row["provider"],
                bucket=_bucket_of(row["digits"]),
                scans=row["scans"],
                checkpoints=tuple(checkpoints),
                median_time_linearity=row["time_r2"],
                median_overall_linearity=row["overall_r2"],
                median_time_stall_s=row["stall_s"],
                within_10pct_at_10=first["within"] / first["n"] if first and first["n"] else None,
            )
        )
    return groups


def _recent_accuracy(record: asyncpg.Record) -> ScanAccuracyRecord:
    errors = dict(zip(record["checkpoints"], record["errors"], strict=True))
    return ScanAccuracyRecord(
        scan_id=record["id"],
        finished_at=record["finished_at"],
        provider=record["provider"],
        universe_size=record["universe_size"],
        error_pct={checkpoint: errors.get(checkpoint) for checkpoint in CHECKPOINTS},
        time_linearity=record["time_linearity"],
        overall_linearity=record["overall_linearity"],
    )
