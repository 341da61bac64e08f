"""The ``technic`` command: ``scan`` runs a scan here and now; other subcommands talk to the
database and the service.

Exit codes: 0 done, 1 the scan or service failed, 2 bad arguments (one line on stderr
naming what is wrong), 130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
from technic.cli.exit_codes import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from technic.cli.remote import add_scan_server_options, add_watch_command
from technic.cli.storage_commands import add_storage_commands
from technic.cli.terminal_view import LiveView
from technic.config import Settings, SettingsError
from technic.engine.errors import TechnicError
from technic.engine.scan_config import PROVIDERS, TRADE_STYLES, ScanConfig
from technic.server.views import results_csv
from technic.storage import StorageError

if TYPE_CHECKING:
    from technic.engine.scan import ScanResult

log = logging.getLogger("technic")

TABLE_COLUMNS = (
    ("rank", "#", 4, "{:>4}"),
    ("symbol", "Symbol", 7, "{:<7}"),
    ("sector", "Sector", 24, "{:<24.24}"),
    ("tech_rating", "Rating", 6, "{:>6.1f}"),
    ("signal", "Signal", 11, "{:<11}"),
    ("close", "Close", 9, "{:>9.2f}"),
    ("rsi14", "RSI", 5, "{:>5.1f}"),
    ("ret_21d", "21d", 7, "{:>7.1%}"),
    ("entry", "Entry", 9, "{:>9.2f}"),
    ("stop", "Stop", 9, "{:>9.2f}"),
    ("target", "Target", 9, "{:>9.2f}"),
    ("position_size", "Shares", 7, "{:>7.0f}"),
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: the program, the problem."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date as YYYY-MM-DD, got {text!r}") from None


def _add_scan_parser(commands: Any) -> None:
    scan = commands.add_parser("scan", help="run a scan here and print the ranked candidates")
    scan.add_argument("--provider", choices=PROVIDERS, default="sample")
    scan.add_argument("--data-dir", help="directory of per-symbol CSV files (csv provider)")
    scan.add_argument("--universe", help="universe CSV file (symbol/ticker, name, sector, ...)")
    scan.add_argument("--symbols", type=_positive_int, help="synthetic provider: symbols")
    scan.add_argument("--tickers", nargs="+", metavar="SYMBOL", help="scan only these")
    scan.add_argument("--bars", type=_positive_int, default=504, help="synthetic: bars each")
    scan.add_argument("--seed", type=int, default=7, help="synthetic: random seed")
    scan.add_argument("--as-of", type=_date, help="rate as of this date (YYYY-MM-DD)")
    scan.add_argument("--lookback", type=_positive_int, default=504, help="bars of history")
    scan.add_argument("--sectors", nargs="+", metavar="SECTOR")
    scan.add_argument("--industries", nargs="+", metavar="INDUSTRY")
    scan.add_argument("--max-symbols", type=_positive_int)
    scan.add_argument("--min-tech-rating", type=_number, default=0.0)
    scan.add_argument("--trade-style", choices=TRADE_STYLES, default="swing")
    scan.add_argument("--account-size", type=_number, default=10_000.0)
    scan.add_argument("--risk-pct", type=_number, default=1.0)
    scan.add_argument("--target-rr", type=_number, default=2.0)
    scan.add_argument("--adjusted", action="store_true", help="csv: use Adj Close")
    scan.add_argument("--workers", type=int, help="worker processes (0: scan in-process)")
    scan.add_argument("--no-cache", action="store_true", help="do not use the block cache")
    scan.add_argument("--format", choices=("table", "json", "csv"), default="table")
    scan.add_argument("--output", help="write the results here instead of stdout")
    scan.add_argument("--no-progress", action="store_true", help="no live view on stderr")
    add_scan_server_options(scan)
    scan.set_defaults(func=_scan_command)


def _scan_config(args: argparse.Namespace) -> ScanConfig:
    if args.symbols is not None and args.provider != "synthetic":
        raise argparse.ArgumentTypeError("--symbols applies to --provider synthetic only")
    max_symbols = args.max_symbols
    if args.provider == "synthetic":
        max_symbols = min(args.symbols or 1000, args.max_symbols or args.symbols or 1000)
    return ScanConfig(
        max_symbols=max_symbols or 6000,
        min_tech_rating=args.min_tech_rating,
        sectors=tuple(args.sectors) if args.sectors else None,
        industries=tuple(args.industries) if args.industries else None,
        symbols=tuple(args.tickers) if args.tickers else None,
        as_of=args.as_of,
        lookback_bars=args.lookback,
        trade_style=args.trade_style,
        account_size=args.account_size,
        risk_pct=args.risk_pct,
        target_rr=args.target_rr,
        provider=args.provider,
        data_dir=args.data_dir,
        universe_file=args.universe,
        bars=args.bars,
        seed=args.seed,
        adjusted=args.adjusted,
    )


def _format_results(result: ScanResult, output_format: str) -> str:
    if output_format == "json":
        return orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
    if output_format == "csv":
        return results_csv(result.rows)
    lines = [" ".join(f"{title:>{width}}" for _, title, width, _ in TABLE_COLUMNS)]
    for row in result.rows:
        cells = [
            fmt.format(row[key]) if row.get(key) is not None else " " * width
            for key, _, width, fmt in TABLE_COLUMNS
        ]
        lines.append(" ".join(cells))
    metrics = result.metrics
    lines.append(
        f"{len(result.rows)} candidates, {metrics['symbols_scanned']} scanned, "
        f"{metrics['symbols_failed']} failed, {metrics['total_seconds']:.2f}s"
    )
    return "\n".join(lines) + "\n"


def _scan_command(args: argparse.Namespace) -> int:
    if args.server:
        from technic.cli.remote import remote_scan_command

        return remote_scan_command(args)
    try:
        settings = Settings.from_env()
        config = _scan_config(args)
    except (SettingsError, TechnicError, ValueError, argparse.ArgumentTypeError) as error:
        print(f"technic scan: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    workers = settings.max_workers if args.workers is None else args.workers
    if workers < 0:
        print("technic scan: error: --workers must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    view = LiveView(sys.stderr, enabled=False if args.no_progress else None)
    if not view.enabled and not args.no_progress:
        logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    cache_dir = None if args.no_cache or not settings.use_cache else settings.cache_dir
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    # Imported here: they bring numba and pandas, which no other command needs.
    from technic.engine.scan import run_scan
    from technic.engine.workers import worker_pool

    def work() -> None:
        executor = worker_pool(workers) if workers > 0 else None
        try:
            outcome["result"] = run_scan(
                config,
                on_progress=view.update,
                executor=executor,
                cancel=cancel,
                cache_dir=cache_dir,
            )
        except BaseException as error:
            outcome["error"] = error
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    thread = threading.Thread(target=work, name="technic-scan")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        cancel.set()
        thread.join()
        print("technic scan: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    error = outcome.get("error")
    if error is not None:
        code = EXIT_USAGE if isinstance(error, ValueError) else EXIT_FAILED
        print(f"technic scan: error: {error}", file=sys.stderr)
        return code
    result: ScanResult = outcome["result"]
    if result.status == "cancelled":
        print("technic scan: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    text = _format_results(result, args.format)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _serve_command(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"technic serve: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = dataclasses.replace(settings, **overrides)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # imported here so that a local `technic scan` does not load the web stack
    import uvloop
    from technic.server.app import create_app
    from technic.server.serving import serve

    log.info("technic starting on http://%s:%s", settings.host, settings.port)
    try:
        uvloop.run(serve(create_app(settings), host=settings.host, port=settings.port))
    except (StorageError, OSError) as error:
        print(f"technic serve: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _add_serve_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the HTTP/WebSocket/SSE service")
    serve.add_argument("--host", help="interface to listen on (env HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (env PORT, default 8000)")
    serve.set_defaults(func=_serve_command)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="technic", description="Technical stock scanner service.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_scan_parser(commands)
    _add_serve_parser(commands)
    add_storage_commands(commands)
    add_watch_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))
