"""The ``technic`` command: ``scan`` runs a scan here and now; other subcommands talk to the
database and the service.

Exit codes: 0 done, 1 the scan or service failed, 2 bad arguments (one line on stderr
naming what is wrong), 130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from technic.cli.exit_codes import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from technic.cli.output import format_results, write_output
from technic.cli.processes import MAX_PROCESSES, REUSE_PORT_FLAG, serve_processes
from technic.cli.prune import add_prune_command
from technic.cli.remote import add_watch_command
from technic.cli.scan_options import add_scan_arguments, scan_config
from technic.cli.storage_commands import add_storage_commands
from technic.cli.terminal_view import LiveView
from technic.config import Settings, SettingsError
from technic.engine.errors import TechnicError
from technic.engine.polygon.source import MISSING_KEY_MESSAGE, source_from_settings
from technic.storage import StorageError

if TYPE_CHECKING:
    from technic.engine.scan import ScanResult

log = logging.getLogger("technic")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: the program, the problem."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _scan_command(args: argparse.Namespace) -> int:
    if args.server:
        from technic.cli.remote import remote_scan_command

        return remote_scan_command(args)
    try:
        settings = Settings.from_env()
        config = scan_config(args)
    except (SettingsError, TechnicError, ValueError, argparse.ArgumentTypeError) as error:
        print(f"technic scan: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if config.provider == "polygon" and not settings.polygon_api_key:
        print(f"technic scan: error: {MISSING_KEY_MESSAGE}", file=sys.stderr)
        return EXIT_USAGE
    workers = settings.max_workers if args.workers is None else args.workers
    if workers < 0:
        print("technic scan: error: --workers must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    view = LiveView(sys.stderr, enabled=False if args.no_progress else None)
    if not view.enabled and not args.no_progress:
        logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    cache_dir = None if args.no_cache or not settings.use_cache else settings.cache_dir
    polygon = source_from_settings(settings, keep_bars=cache_dir is not None)
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
                polygon=polygon,
                max_scan_cells=settings.max_scan_cells,
                cache_max_bytes=settings.cache_max_bytes,
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
    text = format_results(result.rows, result.metrics, args.format, result.to_dict())
    write_output(text, args.output)
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
    if args.processes > 1:
        return serve_processes(settings, args.processes)
    # imported here so that a local `technic scan` does not load the web stack
    import uvloop
    from technic.server.app import create_app
    from technic.server.serving import serve

    log.info("technic starting on http://%s:%s", settings.host, settings.port)
    try:
        app = create_app(settings)
        uvloop.run(serve(app, host=settings.host, port=settings.port, reuse_port=args.reuse_port))
    except (StorageError, OSError) as error:
        print(f"technic serve: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _add_serve_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the HTTP/WebSocket/SSE service")
    serve.add_argument("--host", help="interface to listen on (env HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (env PORT, default 8000)")
    serve.add_argument(
        "--processes",
        type=_processes,
        default=1,
        help="server processes sharing the port and the worker budget, as fleet members "
        "(needs REDIS_URL; default 1)",
    )
    serve.add_argument(REUSE_PORT_FLAG, action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve_command)


def _processes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_PROCESSES}, got {value}")
    return value


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
    scan = commands.add_parser("scan", help="run a scan here and print the ranked candidates")
    add_scan_arguments(scan)
    scan.set_defaults(func=_scan_command)
    _add_serve_parser(commands)
    add_storage_commands(commands)
    add_prune_command(commands)
    add_watch_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))
