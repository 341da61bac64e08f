"""Engine benchmark: a synthetic 10,000 x 504 scan, against a per-symbol TA-Lib loop.

Run: ``.venv/bin/python tests/bench/bench_engine.py [--symbols N] [--bars B] [--workers W]``

Prints seconds per stage for a cold scan (nothing cached) and a warm one (block cache
and worker pool warm), symbols/s, peak memory, and in the same run the same indicator
set computed symbol by symbol with TA-Lib, with the ratios:

* symbol_scanning stage (W worker processes) vs the TA-Lib loop (one process): what a
  user gets;
* the same stage with its chunks run in one process vs the TA-Lib loop: like for like.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import talib
from technic.engine import ScanConfig, indicators, run_scan
from technic.engine.cache import read_block
from technic.engine.workers import keep_freed_memory, worker_pool


def talib_loop(block, row_start: int, row_stop: int) -> float:
    """The same indicator set, one symbol at a time, as a per-symbol scanner would."""
    started = time.perf_counter()
    for column in range(len(block.symbols)):
        high = np.ascontiguousarray(block.high[row_start:row_stop, column])
        low = np.ascontiguousarray(block.low[row_start:row_stop, column])
        close = np.ascontiguousarray(block.close[row_start:row_stop, column])
        volume = np.ascontiguousarray(block.volume[row_start:row_stop, column])
        for period in (20, 50, 200):
            talib.SMA(close, period)
        talib.EMA(close, 12)
        talib.EMA(close, 26)
        talib.RSI(close, 14)
        talib.MACD(close, 12, 26, 9)
        talib.ATR(high, low, close, 14)
        talib.ADX(high, low, close, 14)
        talib.BBANDS(close, 20, 2.0, 2.0)
        for bars in (1, 5, 21):
            talib.ROCR(close, bars)
        talib.SMA(volume, 20)
        talib.SMA(close * volume, 20)
        talib.MAX(high, 252)
        talib.MIN(low, 10)
    return time.perf_counter() - started


def one_core(config: ScanConfig, cache: Path) -> float:
    """The same scan with chunks run in this process: the engine on one core."""
    keep_freed_memory()
    indicators.warm_up()
    return run_scan(config, cache_dir=cache).stage_timings["symbol_scanning"]


def peak_rss_mib() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=10_000)
    parser.add_argument("--bars", type=int, default=504)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    config = ScanConfig(provider="synthetic", max_symbols=args.symbols, bars=args.bars)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )
    print(f"scan: synthetic {args.symbols} symbols x {args.bars} bars, {args.workers} workers")
    with tempfile.TemporaryDirectory() as cache, worker_pool(args.workers) as pool:
        run_scan(ScanConfig(provider="synthetic", max_symbols=64, bars=64), executor=pool)
        cold = run_scan(config, executor=pool, cache_dir=Path(cache))
        warm = run_scan(config, executor=pool, cache_dir=Path(cache))
        entry = next(p for p in Path(cache).iterdir() if not p.name.startswith("."))
        block, _ = read_block(entry)
        row_stop = len(block.dates)
        row_start = max(0, row_stop - config.lookback_bars)
        single = one_core(config, Path(cache))
        loop = talib_loop(block, row_start, row_stop)
    print()
    print(f"{'stage':<18}{'cold s':>10}{'warm s':>10}")
    for stage in cold.stage_timings:
        print(f"{stage:<18}{cold.stage_timings[stage]:>10.3f}{warm.stage_timings[stage]:>10.3f}")
    print(
        f"{'total':<18}{cold.metrics['total_seconds']:>10.3f}{warm.metrics['total_seconds']:>10.3f}"
    )
    print(
        f"symbols/s: cold {cold.metrics['symbols_per_second']:,.0f}, "
        f"warm {warm.metrics['symbols_per_second']:,.0f}"
    )
    scanning = warm.stage_timings["symbol_scanning"]
    print()
    print(f"TA-Lib per-symbol loop (1 core):           {loop:8.3f} s")
    print(
        f"symbol_scanning stage (1 core, warm):      {single:8.3f} s  ratio {loop / single:5.1f}x"
    )
    print(
        f"symbol_scanning stage ({args.workers} workers, warm):   {scanning:8.3f} s  "
        f"ratio {loop / scanning:5.1f}x"
    )
    own, children = peak_rss_mib()
    print(f"peak RSS: parent {own:,.0f} MiB, largest worker {children:,.0f} MiB")


if __name__ == "__main__":
    main()
