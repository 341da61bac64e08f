"""``run_scan``: one scan through its four weighted stages.

1. universe_loading (0.05): read the universe, apply the filters. Units: symbols loaded.
2. data_fetching (0.20): get the bars of the selection, from the block cache when the same
   data was fetched before. Units: symbols fetched, or what the provider says it plans
   (``polygon``: HTTP requests, with their known pace, so the ETA is right at once).
3. symbol_scanning (0.70): column ranges of the cached block go to the executor; each
   finished chunk advances the stage by its symbols. Units: symbols scanned.
4. finalization (0.05): merge, filter by rating, rank, build rows. Units: those 4 steps.

The function is synchronous and knows nothing of asyncio, HTTP or SQL: the CLI calls it
directly, the server calls it in a thread with a ``ProcessPoolExecutor``. Its limits are
passed in (``max_scan_cells``, ``cache_max_bytes``); a scan beyond ``max_scan_cells`` is
refused once its universe is selected, before any bar is fetched. Cancellation is
checked between fetch batches and while waiting for chunks, so it takes effect in well
under a second; the result then says ``cancelled``. Errors mark the scan failed (the last
snapshot says why) and propagate.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from technic.engine.block import Universe
from technic.engine.cache import BlockCache, CacheLease, cache_key, read_block
from technic.engine.chunk import ChunkJob, ChunkResult, scan_chunk
from technic.engine.errors import InvalidConfig, ScanCancelled, WorkerDied
from technic.engine.eta import ScanAccuracy, StagePrior, fit_priors
from technic.engine.fields import NUMERIC_FIELDS, ROW_FIELDS
from technic.engine.progress import MultiStageProgressTracker, Snapshot
from technic.engine.providers import QUIET, Provider, StageProgress, provider_for
from technic.engine.rating import signal
from technic.engine.scan_config import ScanConfig, check_scan_cells
from technic.engine.universe import select

if TYPE_CHECKING:
    from technic.engine.polygon.source import PolygonSource

log = logging.getLogger(__name__)

# Finalisation counts symbols, a quarter of them per step: its cost grows with the scan's
# size, and a prior in symbols (engine.eta) learns that where one in steps could not.
FINALIZATION_STEPS = ("merge", "filter", "rank", "rows")
MAX_AS_OF_BEYOND_DATA_DAYS = 7
CANCEL_POLL_S = 0.2
# How often a working scan's progress goes out even when no unit was counted (a block being
# written, a first request in flight), so its elapsed time and ETA never freeze for watchers.
HEARTBEAT_S = 0.25


class CancelEvent(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class ScanResult:
    """What a scan produced. ``rows`` are ranked candidates; ``failures`` name each skip."""

    status: Literal["completed", "cancelled"]
    config: ScanConfig
    rows: list[dict[str, Any]]
    failures: list[dict[str, str]]
    stage_timings: dict[str, float]
    metrics: dict[str, Any]
    snapshot: Snapshot
    scan_id: str | None = None
    # how right the scan's ETAs were (a completed scan only)
    accuracy: ScanAccuracy | None = None

    def to_dict(self) -> dict[str, Any]:
        """The CLI's ``--format json`` document."""
        return {
            "config": self.config.to_dict(),
            "results": self.rows,
            "metrics": self.metrics,
            "failures": self.failures,
        }


@dataclass
class Selection:
    """The symbols a scan fetches (``universe``), out of ``universe_size`` listed."""

    universe: Universe
    universe_size: int
    failures: dict[str, str] = field(default_factory=dict)


