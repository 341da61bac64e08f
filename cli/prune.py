"""``technic prune [--dry-run]``: retention by hand, what ``technic serve`` does every hour.

Exit codes as the storage commands: 0 done, 1 the database is unavailable or another process
is pruning it, 2 bad settings (one line on stderr naming the setting).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from technic.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from technic.config.settings import Settings, SettingsError
from technic.server.retention import describe
from technic.storage import StorageError, connect
from technic.storage.retention import Retention, RetentionPolicy


def add_prune_command(subparsers: argparse._SubParsersAction[Any]) -> None:
    prune = subparsers.add_parser(
        "prune",
        help="delete expired scan results (and old scans) now, and say what went",
        description="Delete the result and failure rows of scans finished more than "
        "RESULTS_RETENTION_DAYS ago (their records and stage timings stay), and whole scans "
        "finished more than TIMINGS_RETENTION_DAYS ago; 0 keeps forever.",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would go and change nothing"
    )
    prune.set_defaults(func=run_prune)


def run_prune(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"technic prune: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_prune(settings, dry_run=args.dry_run))


async def _prune(settings: Settings, *, dry_run: bool) -> int:
    policy = RetentionPolicy(settings.results_retention_days, settings.timings_retention_days)
    try:
        database = await connect(settings, max_size=1)
        try:
            report = await Retention(database.pool, policy).prune(dry_run=dry_run)
        finally:
            await database.close()
    except StorageError as error:
        print(f"technic prune: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(describe(report))
    return EXIT_OK
