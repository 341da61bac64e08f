"""JSON shapes the API answers with, built from jobs in memory or records in the database.

The live path (a scan this process runs) and the stored path (a scan from before a
restart) must give the same shape, so both are built here and nowhere else.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

from technic.engine.fields import ROW_FIELDS
from technic.engine.progress import SCAN_STAGES, format_eta
from technic.engine.trend import IntervalP50, verdict
from technic.storage import AccuracyStats, Scan, SizeBucket, StageStats, StageTrend

PERFORMANCE_KEYS = (
    "total_seconds",
    "symbols_per_second",
    "symbols_scanned",
    "symbols_failed",
    "universe_size",
    "candidates",
    "cache_hit",
    "cache_hit_ratio",
    "partial_rows_repaired",
    "inconsistent_rows_repaired",
    "gap_bars_filled",
)


def progress_from_record(scan: Scan) -> dict[str, Any]:
    """The progress JSON of a stored scan, e.g. one finished before a restart."""
    stages: dict[str, Any] = {}
    by_name = {timing.stage: timing for timing in scan.stages}
    for name, weight in SCAN_STAGES:
        timing = by_name.get(name)
        status = timing.status if timing else "pending"
        done = status in ("completed", "skipped") or scan.status == "completed"
        stages[name] = {
            "weight": weight,
            "progress": 100.0 if done else 0.0,
            "status": status,
            "current": timing.units_done if timing else 0,
            "total": timing.units_total if timing else None,
            "duration": timing.duration_s if timing else None,
            "throughput": timing.throughput if timing else None,
            "eta": 0.0 if done else None,
            "tail": timing.tail_s if timing else None,
        }
    current = next((n for n in reversed(list(stages)) if stages[n]["status"] != "pending"), None)
    overall = sum(s["weight"] * s["progress"] for s in stages.values())
    elapsed = None
    if scan.started_at and scan.finished_at:
        elapsed = (scan.finished_at - scan.started_at).total_seconds()
    finished = scan.finished_at is not None
    return {
        "scan_id": str(scan.id),
        "status": scan.status,
        "current_stage": current,
        "stages": stages,
        "overall_progress": overall,
        # the database keeps no ETA trace: a completed scan's time is all done, another's
        # best measure is how far its stages got
        "time_progress": 100.0 if scan.status == "completed" else overall,
        "overall_eta": 0.0 if finished else None,
        "overall_eta_formatted": format_eta(0.0) if finished else None,
        "stage_progress": stages[current]["progress"] if current else 0.0,
        "stage_eta": 0.0 if finished else None,
        "stage_eta_formatted": format_eta(0.0) if finished else None,
        "stage_throughput": stages[current]["throughput"] if current else None,
        "message": scan.error or f"Scan {scan.status}",
        "seq": 0,
        "epoch": None,  # not from a stream (server/cursor.py)
        "elapsed_seconds": elapsed,
        "started_at": scan.started_at.timestamp() if scan.started_at else None,
        "completed_at": scan.finished_at.timestamp() if scan.finished_at else None,
        "error": scan.error,
    }


def scan_summary(scan: Scan) -> dict[str, Any]:
    duration = None
    if scan.started_at and scan.finished_at:
        duration = (scan.finished_at - scan.started_at).total_seconds()
    return {
        "scan_id": str(scan.id),
        "status": scan.status,
        "created_at": scan.created_at.isoformat(),
        "started_at": scan.started_at.isoformat() if scan.started_at else None,
        "finished_at": scan.finished_at.isoformat() if scan.finished_at else None,
        "duration_seconds": duration,
        "universe_size": scan.universe_size,
        "symbols_scanned": scan.symbols_scanned,
        "symbols_failed": scan.symbols_failed,
        "result_count": scan.result_count,
        "error": scan.error,
        "stage_timings": (scan.metrics or {}).get("stage_timings"),
        "config": scan.config,
    }


def performance_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    metrics = metrics or {}
    return {key: metrics.get(key) for key in PERFORMANCE_KEYS}


def accuracy_json(stats: AccuracyStats) -> dict[str, Any]:
    """The JSON shape of ``GET /stats/accuracy`` and ``technic history --accuracy --format
    json``. A recent scan's errors are keyed by checkpoint as text (JSON object keys)."""
    return {
        "since": stats.since.isoformat(),
        "until": stats.until.isoformat(),
        "groups": [
            {
                "provider": group.provider,
                "bucket": None if group.bucket is None else group.bucket.label,
                "scans": group.scans,
                "checkpoints": [
                    {
                        "checkpoint": point.checkpoint,
                        "count": point.count,
                        "median_abs_error_pct": point.median_abs_error_pct,
                        "p90_abs_error_pct": point.p90_abs_error_pct,
                        "median_error_pct": point.median_error_pct,
                    }
                    for point in group.checkpoints
                ],
                "median_time_linearity": group.median_time_linearity,
                "median_overall_linearity": group.median_overall_linearity,
                "median_time_stall_s": group.median_time_stall_s,
                "within_10pct_at_10": group.within_10pct_at_10,
            }
            for group in stats.groups
        ],
        "recent": [
            {
                "scan_id": str(scan.scan_id),
                "finished_at": scan.finished_at.isoformat(),
                "provider": scan.provider,
                "universe_size": scan.universe_size,
                "error_pct": {str(c): error for c, error in scan.error_pct.items()},
                "time_linearity": scan.time_linearity,
                "overall_linearity": scan.overall_linearity,
            }
            for scan in stats.recent
        ],
    }


