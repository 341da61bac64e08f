"""The storage subcommands of ``technic``: ``migrate`` and ``history`` (``--accuracy``,
``--trend``).

``server/cli.py`` calls ``add_storage_commands(subparsers)``; each subcommand sets
``func(args) -> int`` (0 success, 1 database unavailable or migration failed, 2 bad
arguments or settings), prints its result on stdout and any error as one line on stderr.
With ``DATABASE_URL`` unset both use the embedded PostgreSQL in the data directory, so they
work from a fresh clone with nothing installed by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from technic.config.settings import Settings, SettingsError
from technic.engine.trend import INTERVAL_STEPS, TrendInterval
from technic.server.views import accuracy_json, stats_json, trend_json
from technic.storage import (
    STAGES,
    AccuracyStats,
    DatabaseUnavailable,
    InvalidInput,
    MigrationError,
    SizeBucket,
    StageName,
    StageStats,
    StorageError,
    connect,
)
from technic.storage.windows import parse_window


def add_storage_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``migrate`` and ``history`` on the ``technic`` argument parser."""
    migrate = subparsers.add_parser(
        "migrate",
        help="apply pending database migrations and report what was done",
        description="Apply migrations/NNNN_name.sql files not yet applied, in order, each in "
        "its own transaction, under an advisory lock.",
    )
    migrate.add_argument(
        "--migrations-dir", type=Path, default=None, help="directory of migration files"
    )
    migrate.set_defaults(func=run_migrate)

    history = subparsers.add_parser(
        "history",
        help="stage-timing statistics of past scans, or how good their ETAs were",
        description="Per stage: count, mean, p50/p90/p99 seconds, symbols/s and share of time, "
        "over stages completed in the window. With --accuracy: per provider and universe size, "
        "the ETA error at 10, 25, 50, 75 and 90 % of the expected time, the linearity of the "
        "progress bars and the share of scans whose ETA was within 10 % at 10 %. With --trend: "
        "per stage and interval, count, p50/p90 seconds and symbols/s, and whether the latest "
        "full interval is slower or faster than the ones before (GET /stats/stages/trend).",
    )
    history.add_argument(
        "--since",
        default=None,
        help="window length: N followed by m, h, d or w (default 7d; 30d with --trend)",
    )
    history.add_argument("--format", choices=("table", "json"), default="table")
    history.add_argument(
        "--universe-size-bucket",
        default=None,
        metavar="BUCKET",
        help="'all' to split by universe-size decade, or one bucket: 1000-9999, or a size "
        "such as 2500 for its bucket",
    )
    history.add_argument(
        "--accuracy",
        action="store_true",
        help="ETA accuracy and progress linearity of completed scans (GET /stats/accuracy)",
    )
    history.add_argument(
        "--trend",
        action="store_true",
        help="p50 per stage over time and the regression verdict (GET /stats/stages/trend)",
    )
    history.add_argument(
        "--interval", default=None, help="with --trend: 1h, 1d (default) or 1w intervals"
    )
    history.add_argument("--stage", default=None, help="with --trend: only this stage")
    history.add_argument(
        "--provider", default=None, help="with --accuracy or --trend: only this provider's scans"
    )
    history.set_defaults(func=run_history)


def run_migrate(args: argparse.Namespace) -> int:
    settings = _settings("migrate")
    if settings is None:
        return 2
    return asyncio.run(_migrate(settings, getattr(args, "migrations_dir", None)))


async def _migrate(settings: Settings, migrations_dir: Path | None) -> int:
    try:
        database = await connect(settings, migrate=False, migrations_dir=migrations_dir, max_size=1)
        try:
            report = await database.migrate()
            print(f"database: {database.description}")
        finally:
            await database.close()
    except StorageError as e:
        return _fail("migrate", e)
    for name in report.applied:
        print(f"applied {name}")
    total = len(report.applied) + len(report.already_applied)
    if report.applied:
        print(
            f"{_plural(len(report.applied), 'migration')} applied in {report.duration_s:.2f} s;"
            f" schema is up to date ({_plural(total, 'migration')} in total)"
        )
    else:
        print(
            f"nothing to apply; schema is up to date"
            f" ({_plural(total, 'migration')} applied earlier)"
        )
    return 0


def run_history(args: argparse.Namespace) -> int:
    try:
        default_window = "30d" if args.trend else "7d"
        window = parse_window(args.since or default_window, field="--since")
        by_bucket, bucket = _bucket_option(args.universe_size_bucket)
        _check_trend_options(args, by_bucket)
    except ValueError as e:
        print(f"technic history: {e}", file=sys.stderr)
        return 2
    settings = _settings("history")
    if settings is None:
        return 2
    if args.trend:
        return asyncio.run(_trend(settings, window, args, bucket))
    if args.accuracy:  # grouped by size bucket always: "all" and no bucket mean the same
        return asyncio.run(_accuracy(settings, window, args.provider, bucket, args.format))
    return asyncio.run(_history(settings, window, by_bucket, bucket, args.format))


