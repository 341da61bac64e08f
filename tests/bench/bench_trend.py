"""Trend benchmark: GET /stats/stages/trend's query over 10,000,000 stage timings, and what
the rollup trigger (migration 0005) adds to each ``finish_stage``.

Run: ``.venv/bin/python tests/bench/bench_trend.py [--timings N] [--repeat N]``

The server is the one named by ``TECHNIC_BENCH_DATABASE_URL``, else
``TECHNIC_TEST_DATABASE_URL``, else ``DATABASE_URL``; with none set, the embedded PostgreSQL
is booted in a temporary directory. A throw-away database is created, migrated, seeded by
this script and dropped at the end.

The timings are 2,500,000 scans of 4 stages finished over the last 365 days (a fifth of
them polygon, universe sizes 30 to 15,000, log-normal durations), inserted by SQL in 12
batches of about a month each: the rollup triggers fire once per statement and add up each
batch's transition table, so a batch is the most one statement asks of them.

Target (issue 14): a 30-day daily trend, p95 under 100 ms. Timed as the endpoint runs it:
``Repository.stage_trend`` (the query and the percentiles) plus ``trend_json`` (the
verdicts). The 7-day hourly trend is printed with no target, so is the cost of the trigger.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from technic.engine.trend import INTERVAL_STEPS, interval_start
from technic.server.views import trend_json
from technic.storage import STAGES, Repository
from technic.storage.repository import INTERVAL_ORIGIN, STAGE_TREND_SQL

from tests.bench.bench_database import run_on_a_server, throwaway_repository
from tests.bench.bench_storage import summary

TREND_P95_TARGET_S = 0.100
BATCHES = 12
EXPLAIN_LINES = 8

# One batch: $1 scans finished between $2 and $2 + $3 days ago, each with its 4 stages.
SEED_BATCH_SQL = """
WITH new_scans AS (
    INSERT INTO scans (id, status, config, created_at, updated_at, started_at, finished_at,
                       universe_size, symbols_scanned, symbols_failed, result_count)
    SELECT gen_random_uuid(), 'completed',
           jsonb_build_object('provider', CASE WHEN random() < 0.2 THEN 'polygon'
                                               ELSE 'sample' END),
           f - interval '1 minute', f, f - interval '1 minute', f, size, size, 0, size / 10
    FROM (
        SELECT now() - ($2::float8 + random() * $3::float8) * interval '1 day' AS f,
               (10 ^ (1.5 + random() * 2.7))::int AS size
        FROM generate_series(1, $1::int)
    ) g
    RETURNING id, config, started_at, finished_at, universe_size
)
INSERT INTO stage_timings (scan_id, stage, status, started_at, finished_at, duration_s,
                           units_done, units_total, throughput, universe_size, provider)
SELECT s.id, st.stage, 'completed', s.started_at, s.finished_at, d.duration_s,
       s.universe_size, s.universe_size, s.universe_size / d.duration_s, s.universe_size,
       s.config->>'provider'
FROM new_scans s
CROSS JOIN (VALUES ('universe_loading', 0.05), ('data_fetching', 0.6),
                   ('symbol_scanning', 2.0), ('finalization', 0.08)) AS st(stage, base_s)
