"""The scanning engine: pure, synchronous computation over time-major price blocks.

Nothing here knows about asyncio or SQL; ``run_scan`` can be called from a script, the CLI,
a test or the server alike. One exception to "no I/O" beyond reading files: the
``polygon`` provider (``engine/polygon/``) fetches daily bars over HTTPS from the Massive
(Polygon.io) API and keeps them in a bar store under the data directory. It stays behind
the provider seam, synchronous from the scan's point of view (a few daemon threads send
the requests; cancelling ends every wait), and it never reads the environment: the server
and the CLI pass it the key, host and rate (``polygon.source.source_from_settings``).

The names below are loaded on first use (PEP 562): importing one light module such as
``technic.engine.progress`` (``technic watch`` needs only that) must not pay for numba and
pandas, which ``run_scan`` brings in.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "DataError": "errors",
    "InvalidConfig": "errors",
    "ScanCancelled": "errors",
    "TechnicError": "errors",
    "SCAN_STAGES": "progress",
    "MultiStageProgressTracker": "progress",
    "format_eta": "progress",
    "ROW_FIELDS": "fields",
    "ScanResult": "scan",
    "run_scan": "scan",
    "ScanConfig": "scan_config",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
