"""ETA accuracy benchmark: accuracy_stats and eta_history over 100,000 stored scans.

Run: ``.venv/bin/python tests/bench/bench_accuracy.py [--scans N] [--calls N]``

The server is the one named by ``TECHNIC_BENCH_DATABASE_URL``, else
``TECHNIC_TEST_DATABASE_URL``, else ``DATABASE_URL``; with none set, the embedded PostgreSQL
is booted in a temporary directory. A throw-away database (``technic_bench_acc_…``) is
created, migrated, seeded by this script with binary COPY and dropped at the end.

The history: one completed scan every 15 minutes back from now (100,000 scans reach back
almost three years), of four kinds (sample, synthetic, polygon@300/min, polygon@5/min) and
universe sizes from 5 to 12,000, each with its four stage timings, five ETA checkpoints and
its linearity, as ``Repository.record_accuracy`` stores them.

Target (issue 10): ``/stats/accuracy`` and ``technic history --accuracy`` answer in under
50 ms p95 over 100,000 stored scans, for the window people ask about (the last 30 days, and
the endpoint's default 7). The whole history is timed too and printed with no target, so the
cost of asking for three years of percentiles is visible rather than hidden.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from technic.engine.eta import CHECKPOINTS, HISTORY_SCANS
from technic.storage import STAGES, Repository, SizeBucket
from technic.storage.repository import (
    ACCURACY_CHECKPOINTS_SQL,
    ACCURACY_RECENT_SQL,
    ACCURACY_SCANS_SQL,
    ETA_HISTORY_SQL,
    WITHIN_PCT,
)

from tests.bench.bench_database import run_on_a_server, throwaway_repository

P95_TARGET_S = 0.050
SCAN_EVERY = timedelta(minutes=15)
KINDS = (
    ("sample", "sample"),
    ("synthetic", "synthetic"),
    ("polygon", "polygon@300/min"),
    ("polygon", "polygon@5/min"),
)
SIZES = (5, 40, 300, 2500, 12_000)
STAGE_BASE_S = (0.05, 0.6, 2.0, 0.08)  # seconds per 500 symbols, as bench_storage seeds them


def history(n: int, now: datetime) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Rows of scans, stage_timings and eta_checkpoints for ``n`` completed scans."""
    rng = np.random.default_rng(20241201)
    kinds = rng.integers(len(KINDS), size=n)
    sizes = np.array(SIZES)[rng.integers(len(SIZES), size=n)]
    errors = rng.normal(0, 12, size=(n, len(CHECKPOINTS)))
    spread = rng.lognormal(0, 0.4, size=(n, len(STAGES)))
    time_r2 = rng.uniform(0.9, 1.0, n)
    overall_r2 = rng.uniform(-0.5, 1.0, n)
    stalls = rng.exponential(2.0, size=(n, 2))
    scans, timings, checkpoints = [], [], []
    for i in range(n):
        scan_id = uuid.uuid4()
        finished = now - i * SCAN_EVERY
        provider, kind = KINDS[kinds[i]]
        size = int(sizes[i])
        durations = [base * size / 500 * spread[i, s] for s, base in enumerate(STAGE_BASE_S)]
        total_s = sum(durations)
        started = finished - timedelta(seconds=total_s)
        scans.append(
            (
                scan_id, "completed", {"provider": provider}, started, finished, started,
                finished, size, size, 0, kind, 0.5, float(time_r2[i]), float(overall_r2[i]),
                float(stalls[i, 0]), float(stalls[i, 1]),
            )
        )  # fmt: skip
        end = started
        for stage, duration in zip(STAGES, durations, strict=True):
            begin, end = end, end + timedelta(seconds=duration)
            timings.append(
                (scan_id, stage, "completed", begin, end, duration, size, size,
                 size / duration, size)
            )  # fmt: skip
        for c, checkpoint in enumerate(CHECKPOINTS):
            actual = total_s * (100 - checkpoint) / 100
            error = max(float(errors[i, c]), -100.0)
            predicted = actual + actual * error / 100
            checkpoints.append(
                (scan_id, checkpoint, total_s - actual, predicted, actual,
                 100 * (predicted - actual) / actual, finished, provider, size)
            )  # fmt: skip
    return scans, timings, checkpoints


async def seed(repo: Repository, n: int) -> None:
    began = time.perf_counter()
    scans, timings, checkpoints = history(n, datetime.now(UTC))
    built_s = time.perf_counter() - began
    async with repo.pool.acquire() as conn:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "scans",
                records=scans,
                columns=[
                    "id", "status", "config", "created_at", "updated_at", "started_at",
                    "finished_at", "universe_size", "symbols_scanned", "symbols_failed",
                    "eta_kind", "cache_hit_ratio", "time_linearity", "overall_linearity",
                    "time_stall_s", "overall_stall_s",
                ],
            )  # fmt: skip
            await conn.copy_records_to_table(
                "stage_timings",
                records=timings,
                columns=[
                    "scan_id", "stage", "status", "started_at", "finished_at", "duration_s",
                    "units_done", "units_total", "throughput", "universe_size",
                ],
            )  # fmt: skip
            await conn.copy_records_to_table(
                "eta_checkpoints",
                records=checkpoints,
                columns=[
                    "scan_id", "checkpoint", "elapsed_s", "predicted_remaining_s",
                    "actual_remaining_s", "error_pct", "finished_at", "provider",
                    "universe_size",
                ],
            )  # fmt: skip
        await conn.execute("VACUUM ANALYZE scans, stage_timings, eta_checkpoints")
    print(
        f"seeded {len(scans):,} scans, {len(timings):,} stage timings and"
        f" {len(checkpoints):,} checkpoints in {time.perf_counter() - began:.1f} s"
        f" ({built_s:.1f} s building rows)"
    )