def select_symbols(
    config: ScanConfig,
    *,
    max_scan_cells: int | None = None,
    provider: Provider | None = None,
    progress: StageProgress = QUIET,
) -> Selection:
    """Load the universe and apply the scan's filters, before any bar is fetched.

    Raises ``InvalidConfig`` for an unknown sector or industry, and for a scan beyond
    ``max_scan_cells`` when the provider knows its bars in advance (the csv provider checks
    while fetching). The server calls this to answer 400 before it queues a scan; the scan
    calls it again as its first stage, with its provider and the stage's progress (the
    polygon market universe is fetched, in requests).
    """
    provider = provider or provider_for(config)
    universe = provider.universe(progress)
    chosen, missing = select(
        universe,
        sectors=config.sectors,
        industries=config.industries,
        symbols=config.symbols,
        max_symbols=config.max_symbols,
    )
    bars = provider.bar_count()
    if bars is not None:
        check_scan_cells(len(chosen), bars, max_scan_cells)
    return Selection(chosen, len(universe), {symbol: "not in the universe" for symbol in missing})


def chunk_size_for(symbols: int) -> int:
    """About 16 chunks per scan (smooth progress), each 32 to 1,000 symbols."""
    return max(32, min(1000, math.ceil(symbols / 16)))


def run_scan(
    config: ScanConfig,
    *,
    on_progress: Callable[[Snapshot], None] | None = None,
    executor: Executor | None = None,
    cancel: CancelEvent | None = None,
    cache_dir: Path | None = None,
    priors: Mapping[str, StagePrior] | None = None,
    scan_id: str | None = None,
    progress_interval_s: float = 0.1,
    max_chunks_in_flight: int | None = None,
    max_scan_cells: int | None = None,
    cache_max_bytes: int | None = None,
    polygon: PolygonSource | None = None,
) -> ScanResult:
    """Run one scan. ``executor`` None runs chunks inline; ``cache_dir`` None caches nothing.

    ``polygon`` is the polygon provider's key, host, shared rate limiter and bar store
    (``polygon.source_from_settings``); without it that provider refuses to start.

    ``priors`` (per stage, fitted from past scans of the same kind: ``engine.eta``) make the
    first ETA realistic; without them the measured defaults of the provider apply.
    ``max_chunks_in_flight`` bounds this scan's share of a shared pool (default: twice
    the executor's workers), so concurrent scans interleave instead of queueing whole.
    ``max_scan_cells`` refuses a scan of more symbols x bars (``InvalidConfig``);
    ``cache_max_bytes`` bounds the block cache in ``cache_dir`` (None: no limit for either).
    """
    tracker = MultiStageProgressTracker(
        on_emit=on_progress,
        priors=dict(priors if priors is not None else fit_priors({}, config.provider)),
        scan_id=scan_id,
        min_interval_s=progress_interval_s,
    )
    expected = len(config.symbols) if config.symbols else config.max_symbols
    for stage in ("data_fetching", "symbol_scanning", "finalization"):
        tracker.expect(stage, expected)
    started = time.monotonic()
    tracker.start()

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise ScanCancelled

    try:
        with contextlib.ExitStack() as held:
            held.enter_context(_heartbeat(tracker, max(HEARTBEAT_S, progress_interval_s)))
            store, persistent = held.enter_context(_block_store(cache_dir, cache_max_bytes))
            provider = provider_for(config, max_scan_cells=max_scan_cells, polygon=polygon)
            selection = _load_universe(config, tracker, provider, cancel, max_scan_cells)
            check_cancel()
            lease, cache = _fetch(selection, tracker, store, persistent, provider, cancel)
            held.enter_context(lease)
            chunks = _scan_symbols(
                config, lease.path, tracker, executor, check_cancel, max_chunks_in_flight
            )
            rows, failures, counts = _finalize(config, lease.path, selection, chunks, tracker)
    except ScanCancelled:
        tracker.finish("cancelled", "Scan cancelled")
        return ScanResult(
            status="cancelled",
            config=config,
            rows=[],
            failures=[],
            stage_timings=tracker.stage_durations(),
            metrics=_metrics(tracker, started, 0, 0, {}),
            snapshot=tracker.snapshot(),
            scan_id=scan_id,
        )
    except Exception as error:
        tracker.finish("failed", f"Scan failed: {error}", error=str(error))
        raise
    counts.update(cache)
    # finalisation ends when the scan's block is let go, so no second of the scan is
    # outside a stage (the tracker learns all of it)
    tracker.complete_stage("finalization")
    metrics = _metrics(tracker, started, counts["symbols_scanned"], len(failures), counts)
    tracker.finish("completed", f"Scan complete: {len(rows)} candidates")
    metrics["stage_timings"] = tracker.stage_durations()
    return ScanResult(
        status="completed",
        config=config,
        rows=rows,
        failures=failures,
        stage_timings=metrics["stage_timings"],
        metrics=metrics,
        snapshot=tracker.snapshot(),
        scan_id=scan_id,
        accuracy=tracker.accuracy(),
    )


