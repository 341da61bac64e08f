"""Multi-stage progress: what a watcher of a scan sees, as plain data.

A scan is a fixed sequence of weighted stages. Each stage counts real units (symbols
loaded, fetched, scanned; finalisation steps), so its percent means something, and
overall progress is exactly ``sum(weight * stage_percent)``. Because each stage's percent
only ever rises, the sum never goes back either.

ETA is computed per stage, not as ``elapsed / progress - elapsed`` (which is wrong as soon
as stages run at different speeds): a running stage extrapolates its own throughput; a
stage that has not started uses a historical prior (seconds per unit) when one is given,
otherwise the seconds-per-weight observed so far. Without priors, no ETA is given until
the first unit of work is done, because before that any number would be a guess. A stage
whose cost per unit is known in advance (``set_pace``: requests under a rate limit) is never
estimated faster than that pace, so its ETA is right from its first second, and not fooled
by a few quick first units.

The tracker is a sans-I/O object: it keeps state and calls ``on_emit(snapshot)``; it never
sleeps, never touches a socket, and reads time only through the injected clocks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

StageStatus = Literal["pending", "running", "completed", "failed", "skipped"]
ScanStatus = Literal["pending", "running", "completed", "failed", "cancelled", "interrupted"]
# A scan in one of these has ended and never moves again; so has a stage in STAGE_END_STATUSES.
TERMINAL_STATUSES: frozenset[ScanStatus] = frozenset(
    ("completed", "failed", "cancelled", "interrupted")
)
STAGE_END_STATUSES: frozenset[StageStatus] = frozenset(("completed", "failed", "skipped"))

SCAN_STAGES: tuple[tuple[str, float], ...] = (
    ("universe_loading", 0.05),
    ("data_fetching", 0.20),
    ("symbol_scanning", 0.70),
    ("finalization", 0.05),
)

Snapshot = dict[str, Any]
# What a stage counts unless it says otherwise (``set_total(..., unit=)``: a network
# provider's data_fetching counts requests).
STAGE_UNITS = {
    "universe_loading": "symbols",
    "data_fetching": "symbols",
    "symbol_scanning": "symbols",
    "finalization": "steps",
}


def format_eta(seconds: float | None) -> str | None:
    """Human text for a duration, rounded to the nearest second with halves up.

    Under a minute "45s", under an hour "2m 1s", from an hour "1h 2m" (minutes rounded,
    halves up). The original truncated, so 120.5 s read "2m 0s".
    """
    if seconds is None or not math.isfinite(seconds):
        return None
    whole = math.floor(max(seconds, 0.0) + 0.5)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    minutes = math.floor(whole / 60 + 0.5)
    return f"{minutes // 60}h {minutes % 60}m"


@dataclass
class _Stage:
    name: str
    weight: float
    status: StageStatus = "pending"
    current: float = 0.0
    total: float | None = None
    percent: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    first_unit_at: float | None = None
    unit: str = "units"

    def elapsed(self, now: float) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at if self.finished_at is not None else now) - self.started_at


@dataclass
class MultiStageProgressTracker:
    """Tracks weighted stages and emits throttled snapshots.

    ``stages`` is a sequence of ``(name, weight)`` with weights summing to 1.
    ``priors`` maps a stage name to historical seconds per unit.
    ``on_emit`` receives every snapshot that passes the throttle: at most one per
    ``min_interval_s``, except that stage changes and the terminal state always go out.
    """

    stages: Sequence[tuple[str, float]] = SCAN_STAGES
    on_emit: Callable[[Snapshot], None] | None = None
    priors: Mapping[str, float] = field(default_factory=dict)
    scan_id: str | None = None
    min_interval_s: float = 0.1
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages: at least one stage is needed")
        names = [name for name, _ in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("stages: names must be unique")
        weights = [weight for _, weight in self.stages]
        if any(w < 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
            raise ValueError(f"stages: weights must be >= 0 and sum to 1, got {sum(weights)}")
        if self.min_interval_s < 0:
            raise ValueError("min_interval_s: must be >= 0")
        self._stages = {
            name: _Stage(name, weight, unit=STAGE_UNITS.get(name, "units"))
            for name, weight in self.stages
        }
        self._status: ScanStatus = "pending"
        self._current: str | None = None
        self._message = ""
        self._error: str | None = None
        self._seq = 0
        self._started_mono: float | None = None
        self._started_wall: float | None = None
        self._completed_wall: float | None = None
        self._ended_mono: float | None = None
        self._last_emit_mono: float | None = None
        self._paces: dict[str, float] = {}

    # -- updates ---------------------------------------------------------------------------

    def start(self, message: str = "Scan started") -> None:
        """Mark the scan running; the elapsed clock starts here."""
        self._started_mono = self.clock()
        self._started_wall = self.wall_clock()
        self._status = "running"
        self._message = message
        self._emit(force=True)

    def set_total(self, stage: str, total: float, *, unit: str | None = None) -> None:
        """Declare how many units a stage has (may be called before the stage starts),
        and what a unit is when it is not the stage's usual one."""
        if total < 0 or not math.isfinite(total):
            raise ValueError(f"total: must be a finite number >= 0, got {total}")
        record = self._stage(stage)
        record.total = float(total)
        if unit is not None:
            record.unit = unit

    def set_pace(self, stage: str, seconds_per_unit: float) -> None:
        """A stage's seconds per unit known in advance (a rate limit): its ETA never
        assumes a faster pace, whatever the first few units took."""
        if seconds_per_unit < 0 or not math.isfinite(seconds_per_unit):
            raise ValueError(
                f"seconds_per_unit: must be a finite number >= 0, got {seconds_per_unit}"
            )
        self._stage(stage)
        self._paces[stage] = float(seconds_per_unit)

    def start_stage(self, stage: str, total: float | None = None, message: str = "") -> None:
        if self._started_mono is None:
            self.start()
        record = self._stage(stage)
        if total is not None:
            self.set_total(stage, total)
        record.status = "running"
        record.started_at = self.clock()
        self._current = stage
        self._message = message or f"Starting {stage}"
        log.info("Starting stage: %s", stage)
        self._emit(force=True)

    def advance(self, stage: str, units: float = 1.0, message: str | None = None) -> None:
        """Count ``units`` more done in a running stage."""
        record = self._stage(stage)
        self.update(stage, record.current + units, message)

    def update(self, stage: str, current: float, message: str | None = None) -> None:
        """Set the units done so far in a running stage."""
        record = self._stage(stage)
        if record.status != "running":
            raise ValueError(f"stage {stage} is {record.status}, not running")
        if record.current == 0 and current > 0:
            record.first_unit_at = self.clock()
        record.current = max(record.current, float(current))
        if record.total:
            fraction = min(record.current / record.total, 1.0)
            record.percent = max(record.percent, 100.0 * fraction)
        if message is not None:
            self._message = message
        self._emit(force=False)

    def complete_stage(self, stage: str, message: str = "") -> None:
        record = self._stage(stage)
        record.status = "completed"
        record.percent = 100.0
        if record.total is None:
            record.total = record.current
        record.finished_at = self.clock()
        self._message = message or f"Completed {stage}"
        log.info("Completed stage: %s (%.1fs)", stage, record.elapsed(record.finished_at))
        self._emit(force=True)

    def skip_stage(self, stage: str, message: str = "") -> None:
        """A stage with nothing to do counts as done, so the overall bar still reaches 100."""
        record = self._stage(stage)
        record.status = "skipped"
        record.percent = 100.0
        now = self.clock()
        record.started_at = record.started_at if record.started_at is not None else now
        record.finished_at = now
        self._message = message or f"Skipped {stage}"
        self._emit(force=True)

    def finish(self, status: ScanStatus, message: str = "", error: str | None = None) -> None:
        """End the scan. A failed scan marks its running stage failed; the state is final."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status: {status} is not a terminal status")
        now = self.clock()
        for record in self._stages.values():
            if record.status == "running":
                record.status = "completed" if status == "completed" else "failed"
                record.finished_at = now
        self._status = status
        self._error = error
        self._message = message or f"Scan {status}"
        self._ended_mono = now
        self._completed_wall = self.wall_clock()
        self._emit(force=True)

    # -- reading ---------------------------------------------------------------------------

    @property
    def status(self) -> ScanStatus:
        return self._status

    @property
    def overall_progress(self) -> float:
        return sum(record.weight * record.percent for record in self._stages.values())

    def stage_durations(self) -> dict[str, float]:
        """Seconds per finished stage, in stage order."""
        return {
            name: record.elapsed(self.clock())
            for name, record in self._stages.items()
            if record.finished_at is not None
        }

    def snapshot(self) -> Snapshot:
        """The seed's progress JSON plus seq, elapsed_seconds, timestamps and stage detail."""
        now = self.clock()
        estimates = self._stage_estimates(now)
        stages: dict[str, Any] = {}
        for name, record in self._stages.items():
            elapsed = record.elapsed(now)
            throughput = record.current / elapsed if record.current and elapsed > 0 else None
            remaining = self._remaining(record, estimates.get(name), now)
            stages[name] = {
                "weight": record.weight,
                "progress": record.percent,
                "status": record.status,
                "current": record.current,
                "total": record.total,
                "duration": elapsed if record.started_at is not None else None,
                "throughput": throughput,
                "eta": remaining,
                "unit": record.unit,
            }
        overall_eta = self._overall_eta(estimates, now)
        current = stages.get(self._current) if self._current else None
        end = self._ended_mono if self._ended_mono is not None else now
        elapsed_total = end - self._started_mono if self._started_mono is not None else 0.0
        return {
            "scan_id": self.scan_id,
            "status": self._status,
            "current_stage": self._current,
            "stages": stages,
            "overall_progress": self.overall_progress,
            "overall_eta": overall_eta,
            "overall_eta_formatted": format_eta(overall_eta),
            "stage_progress": current["progress"] if current else 0.0,
            "stage_eta": current["eta"] if current else None,
            "stage_eta_formatted": format_eta(current["eta"]) if current else None,
            "stage_throughput": current["throughput"] if current else None,
            "message": self._message,
            "seq": self._seq,
            "elapsed_seconds": elapsed_total,
            "started_at": self._started_wall,
            "completed_at": self._completed_wall,
            "error": self._error,
        }

    # -- internals -------------------------------------------------------------------------

    def _stage(self, stage: str) -> _Stage:
        try:
            return self._stages[stage]
        except KeyError:
            raise ValueError(f"stage: unknown stage {stage!r}") from None

    def _stage_estimates(self, now: float) -> dict[str, float]:
        """Estimated total seconds per stage, from what was observed or from priors."""
        estimates: dict[str, float] = {}
        for name, record in self._stages.items():
            pace = self._paces.get(name)
            if record.finished_at is not None:
                estimates[name] = record.elapsed(now)
            elif record.status == "running" and record.total and (record.current > 0 or pace):
                elapsed = record.elapsed(now)
                left = max(record.total - record.current, 0.0)
                if pace is None:
                    per_unit = elapsed / record.current
                elif record.current >= 2 and record.first_unit_at is not None:
                    # units after the first: the wait for the first answer is paid once
                    per_unit = max(pace, (now - record.first_unit_at) / (record.current - 1))
                else:
                    per_unit = pace
                estimates[name] = elapsed + left * per_unit
            elif (name in self.priors or pace) and record.total is not None:
                per_unit = max(self.priors.get(name, 0.0), pace or 0.0)
                estimates[name] = per_unit * record.total
        return estimates

    def _remaining(self, record: _Stage, estimate: float | None, now: float) -> float | None:
        if record.finished_at is not None:
            return 0.0
        if estimate is None:
            return None
        return max(estimate - record.elapsed(now), 0.0)

    def _overall_eta(self, estimates: dict[str, float], now: float) -> float | None:
        if self._status in TERMINAL_STATUSES:
            return 0.0
        observed = [
            name
            for name, record in self._stages.items()
            if record.finished_at is not None or (record.status == "running" and record.current)
        ]
        if not observed and not any(name in self.priors for name in self._stages):
            return None
        if not estimates:
            return None
        observed_weight = sum(self._stages[name].weight for name in estimates)
        seconds_per_weight = sum(estimates.values()) / observed_weight if observed_weight else 0.0
        remaining = 0.0
        for name, record in self._stages.items():
            estimate = estimates.get(name, record.weight * seconds_per_weight)
            remaining += self._remaining(record, estimate, now) or 0.0
        return remaining

    def _emit(self, *, force: bool) -> None:
        now = self.clock()
        if (
            not force
            and self._last_emit_mono is not None
            and now - self._last_emit_mono < self.min_interval_s
        ):
            return
        self._last_emit_mono = now
        self._seq += 1
        if self.on_emit is not None:
            self.on_emit(self.snapshot())