def summary(samples_s: list[float]) -> tuple[str, float]:
    ordered = sorted(samples_s)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered) * 1e3:7.1f} ms  p95 {p95 * 1e3:7.1f} ms"
        f"  max {ordered[-1] * 1e3:7.1f} ms  (n={len(ordered)})"
    ), p95


async def timed(call: Any, runs: int) -> list[float]:
    await call()  # warm the connection and the plans
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - began)
    return samples


async def explain(repo: Repository, label: str, sql: str, *args: Any, lines: int = 6) -> None:
    async with repo.pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SET LOCAL work_mem = '64MB'; SET LOCAL jit = off")
        plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
    text = [r[0] for r in plan]
    print(f"  plan of {label}:")
    for line in text[:lines]:
        print(f"    {line}")
    print(f"    ... {text[-1].strip()}")


async def bench(server_url: str, n: int, calls: int) -> int:
    failed = False
    async with throwaway_repository(server_url, "technic_bench_acc") as repo:
        await seed(repo, n)
        now = datetime.now(UTC)
        all_time = now - n * SCAN_EVERY - timedelta(days=1)
        cases: list[tuple[str, dict[str, Any], bool]] = [
            ("since 7d (endpoint default)", {"since": now - timedelta(days=7)}, True),
            ("since 30d", {"since": now - timedelta(days=30)}, True),
            (
                "since 30d, provider polygon",
                {"since": now - timedelta(days=30), "provider": "polygon"},
                True,
            ),
            (
                "since 30d, bucket 1000-9999",
                {"since": now - timedelta(days=30), "bucket": SizeBucket.parse("1000-9999")},
                True,
            ),
            (f"all {n:,} scans", {"since": all_time}, False),
        ]
        for label, kwargs, targeted in cases:
            runs = calls if targeted else max(calls // 10, 5)
            stats = None

            async def call(kwargs: dict[str, Any] = kwargs) -> None:
                nonlocal stats
                stats = await repo.accuracy_stats(**kwargs)

            text, p95 = summary(await timed(call, runs))
            assert stats is not None
            scans = sum(g.scans for g in stats.groups)
            if targeted:
                verdict = "ok" if p95 < P95_TARGET_S else "OVER TARGET"
                failed |= p95 >= P95_TARGET_S
                note = f"target p95 < 50 ms: {verdict}"
            else:
                note = "(reported, no target)"
            print(f"accuracy_stats {label:30s} {scans:>7,} scans  {text}  {note}")

        async def history_call() -> None:
            found = await repo.eta_history("polygon@300/min")
            assert all(len(runs) == HISTORY_SCANS for runs in found.values())

        text, p95 = summary(await timed(history_call, calls))
        verdict = "ok" if p95 < P95_TARGET_S else "OVER TARGET"
        failed |= p95 >= P95_TARGET_S
        print(f"eta_history last {HISTORY_SCANS} of a kind {'':17s}{text}  {verdict}")

        window = (now - timedelta(days=30), now, None, None, None)
        print("EXPLAIN (ANALYZE, BUFFERS), 30-day window:")
        await explain(
            repo, "checkpoints", ACCURACY_CHECKPOINTS_SQL, *window, list(CHECKPOINTS),
            WITHIN_PCT, lines=11,
        )  # fmt: skip
        await explain(repo, "scan figures", ACCURACY_SCANS_SQL, *window)
        await explain(repo, "newest 50", ACCURACY_RECENT_SQL, *window, 50)
        await explain(repo, "eta_history", ETA_HISTORY_SQL, "polygon@300/min", HISTORY_SCANS)
        whole = (all_time, now, None, None, None)
        print("EXPLAIN (ANALYZE, BUFFERS), all scans:")
        await explain(
            repo, "checkpoints", ACCURACY_CHECKPOINTS_SQL, *whole, list(CHECKPOINTS),
            WITHIN_PCT, lines=11,
        )  # fmt: skip
        await explain(repo, "scan figures", ACCURACY_SCANS_SQL, *whole)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{'some figures are over target' if failed else 'all targets met'}; load average {load}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=100_000, help="completed scans stored")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per measurement")
    args = parser.parse_args()
    return run_on_a_server(lambda url: bench(url, args.scans, args.calls))


if __name__ == "__main__":
    sys.exit(main())