def _metrics(
    tracker: MultiStageProgressTracker,
    started: float,
    scanned: int,
    failed: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    total_s = time.monotonic() - started
    return {
        "cache_hit_ratio": None,
        "stage_timings": tracker.stage_durations(),
        "symbols_per_second": scanned / total_s if total_s > 0 else 0.0,
        "symbols_scanned": scanned,
        "symbols_failed": failed,
        "total_seconds": total_s,
        **extra,
    }


@contextlib.contextmanager
def _heartbeat(tracker: MultiStageProgressTracker, interval_s: float) -> Iterator[None]:
    """Tick the tracker from a thread of its own while the scan's thread works."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            tracker.tick()

    thread = threading.Thread(target=beat, name="scan-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _block_store(
    cache_dir: Path | None, cache_max_bytes: int | None
) -> Iterator[tuple[BlockCache, bool]]:
    """The persistent cache, or a throw-away one: workers always read from disk."""
    if cache_dir is not None:
        yield BlockCache(Path(cache_dir), cache_max_bytes), True
        return
    with tempfile.TemporaryDirectory(prefix="technic-scan-") as scratch:
        yield BlockCache(Path(scratch)), False


class _StageUnits:
    """A provider's reports for one stage, turned into the tracker's units and messages.

    Until the provider plans (``StageProgress.plan``), a unit is a symbol and the total is
    what the scan set; after, the provider's units (requests), total and known pace.
    """

    def __init__(
        self,
        tracker: MultiStageProgressTracker,
        stage: str,
        doing: str,
        done: str,
        total: int,
        cancel: CancelEvent | None,
    ) -> None:
        self.tracker = tracker
        self.stage = stage
        self.doing_text, self.done_text = doing, done
        self.total = total
        self.unit = "symbols"
        self.done = 0
        self.planned = False
        self.progress = StageProgress(
            on_plan=self._plan,
            on_advance=self._advance,
            cancelled=cancel.is_set if cancel is not None else None,
        )

    def _plan(self, units: int, unit: str, seconds_per_unit: float | None, detail: str) -> None:
        self.planned = True
        self.total, self.unit = units, unit
        self.tracker.set_total(self.stage, units, unit=unit)
        if seconds_per_unit is not None:
            self.tracker.set_pace(self.stage, seconds_per_unit)
        self.tracker.update(self.stage, self.done, f"{self.doing_text} {detail} ({units} {unit})")

    def _advance(self, units: int) -> None:
        self.done += units
        message = f"{self.done_text} {self.done} of {self.total} {self.unit}"
        self.tracker.update(self.stage, self.done, message)


def _load_universe(
    config: ScanConfig,
    tracker: MultiStageProgressTracker,
    provider: Provider,
    cancel: CancelEvent | None,
    max_scan_cells: int | None,
) -> Selection:
    stage = "universe_loading"
    tracker.start_stage(stage, message="Loading universe")
    units = _StageUnits(tracker, stage, "Loading universe:", "Universe:", 0, cancel)
    selection = select_symbols(
        config, max_scan_cells=max_scan_cells, provider=provider, progress=units.progress
    )
    listed, chosen = selection.universe_size, len(selection.universe)
    if not units.planned:
        tracker.set_total(stage, listed)
        tracker.update(stage, listed, f"Loaded {listed} symbols")
    if chosen == 0:
        raise InvalidConfig("symbols", "no symbol of the universe matches the filters")
    for name in ("data_fetching", "symbol_scanning", "finalization"):
        tracker.set_total(name, chosen)
    tracker.complete_stage(stage, f"Selected {chosen} of {listed} symbols")
    return selection


def _fetch(
    selection: Selection,
    tracker: MultiStageProgressTracker,
    store: BlockCache,
    persistent: bool,
    provider: Provider,
    cancel: CancelEvent | None,
) -> tuple[CacheLease, dict[str, Any]]:
    """The block of the selection, held in the store until the scan has read it, and the
    fetch's cache metrics: ``cache_hit`` (the whole block was cached) and
    ``cache_hit_ratio``, the share of the data not fetched from the source (1 on a block
    hit; on a miss what the provider served from a store of its own, 0 for most)."""
    stage = "data_fetching"
    symbols = selection.universe.symbols
    tracker.start_stage(stage, total=len(symbols), message="Fetching price data")
    key = cache_key(provider.identity(), [str(s) for s in symbols])
    cached = store.get(key) if persistent else None
    if cached is not None:
        tracker.update(stage, len(symbols), f"Loaded {len(symbols)} symbols from cache")
        tracker.complete_stage(stage)
        return cached, {"cache_hit": True, "cache_hit_ratio": 1.0}
    units = _StageUnits(tracker, stage, "Fetching", "Fetched", len(symbols), cancel)
    fetched = provider.fetch(symbols, units.progress)
    units.progress.check_cancel()
    lease = store.put(key, fetched.block, fetched.failures)
    tracker.complete_stage(stage, f"Fetched {len(symbols)} symbols")
    return lease, {"cache_hit": False, "cache_hit_ratio": fetched.served_from_store}


def _window(config: ScanConfig, dates: np.ndarray) -> tuple[int, int]:
    """Rows [start, stop) of the block that the indicators see."""
    if len(dates) == 0:
        raise InvalidConfig("symbols", "none of the selected symbols has price data")
    first, last = dates[0].astype(dt.date), dates[-1].astype(dt.date)
    as_of = config.as_of or last
    if as_of < first:
        raise InvalidConfig("as_of", f"{as_of} is before the first date of the data ({first})")
    if (as_of - last).days > MAX_AS_OF_BEYOND_DATA_DAYS:
        raise InvalidConfig("as_of", f"{as_of} is after the last date of the data ({last})")
    stop = int(np.searchsorted(dates, np.datetime64(as_of, "D"), side="right"))
    return max(0, stop - config.lookback_bars), stop


def _scan_symbols(
    config: ScanConfig,
    block_path: Path,
    tracker: MultiStageProgressTracker,
    executor: Executor | None,
    check_cancel: Callable[[], None],
    max_chunks_in_flight: int | None,
) -> list[ChunkResult]:
    stage = "symbol_scanning"
    block, _ = read_block(block_path)
    row_start, row_stop = _window(config, block.dates)
    total = len(block.symbols)
    tracker.start_stage(stage, total=total, message=f"Scanning {total} symbols")
    size = chunk_size_for(total)
    jobs = [
        ChunkJob(
            block_path=str(block_path),
            column_start=start,
            column_stop=min(start + size, total),
            row_start=row_start,
            row_stop=row_stop,
            trade_style=config.trade_style,
            account_size=config.account_size,
            risk_pct=config.risk_pct,
            target_rr=config.target_rr,
        )
        for start in range(0, total, size)
    ]
    results: list[ChunkResult] = []

    def record(result: ChunkResult) -> None:
        results.append(result)
        last_symbol = block.symbols[result.column_stop - 1]
        done = sum(r.column_stop - r.column_start for r in results)
        tracker.update(stage, done, f"Scanning {last_symbol} ({done}/{total})")

    if executor is None:
        for job in jobs:
            check_cancel()
            record(scan_chunk(job))
    else:
        workers = getattr(executor, "_max_workers", 2)
        limit = max_chunks_in_flight or 2 * workers
        pending: set[Future[ChunkResult]] = set()
        queue = list(reversed(jobs))
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    pending.add(executor.submit(scan_chunk, queue.pop()))
                finished, pending = wait(
                    pending, timeout=CANCEL_POLL_S, return_when=FIRST_COMPLETED
                )
                for future in finished:
                    record(future.result())
                check_cancel()
        except BrokenExecutor as error:
            raise WorkerDied(
                "a worker process died while scanning (killed, or out of memory)"
            ) from error
        finally:
            for future in pending:
                future.cancel()
    tracker.complete_stage(stage, f"Scanned {total} symbols")
    return results


def _column(values: np.ndarray) -> list[Any]:
    """A numeric column as Python floats, with None where the value is missing (JSON null)."""
    listed = values.tolist()
    if np.isfinite(values).all():
        return listed
    return [v if math.isfinite(v) else None for v in listed]


def _rows(
    universe: Universe,
    dates: np.ndarray,
    symbols: np.ndarray,
    last_rows: np.ndarray,
    values: dict[str, np.ndarray],
    order: np.ndarray,
) -> list[dict[str, Any]]:
    """Result rows in rank order, built column-wise: numpy -> lists once, then zip."""
    position = {symbol: i for i, symbol in enumerate(universe.symbols)}
    meta = np.array([position[s] for s in symbols[order]], dtype=np.int64)
    columns: dict[str, list[Any]] = {
        "symbol": [str(s) for s in symbols[order]],
        "name": [str(s) for s in universe.names[meta]],
        "sector": [str(s) for s in universe.sectors[meta]],
        "industry": [str(s) for s in universe.industries[meta]],
        "as_of": [str(d) for d in dates[last_rows[order]]],
        "signal": signal(values["tech_rating"][order]).tolist(),
    }
    for name in NUMERIC_FIELDS:
        columns[name] = _column(values[name][order])
    ranks = range(1, len(order) + 1)
    keys = ("rank", *ROW_FIELDS)
    return [
        dict(zip(keys, row, strict=True))
        for row in zip(ranks, *(columns[name] for name in ROW_FIELDS), strict=True)
    ]


def _finalize(
    config: ScanConfig,
    block_path: Path,
    selection: Selection,
    chunks: list[ChunkResult],
    tracker: MultiStageProgressTracker,
) -> tuple[list[dict[str, Any]], list[dict[str, str]], dict[str, Any]]:
    stage = "finalization"
    symbols_in = len(selection.universe)
    tracker.start_stage(stage, total=symbols_in, message="Merging results")

    def step_done(step: int, message: str) -> None:
        tracker.update(stage, symbols_in * step // len(FINALIZATION_STEPS), message)

    block, fetch_failures = read_block(block_path)
    chunks = sorted(chunks, key=lambda c: c.column_start)
    columns = np.concatenate([c.columns for c in chunks]) if chunks else np.empty(0, int)
    last_rows = np.concatenate([c.last_row for c in chunks]) if chunks else np.empty(0, int)
    values = {
        name: np.concatenate([c.values[name] for c in chunks]) if chunks else np.empty(0)
        for name in NUMERIC_FIELDS
    }
    failures = dict(selection.failures)
    failures.update(fetch_failures)
    for chunk in chunks:
        for column, reason in chunk.failures.items():
            failures.setdefault(str(block.symbols[column]), reason)
    step_done(1, "Filtering by rating")

    keep = np.flatnonzero(values["tech_rating"] >= config.min_tech_rating)
    step_done(2, "Ranking")
    symbols = block.symbols[columns]
    order = keep[np.lexsort((symbols[keep].astype(str), -values["tech_rating"][keep]))]
    step_done(3, "Building rows")

    universe = selection.universe
    rows = _rows(universe, block.dates, symbols, last_rows, values, order)
    step_done(4, f"{len(rows)} candidates")
    failure_rows = [{"symbol": s, "reason": failures[s]} for s in sorted(failures)]
    counts = {
        "universe_size": len(universe),
        "symbols_scanned": len(columns),
        "candidates": len(rows),
        "partial_rows_repaired": sum(c.partial_rows for c in chunks),
        "inconsistent_rows_repaired": sum(c.inconsistent_rows for c in chunks),
        "gap_bars_filled": sum(c.gap_rows for c in chunks),
    }
    return rows, failure_rows, counts
