"""Multi-stage progress: what a watcher of a scan sees, as plain data.

A scan is a fixed sequence of weighted stages. Each stage counts real units (symbols
loaded, fetched, scanned; finalisation steps), so its percent means something, and
overall progress is exactly ``sum(weight * stage_percent)``. Because each stage's percent
only ever rises, the sum never goes back either.

ETA is computed per stage, not as ``elapsed / progress - elapsed`` (which is wrong as soon
as stages run at different speeds). A stage that has not started is estimated from its
prior (``engine.eta.StagePrior``: fixed seconds plus seconds per unit, learned from past
scans of the same kind) when one is given, otherwise from the seconds-per-weight observed so
far. A running stage blends its prior with its own observed rate, the prior weighing the
share of units still to do, so the estimate moves from history to evidence smoothly instead
of switching when the first chunk lands. Without priors, no ETA is given until the first
unit of work is done, because before that any number would be a guess. A stage whose cost
per unit is known in advance (``set_pace``: requests under a rate limit) is never estimated
faster than that pace, so its ETA is right from its first second, and not fooled by a few
quick first units.

Two bars. ``overall_progress`` is the seed's weighted sum of stage percents, exactly; with
fixed weights it is not linear in time (a fetch that takes 80 % of the time is 20 % of the
bar). ``time_progress`` is the share of the expected total time done,
``elapsed / (elapsed + overall_eta)``: it never goes back, reaches 100 only at the end, and
with good priors grows linearly in time, so it is the bar a person watches.

Measured, not claimed: when ``time_progress`` passes 10, 25, 50, 75 and 90 % the tracker
notes the overall ETA, and it traces both bars as watchers saw them (every emitted
snapshot), so a completed scan can say how right its ETA was and how steady its bars were
(``accuracy()``, an ``engine.eta.ScanAccuracy``).

The tracker is a sans-I/O object: it keeps state and calls ``on_emit(snapshot)``; it never
sleeps, never touches a socket, and reads time only through the injected clocks.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar

from technic.engine.eta import (
    CHECKPOINTS,
    EtaCheckpoint,
    ProgressTrace,
    ScanAccuracy,
    StagePrior,
)

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
# time_progress while a scan runs: 100 means done, which only the end may say.
TIME_PROGRESS_CAP = 99.9
# What a stage counts unless it says otherwise (``set_total(..., unit=)``: a network
# provider's data_fetching counts requests).
STAGE_UNITS = {
    "universe_loading": "symbols",
    "data_fetching": "symbols",
    "symbol_scanning": "symbols",
    "finalization": "symbols",
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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _synchronized(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run under the tracker's lock: the scan's thread updates it while a heartbeat thread
    (``tick``) and readers look at it."""

    @functools.wraps(method)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return locked


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
    # when the first report of done units arrived, and how many it counted: the rate after
    # it excludes what the stage pays before its first unit (starting workers, a first request)
    first_unit_at: float | None = None
    first_units: float = 0.0
    # when every unit was counted: what the stage does after it is its tail (engine.eta)
    units_done_at: float | None = None
    # the units the stage is expected to have before its total is known (``expect``)
    expected: float | None = None
    unit: str = "units"

    def elapsed(self, now: float) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at if self.finished_at is not None else now) - self.started_at

    def tail(self) -> float | None:
        """Seconds a finished stage ran after its last unit (None: not finished, or its
        units never all counted)."""
        if self.finished_at is None or self.units_done_at is None:
            return None
        return self.finished_at - self.units_done_at


