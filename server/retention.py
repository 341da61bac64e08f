"""Pruning in the background of ``technic serve`` (storage/retention.py does the deleting).

The first round runs shortly after start (so a server restarted often still prunes), then
one every ``PRUNE_INTERVAL_S``. In a fleet every instance runs the loop; the prune lock lets
one of them prune and the others skip the round, so a dead pruner is replaced by the next.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from technic.storage import StorageError
from technic.storage.retention import PRUNED_TABLES, PruneInProgress, PruneReport, Retention

log = logging.getLogger(__name__)

# seconds after start of the first round (or PRUNE_INTERVAL_S, when shorter)
FIRST_PRUNE_DELAY_S: Final = 60.0
_UTC: Final = "%Y-%m-%d %H:%M:%S UTC"


async def prune_forever(retention: Retention, interval_s: float) -> None:
    """Prune every ``interval_s`` until cancelled; a failed round is logged and retried."""
    await asyncio.sleep(min(FIRST_PRUNE_DELAY_S, interval_s))
    while True:
        try:
            report = await retention.prune()
        except PruneInProgress:
            log.info("prune skipped: another instance is pruning")
        except StorageError as error:
            log.warning("prune failed, retrying in %g s: %s", interval_s, error)
        else:
            log.log(logging.INFO if report.total_rows else logging.DEBUG, "%s", describe(report))
        await asyncio.sleep(interval_s)


def describe(report: PruneReport) -> str:
    """One line: rows per table, how many scans lost their results, and the horizons."""
    verb = "would remove" if report.dry_run else "removed"
    tables = ", ".join(f"{table} {report.rows[table]:,}" for table in PRUNED_TABLES)
    horizons = []
    if report.results_cutoff is not None:
        horizons.append(f"results of scans finished before {report.results_cutoff:{_UTC}}")
    if report.timings_cutoff is not None:
        horizons.append(f"scans finished before {report.timings_cutoff:{_UTC}}")
    return (
        f"prune {verb} {report.total_rows:,} rows ({tables}) in {report.duration_s:.2f} s;"
        f" {report.results_pruned_scans:,} scans lost their results; horizons: "
        + ("; ".join(horizons) or "none (retention off)")
    )