CSV_FIELDS = ("rank", *ROW_FIELDS)
# A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection")
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def results_csv(rows: Iterable[Mapping[str, Any]], *, header: bool = True) -> str:
    """Result rows as CSV text (RFC 4180 line ends), the one writer of every CSV export.

    Text from a user's universe file (a name, a sector) is written so that no spreadsheet
    runs it: a text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return
    gets a leading ``'``. Numbers are not text, so a negative return stays a number.
    ``header=False`` gives the lines of rows only, for an export written batch by batch.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=CSV_FIELDS, lineterminator="\r\n", extrasaction="ignore"
    )
    if header:
        writer.writeheader()
    writer.writerows(map(_inert_cells, rows))
    return buffer.getvalue()


def _inert_cells(row: Mapping[str, Any]) -> Mapping[str, Any]:
    if not any(isinstance(v, str) and v.startswith(FORMULA_TRIGGERS) for v in row.values()):
        return row
    return {
        key: f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS) else value
        for key, value in row.items()
    }


def trend_json(trend: StageTrend, bucket: SizeBucket | None = None) -> dict[str, Any]:
    """The JSON shape of ``GET /stats/stages/trend`` and ``technic history --trend``: per
    stage its intervals and the regression verdict (engine/trend.py) over the full ones."""
    stages = []
    for stage, points in trend.stages.items():
        judged = verdict([IntervalP50(p.start, p.count, p.p50_s) for p in points if p.complete])
        stages.append(
            {
                "stage": stage,
                "verdict": {
                    "trend": judged.trend,
                    "change_pct": judged.change_pct,
                    "since": judged.since.isoformat() if judged.since else None,
                    "baseline_p50_s": judged.baseline_p50_s,
                    "latest": judged.latest.isoformat() if judged.latest else None,
                },
                "intervals": [
                    {
                        "start": p.start.isoformat(),
                        "count": p.count,
                        "p50_s": p.p50_s,
                        "p90_s": p.p90_s,
                        "symbols_per_s": p.symbols_per_s,
                        "complete": p.complete,
                    }
                    for p in points
                ],
            }
        )
    return {
        "since": trend.since.isoformat(),
        "until": trend.until.isoformat(),
        "interval": trend.interval,
        "bucket": None if bucket is None else bucket.label,
        "stages": stages,
    }


def stats_json(stats: StageStats, bucket: SizeBucket | None = None) -> dict[str, Any]:
    """The JSON shape of ``technic history --format json`` and of ``GET /stats/stages``."""
    return {
        "since": stats.since.isoformat(),
        "until": stats.until.isoformat(),
        "by_bucket": stats.by_bucket,
        "bucket": None if bucket is None else bucket.label,
        "dominant_stage": stats.dominant_stage,
        "stages": [
            {
                "stage": row.stage,
                "bucket": None if row.bucket is None else row.bucket.label,
                "count": row.count,
                "mean_s": row.mean_s,
                "p50_s": row.p50_s,
                "p90_s": row.p90_s,
                "p99_s": row.p99_s,
                "total_s": row.total_s,
                "symbols_per_s": row.symbols_per_s,
                "share": row.share,
                "dominant": row.dominant,
            }
            for row in stats.stages
        ],
    }
