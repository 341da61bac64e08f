"""The scanning engine: pure, synchronous computation over time-major price blocks.

Nothing here knows about asyncio, HTTP or SQL; ``run_scan`` can be called from a script,
the CLI, a test or the server alike.
"""

from technic.engine.errors import DataError, InvalidConfig, ScanCancelled, TechnicError
from technic.engine.progress import SCAN_STAGES, MultiStageProgressTracker, format_eta
from technic.engine.scan import ROW_FIELDS, ScanResult, run_scan
from technic.engine.scan_config import ScanConfig

__all__ = [
    "ROW_FIELDS",
    "SCAN_STAGES",
    "DataError",
    "InvalidConfig",
    "MultiStageProgressTracker",
    "ScanCancelled",
    "ScanConfig",
    "ScanResult",
    "TechnicError",
    "format_eta",
    "run_scan",
]
