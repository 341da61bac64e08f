"""Retention benchmark: pruning a day of result rows, and result saves while it runs.

Run: ``.venv/bin/python tests/bench/bench_prune.py [--rows N] [--scans N] [--save-rows N]``

Seeds, with SQL, ``--scans`` completed scans finished over one day 31 days ago with ``--rows``
result rows between them (default 10 million: a 100,000-symbol scan every 15 minutes is ~96
scans of ~100,000 rows a day), then:

* EXPLAIN of the prune statements over that table (which index serves each);
* the rate of ``save_results`` of ``--save-rows`` rows (10,000) in a loop on a running scan,
  alone for ``--baseline-s`` seconds, before and after pruning;
* ``Retention.prune()`` with the service's defaults (30 days, batches of 5,000 rows, a pause
  of 50 ms), timed, while the same save loop runs: the save rate and latency during it, and
  how often any session of the database was seen waiting for a lock.

The server is the one named by ``TECHNIC_BENCH_DATABASE_URL``, ``TECHNIC_TEST_DATABASE_URL``
or ``DATABASE_URL`` (else an embedded one); the database is a throw-away one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import asyncpg
from technic.storage import Repository
from technic.storage.retention import (
    DELETE_RESULTS_SQL,
    MARK_RESULTS_PRUNED_SQL,
    Retention,
    RetentionPolicy,
)

from tests.bench.bench_database import run_on_a_server, throwaway_repository
from tests.bench.bench_storage import result_rows

SEED_SCANS_SQL = """
INSERT INTO scans (id, status, created_at, updated_at, started_at, finished_at,
                   universe_size, symbols_scanned, symbols_failed, result_count, result_keys)
SELECT gen_random_uuid(), 'completed', f - interval '2 minutes', f, f - interval '2 minutes', f,
       $2, $2, 0, $2, ARRAY['symbol', 'tech_rating', 'close']
FROM (SELECT now() - interval '31 days' - i * interval '1 day' / $1 AS f
      FROM generate_series(1, $1) AS i) AS g
"""
# one scan's rows per statement, so the seed reports progress and no statement is huge
SEED_RESULTS_SQL = """
INSERT INTO scan_results (scan_id, rank, symbol, sector, signal, tech_rating, close, data)
SELECT $1, r, 'S' || r, 'Technology', 'Buy', 100 - r * 1e-4, 10 + r % 90,
       json_build_array('S' || r, 100 - r * 1e-4, 10 + r % 90)