@dataclass
class MultiStageProgressTracker:
    """Tracks weighted stages and emits throttled snapshots.

    ``stages`` is a sequence of ``(name, weight)`` with weights summing to 1.
    ``priors`` maps a stage name to its ``StagePrior`` (from past scans, or measured defaults).
    ``on_emit`` receives every snapshot that passes the throttle: at most one per
    ``min_interval_s``, except that stage changes and the terminal state always go out.
    """

    stages: Sequence[tuple[str, float]] = SCAN_STAGES
    on_emit: Callable[[Snapshot], None] | None = None
    priors: Mapping[str, StagePrior] = field(default_factory=dict)
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
        self._time_progress = 0.0
        # (checkpoint, elapsed_s, predicted_remaining_s) in the order they were passed
        self._checkpoints: list[tuple[int, float, float]] = []
        self._time_trace = ProgressTrace()
        self._overall_trace = ProgressTrace()
        self._lock = threading.RLock()

    # -- updates ---------------------------------------------------------------------------

    @_synchronized
    def start(self, message: str = "Scan started") -> None:
        """Mark the scan running; the elapsed clock starts here."""
        self._started_mono = self.clock()
        self._started_wall = self.wall_clock()
        self._status = "running"
        self._message = message
        self._emit(force=True)

    @_synchronized
    def set_total(self, stage: str, total: float, *, unit: str | None = None) -> None:
        """Declare how many units a stage has (may be called before the stage starts),
        and what a unit is when it is not the stage's usual one."""
        if total < 0 or not math.isfinite(total):
            raise ValueError(f"total: must be a finite number >= 0, got {total}")
        record = self._stage(stage)
        record.total = float(total)
        if unit is not None:
            record.unit = unit

    @_synchronized
    def expect(self, stage: str, units: float) -> None:
        """How many units a stage will probably have, before ``set_total`` knows: the ETA of
        a stage whose total is not known yet is then its prior for that many units."""
        if units < 0 or not math.isfinite(units):
            raise ValueError(f"units: must be a finite number >= 0, got {units}")
        self._stage(stage).expected = float(units)

    @_synchronized
    def set_pace(self, stage: str, seconds_per_unit: float) -> None:
        """A stage's seconds per unit known in advance (a rate limit): its ETA never
        assumes a faster pace, whatever the first few units took."""
        if seconds_per_unit < 0 or not math.isfinite(seconds_per_unit):
            raise ValueError(
                f"seconds_per_unit: must be a finite number >= 0, got {seconds_per_unit}"
            )
        self._stage(stage)
        self._paces[stage] = float(seconds_per_unit)

    @_synchronized
    def start_stage(self, stage: str, total: float | None = None, message: str = "") -> None:
        if self._started_mono is None:
            self.start()
        record = self._stage(stage)
        if total is not None:
            self.set_total(stage, total)
        record.started_at = self._boundary(self.clock())
        record.status = "running"
        self._current = stage
        self._message = message or f"Starting {stage}"
        log.info("Starting stage: %s", stage)
        self._emit(force=True)

    @_synchronized
    def advance(self, stage: str, units: float = 1.0, message: str | None = None) -> None:
        """Count ``units`` more done in a running stage."""
        record = self._stage(stage)
        self.update(stage, record.current + units, message)

    @_synchronized
    def update(self, stage: str, current: float, message: str | None = None) -> None:
        """Set the units done so far in a running stage."""
        record = self._stage(stage)
        if record.status != "running":
            raise ValueError(f"stage {stage} is {record.status}, not running")
        if record.current == 0 and current > 0:
            record.first_unit_at = self.clock()
            record.first_units = float(current)
        record.current = max(record.current, float(current))
        if record.total and record.units_done_at is None and record.current >= record.total:
            record.units_done_at = self.clock()
        if record.total:
            fraction = min(record.current / record.total, 1.0)
            record.percent = max(record.percent, 100.0 * fraction)
        if message is not None:
            self._message = message
        self._emit(force=False)

    @_synchronized
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

    @_synchronized
    def skip_stage(self, stage: str, message: str = "") -> None:
        """A stage with nothing to do counts as done, so the overall bar still reaches 100."""
        record = self._stage(stage)
        record.status = "skipped"
        record.percent = 100.0
        now = self.clock()
        if record.started_at is None:
            record.started_at = self._boundary(now)
        record.finished_at = now
        self._message = message or f"Skipped {stage}"
        self._emit(force=True)

    @_synchronized
    def tick(self) -> None:
        """Send a snapshot if none went out for ``min_interval_s``: called by a heartbeat
        while a stage works without counting units (writing a block), so elapsed time, ETA
        and ``time_progress`` keep moving for watchers instead of freezing."""
        if self._status == "running":
            self._emit(force=False)

    @_synchronized
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

    @property
    def time_progress(self) -> float:
        """Percent of the expected total time done (module docstring); never goes back."""
        with self._lock:
            return self._progress_in_time(self.clock())[0]

    @_synchronized
    def accuracy(self) -> ScanAccuracy | None:
        """How right this scan's ETAs were and how steady its bars: only a completed scan
        knows the time that actually remained, so any other says None."""
        if self._status != "completed" or self._started_mono is None or self._ended_mono is None:
            return None
        total = self._ended_mono - self._started_mono
        checkpoints = tuple(
            EtaCheckpoint(checkpoint, elapsed, predicted, max(total - elapsed, 0.0))
            for checkpoint, elapsed, predicted in self._checkpoints
        )
        return ScanAccuracy(
            checkpoints=checkpoints,
            time_linearity=self._time_trace.linearity(total),
            overall_linearity=self._overall_trace.linearity(total),
            time_stall_s=self._time_trace.longest_stall_s,
            overall_stall_s=self._overall_trace.longest_stall_s,
        )

    @_synchronized
    def stage_durations(self) -> dict[str, float]:
        """Seconds per finished stage, in stage order."""
        return {
            name: record.elapsed(self.clock())
            for name, record in self._stages.items()
            if record.finished_at is not None
        }

    @_synchronized
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
                "tail": record.tail(),
            }
        overall_eta = self._overall_eta(estimates, now)
        time_progress = self.time_progress
        current = stages.get(self._current) if self._current else None
        end = self._ended_mono if self._ended_mono is not None else now
        elapsed_total = end - self._started_mono if self._started_mono is not None else 0.0
        return {
            "scan_id": self.scan_id,
            "status": self._status,
            "current_stage": self._current,
            "stages": stages,
            "overall_progress": self.overall_progress,
            "time_progress": time_progress,
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

    def _progress_in_time(self, now: float) -> tuple[float, float | None]:
        """``time_progress`` and the overall ETA at ``now`` (None when not running or not
        known); ``time_progress`` only ever rises, and is 100 only once completed."""
        eta = None
        if self._status == "completed":
            self._time_progress = 100.0
        elif self._status == "running" and self._started_mono is not None:
            eta = self._overall_eta(self._stage_estimates(now), now)
            elapsed = now - self._started_mono
            if eta is not None and elapsed + eta > 0:
                done = min(100.0 * elapsed / (elapsed + eta), TIME_PROGRESS_CAP)
                self._time_progress = max(self._time_progress, done)
        return self._time_progress, eta

    def _boundary(self, now: float) -> float:
        """Where a stage starting now begins: where the previous one ended (or the scan
        started), so the stages tile the scan and their durations add up to its time; the
        work between two stages (opening the block to scan) belongs to the one it prepares.
        A stage started beside a running one begins now."""
        if any(record.status == "running" for record in self._stages.values()):
            return now
        ends = [r.finished_at for r in self._stages.values() if r.finished_at is not None]
        if ends:
            return max(ends)
        return self._started_mono if self._started_mono is not None else now

    def _stage(self, stage: str) -> _Stage:
        try:
            return self._stages[stage]
        except KeyError:
            raise ValueError(f"stage: unknown stage {stage!r}") from None

    def _stage_estimates(self, now: float) -> dict[str, float]:
        """Estimated total seconds per stage, from what was observed and from priors."""
        estimates: dict[str, float] = {}
        for name, record in self._stages.items():
            if record.finished_at is not None:
                estimates[name] = record.elapsed(now)
                continue
            pace = self._paces.get(name)
            units = record.total if record.total is not None else record.expected
            if record.status != "running":
                pending = self._prior_seconds(name, units)
                if pending is not None:
                    estimates[name] = pending
                continue
            elapsed = record.elapsed(now)
            observed = self._observed_seconds(record, pace, now)
            # a pace alone is already in the observed rate: only a learned prior is blended
            prior = self._prior_seconds(name, units) if name in self.priors else None
            if observed is None:
                if prior is not None:
                    estimates[name] = max(prior, elapsed)
                continue
            if prior is None or not record.total:
                estimates[name] = observed
                continue
            done = min(record.current / record.total, 1.0)
            estimates[name] = max((1.0 - done) * prior + done * observed, elapsed)
        return estimates

    def _prior_seconds(self, name: str, units: float | None) -> float | None:
        """A stage's expected seconds from its prior, never faster than its known pace."""
        if units is None:
            return None
        prior = self.priors.get(name)
        pace = self._paces.get(name)
        if prior is None and pace is None:
            return None
        seconds = prior.seconds(units) if prior is not None else 0.0
        return max(seconds, (pace or 0.0) * units)

    def _observed_seconds(self, record: _Stage, pace: float | None, now: float) -> float | None:
        """A running stage's total seconds extrapolated from its own units so far, plus the
        tail its prior expects after the last unit (all of it while units remain; what is
        left of it once they are all counted)."""
        if not record.total or (record.current <= 0 and pace is None):
            return None
        elapsed = record.elapsed(now)
        prior = self.priors.get(record.name)
        tail = prior.tail_s if prior is not None else 0.0
        if record.units_done_at is not None:
            return elapsed + max(tail - (now - record.units_done_at), 0.0)
        left = max(record.total - record.current, 0.0)
        after_first = record.current - record.first_units
        if after_first > 0 and record.first_unit_at is not None:
            # units after the first report: what the stage paid before it is paid once
            per_unit = (now - record.first_unit_at) / after_first
        elif record.current > 0:
            per_unit = elapsed / record.current
        else:
            per_unit = 0.0
        if pace is not None:
            per_unit = max(per_unit, pace)
        return elapsed + left * per_unit + tail

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
        if not observed and not any(
            name in self.priors or name in self._paces for name in self._stages
        ):
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
        self._note_checkpoints(now)
        if (
            not force
            and self._last_emit_mono is not None
            and now - self._last_emit_mono < self.min_interval_s
        ):
            return
        self._last_emit_mono = now
        self._seq += 1
        snapshot = self.snapshot()
        if self._started_mono is not None:
            # the bars as watchers see them
            self._time_trace.add(snapshot["elapsed_seconds"], snapshot["time_progress"])
            self._overall_trace.add(snapshot["elapsed_seconds"], snapshot["overall_progress"])
        if self.on_emit is not None:
            self.on_emit(snapshot)

    def _note_checkpoints(self, now: float) -> None:
        """Note the overall ETA when ``time_progress`` passes a checkpoint. Checked at every
        change, not only at the throttled snapshots, so a short scan's 10 % is noted at 10 %;
        not once every stage is done (the scan is ending: nothing is left to estimate)."""
        if self._status != "running" or self._started_mono is None:
            return
        if all(record.finished_at is not None for record in self._stages.values()):
            return
        passed = {checkpoint for checkpoint, _, _ in self._checkpoints}
        if len(passed) == len(CHECKPOINTS):
            return
        time_progress, eta = self._progress_in_time(now)
        if eta is None:
            return
        elapsed = now - self._started_mono
        for checkpoint in CHECKPOINTS:
            if checkpoint not in passed and time_progress >= checkpoint:
                self._checkpoints.append((checkpoint, elapsed, eta))
