"""Progress accuracy benchmark (issue 10): how right the ETA is, and how linear the bars are.

Run: ``.venv/bin/python tests/bench/bench_eta.py [--runs 10] [--kinds sample,synthetic,polygon]
[--symbols 100000] [--bars 300] [--polygon-symbols 504] [--polygon-rate 2400]``

For each kind it starts a real ``technic serve`` of its own (embedded PostgreSQL in a
temporary data directory, unless ``DATABASE_URL`` is set; a fresh history, so the kind's
first scan is a cold start) and runs ``--runs`` scans in a row:

- ``sample``: the bundled sample (the default body);
- ``synthetic``: ``--symbols`` synthetic symbols of ``--bars`` bars (100,000 x 300 stays
  under the default ``MAX_SCAN_CELLS``); from the second scan on the block cache holds them;
- ``polygon``: ``--polygon-symbols`` of the sample universe from the local stand-in of the
  API (``tests/polygon_standin.py``, run in this process), paced by ``--polygon-rate``
  requests a minute; the server runs with ``USE_CACHE=false``, so every scan fetches.

Every snapshot of a scan's WebSocket (``/scan/ws/{id}``) is kept with the time this client
received it, and everything is computed here, on the client's clock, independently of the
server: the scan runs from the moment ``POST /scan/start`` answered to the arrival of its
terminal snapshot. ``time_progress`` is read from the snapshot; a server without it gets
``elapsed / (elapsed + overall_eta)`` (client elapsed, never going back, 100 at the end), so
the figures of an older server are comparable. Per scan:

- at the first snapshot where ``time_progress`` reached 10, 25, 50, 75 and 90 %, the
  ``overall_eta`` it carried against the time that really remained (signed error, %:
  positive is pessimistic);
- the R-squared of ``time_progress`` and of ``overall_progress`` against the ideal line from
  0 at the start to 100 at the end (each bar is piecewise linear between snapshots);
- the largest stall of each bar: the longest time it did not move by 0.1 point or more.

The goal (issue 10) concerns the third scan of a kind on: |error at 10 %| <= 10 % and
R-squared of ``time_progress`` >= 0.98.

``--defaults`` measures cold-start priors instead (``engine/eta.py``'s ``DEFAULT_PRIORS``):
see ``measure_defaults``.

Every loop is bounded in count and time; each server is stopped after its kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.polygon_standin import StandIn  # noqa: E402

CHECKPOINTS = (10, 25, 50, 75, 90)
GOAL_FROM_SCAN = 3
GOAL_ERROR_PCT = 10.0
GOAL_R_SQUARED = 0.98
VISIBLE_MOVE = 0.1
SCAN_TIMEOUT_S = 600.0
SERVER_START_TIMEOUT_S = 120.0
POLYGON_KEY = "pk_BENCH_eta_key"
POLYGON_AS_OF = "2017-08-11"
TERMINAL = ("completed", "failed", "cancelled")
KINDS = ("sample", "synthetic", "polygon")


@dataclass
class Sample:
    """One snapshot as this client saw it: seconds since the scan started, and the bars."""

    at: float
    time_progress: float
    overall_progress: float
    overall_eta: float | None


@dataclass
class ScanFigures:
    seconds: float
    errors: dict[int, float | None]
    time_r2: float | None
    overall_r2: float | None
    time_stall_s: float
    overall_stall_s: float
    estimated_time_progress: bool


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- figures of one scan (pure: a list of samples in, numbers out) ---------------------------


def to_samples(received: Sequence[tuple[float, dict[str, Any]]], started: float) -> list[Sample]:
    """Snapshots with their receive times, as samples from ``started``; ``time_progress`` is
    estimated where the server does not send it (see the module docstring)."""
    samples: list[Sample] = []
    shown = 0.0
    for at, snapshot in received:
        elapsed = max(at - started, 0.0)
        eta = snapshot.get("overall_eta")
        if snapshot.get("status") == "completed":
            shown = 100.0
        elif "time_progress" in snapshot:
            shown = float(snapshot["time_progress"])
        elif eta is not None and elapsed + eta > 0:
            shown = max(shown, 100.0 * elapsed / (elapsed + eta))
        overall = float(snapshot.get("overall_progress") or 0.0)
        samples.append(Sample(elapsed, shown, overall, eta))
    return samples


def checkpoint_errors(samples: Sequence[Sample], end: float) -> dict[int, float | None]:
    """Signed error (%) of the overall ETA at the first sample at or past each checkpoint."""
    errors: dict[int, float | None] = {}
    for checkpoint in CHECKPOINTS:
        hit = next((s for s in samples if s.time_progress >= checkpoint), None)
        actual = end - hit.at if hit is not None else 0.0
        if hit is None or hit.overall_eta is None or actual <= 0:
            errors[checkpoint] = None
        else:
            errors[checkpoint] = 100.0 * (hit.overall_eta - actual) / actual
    return errors


def _curve(samples: Sequence[Sample], end: float, field: str) -> tuple[np.ndarray, np.ndarray]:
    """The bar as (time, percent) points: 0 at the start, 100 at the end."""
    times = [0.0, *(s.at for s in samples), end]
    values = [0.0, *(getattr(s, field) for s in samples), 100.0]
    return np.array(times), np.array(values)


def r_squared(samples: Sequence[Sample], end: float, field: str) -> float | None:
    """R-squared of the bar against the ideal line 100 t / end, integrated over time (the
    bar is piecewise linear between samples): 1 - SS(bar - ideal) / SS(bar - its mean)."""
    if end <= 0:
        return None
    times, values = _curve(samples, end, field)
    grid = np.linspace(0.0, end, 4001)
    bar = np.interp(grid, times, values)
    ideal = 100.0 * grid / end
    total = float(np.mean((bar - bar.mean()) ** 2))
    if total == 0:
        return None
    return 1.0 - float(np.mean((bar - ideal) ** 2)) / total


def largest_stall(samples: Sequence[Sample], end: float, field: str) -> float:
    """The longest time between visible moves (>= ``VISIBLE_MOVE`` points) of the bar."""
    times, values = _curve(samples, end, field)
    longest, moved_at, shown = 0.0, 0.0, 0.0
    for at, value in zip(times, values, strict=True):
        if value - shown >= VISIBLE_MOVE:
            longest = max(longest, at - moved_at)
            moved_at, shown = at, value
    return max(longest, end - moved_at)


def figures(received: Sequence[tuple[float, dict[str, Any]]], started: float) -> ScanFigures:
    end = received[-1][0] - started
    samples = to_samples(received, started)
    return ScanFigures(
        seconds=end,
        errors=checkpoint_errors(samples, end),
        time_r2=r_squared(samples, end, "time_progress"),
        overall_r2=r_squared(samples, end, "overall_progress"),
        time_stall_s=largest_stall(samples, end, "time_progress"),
        overall_stall_s=largest_stall(samples, end, "overall_progress"),
        estimated_time_progress=not any("time_progress" in s for _, s in received),
    )


# -- driving a server ------------------------------------------------------------------------


@contextlib.contextmanager
def serve(extra_env: dict[str, str]) -> Iterator[str]:
    """A ``technic serve`` with a fresh data directory; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="technic-bench-eta-") as data_dir:
        env = {
            **os.environ,
            "PORT": str(port),
            "TECHNIC_DATA_DIR": data_dir,
            "LOG_LEVEL": "WARNING",
            **extra_env,
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "technic.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=60)


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/health") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise SystemExit("the server did not start")


async def watched_scan(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> ScanFigures:
    """One scan, watched from its start to its terminal snapshot."""
    async with session.post(f"{url}/scan/start", json=body) as response:
        answer = await response.json()
        if response.status >= 300:
            raise SystemExit(f"scan refused: {response.status} {answer}")
    started = time.monotonic()
    received: list[tuple[float, dict[str, Any]]] = []
    async with asyncio.timeout(SCAN_TIMEOUT_S):
        async with session.ws_connect(f"{url}/scan/ws/{answer['scan_id']}") as ws:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                snapshot = json.loads(message.data)
                received.append((time.monotonic(), snapshot))
                if snapshot.get("status") in TERMINAL:
                    break
    status = received[-1][1].get("status") if received else None
    if status != "completed":
        raise SystemExit(f"scan {answer['scan_id']} ended {status}")
    return figures(received, started)


async def run_kind(url: str, body: dict[str, Any], runs: int) -> list[ScanFigures]:
    async with aiohttp.ClientSession() as session:
        await wait_ready(session, url)
        results = []
        for run in range(runs):
            result = await watched_scan(session, url, body)
            print(f"  scan {run + 1}: {result.seconds:.2f} s", flush=True)
            results.append(result)
        return results


def kind_setup(kind: str, args: argparse.Namespace, standin: StandIn | None) -> tuple:
    if kind == "sample":
        return {"provider": "sample"}, {}
    if kind == "synthetic":
        return {"provider": "synthetic", "max_symbols": args.symbols, "bars": args.bars}, {}
    assert standin is not None
    body = {"provider": "polygon", "max_symbols": args.polygon_symbols, "as_of": POLYGON_AS_OF}
    env = {
        "POLYGON_BASE_URL": standin.url,
        "POLYGON_API_KEY": POLYGON_KEY,
        "POLYGON_RATE_LIMIT": str(args.polygon_rate),
        "USE_CACHE": "false",
    }
    return body, env


# -- report ----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:+6.1f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "  n/a" if value is None else f"{value:.{digits}f}"


def report(kind: str, body: dict[str, Any], results: Sequence[ScanFigures]) -> None:
    estimated = any(r.estimated_time_progress for r in results)
    print(f"\n{kind}: {json.dumps(body)}, {len(results)} scans")
    if estimated:
        print("  (no time_progress from the server: estimated here as elapsed/(elapsed+ETA))")
    head = "  ".join(f"err@{c:>2}%" for c in CHECKPOINTS)
    print(f"  scan  seconds  {head}  R2 time  R2 overall  stall time  stall overall")
    for number, r in enumerate(results, start=1):
        flag = "*" if number >= GOAL_FROM_SCAN else " "
        errors = "  ".join(f"{_pct(r.errors[c])}  " for c in CHECKPOINTS)
        print(
            f"  {number:>3}{flag} {r.seconds:8.2f}  {errors}  {_num(r.time_r2):>7}  "
            f"{_num(r.overall_r2):>10}  {r.time_stall_s:9.2f}s  {r.overall_stall_s:12.2f}s"
        )
    goal = results[GOAL_FROM_SCAN - 1 :]
    print(f"  * scans {GOAL_FROM_SCAN}..{len(results)}, those the goal is about:")
    for checkpoint in CHECKPOINTS:
        errors = [abs(e) for r in goal if (e := r.errors[checkpoint]) is not None]
        if errors:
            print(
                f"    |error| at {checkpoint:>2} %: median {statistics.median(errors):5.1f} %, "
                f"max {max(errors):5.1f} %  ({len(errors)} scans)"
            )
        else:
            print(f"    |error| at {checkpoint:>2} %: no scan reached it")
    time_r2 = [r.time_r2 for r in goal if r.time_r2 is not None]
    overall_r2 = [r.overall_r2 for r in goal if r.overall_r2 is not None]
    median_time_r2 = statistics.median(time_r2) if time_r2 else None
    median_overall_r2 = statistics.median(overall_r2) if overall_r2 else None
    print(
        f"    median R2: time_progress {_num(median_time_r2)}, "
        f"overall_progress {_num(median_overall_r2)}"
    )
    at_ten = [r.errors[10] for r in goal]
    eta_goal = bool(goal) and all(e is not None and abs(e) <= GOAL_ERROR_PCT for e in at_ten)
    r2_goal = bool(goal) and all(r is not None and r >= GOAL_R_SQUARED for r in time_r2)
    r2_goal = r2_goal and len(time_r2) == len(goal)
    print(
        f"    goal |error at 10 %| <= {GOAL_ERROR_PCT:.0f} %: {'holds' if eta_goal else 'FAILS'}; "
        f"R2 time_progress >= {GOAL_R_SQUARED}: {'holds' if r2_goal else 'FAILS'}"
    )


def bench(args: argparse.Namespace) -> None:
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"--kinds: unknown {sorted(unknown)}; known: {', '.join(KINDS)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    with contextlib.ExitStack() as stack:
        standin = stack.enter_context(StandIn(POLYGON_KEY)) if "polygon" in kinds else None
        for kind in kinds:
            body, env = kind_setup(kind, args, standin)
            print(f"\n{kind}: starting a server", flush=True)
            with serve(env) as url:
                results = asyncio.run(run_kind(url, body, args.runs))
            report(kind, body, results)


# -- --defaults: cold-start priors -----------------------------------------------------------

DEFAULT_SIZES = {"sample": (100, 250, 504), "synthetic": (5_000, 20_000, 60_000)}
STAGES = ("universe_loading", "data_fetching", "symbol_scanning", "finalization")


def stage_units(result: Any) -> dict[str, float]:
    """What each stage's time grows with: the symbols it handles (the universe listed for
    universe_loading; the symbols scanned for finalization, whose merge, rank and rows grow
    with them, not with its four steps)."""
    stages = result.snapshot["stages"]
    return {
        "universe_loading": float(stages["universe_loading"]["total"] or 0),
        "data_fetching": float(stages["data_fetching"]["total"] or 0),
        "symbol_scanning": float(stages["symbol_scanning"]["total"] or 0),
        "finalization": float(result.metrics["symbols_scanned"]),
    }


def least_squares(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``fixed_s, per_unit_s`` of the least-squares line through (units, seconds), neither
    below 0 (a negative intercept is noise around a fixed cost of about nothing)."""
    units = np.array([u for u, _ in points])
    seconds = np.array([s for _, s in points])
    if np.ptp(units) == 0:
        return float(seconds.mean()), 0.0
    slope, intercept = np.polyfit(units, seconds, 1)
    slope = max(float(slope), 0.0)
    if intercept < 0:
        return 0.0, float((units @ seconds) / (units @ units))
    return float(intercept), slope


def measure_defaults(args: argparse.Namespace) -> None:
    """Scans in this process as the server runs them (``run_scan`` with a ``WorkerPool``):
    per provider and size, ``--runs`` times a cold scan (a fresh pool and an empty block
    cache, like a new server's first scan) followed by a warm one (same pool, cached
    block); a line per stage is fitted through (units, seconds) of the cold scans, and of
    the warm ones for comparison. Prints the dict to paste into ``DEFAULT_PRIORS``."""
    from technic.engine import ScanConfig, run_scan
    from technic.engine.workers import WorkerPool

    workers = args.workers
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, ")
    print(f"{workers} workers, {args.runs} cold + warm scans per size")
    fitted: dict[str, dict[str, tuple[float, float]]] = {}
    for provider, sizes in DEFAULT_SIZES.items():
        points: dict[str, dict[str, list[tuple[float, float]]]] = {"cold": {}, "warm": {}}
        for size in sizes:
            config = ScanConfig(provider=provider, max_symbols=size)
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="technic-priors-") as cache:
                    pool = WorkerPool(workers)
                    try:
                        for temperature in ("cold", "warm"):
                            result = run_scan(
                                config, executor=pool, cache_dir=Path(cache), progress_interval_s=0
                            )
                            units = stage_units(result)
                            for stage in STAGES:
                                seconds = result.metrics["stage_timings"][stage]
                                points[temperature].setdefault(stage, []).append(
                                    (units[stage], seconds)
                                )
                            timings = result.metrics["stage_timings"]
                            print(
                                f"  {provider} {size} {temperature}: "
                                + ", ".join(f"{s} {timings[s]:.3f}" for s in STAGES),
                                flush=True,
                            )
                    finally:
                        pool.shutdown(wait=True)
        for temperature in ("cold", "warm"):
            print(f"{provider} {temperature}:")
            for stage in STAGES:
                fixed, per_unit = least_squares(points[temperature][stage])
                print(f"  {stage}: fixed {fixed:.4f} s + {per_unit:.3g} s/unit")
        fitted[provider] = {s: least_squares(points["cold"][s]) for s in STAGES}
    fitted["csv"] = fitted["sample"]
    polygon = dict(fitted["sample"])
    polygon["data_fetching"] = (0.05, 0.0)  # paced by the rate limit (set_pace)
    fitted["polygon"] = polygon
    print("\nDEFAULT_PRIORS (cold scans; polygon: the sample's engine work, fetch paced):")
    print("DEFAULT_PRIORS: dict[str, dict[str, StagePrior]] = {")
    for provider in ("sample", "csv", "synthetic", "polygon"):
        print(f'    "{provider}": {{')
        for stage in STAGES:
            fixed, per_unit = fitted[provider][stage]
            print(f'        "{stage}": StagePrior({_round(fixed)}, {_round(per_unit)}),')
        print("    },")
    print("}")


def _round(value: float) -> str:
    """Two significant digits: the priors are estimates, not measurements to the ns."""
    return "0.0" if value == 0 else f"{float(f'{value:.2g}')!r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--symbols", type=int, default=100_000)
    parser.add_argument("--bars", type=int, default=300)
    parser.add_argument("--polygon-symbols", type=int, default=504)
    parser.add_argument("--polygon-rate", type=int, default=2400, help="requests a minute")
    parser.add_argument("--defaults", action="store_true", help="measure DEFAULT_PRIORS")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.runs < 1:
        raise SystemExit("--runs: must be at least 1")
    if args.defaults:
        measure_defaults(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