async def _accuracy(
    settings: Settings,
    window: timedelta,
    provider: str | None,
    bucket: SizeBucket | None,
    output: str,
) -> int:
    until = datetime.now(UTC)
    try:
        database = await connect(settings, max_size=1)
        try:
            stats = await database.repository.accuracy_stats(
                until - window, until, provider=provider, bucket=bucket
            )
        finally:
            await database.close()
    except StorageError as e:
        return _fail("history", e)
    if output == "json":
        sys.stdout.write(orjson.dumps(accuracy_json(stats), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print(format_accuracy(stats))
    return 0


async def _history(
    settings: Settings,
    window: timedelta,
    by_bucket: bool,
    bucket: SizeBucket | None,
    output: str,
) -> int:
    try:
        until = datetime.now(UTC)
        since = until - window
    except OverflowError:
        print("technic history: --since reaches before year 1", file=sys.stderr)
        return 2
    try:
        database = await connect(settings, max_size=1)
        try:
            stats = await database.repository.stage_stats(
                since=since, until=until, by_bucket=by_bucket, bucket=bucket
            )
        finally:
            await database.close()
    except StorageError as e:
        return _fail("history", e)
    if output == "json":
        sys.stdout.write(
            orjson.dumps(stats_json(stats, bucket), option=orjson.OPT_INDENT_2).decode()
        )
        sys.stdout.write("\n")
    else:
        print(format_table(stats, bucket))
    return 0


def _check_trend_options(args: argparse.Namespace, by_bucket: bool) -> None:
    """Refuse options of another report, so a typo never silently widens the answer."""
    if args.trend and args.accuracy:
        raise ValueError("--trend and --accuracy: choose one")
    if args.provider is not None and not (args.accuracy or args.trend):
        raise ValueError("--provider: only with --accuracy or --trend")
    for option, value in (("--interval", args.interval), ("--stage", args.stage)):
        if value is not None and not args.trend:
            raise ValueError(f"{option}: only with --trend")
    if args.interval is not None and args.interval not in INTERVAL_STEPS:
        raise ValueError(f"--interval: must be one of {', '.join(INTERVAL_STEPS)}")
    if args.stage is not None and args.stage not in STAGES:
        raise ValueError(f"--stage: must be one of {', '.join(STAGES)}")
    if args.trend and by_bucket:
        raise ValueError("--universe-size-bucket: with --trend, one bucket, not 'all'")


async def _trend(
    settings: Settings, window: timedelta, args: argparse.Namespace, bucket: SizeBucket | None
) -> int:
    try:
        since = datetime.now(UTC) - window
    except OverflowError:
        print("technic history: --since reaches before year 1", file=sys.stderr)
        return 2
    interval: TrendInterval = args.interval or "1d"
    stage: StageName | None = args.stage
    try:
        database = await connect(settings, max_size=1)
        try:
            trend = await database.repository.stage_trend(
                since=since, interval=interval, stage=stage, provider=args.provider, bucket=bucket
            )
        finally:
            await database.close()
    except StorageError as e:
        return _fail("history", e)
    report = trend_json(trend, bucket)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print(format_trend(report, args.provider))
    return 0


def _bucket_option(value: str | None) -> tuple[bool, SizeBucket | None]:
    if value is None:
        return False, None
    if value.strip().lower() == "all":
        return True, None
    try:
        return False, SizeBucket.parse(value)
    except ValueError as e:
        raise ValueError(f"--universe-size-bucket: {e}") from e


def format_table(stats: StageStats, bucket: SizeBucket | None = None) -> str:
    """A plain-text table, one line per stage (and bucket), with the dominant stage marked."""
    span = f"{stats.since:%Y-%m-%d %H:%M} to {stats.until:%Y-%m-%d %H:%M} UTC"
    title = f"Stage timings, {span}"
    if bucket is not None:
        title += f", universe size {bucket.label}"
    if not stats.stages:
        return f"{title}\nno completed stages in this window"
    headers = ["stage", "count", "mean_s", "p50_s", "p90_s", "p99_s", "symbols/s", "share"]
    if stats.by_bucket:
        headers.insert(0, "universe")
    lines = []
    for row in stats.stages:
        cells = [
            row.stage + (" *" if row.dominant else ""),
            str(row.count),
            _seconds(row.mean_s),
            _seconds(row.p50_s),
            _seconds(row.p90_s),
            _seconds(row.p99_s),
            "-" if row.symbols_per_s is None else f"{row.symbols_per_s:,.1f}",
            f"{row.share:.0%}",
        ]
        if stats.by_bucket:
            cells.insert(0, "unknown" if row.bucket is None else row.bucket.label)
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    text_columns = {"stage", "universe"}

    def render(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if h in text_columns else c.rjust(w)
            for c, w, h in zip(cells, widths, headers, strict=True)
        ).rstrip()

    out = [title, render(headers), render(["-" * w for w in widths])]
    out += [render(cells) for cells in lines]
    out.append(f"* dominant stage (largest share of time); overall: {stats.dominant_stage}")
    return "\n".join(out)


INTERVAL_WORDS: dict[str, str] = {"1h": "hourly", "1d": "daily", "1w": "weekly"}


def format_trend(report: dict[str, Any], provider: str | None = None) -> str:
    """A block per stage of the trend JSON (``trend_json``, so the table and the endpoint
    cannot disagree): its verdict in words, then a line per interval, oldest first."""
    since, until = (datetime.fromisoformat(report[key]) for key in ("since", "until"))
    title = f"Stage trends, {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC"
    title += f", {INTERVAL_WORDS[report['interval']]} intervals"
    if provider is not None:
        title += f", provider {provider}"
    if report["bucket"] is not None:
        title += f", universe size {report['bucket']}"
    if not report["stages"]:
        return f"{title}\nno completed stages in this window"
    moment = "%Y-%m-%d %H:%M" if report["interval"] == "1h" else "%Y-%m-%d"
    headers = ["interval", "count", "p50_s", "p90_s", "symbols/s"]
    out = [title]
    for stage in report["stages"]:
        rows = [
            [
                f"{datetime.fromisoformat(point['start']):{moment}}"
                + ("" if point["complete"] else " *"),
                str(point["count"]),
                _seconds(point["p50_s"]),
                _seconds(point["p90_s"]),
                "-" if point["symbols_per_s"] is None else f"{point['symbols_per_s']:,.1f}",
            ]
            for point in stage["intervals"]
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        out += ["", f"{stage['stage']}: {_verdict_words(stage['verdict'], moment)}"]
        out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
                for cells in (headers, ["-" * w for w in widths], *rows)]  # fmt: skip
        if any(not point["complete"] for point in stage["intervals"]):
            out.append("* interval still under way: shown, not judged")
    return "\n".join(out)


def _verdict_words(verdict: dict[str, Any], moment: str) -> str:
    """E.g. ``p50 +38 % since 2026-11-28 (baseline 10.1 s)``, ``steady (p50 +3 %, baseline
    2.0 s)`` or ``not enough runs to judge``."""
    if verdict["trend"] == "unknown":
        return "not enough runs to judge"
    change = "" if verdict["change_pct"] is None else f"{verdict['change_pct']:+.0f} %"
    baseline = f"baseline {_short_seconds(verdict['baseline_p50_s'])} s"
    if verdict["trend"] == "steady":
        return f"steady (p50 {change}, {baseline})" if change else f"steady ({baseline})"
    since = f"{datetime.fromisoformat(verdict['since']):{moment}}"
    return f"p50 {change or verdict['trend']} since {since} ({baseline})"


def _short_seconds(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def format_accuracy(stats: AccuracyStats) -> str:
    """One block per provider and universe size: a line per checkpoint, then linearity."""
    title = f"ETA accuracy, {stats.since:%Y-%m-%d %H:%M} to {stats.until:%Y-%m-%d %H:%M} UTC"
    if not stats.groups:
        return f"{title}\nno completed scans with an accuracy record in this window"
    headers = ["checkpoint", "count", "median |err|", "p90 |err|", "median err"]
    out = [title]
    for group in stats.groups:
        size = "unknown" if group.bucket is None else group.bucket.label
        out += ["", f"{group.provider}, universe size {size}: {_plural(group.scans, 'scan')}"]
        rows = [
            [
                f"{point.checkpoint}%",
                str(point.count),
                _percent(point.median_abs_error_pct),
                _percent(point.p90_abs_error_pct),
                _percent(point.median_error_pct, signed=True),
            ]
            for point in group.checkpoints
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
                for cells in (headers, ["-" * w for w in widths], *rows)]  # fmt: skip
        out.append(
            f"linearity (median R-squared): time {_number(group.median_time_linearity)},"
            f" overall {_number(group.median_overall_linearity)};"
            f" longest stall (median) {_number(group.median_time_stall_s)} s"
        )
        share = group.within_10pct_at_10
        out.append(
            "ETA within 10% at the 10% checkpoint: "
            + ("-" if share is None else f"{share:.0%} of scans")
        )
    return "\n".join(out)


def _percent(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}%" if signed else f"{value:.1f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _seconds(value: float) -> str:
    return f"{value:.3f}" if value < 1000 else f"{value:,.1f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _settings(command: str) -> Settings | None:
    try:
        return Settings.from_env()
    except SettingsError as e:
        print(f"technic {command}: {e}", file=sys.stderr)
        return None


def _fail(command: str, error: StorageError) -> int:
    if isinstance(error, DatabaseUnavailable):
        print(f"technic {command}: {error}", file=sys.stderr)
        return 1
    if isinstance(error, MigrationError):
        print(f"technic {command}: migration failed: {error}", file=sys.stderr)
        return 1
    if isinstance(error, InvalidInput):
        print(f"technic {command}: {error}", file=sys.stderr)
        return 2
    print(f"technic {command}: {error}", file=sys.stderr)
    return 1
