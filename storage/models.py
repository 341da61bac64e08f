"""Records returned by the repository and the state machines they obey.

The status vocabularies are ``Literal`` types and tuples here, and the same lists are CHECK
constraints in ``migrations/0001_initial.sql``; the database refuses what Python forgot to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, get_args
from uuid import UUID

from technic.engine.progress import ScanStatus, StageStatus
from technic.engine.trend import TrendInterval

StageName = Literal["universe_loading", "data_fetching", "symbol_scanning", "finalization"]

SCAN_STATUSES: Final[tuple[ScanStatus, ...]] = get_args(ScanStatus)
STAGES: Final[tuple[StageName, ...]] = get_args(StageName)
STAGE_STATUSES: Final[tuple[StageStatus, ...]] = get_args(StageStatus)

# Which statuses a scan may move to from each status. A pending scan can fail (bad input found
# when it is picked up), be cancelled while queued, or be interrupted when its process dies.
SCAN_TRANSITIONS: Final[dict[ScanStatus, frozenset[ScanStatus]]] = {
    "pending": frozenset(("running", "failed", "cancelled", "interrupted")),
    "running": frozenset(("completed", "failed", "cancelled", "interrupted")),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
    "interrupted": frozenset(),
}

# Stage moves: a stage starts and then ends, or is skipped, before or after it started (the
# tracker may only learn that a stage has nothing to do once it is under way).
STAGE_TRANSITIONS: Final[dict[StageStatus, frozenset[StageStatus]]] = {
    "pending": frozenset(("running", "skipped")),
    "running": frozenset(("completed", "failed", "skipped")),
    "completed": frozenset(),
    "failed": frozenset(),
    "skipped": frozenset(),
}

# Columns of a result row that get their own typed column because the UI sorts or filters on
# them; the whole row is stored as jsonb as well, so nothing else needs a schema change.
RESULT_TEXT_FIELDS: Final[tuple[str, ...]] = ("symbol", "sector", "signal")
RESULT_NUMBER_FIELDS: Final[tuple[str, ...]] = (
    "tech_rating",
    "close",
    "rsi14",
    "ret_21d",
    "rel_volume",
    "dollar_volume_20d",
    "reward_risk",
)


@dataclass(frozen=True, slots=True)
class StageTiming:
    """One stage of one scan; durations in seconds, throughput in units per second."""

    scan_id: UUID
    stage: StageName
    status: StageStatus
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    units_done: int | None
    units_total: int | None
    throughput: float | None
    # seconds the stage ran after its last unit (engine/eta.py); None when not measured
    tail_s: float | None = None


@dataclass(frozen=True, slots=True)
class Scan:
    """A scan as stored. ``stages`` is filled by ``get_scan`` only, in pipeline order."""

    id: UUID
    status: ScanStatus
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    universe_size: int | None
    symbols_scanned: int | None
    symbols_failed: int | None
    result_count: int
    error: str | None
    metrics: dict[str, Any] | None
    owner: str | None
    # when retention pruned the scan's results and failures (its record and timings stay)
    results_pruned_at: datetime | None = None
    stages: tuple[StageTiming, ...] = ()

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


# what request_cancel did: cancelled an unclaimed fleet scan itself, asked the scan's owner
# to stop it, or found it finished
CancelOutcome = Literal["cancelled", "requested", "finished"]


@dataclass(frozen=True, slots=True)
class FleetAdmission:
    """Whether ``enqueue_scan`` stored the scan, and the fleet's load it judged by:
    unfinished fleet scans (this one included when accepted) and live instances;
    ``claimed`` when it was stored already owned by the instance that asked."""

    accepted: bool
    active: int
    instances: int
    claimed: bool = False


@dataclass(frozen=True, slots=True)
class ScanPage:
    """A page of ``list_scans``; pass ``next_cursor`` back to get the following page."""

    scans: list[Scan]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ResultPage:
    """A page of results: ``rows[i]`` is the dict saved for rank ``ranks[i]``.

    ``total`` counts every row matching the filters, not just this page.
    """

    rows: list[dict[str, Any]]
    ranks: list[int]
    total: int
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Failure:
    """A symbol the scan could not score, and why."""

    symbol: str
    reason: str


# The largest decade a stored universe size (a 32-bit integer column) fills whole.
MAX_BUCKET_SIZE = 999_999_999


@dataclass(frozen=True, slots=True)
class SizeBucket:
    """Universe sizes grouped by order of magnitude: 0-9, 10-99, 100-999, ...

    Decades keep the number of buckets small and stable while separating the regimes that
    behave differently (a 50-symbol scan is dominated by fixed costs, a 5,000-symbol one by
    symbol_scanning).
    """

    low: int
    high: int

    @classmethod
    def of(cls, universe_size: int) -> SizeBucket:
        if universe_size < 0:
            raise ValueError(f"universe size must not be negative, got {universe_size}")
        digits = len(str(universe_size))
        return cls(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    @classmethod
    def parse(cls, text: str) -> SizeBucket:
        """Accept a label such as ``1000-9999`` or a size such as ``2500`` (its bucket)."""
        cleaned = text.strip().replace("_", "").replace(",", "")
        low_text, sep, high_text = cleaned.partition("-")
        if not _is_decimal(low_text) or (sep and not _is_decimal(high_text)):
            raise ValueError(f"expected a universe size or a bucket like 1000-9999, got {text!r}")
        if max(int(low_text), int(high_text or 0)) > MAX_BUCKET_SIZE:
            raise ValueError(f"a universe size is at most {MAX_BUCKET_SIZE}, got {text!r}")
        bucket = cls.of(int(low_text))
        if sep and (bucket.low != int(low_text) or bucket.high != int(high_text)):
            raise ValueError(f"{text!r} is not a bucket; buckets are 0-9, 10-99, 100-999, ...")
        return bucket

    @property
    def label(self) -> str:
        return f"{self.low}-{self.high}"


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class StageStat:
    """Statistics of one stage's completed runs (of one size bucket when bucketed).

    ``share`` is this stage's part of the summed duration of all stages in the same group;
    ``dominant`` marks the stage with the largest share, where time should be saved first.
    """

    stage: StageName
    bucket: SizeBucket | None
    count: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    total_s: float
    symbols_per_s: float | None
    share: float
    dominant: bool


@dataclass(frozen=True, slots=True)
class StageStats:
    """The answer of ``stage_stats``: rows in bucket then pipeline order."""

    since: datetime
    until: datetime
    by_bucket: bool
    stages: list[StageStat] = field(default_factory=list)

    @property
    def dominant_stage(self) -> StageName | None:
        """The stage taking the most total time over the whole window, across buckets."""
        totals: dict[StageName, float] = {}
        for row in self.stages:
            totals[row.stage] = totals.get(row.stage, 0.0) + row.total_s
        return max(totals, key=lambda s: totals[s]) if totals else None


@dataclass(frozen=True, slots=True)
class TrendPoint:
    """One interval of a stage's trend. Percentiles come from the duration histogram
    (engine/trend.py), within 2.5 %; ``complete`` is false for the interval still running."""

    start: datetime
    count: int
    p50_s: float
    p90_s: float
    symbols_per_s: float | None
    complete: bool


@dataclass(frozen=True, slots=True)
class StageTrend:
    """The answer of ``stage_trend``: per stage in pipeline order, its intervals oldest first
    (intervals without a completed run are absent)."""

    since: datetime
    until: datetime
    interval: TrendInterval
    stages: dict[StageName, list[TrendPoint]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckpointAccuracy:
    """The ETA error at one checkpoint over a group's scans, in percent of the actual
    remaining time. ``count`` is the scans whose ETA there could be scored (some time still
    remained); the figures are ``None`` when it is 0."""

    checkpoint: int
    count: int
    median_abs_error_pct: float | None
    p90_abs_error_pct: float | None
    median_error_pct: float | None


@dataclass(frozen=True, slots=True)
class AccuracyGroup:
    """How good the ETAs and the progress bars were for one provider and size bucket.

    ``checkpoints`` has every checkpoint in order, scored or not, so groups line up.
    ``within_10pct_at_10`` is the share (0..1) of the scans scored at the 10 % checkpoint
    whose ETA there was within 10 % of the truth: the issue's goal, as one figure.
    """

    provider: str
    bucket: SizeBucket | None
    scans: int
    checkpoints: tuple[CheckpointAccuracy, ...]
    median_time_linearity: float | None
    median_overall_linearity: float | None
    median_time_stall_s: float | None
    within_10pct_at_10: float | None


@dataclass(frozen=True, slots=True)
class ScanAccuracyRecord:
    """One scan's stored accuracy, as charted: the signed ETA error per checkpoint (``None``
    where it was not recorded or could not be scored)."""

    scan_id: UUID
    finished_at: datetime
    provider: str
    universe_size: int | None
    error_pct: dict[int, float | None]
    time_linearity: float | None
    overall_linearity: float | None


@dataclass(frozen=True, slots=True)
class AccuracyStats:
    """The answer of ``accuracy_stats``: groups by provider then bucket, and the newest
    scans of the window, newest first."""

    since: datetime
    until: datetime
    groups: list[AccuracyGroup] = field(default_factory=list)
    recent: list[ScanAccuracyRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What ``migrate`` did: files applied now, and files found already applied."""

    applied: list[str]
    already_applied: list[str]
    duration_s: float
