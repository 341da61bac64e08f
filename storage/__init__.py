"""PostgreSQL storage for scans, stage timings, results and failures (asyncpg).

Typical use from the server::

    database = await storage.connect(settings)      # embedded server if DATABASE_URL unset
    repo = database.repository
    scan = await repo.create_scan(uuid4(), config)
    ...
    await database.close()

Errors are listed in ``storage.errors``; everything raised on purpose is a ``StorageError``.
"""

from technic.engine.fields import SIGNALS
from technic.storage.database import Database, connect, connect_url
from technic.storage.embedded import EmbeddedPostgres
from technic.storage.errors import (
    DatabaseUnavailable,
    IllegalTransition,
    InvalidInput,
    MigrationError,
    ScanNotFound,
    StorageError,
)
from technic.storage.listen import Listener
from technic.storage.migrate import migrate
from technic.storage.models import (
    SCAN_STATUSES,
    SCAN_TRANSITIONS,
    STAGE_STATUSES,
    STAGE_TRANSITIONS,
    STAGES,
    AccuracyGroup,
    AccuracyStats,
    CancelOutcome,
    CheckpointAccuracy,
    Failure,
    FleetAdmission,
    MigrationReport,
    ResultPage,
    Scan,
    ScanAccuracyRecord,
    ScanPage,
    ScanStatus,
    SizeBucket,
    StageName,
    StageStat,
    StageStats,
    StageStatus,
    StageTiming,
    StageTrend,
)
from technic.storage.repository import (
    CANCEL_CHANNEL,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    MAX_RANK,
    QUEUE_CHANNEL,
    RESULT_SORTS,
    Repository,
    ResultExport,
)

__all__ = [
    "CANCEL_CHANNEL",
    "MAX_OFFSET",
    "MAX_PAGE_SIZE",
    "MAX_RANK",
    "QUEUE_CHANNEL",
    "RESULT_SORTS",
    "SCAN_STATUSES",
    "SCAN_TRANSITIONS",
    "SIGNALS",
    "STAGES",
    "STAGE_STATUSES",
    "STAGE_TRANSITIONS",
    "AccuracyGroup",
    "AccuracyStats",
    "CancelOutcome",
    "CheckpointAccuracy",
    "Database",
    "DatabaseUnavailable",
    "EmbeddedPostgres",
    "Failure",
    "FleetAdmission",
    "IllegalTransition",
    "InvalidInput",
    "Listener",
    "MigrationError",
    "MigrationReport",
    "Repository",
    "ResultExport",
    "ResultPage",
    "Scan",
    "ScanAccuracyRecord",
    "ScanNotFound",
    "ScanPage",
    "ScanStatus",
    "SizeBucket",
    "StageName",
    "StageStat",
    "StageStats",
    "StageStatus",
    "StageTiming",
    "StageTrend",
    "StorageError",
    "connect",
    "connect_url",
    "migrate",
]