FROM generate_series(1, $2) AS r
"""


async def save_loop(
    repo: Repository, scan_id: uuid.UUID, rows: list[dict[str, Any]], stop: asyncio.Event
) -> list[float]:
    """Save ``rows`` again and again until ``stop``; the duration of each save."""
    durations = []
    while not stop.is_set():
        began = time.perf_counter()
        await repo.save_results(scan_id, rows)
        durations.append(time.perf_counter() - began)
    return durations


class _RolledBack(Exception):
    """Raised to roll back an EXPLAIN ANALYZE of a statement that writes."""


async def saves_alone(
    repo: Repository, scan_id: uuid.UUID, rows: list[dict[str, Any]], seconds: float
) -> str:
    stop = asyncio.Event()
    loop = asyncio.create_task(save_loop(repo, scan_id, rows, stop))
    await asyncio.sleep(seconds)
    stop.set()
    return rate(await loop, seconds, len(rows))


async def lock_waits(repo: Repository, stop: asyncio.Event) -> tuple[int, int]:
    """How many samples saw a session of this database waiting for a lock, of how many."""
    waiting = samples = 0
    async with repo.pool.acquire() as conn:
        while not stop.is_set():
            samples += 1
            waiting += bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE NOT l.granted AND a.datname = current_database()"
                )
            )
            await asyncio.sleep(0.02)
    return waiting, samples


def rate(durations: list[float], elapsed_s: float, rows_per_save: int) -> str:
    ordered = sorted(durations)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    saves_per_s = len(durations) / elapsed_s
    return (
        f"{saves_per_s:6.2f} saves/s ({saves_per_s * rows_per_save:,.0f}"
        f" rows/s); save median {statistics.median(ordered) * 1e3:6.1f} ms,"
        f" p95 {p95 * 1e3:6.1f} ms, max {ordered[-1] * 1e3:6.1f} ms (n={len(ordered)})"
    )


async def bench(server_url: str, args: argparse.Namespace) -> int:
    async with throwaway_repository(server_url, "technic_bench_prune") as repo:
        per_scan = args.rows // args.scans
        began = time.perf_counter()
        async with repo.pool.acquire() as conn:
            await conn.execute(SEED_SCANS_SQL, args.scans, per_scan)
            for scan_id in [r["id"] for r in await conn.fetch("SELECT id FROM scans")]:
                await conn.execute(SEED_RESULTS_SQL, scan_id, per_scan)
            await conn.execute("VACUUM ANALYZE scans")
            await conn.execute("VACUUM ANALYZE scan_results")
            # the seed's dirty pages are written now, not during the timed runs
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CHECKPOINT")
            size = await conn.fetchval(
                "SELECT pg_size_pretty(pg_total_relation_size('scan_results'))"
            )
            seeded = await conn.fetchval("SELECT count(*) FROM scan_results")
        print(
            f"seeded {seeded:,} result rows of {args.scans} scans ({size}) in"
            f" {time.perf_counter() - began:.1f} s"
        )
        async with repo.pool.acquire() as conn:
            cutoff = await conn.fetchval("SELECT now() - interval '30 days'")
            first = await conn.fetchval("SELECT id FROM scans LIMIT 1")
            for name, sql, arguments in (
                ("mark", MARK_RESULTS_PRUNED_SQL, (cutoff, 100)),
                ("delete batch", DELETE_RESULTS_SQL, (first, 0, 5000)),
            ):
                with contextlib.suppress(_RolledBack):
                    async with conn.transaction():
                        plan = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}", *arguments)
                        lines = "\n    ".join(r[0] for r in plan)
                        print(f"EXPLAIN ANALYZE {name} (rolled back):\n    {lines}")
                        raise _RolledBack

        writer = uuid.uuid4()
        await repo.create_scan(writer, {"provider": "sample"}, universe_size=args.save_rows)
        await repo.transition(writer, "running")
        rows = result_rows(args.save_rows)
        await repo.save_results(writer, rows[:100])

        print(f"saves alone, before  : {await saves_alone(repo, writer, rows, args.baseline_s)}")
        retention = Retention(repo.pool, RetentionPolicy(30, 365))
        dry = await retention.prune(dry_run=True)
        print(
            f"prune --dry-run: counted {dry.rows['scan_results']:,} result rows of"
            f" {dry.results_pruned_scans} scans in {dry.duration_s:.2f} s"
        )
        stop = asyncio.Event()
        during = asyncio.create_task(save_loop(repo, writer, rows, stop))
        waits = asyncio.create_task(lock_waits(repo, stop))
        began = time.perf_counter()
        report = await retention.prune()
        elapsed = time.perf_counter() - began
        stop.set()
        print(f"saves during pruning : {rate(await during, elapsed, len(rows))}")
        waiting, samples = await waits
        print(f"lock waits: {waiting} of {samples} samples (every 20 ms) saw a session waiting")
        async with repo.pool.acquire() as conn:
            vacuuming = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_progress_vacuum p JOIN pg_class c"
                " ON c.oid = p.relid WHERE c.relname = 'scan_results'"
            )
        print(f"autovacuum of scan_results running after the prune: {bool(vacuuming)}")
        print(f"saves alone, after   : {await saves_alone(repo, writer, rows, args.baseline_s)}")
        print(
            f"prune: {report.rows['scan_results']:,} result rows of"
            f" {report.results_pruned_scans} scans in {report.duration_s:.1f} s"
            f" ({report.rows['scan_results'] / report.duration_s:,.0f} rows/s, batches of 5,000,"
            f" 50 ms pause)"
        )
        async with repo.pool.acquire() as conn:
            left = await conn.fetchval(
                "SELECT count(*) FROM scan_results WHERE scan_id <> $1", writer
            )
        print(f"result rows of pruned scans left: {left}")
        return 0 if left == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--scans", type=int, default=96)
    parser.add_argument("--save-rows", type=int, default=10_000)
    parser.add_argument("--baseline-s", type=float, default=10.0)
    return run_on_a_server(functools.partial(bench, args=parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