CROSS JOIN LATERAL (
    SELECT st.base_s * s.universe_size / 500.0
           * exp(0.4 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())) AS duration_s
) d
"""

ROLLUP_TRIGGER = "stage_timings_rollup_update"


async def seed(repo: Repository, timings: int) -> None:
    scans_per_batch = timings // 4 // BATCHES
    days = 365 / BATCHES
    began = time.perf_counter()
    async with repo.pool.acquire() as conn:
        await conn.execute("SELECT setseed(0.14)")
        for batch in range(BATCHES):
            start = time.perf_counter()
            await conn.execute(SEED_BATCH_SQL, scans_per_batch, batch * days, days)
            if batch == 0:
                print(f"  batch 1 of {BATCHES}: {time.perf_counter() - start:.1f} s")
        vacuum_began = time.perf_counter()
        await conn.execute("VACUUM ANALYZE scans, stage_timings, stage_timing_rollup")
        vacuum_s = time.perf_counter() - vacuum_began
        count = await conn.fetchval("SELECT count(*) FROM stage_timings")
        rollup = await conn.fetchval("SELECT count(*) FROM stage_timing_rollup")
        counted = await conn.fetchval("SELECT sum(n) FROM stage_timing_rollup")
    seed_s = time.perf_counter() - began
    print(
        f"seeded {count:,} stage timings over 365 days in {seed_s:.0f} s"
        f" ({BATCHES} batches, triggers included; VACUUM ANALYZE {vacuum_s:.0f} s of it);"
        f" rollup: {rollup:,} rows counting {counted:,} runs"
    )
    assert counted == count, "the rollup must count every completed run"


async def time_trend(repo: Repository, label: str, kwargs: dict[str, Any], runs: int) -> float:
    trend_json(await repo.stage_trend(**kwargs))  # warm
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        report = trend_json(await repo.stage_trend(**kwargs))
        samples.append(time.perf_counter() - began)
    text, p95 = summary(samples)
    runs_in = sum(p["count"] for s in report["stages"] for p in s["intervals"])
    print(f"trend {label:16s} {runs_in:>10,} runs  {text}")
    return p95


async def explain(repo: Repository, since: datetime, interval: str) -> None:
    async with repo.pool.acquire() as conn:
        plan = await conn.fetch(
            f"EXPLAIN (ANALYZE, BUFFERS) {STAGE_TREND_SQL}",
            list(STAGES),
            interval_start(since, interval),  # type: ignore[arg-type]
            datetime.now(UTC),
            INTERVAL_STEPS[interval],  # type: ignore[index]
            INTERVAL_ORIGIN,
            None,
            None,
        )
    lines = [row[0] for row in plan]
    for line in [*lines[:EXPLAIN_LINES], "  ...", *lines[-2:]]:
        print(f"    {line}")


async def finish_stage_s(repo: Repository, runs: int) -> list[float]:
    """Seconds of each ``finish_stage`` of a fresh scan's symbol_scanning stage."""
    samples = []
    for _ in range(runs):
        scan = await repo.create_scan(uuid.uuid4(), {"provider": "sample"}, universe_size=500)
        await repo.start_stage(scan.id, "symbol_scanning")
        began = time.perf_counter()
        await repo.finish_stage(scan.id, "symbol_scanning", units_done=500, duration_s=2.0)
        samples.append(time.perf_counter() - began)
    return samples


async def trigger_cost(repo: Repository, runs: int, rounds: int) -> None:
    """Rounds of finish_stage with the rollup trigger and without it, alternated, so drift
    in the machine's load falls on both alike."""
    await finish_stage_s(repo, 20)  # warm
    with_s: list[float] = []
    without_s: list[float] = []
    try:
        for _ in range(rounds):
            with_s += await finish_stage_s(repo, runs)
            async with repo.pool.acquire() as conn:
                await conn.execute(f"ALTER TABLE stage_timings DISABLE TRIGGER {ROLLUP_TRIGGER}")
            without_s += await finish_stage_s(repo, runs)
            async with repo.pool.acquire() as conn:
                await conn.execute(f"ALTER TABLE stage_timings ENABLE TRIGGER {ROLLUP_TRIGGER}")
    finally:
        async with repo.pool.acquire() as conn:
            await conn.execute(f"ALTER TABLE stage_timings ENABLE TRIGGER {ROLLUP_TRIGGER}")
    with_p50, without_p50 = statistics.median(with_s), statistics.median(without_s)
    print(f"finish_stage with the rollup trigger     {summary(with_s)[0]}")
    print(f"finish_stage without it (trigger off)    {summary(without_s)[0]}")
    print(f"the trigger adds {(with_p50 - without_p50) * 1e3:.2f} ms to the median finish_stage")


async def bench(server_url: str, timings: int, repeat: int) -> int:
    async with throwaway_repository(server_url, "technic_bench_trend") as repo:
        await seed(repo, timings)
        now = datetime.now(UTC)
        month, week = now - timedelta(days=30), now - timedelta(days=7)
        p95 = await time_trend(repo, "30 days, 1d", {"since": month, "interval": "1d"}, repeat)
        verdict = "ok" if p95 < TREND_P95_TARGET_S else "OVER TARGET"
        print(f"  target p95 < 100 ms: {verdict}")
        await explain(repo, month, "1d")
        await time_trend(repo, "7 days, 1h", {"since": week, "interval": "1h"}, repeat)
        await explain(repo, week, "1h")
        await time_trend(
            repo, "30 days, 1 stage", {"since": month, "interval": "1d", "stage": "data_fetching"},
            repeat,
        )  # fmt: skip
        await time_trend(repo, "365 days, 1w", {"since": now - timedelta(days=365),
                                                "interval": "1w"}, max(5, repeat // 5))  # fmt: skip
        await trigger_cost(repo, runs=50, rounds=4)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average {load}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timings", type=int, default=10_000_000, help="stage timing rows")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per trend")
    args = parser.parse_args()
    return run_on_a_server(lambda url: bench(url, args.timings, args.repeat))


if __name__ == "__main__":
    sys.exit(main())
