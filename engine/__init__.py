"""The scanning engine: pure, synchronous computation over time-major price blocks.

Nothing here knows about asyncio, HTTP or SQL; ``run_scan`` can be called from a script,
the CLI, a test or the server alike.

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
